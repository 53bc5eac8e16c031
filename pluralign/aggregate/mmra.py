"""The min-max regret mixture under the KL-regularised objective (DESIGN §6), solved exactly.

A mixture p draws type policy j with probability p_j, then decodes with it; at a prompt it
serves the distribution m_p = sum_j p_j pi_j. Under the KL objective type i's regret of it is

    R_i(p) = beta E_x KL(m_p(.|x) || pi_i(.|x))
           = beta E_x [ sum_y m_p(y) log m_p(y) - sum_y m_p(y) log pi_i(y) ],

convex in p (negative entropy of an affine map, plus a linear term). By Jensen R_i(p) is at
most (R p)_i with R_ij = R_i(pi_j), so the paper's LP on the pure-type columns only minimises
an upper bound: its weights are the min-max mixture only when the LP optimum happens to be a
vertex where every type binds. This module solves min_p max_i c_i R_i(p) itself, on each
prompt's candidates (every policy restricted to them, as the `candidates` estimator does),
with cvxpy's exponential cones (entr), then measures each type's regret of the mixture found.
"""

from __future__ import annotations

import warnings

import numpy as np

from pluralign.aggregate.merge import fit_inputs, kl_contributions, normalise


def mixture_logps(log_types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log of the mixture sum_j p_j pi_j over each row's candidates ([n, M, K] -> [n, M], NaN
    padding), the type policies normalised over the candidates first."""
    logq = normalise(np.asarray(log_types, dtype=np.float64))
    q = np.nan_to_num(np.exp(logq))
    with np.errstate(divide="ignore"):
        out = np.log(q @ np.asarray(weights, dtype=np.float64))
    return np.where(np.isnan(logq[..., 0]), np.nan, out)


def mixture_regrets(log_types: np.ndarray, weights: np.ndarray, beta: float,
                    sample_weight: np.ndarray) -> np.ndarray:
    """Each type's regret R_i(p) of the mixture p, measured as a distribution: [K]."""
    cols = np.concatenate([log_types, mixture_logps(log_types, weights)[..., None]], axis=2)
    k = log_types.shape[2]
    return sample_weight @ kl_contributions(cols, k, beta)[:, :, k]


class MinMaxMixture:
    """min over mixtures p of max_i c_i R_i(p) (KL objective), scikit-learn style.

    `fit(log_types, sample_weight)` with log_types[n, M, K] (log pi_i per candidate, up to a
    per-row constant; NaN padding) and row weights (default equal). Learned state: `weights_`
    (p), `regrets_` (each type's weighted regret of the mixture, measured), `max_regret_`,
    `binding_` (types within tol of the max), `solver_`."""

    def __init__(self, beta: float = 1.0, type_weights: np.ndarray | None = None,
                 tol: float = 1e-6):
        self.beta = beta
        self.type_weights = type_weights
        self.tol = tol

    def fit(self, log_types: np.ndarray,
            sample_weight: np.ndarray | None = None) -> MinMaxMixture:
        logq, w, c = fit_inputs(log_types, sample_weight, self.type_weights, self.beta,
                                positive=False)
        valid = ~np.isnan(logq[..., 0])                                 # [n, M]
        q = np.exp(logq[valid])                                         # [E, K] pi_j(y)
        we = np.broadcast_to(w[:, None], valid.shape)[valid]            # [E] row weight
        cross = -(q.T @ (we[:, None] * logq[valid]))                    # [K(j), K(i)]
        keep = q.max(axis=1) > NEGLIGIBLE  # candidates no policy gives mass: m log m ~ 0
        start = self._solve(q[keep], we[keep], cross, c)
        self.weights_ = _polish(start, q, we, cross, c, self.beta)
        self.regrets_ = c * mixture_regrets(log_types, self.weights_, self.beta, w)
        self.max_regret_ = float(self.regrets_.max())
        self.binding_ = self.regrets_ >= self.max_regret_ - max(self.tol,
                                                                1e-6 * abs(self.max_regret_))
        return self

    def _solve(self, q: np.ndarray, we: np.ndarray, cross: np.ndarray,
               c: np.ndarray) -> np.ndarray:
        """The conic program (exponential cones through entr), by Clarabel, else SCS; the
        uniform mixture when neither solves it (the polish below then does the work)."""
        import cvxpy as cp
        k = len(c)
        p, t = cp.Variable(k, nonneg=True), cp.Variable()
        negent = -(we @ cp.entr(q @ p))                  # E_x sum_y m log m, convex in p
        regret = self.beta * (negent + cross.T @ p)      # [K]: R_i(p)
        problem = cp.Problem(cp.Minimize(t), [cp.multiply(c, regret) <= t, cp.sum(p) == 1])
        self.solver_ = "none"
        for solver in ("CLARABEL", "SCS"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                try:
                    problem.solve(solver=solver)
                except cp.SolverError:
                    continue
            if p.value is not None and np.isfinite(p.value).all():
                self.solver_ = solver
                w = np.clip(p.value, 0.0, None)
                return w / w.sum()
        return np.full(k, 1.0 / k)


#: Below this probability under every policy a candidate is left out of the conic program
#: (its share of any KL is below 1e-13 nats); the polish and the measure keep it.
NEGLIGIBLE = 1e-15


def _regrets_and_jacobian(p: np.ndarray, q: np.ndarray, we: np.ndarray, cross: np.ndarray,
                          beta: float) -> tuple[np.ndarray, np.ndarray]:
    """R_i(p) [K] and dR_i/dp_j [K(i), K(j)] on the flattened candidates."""
    m = q @ p
    logm = np.log(np.clip(m, 1e-300, None))
    negent = we @ (m * logm)
    grad_negent = q.T @ (we * (logm + 1.0))                          # [K(j)]
    return beta * (negent + cross.T @ p), beta * (grad_negent[None, :] + cross.T)


def _polish(start: np.ndarray, q: np.ndarray, we: np.ndarray, cross: np.ndarray,
            c: np.ndarray, beta: float) -> np.ndarray:
    """SLSQP on the epigraph min t s.t. c_i R_i(p) <= t, p in the simplex, from the conic
    solution (smooth constraints, exact gradients): sharpens an interior-point answer and
    rescues one that failed. Keeps the start when it is no better."""
    from scipy.optimize import minimize
    k = len(start)

    def worst(p: np.ndarray) -> float:
        return float((c * _regrets_and_jacobian(p, q, we, cross, beta)[0]).max())

    def cons(x: np.ndarray) -> np.ndarray:
        return x[-1] - c * _regrets_and_jacobian(x[:-1], q, we, cross, beta)[0]

    def cons_jac(x: np.ndarray) -> np.ndarray:
        jac = _regrets_and_jacobian(x[:-1], q, we, cross, beta)[1]
        return np.hstack([-c[:, None] * jac, np.ones((k, 1))])

    x0 = np.r_[start, worst(start)]
    res = minimize(lambda x: x[-1], x0, jac=lambda x: np.r_[np.zeros(k), 1.0],
                   method="SLSQP", bounds=[(0.0, 1.0)] * k + [(None, None)],
                   constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac},
                                {"type": "eq", "fun": lambda x: x[:-1].sum() - 1.0,
                                 "jac": lambda x: np.r_[np.ones(k), 0.0]}],
                   options={"ftol": 1e-14, "maxiter": 300})
    p = np.clip(res.x[:-1], 0.0, None)
    p = p / p.sum()
    return p if worst(p) < worst(start) else start
