"""The fairest single policy under the KL-regularised objective (DESIGN §6): the min-max merge.

With V_i(pi) = E_x[E_{y~pi} r_i(x, y) - beta KL(pi(.|x) || pi_ref(.|x))] and r_i = beta s_i,
s_i = log pi_i / pi_ref, type i's own policy pi_i maximises V_i, and the regret of serving pi is

    R_i(pi) = V_i* - V_i(pi) = beta E_x KL(pi(.|x) || pi_i(.|x))  >= 0, convex in pi.

By the minimax theorem the policy that minimises max_i R_i over ALL policies is the log-linear
merge pi_q(y|x) proportional to prod_i pi_i(y|x)^q_i (= pi_ref exp(sum_i q_i s_i)), where q
maximises over the simplex the concave dual

    D(q) = -beta E_x log sum_y prod_i pi_i(y|x)^q_i,

and D(q*) = max_i R_i(pi_q*) (strong duality). log-sum-exp of an affine map is a DCP atom, so
cvxpy solves D exactly. Everything is computed on each prompt's candidates with every policy
restricted to them, as the `candidates` regret estimator does: `log_policies` hold log pi_j
up to a per-row constant (NaN padding); normalising over the candidates fixes the constant.

A randomised mixture (draw policy j with probability p_j, then decode) serves the distribution
sum_j p_j pi_j, whose regret is convex in p and at most (R p)_i with R_ij = beta E_x KL(pi_j ||
pi_i) (Jensen): the paper's LP on R minimises that upper bound only. The exact min-max over
mixtures is pluralign.aggregate.mmra; the merge here is never worse than it.

Every expectation E_x is a weighted mean over rows (`sample_weight`, equal by default), so
that each prompt can count once whatever its number of rows
(pluralign.aggregate.regret.PromptUnits).
"""

from __future__ import annotations

import warnings

import numpy as np

#: The objectives regret is measured under (pluralign.settings.OBJECTIVES): `kl` (the
#: KL-regularised value that the policies maximise; the default) and `paper` (expected reward
#: only, as the reference MMRA).
#: Clarabel's tolerances for the dual: at its defaults (1e-8 relative gap) max_i R_i(pi_q)
#: exceeds D(q) by up to ~1e-6; at these, by ~1e-9.
CLARABEL_TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11,
                  "tol_ktratio": 1e-9}


def normalise(log_policies: np.ndarray) -> np.ndarray:
    """log of each policy restricted to a row's candidates ([n, M, J], NaN padding kept)."""
    mask = ~np.isnan(log_policies)
    x = np.where(mask, log_policies, -np.inf)
    top = np.max(x, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    lse = top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))
    return np.where(mask, x - lse, np.nan)


def kl_contributions(log_policies: np.ndarray, k: int, beta: float) -> np.ndarray:
    """c[n, i, j] = beta KL(pi_j || pi_i) on row n's candidates, for the K type policies i (the
    first k columns) and every policy j. Rows average to the KL regret matrix."""
    logq = np.nan_to_num(normalise(log_policies), nan=-np.inf)       # [n, M, J]
    q = np.exp(logq)
    ent = np.einsum("nmj,nmj->nj", q, np.where(q > 0, logq, 0.0))     # sum_y q_j log q_j
    types = np.where(np.isfinite(logq[..., :k]), logq[..., :k], 0.0)
    cross = np.einsum("nmj,nmi->nij", q, types)                       # sum_y q_j log q_i
    return beta * (ent[:, None, :] - cross)


