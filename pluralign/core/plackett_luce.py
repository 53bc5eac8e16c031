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
