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
from pluralign.io import folder_lock, sha256_file, write_json, write_with
from pluralign.minmax_merge import OBJECTIVES, MinMaxMerge, kl_contributions, merge_logps

DEFAULT_SOLVERS = ("CLARABEL", "HIGHS", "SCIPY", "SCS")
ESTIMATORS = ("candidates", "sampled")
BASE_MEASURES = ("uniform", "reference")
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
    """R [types, policies] with its column names; `stderr` (sampled) is the Monte Carlo
    standard error of each entry over prompts. `contributions` [rows, K, J] average to R, and
    `clusters` [rows] names each row's prompt: the bootstrap resamples prompts."""

    matrix: np.ndarray
    names: list[str]
    estimator: str
    stderr: np.ndarray | None = None
    contributions: np.ndarray | None = None
    clusters: np.ndarray | None = None


def check_base_measure(base_measure: str) -> None:
    if base_measure not in BASE_MEASURES:
        raise ValueError(f"base_measure must be one of {BASE_MEASURES}, got {base_measure!r}")


def policy_logps(policies: list[Policy], data: Annotations,
                 known: dict[int, np.ndarray] | None = None,
                 base_measure: str = "uniform") -> np.ndarray:
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
                 n_samples: int = 8, random_state: int = 0, base_measure: str = "uniform",
                 objective: str = "paper"):
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
        self._items = _distinct_items(data) if estimator == "sampled" else None

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
        return RegretEstimate(contrib.mean(axis=0), [p.name for p in policies], "candidates",
                              contributions=contrib, clusters=prompt_clusters(self.data))

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
        v = r.reshape(len(items), len(policies), n, k).mean(axis=2)        # [items, J, K]
        per_item = np.einsum("nii->ni", v[:, :k, :])[:, :, None] - v.transpose(0, 2, 1)
        stderr = per_item.std(axis=0, ddof=1) / np.sqrt(len(items)) if len(items) > 1 else None
        return RegretEstimate(per_item.mean(axis=0), [p.name for p in policies], "sampled",
                              stderr, per_item, np.arange(len(items)))


def prompt_clusters(data: Annotations) -> np.ndarray:
    """A code per row naming its prompt (rows of one prompt are resampled together)."""
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(_prompt_key(a), len(codes)) for a in data], dtype=int)


def _prompt_key(a: Annotation) -> str:
    return json.dumps(a.prompt, sort_keys=True)


def _distinct_items(data: Annotations) -> Annotations:
    """One row per distinct (prompt, candidates): the unit the estimators average over."""
    seen: dict[str, Annotation] = {}
    for a in data:
        seen.setdefault(a.content_key(with_annotator=False), a)
    return Annotations(list(seen.values()))


def regret_intervals(est: RegretEstimate, mixtures: dict[str, np.ndarray],
                     type_weights: Sequence[float] | None, n_boot: int, seed: int,
                     level: float = bootstrap.LEVEL) -> dict[str, Any]:
    """Bootstrap intervals over prompts: every entry of R, each policy's and each mixture's
    max regret, and whether each differs from the MMRA mixture's (paired replicates)."""
    reps = bootstrap.mean_replicates(est.contributions, est.clusters, n_boot, seed)  # [B, K, J]
    if type_weights is not None:
        reps = reps * np.asarray(type_weights, dtype=np.float64)[None, :, None]
    k = reps.shape[1]
    worst = {name: reps[:, :, j].max(axis=1) for j, name in enumerate(est.names) if j >= k}
    worst.update({name: (reps[:, :, :k] @ w).max(axis=1) for name, w in mixtures.items()})
    ref = worst.get("mmra")
    return {
        "level": level, "n_boot": n_boot, "seed": seed, "unit": "prompt",
        "units": int(len(np.unique(est.clusters))),
        "regret_matrix": bootstrap.interval(reps, level).tolist(),
        "max_regret": {n: bootstrap.interval(v, level).tolist() for n, v in worst.items()},
        "vs_mmra": {} if ref is None else {
            n: {"difference": bootstrap.interval(v - ref, level).tolist(),
                "distinguishable": bootstrap.distinguishable(v, ref, level)}
            for n, v in worst.items() if n != "mmra"}}


