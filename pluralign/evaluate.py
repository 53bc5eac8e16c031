"""Evaluate every policy against every type (DESIGN §1, §6): how well each policy's implied
preferences predict each type's held-out rankings, and how well types were discovered.

A policy j enters as log pi_j(y|x) of every candidate (restricted to the candidates, as in the
`candidates` regret estimator); as a preference model it ranks by those log-probabilities, and
its Plackett–Luce likelihood uses the implied reward beta * (log pi_j - log pi_ref).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.aggregate import (
    Policy,
    aggregate,
    candidate_regret,
    load_scores,
    mixture_logps,
    policies_of,
    policy_logps,
    scores_key,
    weighted_regret,
)
from pluralign.backends.base import PolicyBackend
from pluralign.data import Annotations
from pluralign.em import annotation_loglik, annotator_loglik, e_step
from pluralign.em_run import FittedRun, annotator_labels, load_run
from pluralign.io import write_json
from pluralign.losses import beats, plackett_luce_logprob
from pluralign.rankings import Rankings


def ranking_metrics(scores: np.ndarray, rankings: Rankings) -> dict[str, np.ndarray]:
    """Per-annotation agreement of `scores[n, M]` (higher = preferred) with the observed rankings:
    top-1 accuracy (a tie at the top shares the credit, so a constant score gets chance level),
    pairwise accuracy over the pairs a ranking implies (ties count one half), and
    Kendall's tau over those pairs ((concordant - discordant) / pairs)."""
    s = torch.as_tensor(np.nan_to_num(scores, nan=-np.inf), dtype=torch.float64)
    pairs = beats(rankings)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    n_pairs = pairs.sum(dim=(1, 2)).clamp_min(1)
    concordant = ((diff > 0) & pairs).sum(dim=(1, 2))
    discordant = ((diff < 0) & pairs).sum(dim=(1, 2))
    ties = ((diff == 0) & pairs).sum(dim=(1, 2))
    at_max = s == s.max(dim=1, keepdim=True).values      # ties at the top share the credit
    chosen = at_max.gather(1, rankings.ranking[:, :1]).squeeze(1)
    return {"top1": (chosen / at_max.sum(dim=1)).double().numpy(),
            "pairwise": ((concordant + 0.5 * ties) / n_pairs).numpy(),
            "kendall_tau": ((concordant - discordant) / n_pairs).numpy()}


