"""Min-max regret aggregation (MMRA, DESIGN §6): one fair mixture of the type policies.

Regret of serving type i with policy j: R_ij = V_i(pi_i) - V_i(pi_j), V_i the expected reward
of type i. A mixture p (sample policy j with probability p_j, then decode) has regret (R p)_i
for type i, linear in p, so the fairest mixture solves the LP

    minimise t   subject to   R p <= t 1,   p >= 0,   sum p = 1,

exactly, with cvxpy. Type importance weights scale the rows of R.

The `candidates` estimator restricts each policy to a prompt's candidates. Its base measure is
uniform by default: pi_j restricted is proportional to exp(s_j), s_j = log pi_j - log pi_ref, so
R measures what each policy changes, as the linear backend's policies do. With
base_measure="reference" the restriction is the LM's own softmax of log pi_j, in which sequence
length dominates (a 100-token response is e^-100s less likely than a 10-token one), so nearly all
mass lands on the shortest candidate whatever the policy, and R collapses towards zero.
Every regret comes with a bootstrap interval over held-out prompts (pluralign.bootstrap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pluralign import bootstrap
from pluralign.backends.base import PolicyBackend, sample_row
from pluralign.data import Annotation, Annotations
from pluralign.io import sha256_file, write_json, write_with
from pluralign.minmax_merge import MinMaxMerge, kl_contributions, merge_logps
from pluralign.minmax_mixture import MinMaxMixture, mixture_logps
from pluralign.runfolder import run_folder
from pluralign.served import TUNED, ServedSettings, served_policies, served_regret, tune_merge
from pluralign.settings import BASE_MEASURES, DEFAULT_BASE_MEASURE, ESTIMATORS, OBJECTIVES

DEFAULT_SOLVERS = ("CLARABEL", "HIGHS", "SCIPY", "SCS")
#: Served regrets are measured by default where the backend decodes (pluralign.served).
DEFAULT_SERVED = ServedSettings()
SCORES = "scores.npz"  # the candidates' log-probs under each policy, reused by evaluation


class MinMaxRegretAggregator:
    """scikit-learn style: `fit(R)` learns `weights_` (the mixture), `max_regret_`,
    `regrets_` (each type's regret under the mixture) and `binding_` (types at the maximum)."""

    def __init__(self, type_weights: Sequence[float] | None = None,
                 solvers: Sequence[str] = DEFAULT_SOLVERS, tol: float = 1e-7):
        self.type_weights = type_weights
        self.solvers = solvers
        self.tol = tol

    def fit(self, regret: np.ndarray) -> MinMaxRegretAggregator:
        """Solve the MMRA LP for a regret matrix [types, policies]."""
        import cvxpy as cp
        r = weighted_regret(regret, self.type_weights)
        p = cp.Variable(r.shape[1], nonneg=True)
        t = cp.Variable()
        problem = cp.Problem(cp.Minimize(t), [r @ p <= t, cp.sum(p) == 1])
        errors = []
        for solver in self.solvers:
            if solver not in cp.installed_solvers():
                continue
            try:
                problem.solve(solver=solver)
            except cp.SolverError as e:
                errors.append(f"{solver}: {e}")
                continue
            if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and p.value is not None:
                self.solver_ = solver
                break
            errors.append(f"{solver}: status {problem.status}")
        else:
            raise RuntimeError("no solver solved the MMRA LP: " + "; ".join(errors))
        weights = np.clip(p.value, 0.0, None)
        self.weights_ = weights / weights.sum()
        self.regrets_ = r @ self.weights_
        self.max_regret_ = float(self.regrets_.max())
        self.binding_ = self.regrets_ >= self.max_regret_ - max(self.tol, 1e-6 * abs(
            self.max_regret_))
        return self


def weighted_regret(regret: np.ndarray, type_weights: Sequence[float] | None) -> np.ndarray:
    """R as a float matrix, its rows scaled by the types' importance weights (if any)."""
    r = np.asarray(regret, dtype=np.float64)
    if r.ndim != 2 or r.size == 0 or not np.isfinite(r).all():
        raise ValueError(f"the regret matrix must be a finite 2-D array, got shape {r.shape}")
    if type_weights is None:
        return r
    w = np.asarray(type_weights, dtype=np.float64)
    if w.shape != (r.shape[0],) or (w < 0).any():
        raise ValueError(f"type_weights needs {r.shape[0]} non-negative values")
    return r * w[:, None]


def baselines(regret: np.ndarray, priors: Sequence[float],
              type_weights: Sequence[float] | None = None) -> dict[str, dict[str, Any]]:
    """The mixtures every report compares with, on the same (weighted) matrix: uniform,
    utilitarian (maximises the prior-weighted mean value, i.e. minimises the prior-weighted
    mean regret) and each pure type policy. Values: weights, each type's regret, the max."""
    r = weighted_regret(regret, type_weights)
    k = r.shape[1]
    eta = np.asarray(priors, dtype=np.float64)
    mixes = {"uniform": np.full(k, 1.0 / k),
             # a linear objective over the simplex is minimised at a vertex
             "utilitarian": np.eye(k)[int(np.argmin(eta @ r))]}
    mixes.update({f"type_{j}": np.eye(k)[j] for j in range(k)})
    return {name: {"weights": w.tolist(), "regrets": (r @ w).tolist(),
                   "max_regret": float((r @ w).max())} for name, w in mixes.items()}


def candidate_contributions(rewards: np.ndarray, log_policies: np.ndarray) -> np.ndarray:
    """Each row's share of the `candidates` regret: c[n, i, j] = sum_y (q_i(y) - q_j(y)) r_i(y),
    with q_j policy j restricted to row n's candidates (softmax of log_policies over them) and
    r_i type i's reward. The bootstrap resamples these by prompt.

    rewards[n, M, K] (type rewards beta * s_i), log_policies[n, M, J] (the first K columns are
    the types' own policies); NaN marks padding."""
    mask = ~np.isnan(rewards[..., :1])
    q = np.nan_to_num(_softmax(np.where(mask, log_policies, -np.inf)))     # [n, M, J]
    r = np.where(mask, rewards, 0.0)                                         # [n, M, K]
    value = np.einsum("nmk,nmj->nkj", r, q)                                  # V_i(pi_j) per row
    k = rewards.shape[2]
    return np.einsum("nkk->nk", value[:, :, :k])[:, :, None] - value


def regret_contributions(s: np.ndarray, log_policies: np.ndarray, beta: float,
                         objective: str = "kl") -> np.ndarray:
    """c[n, i, j] under `objective`: `kl`, beta KL(pi_j || pi_i) on the candidates (the
    KL-regularised value the policies maximise, minmax_merge); `paper`, the expected-reward
    difference (candidate_contributions). s[n, M, K]: the types' log-ratios."""
    check_objective(objective)
    if objective == "kl":
        return kl_contributions(log_policies, s.shape[2], beta)
    return candidate_contributions(beta * s, log_policies)


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def resolve_objective(objective: str, estimator: str) -> str:
    """`auto`: kl with the candidates estimator; paper with sampled (which scores samples under
    the type rewards only)."""
    if objective == "auto":
        return "kl" if estimator == "candidates" else "paper"
    check_objective(objective)
    if objective == "kl" and estimator == "sampled":
        raise ValueError("objective kl needs the candidates estimator (the sampled estimator "
                         "measures expected reward only); use objective paper or auto")
    return objective


def candidate_regret(rewards: np.ndarray, log_policies: np.ndarray) -> np.ndarray:
    """The `candidates` estimator: R_ij = mean over rows of candidate_contributions. Exact
    expectations over each prompt's candidates, no generation."""
    return candidate_contributions(rewards, log_policies).mean(axis=0)


@dataclass
class Policy:
    """One column of R: policy `index` of `owner` (None: the owner's reference, the base model)."""

    name: str
    owner: PolicyBackend
    index: int | None


def policies_of(backend: PolicyBackend, extra: dict[str, PolicyBackend] | None = None,
                base: bool = False) -> list[Policy]:
    """The type policies type_0..type_{K-1}, then each extra backend's policies (a K=1 backend
    gives one column named as its key), then the base model if asked."""
    out = [Policy(f"type_{k}", backend, k) for k in range(backend.n_types)]
    for name, other in (extra or {}).items():
        out += [Policy(name if other.n_types == 1 else f"{name}_{j}", other, j)
                for j in range(other.n_types)]
    return out + ([Policy("base", backend, None)] if base else [])


@dataclass
class RegretEstimate:
    """R [types, policies] with its column names. `units` [P, K, J]: each prompt's share
    (type i's regret of policy j on prompt p), whose mean over the P prompts is R; the
    bootstrap resamples them. `stderr` (sampled) is the Monte Carlo standard error of each
    entry over prompts."""

    matrix: np.ndarray
    names: list[str]
    estimator: str
    units: np.ndarray
    stderr: np.ndarray | None = None


@dataclass
class PromptUnits:
    """What regret estimates average over: each distinct prompt once (E_x in DESIGN §6). The
    rows of one prompt are averaged first, each distinct candidate set of it equally and each
    set's rows equally, so a prompt annotated often, or one people disagree on (which gives
    several distinct rankings), weighs as much as any other."""

    codes: np.ndarray    # [n] prompt of each row, 0..P-1
    weights: np.ndarray  # [n] row weights, summing to 1 (1/P per prompt)

    @property
    def count(self) -> int:
        return int(self.codes.max()) + 1 if len(self.codes) else 0

    def means(self, values: np.ndarray) -> np.ndarray:
        """Per-prompt weighted means of per-row `values` [n, ...]: [P, ...]."""
        w = self.weights.reshape(-1, *([1] * (values.ndim - 1))) * self.count
        return bootstrap.cluster_sums(values * w, self.codes, self.count)


def prompt_units(data: Annotations) -> PromptUnits:
    """The prompt of every row of `data`, and the row weights that give each prompt (and each
    distinct candidate set within it) equal weight."""
    codes = prompt_clusters(data)
    sets: dict[tuple[int, str], int] = {}
    item = np.array([sets.setdefault((int(c), json.dumps(a.responses)), len(sets))
                     for c, a in zip(codes, data, strict=True)], dtype=int)
    rows_per_item = np.bincount(item, minlength=len(sets)).astype(np.float64)
    item_prompt = np.zeros(len(sets), dtype=int)
    item_prompt[item] = codes
    items_per_prompt = np.bincount(item_prompt).astype(np.float64)
    n_prompts = len(items_per_prompt)
    weights = 1.0 / (n_prompts * items_per_prompt[codes] * rows_per_item[item])
    return PromptUnits(codes, weights)


def check_base_measure(base_measure: str) -> None:
    if base_measure not in BASE_MEASURES:
        raise ValueError(f"base_measure must be one of {BASE_MEASURES}, got {base_measure!r}")


def policy_logps(policies: list[Policy], data: Annotations,
                 known: dict[int, np.ndarray] | None = None,
                 base_measure: str = DEFAULT_BASE_MEASURE) -> np.ndarray:
    """log pi_j(y|x) of every candidate for each policy, up to a per-row constant: [n, M, J]
    (NaN padding). Under the uniform base measure log pi_ref counts as 0, so the column is s_j.
    `known` maps id(backend) to its logratios on `data` where already computed."""
    check_base_measure(base_measure)
    ratios = dict(known or {})
    columns = []
    for p in policies:
        col = p.owner.reference_logps(data)
        if base_measure == "uniform":
            col = np.where(np.isnan(col), np.nan, 0.0)
        if p.index is not None:
            if id(p.owner) not in ratios:
                ratios[id(p.owner)] = p.owner.logratios(data)
            col = col + ratios[id(p.owner)][..., p.index]
        columns.append(col)
    return np.stack(columns, axis=2)


class RegretEstimator:
    """Columns of R for the K types of `backend` (rewards beta * s_i) on the prompts of `data`.

    `candidates`: each policy restricted to each row's candidates, exact expectations, no
    generation. `sampled`: n_samples responses per distinct prompt from each policy, all of a
    prompt's samples scored together (a per-row constant in s_i then cancels in differences).
    Work is reused across calls: a column added later (a merged policy) needs only its own
    scoring (candidates) or generation (sampled)."""

    def __init__(self, backend: PolicyBackend, data: Annotations, estimator: str = "candidates",
                 n_samples: int = 8, random_state: int = 0,
                 base_measure: str = DEFAULT_BASE_MEASURE, objective: str = "paper"):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        check_base_measure(base_measure)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.backend, self.data, self.estimator = backend, data, estimator
        self.base_measure = base_measure
        self.objective = resolve_objective(objective, estimator)
        self.n_samples, self.random_state = n_samples, random_state
        self._s: np.ndarray | None = None
        self._logps: dict[str, np.ndarray] = {}
        self._drawn: dict[str, list[Annotation]] = {}
        self._values: dict[str, np.ndarray] = {}     # decoded: [prompts, K] per policy
        self._items = _distinct_items(data) if estimator == "sampled" else None
        self.units = prompt_units(self._items if self._items is not None else data)

    def estimate(self, policies: list[Policy]) -> RegretEstimate:
        """R [K, len(policies)]; the first K policies must be the type policies (policies_of)."""
        k = self.backend.n_types
        if [p.name for p in policies[:k]] != [f"type_{i}" for i in range(k)]:
            raise ValueError("the first policies must be the K type policies (see policies_of)")
        if self.estimator == "sampled":
            return self._sampled(policies)
        if self._s is None:
            self._s = self.backend.logratios(self.data)
        todo = [p for p in policies if p.name not in self._logps]
        if todo:
            logps = policy_logps(todo, self.data, {id(self.backend): self._s},
                                 self.base_measure)
            self._logps.update({p.name: logps[..., j] for j, p in enumerate(todo)})
        columns = np.stack([self._logps[p.name] for p in policies], axis=2)
        contrib = regret_contributions(self._s, columns, self.backend.beta, self.objective)
        units = self.units.means(contrib)
        return RegretEstimate(units.mean(axis=0), [p.name for p in policies], "candidates",
                              units)

    def row_weights(self) -> np.ndarray:
        """The weight of each row of the data in R (each prompt once; see PromptUnits)."""
        return self.units.weights

    def type_logps(self) -> np.ndarray:
        """log pi_i of every candidate for the K type policies, [n, M, K] (candidates)."""
        self.estimate(policies_of(self.backend))
        return np.stack([self._logps[f"type_{i}"] for i in range(self.backend.n_types)], 2)

    def provide(self, name: str, logps: np.ndarray) -> Policy:
        """A column given by its log-probs on the candidates (a decode-time combination)."""
        self._logps[name] = logps
        return Policy(name, self.backend, None)

    def scores(self) -> dict[str, np.ndarray]:
        """What the candidates estimator computed: log pi_j of every candidate by policy name,
        and the types' log-ratios under "_s" (empty for the sampled estimator)."""
        return {} if self._s is None else {"_s": self._s, **self._logps}

    def _sampled(self, policies: list[Policy]) -> RegretEstimate:
        k = self.backend.n_types
        v = self._decoded(policies) if self.backend.decodes else self._drawn_values(policies)
        per_item = np.einsum("nii->ni", v[:, :k, :])[:, :, None] - v.transpose(0, 2, 1)
        units = self.units.means(per_item)                                # [prompts, K, J]
        stderr = units.std(axis=0, ddof=1) / np.sqrt(len(units)) if len(units) > 1 else None
        return RegretEstimate(units.mean(axis=0), [p.name for p in policies], "sampled", units,
                              stderr)

    def _drawn_values(self, policies: list[Policy]) -> np.ndarray:
        """[items, J, K]: type i's mean reward over n samples of policy j, for policies that
        live on the candidates (drawn among them, scored as a joint row)."""
        items, n, k = self._items, self.n_samples, self.backend.n_types
        for p in policies:
            if p.name not in self._drawn:
                seed = self.random_state + 7919 * len(self._drawn)
                self._drawn[p.name] = p.owner.sample(items, p.index, n, seed)
        drawn = [self._drawn[p.name] for p in policies]
        joint = Annotations([sample_row(
            a, [r for d in drawn for r in d[i].responses],
            None if a.features is None else [f for d in drawn for f in d[i].features])
            for i, a in enumerate(items)])
        r = self.backend.beta * self.backend.logratios(joint)            # [items, J*n, K]
        return r.reshape(len(items), len(policies), n, k).mean(axis=2)

    def _decoded(self, policies: list[Policy]) -> np.ndarray:
        """[items, J, K] for policies that generate: n responses per prompt decoded from each
        (token ids, pluralign.backends.sequences) and scored exactly, r_i = beta (log pi_i -
        log pi_ref), with no round trip through text."""
        b, n, k = self.backend, self.n_samples, self.backend.n_types
        keys = [json.dumps(a.prompt, sort_keys=True) for a in self._items]
        prompts = {key: a.prompt for key, a in zip(keys, self._items, strict=True)}
        ids = [b.prompt_tokens(p) for p in prompts.values()]
        for p in policies:
            if p.name not in self._values:
                seed = self.random_state + 7919 * len(self._values)
                if p.owner is b:  # scored in the decoding passes: types and reference
                    logps = b.draw(ids, p.index, n, seed, score=(*range(k), None)).logps
                else:
                    rows = p.owner.draw(ids, p.index, n, seed).ids
                    flat = [(q, y) for q, samples in enumerate(rows) for y in samples]
                    logps = b.continuation_logps(ids, flat, [*range(k), None]).reshape(
                        len(ids), n, k + 1)
                r = b.beta * (logps[..., :k] - logps[..., k:])            # [prompts, n, K]
                self._values[p.name] = r.mean(axis=1)
        where = {key: i for i, key in enumerate(prompts)}
        rows = [where[key] for key in keys]
        return np.stack([self._values[p.name][rows] for p in policies], axis=1)


def prompt_clusters(data: Annotations) -> np.ndarray:
    """A code per row naming its prompt (rows of one prompt are resampled together)."""
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(_prompt_key(a), len(codes)) for a in data], dtype=int)