def aggregate(backend: PolicyBackend, data: Annotations, priors: Sequence[float],
              pooled: PolicyBackend | None = None, estimator: str = "candidates",
              type_weights: Sequence[float] | None = None, n_samples: int = 8,
              random_state: int = 0, merge: bool = True,
              keep: dict[str, np.ndarray] | None = None, base_measure: str = "uniform",
              n_boot: int = 200,
              objective: str = "auto") -> tuple[dict[str, Any], PolicyBackend | None]:
    """The whole of DESIGN §6 on one dataset: R for the type policies, the pooled policy and the
    base model; the MMRA mixture; the baselines; and a merged adapter with its measured regret,
    each with a bootstrap interval over prompts (n_boot replicates; 0: none).
    Returns (the aggregate.json content, the merged policy or None); `keep`, when given, is
    filled with the scores computed (RegretEstimator.scores) for evaluation to reuse."""
    extra = {"pooled": pooled} if pooled is not None else {}
    policies = policies_of(backend, extra, base=True)
    estimator_ = RegretEstimator(backend, data, estimator, n_samples, random_state, base_measure,
                                 objective)
    objective = estimator_.objective
    est = estimator_.estimate(policies)
    k = backend.n_types
    mmra = MinMaxRegretAggregator(type_weights).fit(est.matrix[:, :k])
    mixes = baselines(est.matrix[:, :k], priors, type_weights)
    fair = None
    if objective == "kl":
        log_types = estimator_.type_logps()
        fair = MinMaxMerge(backend.beta, type_weights).fit(log_types)
        policies = [*policies, estimator_.provide("fair", merge_logps(log_types,
                                                                      fair.weights_))]
        # A mixture serves, at each prompt, the distribution sum_j p_j pi_j; under the KL
        # objective its regret is that distribution's (convex: at most the LP's R p), so each
        # mixture is measured as a column of its own
        for name, w in _mixture_weights(mmra, mixes).items():
            policies.append(estimator_.provide(name, mixture_logps(log_types, w)))
        est = estimator_.estimate(policies)
    merge_weights = mmra.weights_ if fair is None else fair.weights_
    merged = None
    if merge:
        try:
            merged = backend.merge(merge_weights)
        except NotImplementedError:
            merged = None
        if merged is not None:
            est = estimator_.estimate([*policies, Policy("merged", merged, 0)])
    r = weighted_regret(est.matrix, type_weights)
    singles = {name: {"regrets": r[:, j].tolist(), "max_regret": float(r[:, j].max())}
               for j, name in enumerate(est.names) if j >= k}
    weights = _mixture_weights(mmra, mixes)
    mmra_regrets, binding = mmra.regrets_, mmra.binding_
    if fair is not None:  # mixtures measured as distributions: their columns replace R p
        for name, w in weights.items():
            singles[name]["weights"] = w.tolist()
            mixes[name] = singles.pop(name)
        mmra_regrets = np.asarray(mixes.pop("mmra")["regrets"])
        binding = mmra_regrets >= mmra_regrets.max() - mmra.tol
        weights = {}
    out = {"estimator": estimator, "n_samples": n_samples if estimator == "sampled" else None,
           "base_measure": base_measure if estimator == "candidates" else None,
           "random_state": random_state, "annotations": len(data),
           "annotators": len(data.annotator_ids), "prompts": int(len(np.unique(est.clusters))),
           "data_fingerprint": data.fingerprint(), "types": [f"type_{i}" for i in range(k)],
           "policies": est.names, "regret_matrix": est.matrix.tolist(),
           "regret_stderr": None if est.stderr is None else est.stderr.tolist(),
           "type_weights": None if type_weights is None else list(map(float, type_weights)),
           "weights": mmra.weights_.tolist(), "max_regret": float(mmra_regrets.max()),
           "regrets": mmra_regrets.tolist(),
           "binding": binding.tolist(),
           "lp_max_regret": mmra.max_regret_,
           "solver": mmra.solver_, "baselines": {**mixes, **singles},
           "objective": objective, "merged_weights": None if merged is None else
           merge_weights.tolist(), "fair": None if fair is None else {
               "weights": fair.weights_.tolist(), "value": fair.value_,
               "max_regret": fair.max_regret_, "regrets": fair.regrets_.tolist(),
               "gap": fair.gap_, "binding": fair.binding_.tolist(), "solver": fair.solver_},
           "intervals": None if n_boot < 1 else regret_intervals(
               est, weights, type_weights, n_boot, random_state)}
    out["deploy"] = deploy(out)
    if keep is not None:
        keep.update(estimator_.scores())
    return out, merged


