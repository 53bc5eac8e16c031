"""Evaluate every policy against every type (DESIGN §1, §6): how well each policy's implied
preferences predict each type's held-out rankings, and how well types were discovered.

A policy j enters as log pi_j(y|x) of every candidate (restricted to the candidates with the
base measure of the `candidates` regret estimator, uniform by default); as a preference model it
ranks by its implied reward beta * (log q_j - log q_ref), and its Plackett–Luce likelihood uses
that reward. Every figure comes with a bootstrap interval: annotators are resampled for
accuracies, ARI and the personalization curve, prompts for regrets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.aggregate.distributional import group_alignment
from pluralign.aggregate.evaluation import (
    annotation_metrics,
    discovery,
    group_intervals,
    group_means,
    implied_rewards,
    personalization_curve,
    spread,
)
from pluralign.aggregate.fair import aggregate, policy_weights, weigh_types
from pluralign.aggregate.merge import merge_logps
from pluralign.aggregate.mmra import mixture_logps
from pluralign.aggregate.regret import (
    Policy,
    policies_of,
    policy_logps,
    prompt_units,
    regret_contributions,
    regret_intervals,
)
from pluralign.backends.base import PolicyBackend, check_finite
from pluralign.core import bootstrap, diagnostics
from pluralign.core.data import Annotations, as_annotations
from pluralign.core.labels import annotator_labels, label_columns, split_label_warnings
from pluralign.em.ceiling import ceiling_warnings, compare, match_labels
from pluralign.em.estep import annotator_loglik, e_step, type_loglik
from pluralign.em.fitted import FittedRun, crossfit_posteriors, load_ceiling, load_run
from pluralign.personalize.experiment import predictive_experiment
from pluralign.runfolder.artifacts import EvaluationInfo, aggregate_info
from pluralign.runfolder.folder import run_folder
from pluralign.runfolder.lineage import check_made_from, made_from
from pluralign.settings import DEFAULT_BASE_MEASURE
from pluralign.simulate.store import CEILINGS_FILE
from pluralign.stages.aggregate import load_scores, scores_key


# -- a whole run ----------------------------------------------------------------------------
def evaluate_run(run: FittedRun, data: Annotations, aggregated: dict[str, Any] | None = None,
                 scores: dict[str, np.ndarray] | None = None, n_boot: int = 1000,
                 seed: int = 0, train: Annotations | None = None,
                 predictive_orders: int = 0, seen: Annotations | None = None,
                 user_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every policy against every type on `data`: the single policies (types, pooled, merged,
    base) and the mixtures (MMRA, uniform, utilitarian); metrics per group, the regret table,
    discovery quality against every label column, per-annotator confidence and the
    personalization curve, each with a bootstrap interval (n_boot replicates; 0: none).
    `scores`: the log-probs aggregation computed on this data (RegretEstimator.scores), not
    recomputed; `train`: the training data, to flag labelled groups the evaluation misses (and
    to fit the user-weights prior); `predictive_orders` > 0: the predictive personalization
    curve, from the type log-ratios computed here (and `seen`'s: held-out annotations of
    training users; `user_weights`: the user-weights model's options)."""
    backend, beta, k = run.backend, run.backend.beta, run.backend.n_types
    if aggregated is None:
        aggregated, merged = aggregate(backend, data, run.priors, pooled=run.baseline,
                                       n_boot=0, served=None)
    else:
        merged = _merged(backend, aggregated.get("merged_weights") or aggregated["weights"])
    base_measure = aggregated["base_measure"] or DEFAULT_BASE_MEASURE  # None: sampled
    logps, names, s = _policy_columns(run, data, aggregated, merged, scores or {}, base_measure)
    check_finite(s, data, "log-ratio")  # also when read back from scores.npz
    check_finite(logps, data, "policy log-prob")
    rank = as_annotations(data).rankings()
    codes, ids = data.annotator_codes()
    per = type_loglik(backend, s, data)
    gamma, _ = e_step(annotator_loglik(per, codes, len(ids)), run.priors)
    pred = gamma.argmax(axis=1)
    labels = annotator_labels(data)
    labelled = bool(labels) and all(h in labels for h in ids)
    groups = [labels[h] for h in ids] if labelled else [f"type_{p}" for p in pred]
    log_ref = backend.reference_logps(data) if base_measure == "reference" else None
    metrics = annotation_metrics(implied_rewards(logps, log_ref, beta), rank)
    row_groups = [groups[c] for c in codes]
    table = group_means(metrics, row_groups, names)
    objective = aggregated["objective"]
    units = weigh_types(prompt_units(data).means(regret_contributions(s, logps, beta, objective)),
                        aggregated.get("type_weights"))
    regret = units.mean(axis=0)
    out: dict[str, Any] = {
        "annotations": len(data), "annotators": len(ids), "prompts": int(len(units)),
        "data_fingerprint": data.fingerprint(), "base_measure": base_measure,
        "groups": "true types" if labelled else "discovered types", "policies": names,
        "group_sizes": _group_sizes(groups, row_groups),
        "metrics": table, "spread": spread(table),
        "regret": {"estimator": "candidates", "objective": objective,
                   "types": [f"type_{i}" for i in range(k)],
                   "matrix": regret.tolist(),
                   "max_regret": dict(zip(names, regret.max(0).tolist(), strict=True)),
                   "gap": dict(zip(names, (regret.max(0) - regret.min(0)).tolist(),
                                   strict=True))},
        "annotator_posteriors": [{"annotator_id": h, "type": int(p), "confidence": float(c)}
                                 for h, p, c in zip(ids, pred, gamma.max(1), strict=True)],
        "confidence_histogram": np.histogram(gamma.max(1), bins=10, range=(0, 1))[0].tolist()}
    if n_boot > 0:
        out["intervals"] = {"level": bootstrap.LEVEL, "n_boot": n_boot, "seed": seed,
                            "metrics": group_intervals(metrics, row_groups, codes, names,
                                                       n_boot, seed),
                            **(regret_intervals(units, names, n_boot, seed) or {})}
    target, warns = pred, []
    if labelled:
        truth = [labels[h] for h in ids]
        out["discovery"] = discovery(truth, gamma, n_boot, seed)
        mapping = match_labels(truth, pred, k)
        out["discovery"]["label_to_type"] = mapping
        target = np.array([mapping.get(t, -1) for t in truth])
        warns = diagnostics.label_match_warnings(mapping, truth, k)
        ceiling = _ceiling(run, data, ids, train is None)
        if ceiling is not None:  # the same backend fitted with the labels known
            gamma_c, labels_c, how = ceiling
            out["ceiling"] = compare(truth, gamma, gamma_c, labels_c, n_boot, seed)
            out["ceiling"]["assigned"] = how
            warns += ceiling_warnings(out["ceiling"], "training" if train is None else
                                      "held-out")
    out["confusion"] = {col: discovery([lab.get(h, "(none)") for h in ids], gamma)
                        for col, lab in label_columns(data).items()}
    out["personalization"] = {
        "target": "matched true types" if labelled else "assignment from all annotations",
        "curve": personalization_curve(per, codes, run.priors, target, n_boot=n_boot,
                                       seed=seed)}
    if predictive_orders > 0:
        out["personalization"]["predictive"] = predictive_experiment(
            run, data, train if train is not None else data, predictive_orders,
            oracle_types(labels, ids, pred, (out.get("discovery") or {}).get("label_to_type")),
            n_boot, seed, scores=s, seen=seen, user_weights=user_weights)
    aligned = group_alignment(data, logps, names, gamma, k, train, n_boot, seed)
    if aligned is not None:
        out["distributional"] = aligned
    out["warnings"] = warns + _warnings(data, train, gamma)
    return out


