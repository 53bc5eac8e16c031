"""The MMRA linear program (DESIGN §6, the paper's objective): the mixture p of the type
policies minimising the largest weighted regret (R p)_i, solved exactly with cvxpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