def _mixture_weights(mmra: MinMaxRegretAggregator,
                     mixes: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The mixtures every report compares: MMRA, and the uniform and utilitarian baselines."""
    return {"mmra": mmra.weights_, **{n: np.asarray(mixes[n]["weights"])
                                      for n in ("uniform", "utilitarian")}}


#: The min-max merge as a loadable policy: its weights over the run's type policies.
FAIR_POLICY = Path("fair") / "policy.json"


#: What a user can serve, in the order preferred at equal worst-type regret: one model first.
DEPLOYABLE = ("merged", "fair", "mmra")


def deploy(out: dict[str, Any]) -> dict[str, Any]:
    """The policy to serve: the lowest measured worst-type regret among the deployable ones
    (the weight-space merge, the min-max merge decoded from the K adapters, the MMRA mixture),
    a single model preferred within 1e-9; with one sentence that says why."""
    worst = {"mmra": out["max_regret"],
             **{n: out["baselines"][n]["max_regret"] for n in ("merged", "fair")
                if n in out["baselines"]}}
    best = min(worst.values())
    name = next(n for n in DEPLOYABLE if n in worst and worst[n] <= best + 1e-9)
    what = {"merged": "one policy (the type policies merged in weight space)",
            "fair": "the min-max merge (each token from the K adapters' combined log-ratios)",
            "mmra": "the MMRA mixture (one type policy drawn per request)"}[name]
    others = ", ".join(f"{n} {v:.4f}" for n, v in sorted(worst.items(), key=lambda kv: kv[1])
                       if n != name)
    return {"policy": name, "max_regret": worst[name], "why": (
        f"Deploy {name}: {what}, whose worst-type regret {worst[name]:.4f} "
        f"({out['objective']} objective) is the lowest measured" + (
            f" (others: {others})." if others else "."))}


def run_aggregate(run_dir: Path, data_dir: str | Path | None = None,
                  estimator: str = "candidates", type_weights: Sequence[float] | None = None,
                  n_samples: int = 8, random_state: int = 0, merge: bool = True,
                  base_measure: str = "uniform", n_boot: int = 200,
                  objective: str = "auto") -> dict[str, Any]:
    """`pluralign aggregate`: aggregate a run folder's policies on `data_dir` (default: the
    run's own data); writes aggregate.json and merged/ into the run folder."""
    with folder_lock(run_dir, "aggregate", create=False):
        return _aggregate_run(run_dir, data_dir, estimator, type_weights, n_samples,
                              random_state, merge, base_measure, n_boot, objective)


def _aggregate_run(run_dir: Path, data_dir: str | Path | None, estimator: str,
                   type_weights: Sequence[float] | None, n_samples: int, random_state: int,
                   merge: bool, base_measure: str, n_boot: int,
                   objective: str) -> dict[str, Any]:
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
                            objective=objective)
    out["data"] = str(Path(data_dir).resolve()) if data_dir else run.info.get("data")
    out["made_from"] = made_from(run.path, "em.json")
    if merged is not None:
        merged.save(run.path / "merged")
        out["merged_path"] = "merged"
    fair_file = run.path / FAIR_POLICY
    if out["fair"] is not None:
        write_json(fair_file, {
            "policy": "min-max merge: pi proportional to prod_k pi_k^q_k, decoded token by "
                      "token from the type policies", "weights": out["fair"]["weights"],
            "type_policies": run.info["policies"], "backend": run.info["backend"],
            "beta": run.backend.beta, "objective": out["objective"],
            "value": out["fair"]["value"], "max_regret": out["fair"]["max_regret"]})
        out["fair_path"] = str(fair_file.relative_to(run.path))
    else:
        fair_file.unlink(missing_ok=True)
    save_scores(run.path, scores, scores_key(run.path, data, policy_weights(out), base_measure))
    write_json(run.path / "aggregate.json", out)
    return out


