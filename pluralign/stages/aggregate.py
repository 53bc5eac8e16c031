"""`pluralign aggregate`: the run folder's type policies scored, aggregated into the fair
policy (pluralign.aggregate.fair), and aggregate.json, scores.npz and the fair policy
written; a summary for a person."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.aggregate.fair import DEFAULT_SERVED, aggregate, policy_weights
from pluralign.aggregate.served import (
    TUNED,
    ServedSettings,
)
from pluralign.core import bootstrap
from pluralign.core.data import Annotations
from pluralign.core.io import sha256_file, write_json, write_with
from pluralign.runfolder.artifacts import AggregateInfo
from pluralign.runfolder.folder import run_folder
from pluralign.runfolder.lineage import FAIR_POLICY
from pluralign.settings import DEFAULT_BASE_MEASURE

SCORES = "scores.npz"  # the candidates' log-probs under each policy, reused by evaluation


def run_aggregate(run_dir: Path, data_dir: str | Path | None = None,
                  estimator: str = "candidates", type_weights: Sequence[float] | None = None,
                  n_samples: int = 8, random_state: int = 0, merge: bool = True,
                  base_measure: str = DEFAULT_BASE_MEASURE, n_boot: int = 1000,
                  objective: str = "auto",
                  served: ServedSettings | None = DEFAULT_SERVED,
                  overwrite: bool = False) -> dict[str, Any]:
    """`pluralign aggregate`: aggregate a run folder's policies on `data_dir` (default: the
    run's own data); writes aggregate.json and merged/ into the run folder."""
    with run_folder(run_dir, "aggregate", overwrite, create=False):
        return _aggregate_run(run_dir, data_dir, estimator, type_weights, n_samples,
                              random_state, merge, base_measure, n_boot, objective, served)


def _aggregate_run(run_dir: Path, data_dir: str | Path | None, estimator: str,
                   type_weights: Sequence[float] | None, n_samples: int, random_state: int,
                   merge: bool, base_measure: str, n_boot: int,
                   objective: str, served: ServedSettings | None) -> dict[str, Any]:
    from pluralign.em.fitted import load_run
    from pluralign.runfolder.lineage import made_from
    run = load_run(run_dir)
    if type_weights is not None and len(type_weights) != run.backend.n_types:
        raise ValueError(f"--type-weights needs {run.backend.n_types} values (one per type), "
                         f"got {len(type_weights)}")
    data, scores = run.data(data_dir), {}
    out, merged = aggregate(run.backend, data, run.priors, pooled=run.baseline,
                            estimator=estimator, type_weights=type_weights,
                            n_samples=n_samples, random_state=random_state, merge=merge,
                            keep=scores, base_measure=base_measure, n_boot=n_boot,
                            objective=objective, served=served)
    out["data"] = str(Path(data_dir).resolve()) if data_dir else run.info.get("data")
    out["made_from"] = made_from(run.path, "em.json")
    if merged is not None:
        merged.save(run.path / "merged")
        out["merged_path"] = "merged"
    fair_file = run.path / FAIR_POLICY
    if out["fair"] is not None:
        name = TUNED if out.get("fair_tuned") else "fair"
        write_json(fair_file, {
            "policy": "min-max merge: pi proportional to prod_k pi_k^q_k, decoded token by "
                      "token from the type policies", "weights": (out.get("fair_tuned") or
                                                                  out["fair"])["weights"],
            "tuned_on_served": name == TUNED, "program_weights": out["fair"]["weights"],
            "type_policies": run.info["policies"], "backend": run.info["backend"],
            "beta": run.backend.beta, "objective": out["objective"],
            "value": out["fair"]["value"], "max_regret": out["baselines"][name]["max_regret"],
            "served_max_regret": (out["served"].get("max_regret") or {}).get(name)})
        out["fair_path"] = str(fair_file.relative_to(run.path))
    else:
        fair_file.unlink(missing_ok=True)
    save_scores(run.path, scores, scores_key(run.path, data, policy_weights(out), base_measure))
    path = run.path / AggregateInfo.FILE  # checked as every reader checks it, then written
    AggregateInfo.from_dict(out, path, n_types=run.backend.n_types).save(
        path, n_types=run.backend.n_types)
    return out


