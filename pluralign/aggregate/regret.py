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
Every regret comes with a bootstrap interval over held-out prompts (pluralign.core.bootstrap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pluralign.aggregate.merge import kl_contributions
from pluralign.aggregate.program import weighted_regret
from pluralign.aggregate.served import (
    TUNED,
)
from pluralign.backends.base import PolicyBackend, sample_row
from pluralign.core import bootstrap
from pluralign.core.data import Annotation, Annotations
from pluralign.settings import BASE_MEASURES, DEFAULT_BASE_MEASURE, ESTIMATORS, OBJECTIVES


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
    q = np.nan_to_num(softmax(np.where(mask, log_policies, -np.inf)))     # [n, M, J]
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
        (token ids, pluralign.backends.generation) and scored exactly, r_i = beta (log pi_i -
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
























#: What a user can serve, in the order preferred at equal worst-type regret: one model first.
DEPLOYABLE = ("merged", "fair", TUNED, "mmra")


def softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - top)
    return e / e.sum(axis=1, keepdims=True)