def oracle_types(labels: dict[str, str], ids: list[str], pred: np.ndarray,
                 mapping: dict[str, int] | None) -> dict[str, int]:
    """The labels the predictive oracle may equate with a type: matched to it, and most of
    the label's annotators assigned to it (a label such as "blend" or "random", spread over
    the types, names no type's users)."""
    out = {}
    for label, k in (mapping or {}).items():
        mine = np.array([pred[i] for i, h in enumerate(ids) if labels.get(h) == label])
        if len(mine) and (mine == k).mean() > 0.5:
            out[label] = k
    return out


def _policy_columns(run: FittedRun, data: Annotations, aggregated: dict[str, Any],
                    merged: PolicyBackend | None, scores: dict[str, np.ndarray],
                    base_measure: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """log q_j of every candidate for the single policies and the mixtures: ([n, M, P], names,
    the types' log-ratios s)."""
    backend, k = run.backend, run.backend.n_types
    s = scores["_s"] if "_s" in scores else backend.logratios(data)
    singles = policies_of(backend, {"pooled": run.baseline}, base=True)
    singles += [Policy("merged", merged, 0)] if merged is not None else []
    todo = [p for p in singles if p.name not in scores]
    fresh = policy_logps(todo, data, {id(backend): s}, base_measure) if todo else None
    logps = np.stack([scores[p.name] if p.name in scores else fresh[..., todo.index(p)]
                      for p in singles], axis=2)
    for name in ("fair", "fair_tuned"):  # the min-max merge, decoded from the K type policies
        if aggregated.get(name):
            column = scores.get(name)
            if column is None:
                column = merge_logps(logps[..., :k], aggregated[name]["weights"])
            logps = np.concatenate([logps, column[..., None]], axis=2)
            singles = [*singles, Policy(name, backend, None)]
    mixes = {"mmra": aggregated["weights"],
             **{m: aggregated["baselines"][m]["weights"] for m in ("uniform", "utilitarian")}}
    logps = np.concatenate([logps] + [mixture_logps(logps[..., :k], w)[..., None]
                                      for w in mixes.values()], axis=2)
    return logps, [p.name for p in singles] + list(mixes), s


def _ceiling(run: FittedRun, data: Annotations, ids: list[str],
             in_sample: bool) -> tuple[np.ndarray, list[str], str] | None:
    """The supervised ceiling's posteriors of the annotators `ids` ([H, labels]), its labels
    and how they were assigned: held-out annotators by the ceiling fitted on the training
    ones; the training annotators themselves by the cross-fitted ceiling em saved (each
    assigned without their own data), else, marked so, in-sample (which flatters it)."""
    ceiling = load_ceiling(run)
    if ceiling is None:
        return None
    saved = crossfit_posteriors(run) if in_sample else None
    if saved is not None and set(ids) <= set(saved[0]):
        where = {h: i for i, h in enumerate(saved[0])}
        return saved[1][[where[h] for h in ids]], ceiling.labels_, "cross-fitted"
    gamma, seen = ceiling.predict_proba(data)
    where = {h: i for i, h in enumerate(seen)}
    return (gamma[[where[h] for h in ids]], ceiling.labels_,
            "in-sample (fitted on these annotators: optimistic)" if in_sample else "held-out")


def _group_sizes(groups: Sequence[str], row_groups: Sequence[str]) -> dict[str, dict[str, int]]:
    """Annotators and annotations of each group."""
    out: dict[str, dict[str, int]] = {}
    for g in sorted(set(groups), key=str):
        out[str(g)] = {"annotators": sum(x == g for x in groups),
                       "annotations": sum(x == g for x in row_groups)}
    return out


def _warnings(data: Annotations, train: Annotations | None,
              gamma: np.ndarray) -> list[dict[str, str]]:
    """Held-out split missing labelled groups; near-uniform posteriors on this data."""
    out = []
    if train is not None and train.fingerprint() != data.fingerprint():
        out = split_label_warnings(train, data)
    return out + diagnostics.confidence_warnings(gamma)


def run_evaluate(run_dir: Path, data_dir: str | Path | None = None, n_boot: int = 1000,
                 seed: int = 0, overwrite: bool = False, predictive_orders: int = 0,
                 seen_dir: str | Path | None = None,
                 user_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """`pluralign evaluate`: evaluate a run folder on `data_dir` (default: the run's own data,
    in-sample) with the mixture of its aggregate.json; writes evaluation.json.
    `predictive_orders` > 0 adds the predictive personalization curve
    (pluralign.personalize.experiment) with that many random orders per user; `seen_dir`:
    held-out annotations of the run's own annotators, for the seen users' curve;
    `user_weights`: the user-weights model's options (UserWeightsOptions.model_options)."""
    with run_folder(run_dir, "evaluate", overwrite, create=False):
        return _evaluate_run(Path(run_dir), data_dir, n_boot, seed, predictive_orders,
                             seen_dir, user_weights)


def _evaluate_run(run_dir: Path, data_dir: str | Path | None, n_boot: int, seed: int,
                  predictive_orders: int = 0, seen_dir: str | Path | None = None,
                  user_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    run = load_run(run_dir)
    agg_file = run.path / "aggregate.json"
    aggregated = aggregate_info(agg_file, run.backend.n_types) if agg_file.is_file() else None
    if aggregated is not None:
        check_made_from(run.path, "aggregate.json", aggregated)
    if aggregated is None:
        print("note: no aggregate.json in the run; using the candidates estimate on this data "
              "(run `pluralign aggregate` to fix the mixture)", file=sys.stderr)
    data = run.data(data_dir)
    scores = {} if aggregated is None else load_scores(
        run.path, scores_key(run.path, data, policy_weights(aggregated),
                             aggregated.get("base_measure")))
    train = run.data() if data_dir is not None and run.info.get("data") else None
    if predictive_orders > 0 and data_dir is not None and train is None:
        train = run.data()  # the user-weights prior: never from the users it predicts
    seen = run.data(seen_dir) if seen_dir is not None and predictive_orders > 0 else None
    out = evaluate_run(run, data, aggregated, scores, n_boot, seed, train, predictive_orders,
                       seen, user_weights)
    if predictive_orders > 0:
        out["personalization"]["predictive"]["users"] = "held-out" if data_dir else \
            "training (in-sample)"
    ceilings = population_ceilings(run.path, run.info.get("data"))
    if ceilings is not None:
        out["group_ceilings"] = ceilings
    out["data"] = str(Path(data_dir).resolve()) if data_dir else run.info.get("data")
    out["in_sample"] = data_dir is None
    out["made_from"] = made_from(run.path, "em.json", "aggregate.json")
    path = run.path / EvaluationInfo.FILE  # checked as every reader checks it, then written
    EvaluationInfo.from_dict(out, path).save(path)
    return out


def population_ceilings(run_dir: Path, data: str | None) -> dict[str, Any] | None:
    """The Bayes oracle's and supervised ceilings simulate --from-groups wrote beside the
    population (ceilings.json): in the run's population/, its data folder, or a folder the
    data's manifest names as its source. Per-annotator assignments left out."""
    places = [run_dir / "population"]
    if data:
        places.append(Path(data))
        manifest = Path(data) / "manifest.json"
        if manifest.is_file():
            sources = json.loads(manifest.read_text()).get("source") or []
            places += [Path(p) for p in sources if isinstance(p, str)]
    for place in places:
        path = place / CEILINGS_FILE
        if path.is_file():
            c = json.loads(path.read_text())
            return {k: v for k, v in c.items() if k != "assignments"} | {"path": str(path)}
    return None


def _merged(backend: PolicyBackend, weights: Sequence[float]) -> PolicyBackend | None:
    try:
        return backend.merge(np.asarray(weights))
    except NotImplementedError:
        return None


def format_evaluation(out: dict[str, Any]) -> str:
    """evaluation.json for a person: each policy's worst-type regret and accuracy, with
    bootstrap intervals when computed, then the warnings."""
    pair = out["spread"]["pairwise"]
    iv = out.get("intervals") or {}

    ci = bootstrap.show
    lines = [f"evaluated {len(out['policies'])} policies on {out['annotations']} annotations "
             f"of {out['annotators']} annotators, {out.get('prompts', '?')} prompts (groups: "
             f"{out['groups']}; {'in-sample' if out.get('in_sample') else 'held-out'})"
             + (f"; {100 * iv['level']:.0f}% bootstrap intervals" if iv else ""),
             f"{'policy':<12} {'max regret':>24} {'worst pairwise acc':>26}  worst group"]
    for name in out["policies"]:
        worst = pair[name]["worst_group"]
        acc_ci = iv.get("metrics", {}).get("pairwise", {}).get(worst, {}).get(name)
        lines.append(f"{name:<12} {out['regret']['max_regret'][name]:>8.4f}"
                     f"{ci(iv.get('max_regret', {}).get(name)):<16} "
                     f"{pair[name]['worst']:>8.3f}{ci(acc_ci):<18}  {worst}")
    if "discovery" in out:
        d = out["discovery"]
        lines.append(f"discovery: ARI {d['ari']:.3f}{ci(d.get('ari_interval'))}, "
                     f"NMI {d['nmi']:.3f}{ci(d.get('nmi_interval'))} on {d['annotators']} "
                     "annotators")
    curve = out["personalization"]["curve"]
    if curve:
        lines.append("personalization (annotations: accuracy): " + ", ".join(
            f"{c['annotations']}: {c['accuracy']:.2f}" for c in curve))
    for w in out.get("warnings", []):
        lines.append(f"WARNING [{w['code']}]: {w['message']}")
    return "\n".join(lines)