def _prompt_key(a: Annotation) -> str:
    return json.dumps(a.prompt, sort_keys=True)


def _distinct_items(data: Annotations) -> Annotations:
    """One row per distinct (prompt, candidates), whoever judged it and however: what the
    sampled estimator draws for; prompt_units then weighs each prompt once."""
    seen: dict[str, Annotation] = {}
    for a in data:
        seen.setdefault(json.dumps([a.prompt, a.responses], sort_keys=True), a)
    return Annotations(list(seen.values()))


#: How the regret intervals are made (the report's definitions box says the same).
INTERVAL_METHOD = (
    "studentised bootstrap over prompts (bootstrap-t). Each entry: its own interval. A max "
    "regret: low end from lower bounds holding together over the types, high end from each "
    "type's own upper bound, so it covers the true max at its level however many types bind. "
    "Comparisons with the fairest policy: a band holding for every pair of policies at once, "
    "so choosing the fairest on the same prompts cannot make a tie look like a difference.")


def regret_intervals(units: np.ndarray, names: Sequence[str], n_boot: int, seed: int,
                     level: float = bootstrap.LEVEL) -> dict[str, Any] | None:
    """Intervals over prompts for units [P, K, J] (each prompt's regrets): every entry of R,
    each policy's max regret, and which policies are worse than the fairest one (None with
    fewer than 2 prompts or no replicates)."""
    if n_boot < 1 or len(units) < 2:
        return None
    maxima = bootstrap.max_intervals(units, n_boot, seed, level)
    versus = bootstrap.compare_with_best(units, n_boot, seed + 1, level)
    return {"level": level, "n_boot": n_boot, "seed": seed, "unit": "prompt",
            "units": int(len(units)), "method": INTERVAL_METHOD,
            "regret_matrix": maxima.matrix.tolist(),
            "max_regret": bootstrap.pairs(names, maxima.max),
            "fairest": names[versus.best],
            "vs_fairest": {n: {"difference": versus.difference[j].tolist(),
                               "distinguishable": bool(versus.worse[j])}
                           for j, n in enumerate(names) if j != versus.best}}


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
    deployable policy as decoded (pluralign.served; None: not measured), and the deploy
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
    """The token-level merge's weights tuned on the served objective (pluralign.served
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
    """Every deployable policy's regret as served (pluralign.served), for aggregate.json."""
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


#: The min-max merge as a loadable policy: its weights over the run's type policies.
FAIR_POLICY = Path("fair") / "policy.json"


#: What a user can serve, in the order preferred at equal worst-type regret: one model first.
DEPLOYABLE = ("merged", "fair", TUNED, "mmra")
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
    from pluralign.em_run import load_run, made_from
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
    write_json(run.path / "aggregate.json", out)
    return out


def policy_weights(out: dict[str, Any]) -> list[float]:
    """The weights that fix an aggregation's policies: the mixture's and the merges'."""
    return [*out["weights"], *(out.get("merged_weights") or []),
            *((out.get("fair") or {}).get("weights") or []),
            *((out.get("fair_tuned") or {}).get("weights") or [])]


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


def _softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - top)
    return e / e.sum(axis=1, keepdims=True)


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