def merge_logps(log_types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log pi_q on each row's candidates: normalised sum_i q_i log pi_i ([n, M, K] -> [n, M])."""
    scores = _merge_scores(normalise(log_types), np.asarray(weights, dtype=np.float64))
    return normalise(np.where(np.isinf(scores), np.nan, scores)[..., None])[..., 0]


def _merge_scores(logq: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_i q_i log pi_i per candidate ([n, M], -inf padding), logq normalised, NaN padding."""
    mixed = np.einsum("nmk,k->nm", np.nan_to_num(logq, nan=0.0), q)
    return np.where(np.isnan(logq[..., 0]), -np.inf, mixed)


def _mean_log_z(logq: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    """E_x log sum_y prod_i pi_i(y|x)^q_i (logq normalised; w: row weights summing to 1)."""
    mixed = _merge_scores(logq, q)
    top = mixed.max(axis=1, keepdims=True)
    return float(w @ (top[:, 0] + np.log(np.exp(mixed - top).sum(axis=1))))


def _dual(logq: np.ndarray, mu: np.ndarray, beta: float, w: np.ndarray) -> float:
    """D(mu) = -beta M mean_x log sum_y prod_i pi_i(y|x)^(mu_i / M), M = sum_i mu_i: the dual of
    min_pi max_i c_i R_i(pi) at mu = lambda * c (lambda on the simplex; c = 1: mu = q, M = 1).
    logq: the type policies normalised over each row's candidates."""
    total = mu.sum()
    return -beta * total * _mean_log_z(logq, mu / total, w)


def _dual_gradient(logq: np.ndarray, mu: np.ndarray, beta: float,
                   w: np.ndarray) -> np.ndarray:
    """dD/dmu_i = -beta (f + g_i - q . g), f = mean log Z(q), g_i = mean E_{pi_q}[log pi_i]:
    type i's regret of pi_q up to a shared constant (equal entries for binding types)."""
    q = mu / mu.sum()
    scores = _merge_scores(logq, q)
    log_z = np.logaddexp.reduce(scores, axis=1, keepdims=True)
    merged = np.exp(scores - log_z) * w[:, None]                        # pi_q, 0 on padding
    g = np.einsum("nm,nmk->k", merged, np.nan_to_num(logq, nan=0.0))
    return -beta * (float(w @ log_z[:, 0]) + g - q @ g)


def _polish(logq: np.ndarray, mu: np.ndarray, beta: float, scale: np.ndarray,
            w: np.ndarray) -> np.ndarray:
    """A few SLSQP steps on D from the conic solver's mu (sum_i mu_i / scale_i = 1):
    interior-point answers stop at ~1e-8 relative gap, and a type with near-zero weight can
    leave max regret 1e-6 above D."""
    from scipy.optimize import minimize
    k = len(mu)
    if k == 1:
        return mu
    res = minimize(lambda m: -_dual(logq, m, beta, w), mu,
                   jac=lambda m: -_dual_gradient(logq, m, beta, w), method="SLSQP",
                   bounds=[(0.0, None)] * k,
                   constraints=[{"type": "eq", "fun": lambda m: (m / scale).sum() - 1.0,
                                 "jac": lambda m: 1.0 / scale}],
                   options={"ftol": 1e-15, "maxiter": 200})
    out = np.clip(res.x, 0.0, None)
    out = out / (out / scale).sum()
    return out if _dual(logq, out, beta, w) >= _dual(logq, mu, beta, w) else mu


class MinMaxMerge:
    """The min-max regret merge of K type policies under the KL-regularised objective.

    `fit(log_types, sample_weight)` with log_types[n, M, K] (log pi_i per candidate, NaN
    padding) and row weights (equal by default) solves the dual program (with `type_weights`
    c: min_pi max_i c_i R_i(pi), the same merge family at q proportional to lambda * c).
    Learned state: `weights_` (q), `value_` (D, the min-max regret over all policies),
    `regrets_` (each type's weighted regret of pi_q, measured), `max_regret_`, `binding_`
    (types within tol of the max), `gap_` (max regret minus value: the certificate) and
    `solver_`.
    """

    def __init__(self, beta: float = 1.0, type_weights: np.ndarray | None = None,
                 solver: str | None = None, tol: float = 1e-6):
        self.beta = beta
        self.type_weights = type_weights
        self.solver = solver
        self.tol = tol

    def fit(self, log_types: np.ndarray, sample_weight: np.ndarray | None = None) -> MinMaxMerge:
        import cvxpy as cp
        logq, rw, c = fit_inputs(log_types, sample_weight, self.type_weights, self.beta,
                                 positive=True)
        n, _, k = logq.shape
        mu = cp.Variable(k, nonneg=True)  # mu = lambda * c, lambda on the simplex
        sizes = (~np.isnan(logq[..., 0])).sum(axis=1)
        terms = [self._block(cp, logq[sizes == m][:, :m, :], rw[sizes == m], mu,
                             np.allclose(c, 1.0))
                 for m in np.unique(sizes)]  # one block per list size: no padding
        objective, constraints = cp.sum(cp.hstack([t for t, _ in terms])), \
            [cp.sum(cp.multiply(mu, 1.0 / c)) == 1] + [x for _, cs in terms for x in cs]
        problem = cp.Problem(cp.Maximize(-self.beta * objective), constraints)
        with warnings.catch_warnings():  # "may be inaccurate": the gap below certifies it
            warnings.simplefilter("ignore", UserWarning)
            if self.solver in (None, "CLARABEL"):  # tight: the served merge's measured max
                problem.solve(solver="CLARABEL", **CLARABEL_TIGHT)  # regret = the value
            else:
                problem.solve(solver=self.solver)
        if mu.value is None:
            raise RuntimeError(f"the min-max merge program did not solve: {problem.status}")
        w = np.clip(mu.value, 0.0, None)
        w = _polish(logq, w / (w / c).sum(), self.beta, c, rw)
        self.weights_ = w / w.sum()  # q: the merge's exponents
        # D is a lower bound on the min-max (weighted) regret over all policies and
        # max_i c_i R_i(pi_q) an upper bound: both computed here, their gap certifies the solver
        self.value_ = _dual(logq, w, self.beta, rw)
        merged = merge_logps(logq, self.weights_)[..., None]
        columns = np.concatenate([logq, merged], axis=2)
        self.regrets_ = c * (rw @ kl_contributions(columns, k, self.beta)[:, :, k])
        self.max_regret_ = float(self.regrets_.max())
        self.gap_ = self.max_regret_ - self.value_
        if self.gap_ > self.tol:
            warnings.warn(f"min-max merge: max regret {self.max_regret_:.6g} exceeds the dual "
                          f"bound {self.value_:.6g} by {self.gap_:.2g} (solver "
                          f"{problem.status})", stacklevel=2)
        self.binding_ = self.regrets_ >= self.max_regret_ - self.tol
        self.solver_ = problem.solver_stats.solver_name
        return self

    @staticmethod
    def _block(cp, rows: np.ndarray, w: np.ndarray, mu, unweighted: bool) -> tuple:
        """Sum over rows [r, m, K] (weights w) of M lse(L mu / M), M = sum mu, with its
        constraints: plain log-sum-exp when M = 1 (no type weights), else the perspective
        through exponential cones: t >= M lse(z / M) iff sum_y M exp((z_y - t) / M) <= M."""
        r, m, k = rows.shape
        z = cp.reshape(rows.reshape(-1, k) @ mu, (r, m), order="C")
        if unweighted:
            return w @ cp.log_sum_exp(z, axis=1), []
        t, u = cp.Variable(r), cp.Variable((r, m))
        total = cp.sum(mu)
        cone = cp.constraints.ExpCone(z - cp.reshape(t, (r, 1), order="C") @ np.ones((1, m)),
                                      total * np.ones((r, m)), u)
        return w @ t, [cone, cp.sum(u, axis=1) <= total]


def fit_inputs(log_types: np.ndarray, sample_weight: np.ndarray | None,
               type_weights: np.ndarray | None, beta: float,
               positive: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the min-max programs fit on, checked: the type policies normalised over each
    row's candidates, row weights summing to one, and the type weights c (positive, or with
    `positive` False non-negative)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logq = normalise(np.asarray(log_types, dtype=np.float64))
    n, _, k = logq.shape
    c = np.ones(k) if type_weights is None else np.asarray(type_weights, dtype=np.float64)
    ok = (c > 0).all() if positive else (c >= 0).all()
    if c.shape != (k,) or not ok or not np.isfinite(c).all():
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"type_weights must be {k} {kind} numbers, got {c.tolist()}")
    return logq, row_weights(sample_weight, n), c


def row_weights(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    """Row weights summing to one (equal when None)."""
    if sample_weight is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"sample_weight must be {n} non-negative numbers, not all zero")
    return w / w.sum()
