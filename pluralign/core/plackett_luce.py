"""Plackett–Luce model of (partial) rankings (DESIGN §3), in numpy.

P(tau | r) = prod_{j=1..L} exp r[tau_j] / sum_{l not yet placed} exp r[l]; for a top-L partial
ranking the unranked responses stay in every denominator. With m = 2 this is Bradley–Terry.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def sample_ranking(rewards: np.ndarray, length: int, rng: np.random.Generator) -> list[int]:
    """A top-`length` ranking drawn from PL(rewards), best first (Gumbel-max trick).

    Sorting rewards perturbed by i.i.d. Gumbel noise gives an exact PL sample: the first item is
    a softmax draw, and by the memoryless property the rest follow recursively.
    """
    r = np.asarray(rewards, dtype=float)
    if not 1 <= length <= r.size:
        raise ValueError(f"ranking length {length} must be in 1..{r.size}")
    order = np.argsort(-(r + rng.gumbel(size=r.size)), kind="stable")
    return [int(i) for i in order[:length]]


def log_prob(rewards: np.ndarray, ranking: list[int]) -> float:
    """log P(ranking | rewards) under PL, for a full or top-L ranking."""
    r = np.asarray(rewards, dtype=float)
    remaining = np.ones(r.size, dtype=bool)
    total = 0.0
    for i in ranking:
        total += r[i] - logsumexp(r[remaining])
        remaining[i] = False
    return float(total)


def ordered_loglik(a: np.ndarray, placed: np.ndarray,
                   grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """log P and its gradient for scores `a[M, n]` already in ranking order (ranked best first,
    then the unranked, padding last at a large negative value), `placed[M, n]` marking the
    ranked places: sum_{j placed} (a_j - log sum_{i>=j} exp a_i) per column, and
    d/da_i = [i placed] - sum_{j<=i placed} exp(a_i - T_j). Rows run down the columns so each
    step is one vector operation; `grad` False skips the gradient. (Torch's version, with
    autograd: pluralign.core.losses._OrderedPL.)"""
    tails = np.empty_like(a)                                    # T_j = log sum_{i>=j} exp a_i
    tails[-1] = a[-1]
    for j in range(a.shape[0] - 2, -1, -1):
        np.logaddexp(a[j], tails[j + 1], out=tails[j])
    loglik = np.where(placed, a - tails, 0.0).sum(axis=0)
    if not grad:
        return loglik, None
    neg = np.where(placed, -tails, -np.inf)                     # log sum_{j<=i placed} e^-T_j
    c = np.empty_like(a)
    c[0] = neg[0]
    for j in range(1, a.shape[0]):
        np.logaddexp(c[j - 1], neg[j], out=c[j])
    return loglik, placed - np.exp(a + c)
