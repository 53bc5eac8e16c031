"""L-BFGS over independent blocks in lockstep: K separable problems (one per type) that
share every function evaluation.

The linear backend's M-step fits K types whose objectives are separable, f(theta) = sum_k
f_k(theta_k), but whose evaluations cost one pass over the data each. One joint L-BFGS shares
the passes but couples the types: its line search and curvature pairs mix blocks of very
different scales, and it needs as many evaluations as all the separate fits together. Here each
block keeps its own curvature pairs, step length and stopping rule, exactly as K separate
L-BFGS runs would, while one call evaluates all K at once (one phi @ theta^T, one all-reduce
under torchrun). The stopping rules are scipy's L-BFGS-B's: max |g_k| <= gtol, or a relative
reduction of f_k below ftol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: (theta[K, D], wanted[K]) -> (f[K], grad[K, D]): the blocks' values and gradients at once,
#: exact for the wanted blocks (the others' are ignored, so may be left out).
Blocks = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: scipy L-BFGS-B's default relative reduction tolerance (factr 1e7 times machine epsilon).
FTOL = 1e7 * float(np.finfo(np.float64).eps)


@dataclass
class Result:
    """The minimiser per block, its value, iterations, evaluations and whether it converged."""

    x: np.ndarray
    f: np.ndarray
    nit: np.ndarray
    nfev: int
    converged: np.ndarray


def _direction(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray,
               gamma: np.ndarray, order: list[int]) -> np.ndarray:
    """-H g by the two-loop recursion over each block's stored pairs, newest first (rho = 0
    marks a pair a block skipped: it changes nothing), H0 = gamma I per block."""
    q = g.copy()
    alpha = []
    for j in order:
        alpha.append(rho[j] * (s[j] * q).sum(1))
        q -= alpha[-1][:, None] * y[j]
    q *= gamma[:, None]
    for j, a in zip(reversed(order), reversed(alpha), strict=True):
        q += (a - rho[j] * (y[j] * q).sum(1))[:, None] * s[j]
    return -q


def minimize_blocks(fun: Blocks, x0: np.ndarray, gtol: float = 1e-8, max_iter: int = 2000,
                    ftol: float = FTOL, history: int = 10, max_backtracks: int = 30) -> Result:
    """Minimise each block's f_k over theta_k, all blocks evaluated together. A backtracking
    line search (Armijo, halving from a unit step) per block; a block that has stopped keeps
    its point while the others go on."""
    k, d = x0.shape
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x, np.ones(k, dtype=bool))
    nfev = 1
    s, y = np.zeros((history, k, d)), np.zeros((history, k, d))
    rho = np.zeros((history, k))
    order: list[int] = []                       # slots of the stored pairs, newest first
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1.0)  # first step: length <= 1
    nit = np.zeros(k, dtype=np.int64)
    converged = np.abs(g).max(axis=1) <= gtol
    active = ~converged
    while active.any():
        p = _direction(g, s, y, rho, gamma, order) * active[:, None]
        slope = (g * p).sum(1)
        bad = active & ~(slope < 0)  # not a descent direction: restart from steepest descent
        p[bad] = -g[bad] / np.maximum(np.abs(g[bad]).max(axis=1, keepdims=True), 1.0)
        slope = (g * p).sum(1)
        step = active.astype(np.float64)
        pending = active.copy()
        new_x, new_f, new_g = x.copy(), f.copy(), g.copy()
        for _ in range(max_backtracks):
            trial = np.where(pending[:, None], x + step[:, None] * p, new_x)
            tf, tg = fun(trial, pending)
            nfev += 1
            with np.errstate(invalid="ignore"):
                ok = pending & np.isfinite(tf) & (tf <= f + 1e-4 * step * slope)
            new_x[ok], new_f[ok], new_g[ok] = trial[ok], tf[ok], tg[ok]
            pending &= ~ok
            if not pending.any():
                break
            step[pending] *= 0.5
        moved = active & ~pending
        slot = (order[0] + 1) % history if order else 0
        order = [slot, *[j for j in order if j != slot]][:history]
        s[slot], y[slot] = new_x - x, new_g - g
        sy, yy = (s[slot] * y[slot]).sum(1), (y[slot] ** 2).sum(1)
        keep = moved & (sy > 1e-10 * np.sqrt(yy * (s[slot] ** 2).sum(1)))
        rho[slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        gamma = np.where(keep, sy / np.where(keep, yy, 1.0), gamma)
        small = (f - new_f) <= ftol * np.maximum(np.maximum(np.abs(f), np.abs(new_f)), 1.0)
        nit += active
        x, f, g = new_x, new_f, new_g
        done_now = active & (np.abs(g).max(axis=1) <= gtol)
        converged |= done_now | (moved & small)
        active &= ~(done_now | small | pending) & (nit < max_iter)
    return Result(x, f, nit, nfev, converged)
