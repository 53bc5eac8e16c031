"""Min-max regret aggregation (MMRA, DESIGN §6): one fair mixture of the type policies.

Regret of serving type i with policy j: R_ij = V_i(pi_i) - V_i(pi_j), V_i the expected reward
of type i. A mixture p (sample policy j with probability p_j, then decode) has regret (R p)_i
for type i, linear in p, so the fairest mixture solves the LP

    minimise t   subject to   R p <= t 1,   p >= 0,   sum p = 1,

exactly, with cvxpy. Type importance weights scale the rows of R.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pluralign.backends.base import PolicyBackend
from pluralign.data import Annotations

DEFAULT_SOLVERS = ("CLARABEL", "HIGHS", "SCIPY", "SCS")


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


def candidate_regret(rewards: np.ndarray, log_policies: np.ndarray) -> np.ndarray:
    """The `candidates` estimator: R_ij = mean over prompts of sum_y (q_i(y) - q_j(y)) r_i(y),
    with q_j policy j restricted to each prompt's candidates (softmax of log pi_j over them)
    and r_i type i's reward. Exact expectations, no generation.

    rewards[n, M, K] (type rewards beta * s_i), log_policies[n, M, J] (log pi_j of each
    candidate; the first K columns are the types' own policies); NaN marks padding."""
    mask = ~np.isnan(rewards[..., :1])
    q = _softmax(np.where(mask, log_policies, -np.inf))                    # [n, M, J]
    r = np.where(mask, rewards, 0.0)                                         # [n, M, K]
    value = np.einsum("nmk,nmj->kj", r, np.nan_to_num(q)) / rewards.shape[0]  # V_i(pi_j)
    k = rewards.shape[2]
    return np.diag(value)[:k, None] - value


def estimate_regret(backend: PolicyBackend, data: Annotations,
                    extra: dict[str, PolicyBackend] | None = None) -> tuple[np.ndarray, list[str]]:
    """The candidates estimate of R on the prompts of `data`: one row per type, one column per
    type policy, then one per extra single policy (e.g. the pooled K=1 fit)."""
    s = backend.logratios(data)
    columns = [backend.reference_logps(data)[..., None] + s]
    names = [f"type_{k}" for k in range(s.shape[2])]
    for name, other in (extra or {}).items():
        columns.append(other.reference_logps(data)[..., None] + other.logratios(data))
        names += [name] if other.n_types == 1 else [f"{name}_{j}" for j in range(other.n_types)]
    return candidate_regret(backend.beta * s, np.concatenate(columns, axis=2)), names


def _softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - top)
    return e / e.sum(axis=1, keepdims=True)
