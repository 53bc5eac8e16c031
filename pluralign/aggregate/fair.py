"""From the type policies' scores to the one fair policy (DESIGN §6): the regret matrix and
its intervals, the MMRA mixture or the min-max merge, the merge tuned on held-out prompts,
the regrets of every deployable policy as served, and the one sentence quoting them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pluralign.aggregate.merge import MinMaxMerge, merge_logps
from pluralign.aggregate.mmra import MinMaxMixture, mixture_logps
from pluralign.aggregate.program import MinMaxRegretAggregator
from pluralign.aggregate.regret import (
    DEPLOYABLE,
    Policy,
    RegretEstimate,
    RegretEstimator,
    baselines,
    policies_of,
    regret_intervals,
)
from pluralign.aggregate.served import (
    TUNED,
    ServedSettings,
    served_policies,
    served_regret,
    tune_merge,
)
from pluralign.backends.base import PolicyBackend
from pluralign.core import bootstrap
from pluralign.core.data import Annotations
from pluralign.settings import DEFAULT_BASE_MEASURE

#: Served regrets are measured by default where the backend decodes (pluralign.aggregate.served).
DEFAULT_SERVED = ServedSettings()


def weigh_types(units: np.ndarray, type_weights: Sequence[float] | None) -> np.ndarray:
    """units [..., K, J] with each type's rows scaled by its importance weight (if any)."""
    if type_weights is None:
        return units
    return units * np.asarray(type_weights, dtype=np.float64)[:, None]


def aggregate(backend: PolicyBackend, data: Annotations, priors: Sequence[float],
              pooled: PolicyBackend | None = None, estimator: str = "candidates",
              type_weights: Sequence[float] | None = None, n_samples: int = 8,
              random_state: int = 0, merge: bool = True,
              keep: dict[str, np.ndarray] | None = None, base_measure: str = DEFAULT_BASE_MEASURE,
              n_boot: int = 1000, objective: str = "auto",
              served: ServedSettings | None = DEFAULT_SERVED
              ) -> tuple[dict[str, Any], PolicyBackend | None]:
    """The whole of DESIGN §6 on one dataset: R for the type policies, the pooled policy and the
    base model; the MMRA mixture (the LP under the paper objective, the exact min-max over
    mixtures under kl); the min-max merge (kl); the baselines; a merged adapter with its
    measured regret; each with bootstrap intervals over prompts (n_boot replicates; 0: none).
    For a backend that decodes (LoRA) under the kl objective, `served` measures every
    deployable policy as decoded (pluralign.aggregate.served; None: not measured), and the deploy
    choice quotes that figure.
    Returns (the aggregate.json content, the merged policy or None); `keep`, when given, is
    filled with the scores computed (RegretEstimator.scores) for evaluation to reuse."""
    estimator_ = RegretEstimator(backend, data, estimator, n_samples, random_state, base_measure,
                                 objective)
    objective = estimator_.objective
    fit = _fit_fair(estimator_, priors, pooled, type_weights, merge)
    lp, fair, mixture, merged, weights = fit.lp, fit.fair, fit.mixture, fit.merged, fit.weights
    tuned, tuning = None, None
    if fair is not None and backend.decodes and served is not None and served.tune:
        tuned, tuning = _tune(estimator_, data, fit, served, type_weights)
    names, units = _columns(estimator_.estimate(fit.policies), weights, objective,
                            merged is not None)
    k = backend.n_types
    weighted = weigh_types(units, type_weights)
    r = weighted.mean(axis=0)
    mmra = r[:, names.index("mmra")]
    out = {"estimator": estimator, "n_samples": n_samples if estimator == "sampled" else None,
           "base_measure": base_measure if estimator == "candidates" else None,
           "random_state": random_state, "annotations": len(data),
           "annotators": len(data.annotator_ids), "prompts": int(len(units)),
           "data_fingerprint": data.fingerprint(), "types": [f"type_{i}" for i in range(k)],
           "policies": names, "regret_matrix": units.mean(axis=0).tolist(),
           "regret_stderr": None if estimator != "sampled" or len(units) < 2 else
           (units.std(axis=0, ddof=1) / np.sqrt(len(units))).tolist(),
           "type_weights": None if type_weights is None else list(map(float, type_weights)),
           "weights": weights["mmra"].tolist(), "max_regret": float(mmra.max()),
           "regrets": mmra.tolist(),
           "binding": (mmra >= mmra.max() - max(lp.tol, 1e-6 * abs(mmra.max()))).tolist(),
           "lp_max_regret": lp.max_regret_, "lp_weights": lp.weights_.tolist(),
           "solver": mixture.solver_ if mixture is not None else lp.solver_,
           "baselines": _baselines(names, r, weights, k), "objective": objective,
           "merged_weights": None if merged is None else fit.merge_weights.tolist(),
           "fair": None if fair is None else {
               "weights": fair.weights_.tolist(), "value": fair.value_,
               "max_regret": fair.max_regret_, "regrets": fair.regrets_.tolist(),
               "gap": fair.gap_, "binding": fair.binding_.tolist(), "solver": fair.solver_,
               "tuning": tuning},
           "fair_tuned": None if tuned is None else {"weights": tuned.tolist()},
           "intervals": regret_intervals(weighted, names, n_boot, random_state)}
    figures = (names, weighted)
    if objective == "kl" and backend.decodes and served is not None:
        out["served"], figures = _served(backend, data, pooled, merged, fair, weights,
                                         type_weights, served, n_boot, tuned)
    else:
        out["served"] = {"same_as": "candidates", "why": _SAME_AS_CANDIDATES[
            "candidates" if not backend.decodes else "paper" if objective == "paper" else
            "off"]}
    out["deploy"] = deploy(out, *figures, n_boot=n_boot, seed=random_state)
    if keep is not None:
        keep.update(estimator_.scores())
    return out, merged