def policy_table(rewards: np.ndarray, rankings: Rankings, groups: Sequence[Any],
                 policy_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> group -> policy -> mean over that group's annotations.

    rewards[n, M, J]: each policy's implied reward beta * s_j (NaN padding); groups: the type of
    each annotation's annotator (true types where known, else discovered ones)."""
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for j, name in enumerate(policy_names):
        r = rewards[..., j]
        per = ranking_metrics(r, rankings)
        per["loglik"] = plackett_luce_logprob(
            torch.as_tensor(np.nan_to_num(r, nan=0.0), dtype=torch.float64), rankings).numpy()
        for metric, values in per.items():
            for g in sorted(set(groups.tolist()), key=str):
                out.setdefault(metric, {}).setdefault(str(g), {})[name] = float(
                    values[groups == g].mean())
    return out


def discovery(truth: Sequence[Any], posteriors: np.ndarray) -> dict[str, Any]:
    """Discovery quality against known labels: ARI, NMI, the confusion matrix (true label x
    discovered type), and each annotator's posterior confidence (max posterior)."""
    from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score
    pred = posteriors.argmax(axis=1)
    labels = sorted(set(truth), key=str)
    index = {label: i for i, label in enumerate(labels)}
    k = posteriors.shape[1]
    matrix = confusion_matrix([index[t] for t in truth], pred,
                              labels=range(max(len(labels), k)))[: len(labels), :k]
    confidence = posteriors.max(axis=1)
    return {"ari": float(adjusted_rand_score(truth, pred)),
            "nmi": float(normalized_mutual_info_score(truth, pred)),
            "labels": [str(x) for x in labels], "confusion": matrix.tolist(),
            "confidence_mean": float(confidence.mean()),
            "confidence_histogram": np.histogram(confidence, bins=10, range=(0, 1))[0].tolist()}


def implied_rewards(logps: np.ndarray, log_ref: np.ndarray, beta: float) -> np.ndarray:
    """beta * (log q_j - log q_ref) with both restricted to each row's candidates: the reward a
    policy (or a mixture) implies; [n, M, P]. The base model implies zero."""
    def restricted(x: np.ndarray) -> np.ndarray:
        top = np.nanmax(x, axis=1, keepdims=True)
        return x - top - np.log(np.nansum(np.exp(x - top), axis=1, keepdims=True))
    return beta * (restricted(logps) - restricted(log_ref)[..., None])


def spread(table: dict[str, dict[str, dict[str, float]]],
           lower_is_better: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """metric -> policy -> the worst-served group, its value, the best value and the gap
    between best- and worst-served groups."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, by_group in table.items():
        sign = -1.0 if metric in lower_is_better else 1.0
        policies = next(iter(by_group.values())).keys()
        for p in policies:
            values = {g: row[p] for g, row in by_group.items()}
            worst = min(values, key=lambda g: sign * values[g])
            best = max(values, key=lambda g: sign * values[g])
            out.setdefault(metric, {})[p] = {
                "worst_group": worst, "worst": values[worst], "best_group": best,
                "best": values[best], "gap": abs(values[best] - values[worst])}
    return out


def match_labels(truth: Sequence[Any], pred: np.ndarray, k: int) -> dict[str, int]:
    """Label -> discovered type by the assignment that maximises agreement (Hungarian);
    labels beyond K stay unmatched."""
    from scipy.optimize import linear_sum_assignment
    labels = sorted(set(map(str, truth)))
    counts = np.zeros((len(labels), k))
    for t, p in zip(map(str, truth), pred, strict=True):
        counts[labels.index(t), p] += 1
    rows, cols = linear_sum_assignment(-counts)
    return {labels[r]: int(c) for r, c in zip(rows, cols, strict=True)}


def doubling(n: int) -> list[int]:
    """1, 2, 4, ... up to n, then n itself."""
    sizes = [2 ** i for i in range(max(1, n).bit_length()) if 2 ** i < n]
    return sizes + [max(1, n)]


def personalization_curve(per_annotation: np.ndarray, codes: np.ndarray, priors: np.ndarray,
                          target: np.ndarray, sizes: Sequence[int] | None = None
                          ) -> list[dict[str, float]]:
    """Type-assignment accuracy after each annotator's first n annotations (data order), from
    fixed policies: per_annotation[a, k] is log P_k of annotation a, target[h] the type each
    annotator should get (-1: none). Only annotators with at least n annotations count at n."""
    n_annot = len(target)
    order = np.zeros(len(codes), dtype=int)
    seen = np.zeros(n_annot, dtype=int)
    for a, h in enumerate(codes):
        order[a], seen[h] = seen[h], seen[h] + 1
    out = []
    for n in sizes or doubling(int(seen.max(initial=1))):
        use = order < n
        lik = annotator_loglik(per_annotation[use], codes[use], n_annot)
        gamma, _ = e_step(lik, priors)
        who = (seen >= n) & (target >= 0)
        if who.any():
            out.append({"annotations": int(n), "annotators": int(who.sum()),
                        "accuracy": float((gamma[who].argmax(1) == target[who]).mean()),
                        "confidence": float(gamma[who].max(1).mean())})
    return out


# -- a whole run ----------------------------------------------------------------------------
def evaluate_run(run: FittedRun, data: Annotations, aggregated: dict[str, Any] | None = None,
                 scores: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every policy against every type on `data`: the single policies (types, pooled, merged,
    base) and the mixtures (MMRA, uniform, utilitarian); metrics per group, the regret table,
    discovery quality, per-annotator confidence and the personalization curve. `scores`: the
    log-probs aggregation computed on this data (RegretEstimator.scores), not recomputed."""
    backend, beta, k = run.backend, run.backend.beta, run.backend.n_types
    if aggregated is None:
        aggregated, merged = aggregate(backend, data, run.priors, pooled=run.baseline)
    else:
        merged = _merged(backend, aggregated["weights"])
    scores = scores or {}
    s = scores["_s"] if "_s" in scores else backend.logratios(data)
    singles = policies_of(backend, {"pooled": run.baseline}, base=True)
    singles += [Policy("merged", merged, 0)] if merged is not None else []
    todo = [p for p in singles if p.name not in scores]
    fresh = policy_logps(todo, data, {id(backend): s}) if todo else None
    logps = np.stack([scores[p.name] if p.name in scores else fresh[..., todo.index(p)]
                      for p in singles], axis=2)
    mixes = {"mmra": aggregated["weights"],
             **{m: aggregated["baselines"][m]["weights"] for m in ("uniform", "utilitarian")}}
    logps = np.concatenate([logps] + [mixture_logps(logps[..., :k], w)[..., None]
                                      for w in mixes.values()], axis=2)
    names = [p.name for p in singles] + list(mixes)
    rank = Rankings.from_annotations(data)
    codes, ids = data.annotator_codes()
    per = annotation_loglik(s, rank, beta)
    gamma, _ = e_step(annotator_loglik(per, codes, len(ids)), run.priors)
    pred = gamma.argmax(axis=1)
    labels = annotator_labels(data)
    labelled = bool(labels) and all(h in labels for h in ids)
    groups = [labels[h] for h in ids] if labelled else [f"type_{p}" for p in pred]
    table = policy_table(implied_rewards(logps, backend.reference_logps(data), beta), rank,
                         [groups[c] for c in codes], names)
    regret = weighted_regret(candidate_regret(beta * s, logps), aggregated.get("type_weights"))
    out: dict[str, Any] = {
        "annotations": len(data), "annotators": len(ids), "data_fingerprint": data.fingerprint(),
        "groups": "true types" if labelled else "discovered types", "policies": names,
        "metrics": table, "spread": spread(table),
        "regret": {"estimator": "candidates", "types": [f"type_{i}" for i in range(k)],
                   "matrix": regret.tolist(),
                   "max_regret": dict(zip(names, regret.max(0).tolist(), strict=True)),
                   "gap": dict(zip(names, (regret.max(0) - regret.min(0)).tolist(),
                                   strict=True))},
        "annotator_posteriors": [{"annotator_id": h, "type": int(p), "confidence": float(c)}
                                 for h, p, c in zip(ids, pred, gamma.max(1), strict=True)],
        "confidence_histogram": np.histogram(gamma.max(1), bins=10, range=(0, 1))[0].tolist()}
    target = pred
    if labelled:
        truth = [labels[h] for h in ids]
        out["discovery"] = discovery(truth, gamma)
        mapping = match_labels(truth, pred, k)
        out["discovery"]["label_to_type"] = mapping
        target = np.array([mapping.get(t, -1) for t in truth])
    out["personalization"] = {
        "target": "matched true types" if labelled else "assignment from all annotations",
        "curve": personalization_curve(per, codes, run.priors, target)}
    return out


def run_evaluate(run_dir: Path, data_dir: str | Path | None = None) -> dict[str, Any]:
    """`pluralign evaluate`: evaluate a run folder on `data_dir` (default: the run's own data,
    in-sample) with the mixture of its aggregate.json; writes evaluation.json."""
    run = load_run(run_dir)
    agg_file = run.path / "aggregate.json"
    aggregated = json.loads(agg_file.read_text()) if agg_file.is_file() else None
    if aggregated is None:
        print("note: no aggregate.json in the run; using the candidates estimate on this data "
              "(run `pluralign aggregate` to fix the mixture)", file=sys.stderr)
    data = run.data(data_dir)
    scores = {} if aggregated is None else load_scores(
        run.path, scores_key(run.path, data, aggregated["weights"]))
    out = evaluate_run(run, data, aggregated, scores)
    out["data"] = str(Path(data_dir).resolve()) if data_dir else run.info.get("data")
    out["in_sample"] = data_dir is None
    write_json(run.path / "evaluation.json", out)
    return out


def _merged(backend: PolicyBackend, weights: Sequence[float]) -> PolicyBackend | None:
    try:
        return backend.merge(np.asarray(weights))
    except NotImplementedError:
        return None


def format_evaluation(out: dict[str, Any]) -> str:
    """evaluation.json for a person: each policy's worst-type regret and accuracy."""
    pair = out["spread"]["pairwise"]
    lines = [f"evaluated {len(out['policies'])} policies on {out['annotations']} annotations "
             f"of {out['annotators']} annotators (groups: {out['groups']})",
             f"{'policy':<12} {'max regret':>10} {'worst pairwise acc':>19}  worst group"]
    for name in out["policies"]:
        lines.append(f"{name:<12} {out['regret']['max_regret'][name]:>10.4f} "
                     f"{pair[name]['worst']:>19.3f}  {pair[name]['worst_group']}")
    if "discovery" in out:
        d = out["discovery"]
        lines.append(f"discovery: ARI {d['ari']:.3f}, NMI {d['nmi']:.3f}")
    curve = out["personalization"]["curve"]
    if curve:
        lines.append("personalization (annotations: accuracy): " + ", ".join(
            f"{c['annotations']}: {c['accuracy']:.2f}" for c in curve))
    return "\n".join(lines)