def scores_key(run_dir: Path, data: Annotations, weights: Sequence[float],
               base_measure: str | None = DEFAULT_BASE_MEASURE) -> str:
    """What saved scores must match to be reused: the fitted run (em.json), the data, the
    mixture weights (which fix the merged policy) and the base measure."""
    em = sha256_file(Path(run_dir) / "em.json")
    return json.dumps([em, data.fingerprint(), [round(float(w), 12) for w in weights],
                       base_measure])


def save_scores(run_dir: Path, scores: dict[str, np.ndarray], key: str) -> None:
    """Write scores.npz (or remove a stale one when there is nothing to save)."""
    path = Path(run_dir) / SCORES
    if not scores:
        path.unlink(missing_ok=True)
        return

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, _key=np.array(key), **{f"p:{n}": v for n, v in scores.items()})
    write_with(path, write)


def load_scores(run_dir: Path, key: str) -> dict[str, np.ndarray]:
    """The saved scores when their key matches `key`, else {} (recompute)."""
    path = Path(run_dir) / SCORES
    if not path.is_file():
        return {}
    with np.load(path) as z:
        if str(z["_key"]) != key:
            return {}
        return {n[2:]: z[n] for n in z.files if n.startswith("p:")}


def format_aggregate(out: dict[str, Any]) -> str:
    """aggregate.json for a person: the mixture and the merge, every policy's worst-type regret
    on the candidates and as served, with intervals and which differ from the fairest."""
    iv = out.get("intervals") or {}
    base = f", base measure {out['base_measure']}" if out.get("base_measure") else ""
    base += f", {out.get('objective', 'paper')} objective"
    kind = "exact min-max over mixtures" if out.get("objective") == "kl" else "LP"
    lines = [f"regret estimator: {out['estimator']}{base} on {out['annotations']} annotations "
             f"of {out.get('annotators', '?')} annotators, {out.get('prompts', '?')} prompts"
             + (f"; {100 * iv['level']:.0f}% intervals: studentised bootstrap over prompts "
                f"({iv['n_boot']} replicates)" if iv else ""),
             "MMRA weights: " + ", ".join(f"{t} {w:.3f}" for t, w in
                                           zip(out["types"], out["weights"], strict=True)),
             f"MMRA max regret ({kind}): {out['max_regret']:.4f}"
             f"{bootstrap.show((iv.get('max_regret') or {}).get('mmra'), 4)} (binding: "
             + ", ".join(t for t, b in zip(out["types"], out["binding"], strict=True) if b)
             + ")" + (f"; the LP's bound on the pure types' columns: "
                      f"{out['lp_max_regret']:.4f}" if out.get("objective") == "kl" else ""),
             *([] if not out.get("fair") else [
                 "min-max merge weights: " + ", ".join(
                     f"{t} {w:.3f}" for t, w in zip(out["types"], out["fair"]["weights"],
                                                    strict=True)),
                 f"min-max merge certificate on the candidates: program value "
                 f"{out['fair']['value']:.6f}, measured max regret "
                 f"{out['fair']['max_regret']:.6f}"])]
    worst = {"mmra": out["max_regret"], **{n: b["max_regret"]
                                           for n, b in out["baselines"].items()}}
    lines += regret_lines("worst-type regret on the candidate responses", worst, iv)
    served = out.get("served") or {}
    if "max_regret" in served:
        lines += regret_lines(
            f"worst-type regret as served ({served['n_samples']} responses decoded per prompt "
            f"on {served['prompts']} prompts, at most {served['max_new_tokens']} tokens, "
            "scored exactly)", served["max_regret"], served.get("intervals") or {})
    if out.get("deploy"):
        lines.append(out["deploy"]["why"])
    return "\n".join(lines)


def regret_lines(title: str, worst: dict[str, float], iv: dict[str, Any]) -> list[str]:
    """A titled list of max regrets, best first, with intervals and which policies cannot be
    told apart from the fairest."""
    fairest = iv.get("fairest")
    out = [f"{title}:" + (f" (fairest: {fairest})" if fairest else "")]
    for name, value in sorted(worst.items(), key=lambda kv: kv[1]):
        same = (iv.get("vs_fairest") or {}).get(name)
        note = "" if same is None or same["distinguishable"] else \
            "  (not distinguishable from the fairest)"
        shown = bootstrap.show((iv.get("max_regret") or {}).get(name), 4)
        out.append(f"  {name:<12} {value:.4f}{shown}{note}")
    return out