def _tune(est: RegretEstimator, data: Annotations, fit: FairFit, settings: ServedSettings,
          type_weights: Sequence[float] | None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The token-level merge's weights tuned on the served objective (pluralign.aggregate.served
    .tune_merge) among the program's q, uniform and the MMRA weights; when other weights than
    the program's win, they become a column of their own (`fair_tuned`), certified on the
    candidates like every other."""
    k = est.backend.n_types
    candidates = {"program": fit.fair.weights_, "uniform": np.full(k, 1.0 / k),
                  "mmra": fit.weights["mmra"]}
    chosen, info = tune_merge(est.backend, data, candidates, settings, type_weights)
    if chosen in ("", "program"):
        return None, info
    tuned = candidates[chosen]
    at = next(i for i, p in enumerate(fit.policies) if p.name == "fair") + 1
    fit.policies.insert(at, est.provide(TUNED, merge_logps(est.type_logps(), tuned)))
    return tuned, info


@dataclass
class FairFit:
    """The policies aggregation compares and the fair ones it solves for (`_fit_fair`)."""

    policies: list[Policy]
    weights: dict[str, np.ndarray]          # mixtures: mmra, uniform, utilitarian
    lp: MinMaxRegretAggregator
    fair: MinMaxMerge | None
    mixture: MinMaxMixture | None
    merged: PolicyBackend | None
    merge_weights: np.ndarray               # the merge's (kl) or the mixture's (paper)


def _fit_fair(est: RegretEstimator, priors: Sequence[float], pooled: PolicyBackend | None,
              type_weights: Sequence[float] | None, merge: bool) -> FairFit:
    """R of the single policies, then the fair ones on it: the LP (paper), the exact min-max
    mixture and the min-max merge (kl), the baseline mixtures, and the weight-space merge."""
    backend, k = est.backend, est.backend.n_types
    policies = policies_of(backend, {"pooled": pooled} if pooled is not None else {},
                           base=True)
    r = est.estimate(policies).matrix[:, :k]
    lp = MinMaxRegretAggregator(type_weights).fit(r)
    weights = {"mmra": lp.weights_, **{n: np.asarray(b["weights"]) for n, b in baselines(
        r, priors, type_weights).items() if n in ("uniform", "utilitarian")}}
    fair = mixture = None
    if est.objective == "kl":
        log_types, rows = est.type_logps(), est.row_weights()
        fair = MinMaxMerge(backend.beta, type_weights).fit(log_types, rows)
        mixture = MinMaxMixture(backend.beta, type_weights).fit(log_types, rows)
        weights["mmra"] = mixture.weights_
        policies.append(est.provide("fair", merge_logps(log_types, fair.weights_)))
        # a mixture serves sum_j p_j pi_j: under kl its regret is that distribution's
        policies += [est.provide(n, mixture_logps(log_types, w)) for n, w in weights.items()]
    merge_weights = fair.weights_ if fair is not None else weights["mmra"]
    merged = _merge(backend, merge_weights, merge)
    if merged is not None:
        policies.append(Policy("merged", merged, 0))
    return FairFit(policies, weights, lp, fair, mixture, merged, merge_weights)


def _columns(est: RegretEstimate, weights: dict[str, np.ndarray], objective: str,
             merged: bool) -> tuple[list[str], np.ndarray]:
    """Column names and per-prompt regrets [P, K, J] of every policy: under paper a
    mixture's column is R p (regret is linear in it), inserted before the merged adapter."""
    names, units = est.names, est.units
    if objective != "paper":
        return names, units
    k = len(next(iter(weights.values())))
    at = len(names) - merged
    mixed = np.stack([units[:, :, :k] @ w for w in weights.values()], axis=2)
    return ([*names[:at], *weights, *names[at:]],
            np.concatenate([units[:, :, :at], mixed, units[:, :, at:]], axis=2))


_SAME_AS_CANDIDATES = {
    "candidates": "the backend's policies live on each prompt's candidate responses, so the "
                  "candidates estimate is the regret of what is served",
    "paper": "the paper objective scores expected reward on the candidates; served figures "
             "(responses decoded and scored exactly) are measured under the kl objective",
    "off": "served figures were not measured (served settings off)"}