def policy_weights(out: dict[str, Any]) -> list[float]:
    """The weights that fix an aggregation's policies: the mixture's and the merges'."""
    return [*out["weights"], *(out.get("merged_weights") or []),
            *((out.get("fair") or {}).get("weights") or [])]


def scores_key(run_dir: Path, data: Annotations, weights: Sequence[float],
               base_measure: str | None = "uniform") -> str:
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


def mixture_logps(log_policies: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log of the mixture sum_j p_j q_j of the candidate-restricted policies: [n, M]."""
    mask = ~np.isnan(log_policies[..., 0])
    q = _softmax(np.where(mask[..., None], log_policies, -np.inf))
    with np.errstate(divide="ignore"):
        out = np.log(np.nan_to_num(q) @ np.asarray(weights, dtype=np.float64))
    return np.where(mask, out, np.nan)


def _softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - top)
    return e / e.sum(axis=1, keepdims=True)


def format_aggregate(out: dict[str, Any]) -> str:
    """aggregate.json for a person: the mixture, its worst-type regret, and every baseline's,
    with bootstrap intervals and whether each differs from the mixture."""
    iv = out.get("intervals") or {}

    def ci(name: str) -> str:
        return bootstrap.show(iv.get("max_regret", {}).get(name), 4)

    base = f", base measure {out['base_measure']}" if out.get("base_measure") else ""
    base += f", {out.get('objective', 'paper')} objective"
    lines = [f"regret estimator: {out['estimator']}{base} on {out['annotations']} annotations "
             f"of {out.get('annotators', '?')} annotators, {out.get('prompts', '?')} prompts"
             + (f"; {100 * iv['level']:.0f}% bootstrap intervals over prompts "
                f"({iv['n_boot']} replicates)" if iv else ""),
             "MMRA weights: " + ", ".join(f"{t} {w:.3f}" for t, w in
                                           zip(out["types"], out["weights"], strict=True)),
             f"MMRA max regret: {out['max_regret']:.4f}{ci('mmra')} (binding: " + ", ".join(
                 t for t, b in zip(out["types"], out["binding"], strict=True) if b) + ")",
             *([] if not out.get("fair") else [
                 "min-max merge weights: " + ", ".join(
                     f"{t} {w:.3f}" for t, w in zip(out["types"], out["fair"]["weights"],
                                                    strict=True)),
                 f"min-max merge: program value {out['fair']['value']:.6f}, measured max "
                 f"regret {out['fair']['max_regret']:.6f}{ci('fair')}"]),
             "max regret of the alternatives:"]
    for name, b in sorted(out["baselines"].items(), key=lambda kv: kv[1]["max_regret"]):
        same = iv.get("vs_mmra", {}).get(name)
        note = "" if same is None or same["distinguishable"] else \
            "  (not distinguishable from MMRA)"
        lines.append(f"  {name:<12} {b['max_regret']:.4f}{ci(name)}{note}")
    if out.get("deploy"):
        lines.append(out["deploy"]["why"])
    return "\n".join(lines)