def _merge(backend: PolicyBackend, weights: np.ndarray, merge: bool) -> PolicyBackend | None:
    """The weight-space merge at `weights`, or None (not asked, or the backend cannot)."""
    if not merge:
        return None
    try:
        return backend.merge(weights)
    except NotImplementedError:
        return None


def _baselines(names: Sequence[str], r: np.ndarray, weights: dict[str, np.ndarray],
               k: int) -> dict[str, dict[str, Any]]:
    """Every column but the MMRA mixture: each type's (weighted) regret, the max, and the
    mixture weights where the column is a mixture of the type policies."""
    out = {}
    for j, name in enumerate(names):
        if name == "mmra":
            continue
        row: dict[str, Any] = {"regrets": r[:, j].tolist(), "max_regret": float(r[:, j].max())}
        if name in weights or j < k:
            row["weights"] = (weights[name] if name in weights else np.eye(k)[j]).tolist()
        out[name] = row
    return out


def _served(backend: PolicyBackend, data: Annotations, pooled: PolicyBackend | None,
            merged: PolicyBackend | None, fair: Any, weights: dict[str, np.ndarray],
            type_weights: Sequence[float] | None, settings: ServedSettings,
            n_boot: int, tuned: np.ndarray | None
            ) -> tuple[dict[str, Any], tuple[list[str], np.ndarray]]:
    """Every deployable policy's regret as served (pluralign.aggregate.served), for
    aggregate.json."""
    policies = served_policies(backend, pooled, merged,
                               None if fair is None else fair.weights_, weights, tuned)
    est = served_regret(backend, data, policies, settings)
    units = weigh_types(est.units, type_weights)
    r = units.mean(axis=0)
    return ({**est.info, "policies": est.names, "regret_matrix": est.matrix.tolist(),
             "max_regret": dict(zip(est.names, r.max(axis=0).tolist(), strict=True)),
             "regrets": {n: r[:, j].tolist() for j, n in enumerate(est.names)},
             "intervals": regret_intervals(units, est.names, n_boot,
                                           settings.random_state)}, (est.names, units))


_WHAT = {"merged": "one adapter whose weights are the type adapters' weighted sum",
         "fair": "the min-max merge, decoded token by token from the K adapters' combined "
                 "log-probabilities",
         TUNED: "the min-max merge decoded token by token at weights tuned on the served "
                "objective (chosen on other held-out prompts than these)",
         "mmra": "the MMRA mixture (one type policy drawn per request)"}


def deploy(out: dict[str, Any], names: Sequence[str], units: np.ndarray, n_boot: int = 1000,
           seed: int = 0) -> dict[str, Any]:
    """The policy to serve: the lowest worst-type regret among the deployable ones (the
    weight-space merge, the min-max merge, the MMRA mixture), measured as served where the
    backend decodes (`units` [P, K, J] with column `names`), a single model preferred within
    1e-9; its interval holds jointly over the policies it was chosen from (Bonferroni), so the
    choice on the same prompts does not bias it. With one sentence that says why."""
    served = "max_regret" in out["served"]
    cols = [names.index(n) for n in DEPLOYABLE if n in names]
    worst = {names[j]: float(units[:, :, j].mean(axis=0).max()) for j in cols}
    best = min(worst.values())
    name = next(n for n in DEPLOYABLE if n in worst and worst[n] <= best + 1e-9)
    level = 1 - (1 - bootstrap.LEVEL) / len(cols)
    interval = None
    if n_boot > 0 and len(units) > 1:
        interval = bootstrap.max_intervals(units[:, :, cols], n_boot, seed, level).max[
            [names[j] for j in cols].index(name)].tolist()
    certificate = out["max_regret"] if name == "mmra" else out["baselines"][name]["max_regret"]
    others = ", ".join(f"{n} {v:.4f}" for n, v in sorted(worst.items(), key=lambda kv: kv[1])
                       if n != name)
    shown = "" if interval is None else f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    if served:
        how = (f"as served (responses decoded and scored exactly on {out['served']['prompts']} "
               f"held-out prompts, {out['served']['n_samples']} each)")
        cert = f"; on the candidate responses its certified figure is {certificate:.4f}"
    else:
        how = f"on the candidate responses ({out['served']['why']})"
        cert = ""
    joint = f"; the interval holds jointly over the {len(cols)} deployable policies" if \
        interval is not None and len(cols) > 1 else ""
    why = (f"Deploy {name}: {_WHAT[name]}. Its worst-type regret {how} is {worst[name]:.4f}"
           f"{shown} ({out['objective']} objective{joint}){cert}"
           + (f". Others: {others}." if others else "."))
    return {"policy": name, "max_regret": worst[name], "interval": interval,
            "interval_level": level, "measured": "served" if served else "candidates",
            "certificate": certificate, "others": worst, "why": why}


def policy_weights(out: dict[str, Any]) -> list[float]:
    """The weights that fix an aggregation's policies: the mixture's and the merges'."""
    return [*out["weights"], *(out.get("merged_weights") or []),
            *((out.get("fair") or {}).get("weights") or []),
            *((out.get("fair_tuned") or {}).get("weights") or [])]
