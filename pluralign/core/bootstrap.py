"""Bootstrap confidence intervals for the audit's figures.

Resampling units are clusters: held-out prompts for regrets (every annotation of a prompt goes
together), annotators for accuracies, ARI and the personalization curve. A statistic that is a
ratio of cluster sums (a mean over annotations) is resampled exactly and fast by drawing
multinomial cluster counts once and taking weighted sums; any other statistic takes the
resampled cluster indices. Accuracies and ARI get percentile intervals.

A max over types of regrets is not a smooth statistic: when several types bind, as the
fairest policies make them, the max of noisy means sits above the true max and a percentile
interval of the resampled max covers it far below its nominal level. Max regrets therefore get
intervals built from simultaneous intervals for the types (studentised bootstrap, bootstrap-t;
`max_intervals`), and the fairest policy is compared with the others through a band that holds
for every pair of policies at once, so that choosing it on the same prompts cannot make a tie
look like a difference (`compare_with_best`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95


def cluster_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each cluster is drawn in each replicate: [n_boot, n_clusters]."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def interval(samples: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """Percentile interval over the first axis: [..., 2] (low, high)."""
    tail = 100 * (1 - level) / 2
    return np.moveaxis(np.nanpercentile(samples, [tail, 100 - tail], axis=0), 0, -1)


def cluster_sums(values: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Sum of `values` [n, ...] within each cluster: [n_clusters, ...]."""
    out = np.zeros((n_clusters, *values.shape[1:]))
    np.add.at(out, clusters, values)
    return out


def mean_replicates(values: np.ndarray, clusters: np.ndarray, n_boot: int,
                    seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean over rows of `values` [n, ...] with rows resampled by
    cluster: [n_boot, ...]."""
    codes, clusters = np.unique(clusters, return_inverse=True)
    sums = cluster_sums(values, clusters, len(codes))
    sizes = np.bincount(clusters, minlength=len(codes)).astype(np.float64)
    w = cluster_counts(len(codes), n_boot, seed).astype(np.float64)
    flat = sums.reshape(len(codes), -1)
    return ((w @ flat) / (w @ sizes)[:, None]).reshape(n_boot, *values.shape[1:])


def replicates(n_clusters: int, statistic: Callable[[np.ndarray], Any], n_boot: int,
               seed: int) -> np.ndarray:
    """Replicates of any statistic of resampled cluster indices (with repeats): [n_boot, ...]."""
    w = cluster_counts(n_clusters, n_boot, seed)
    return np.asarray([statistic(np.repeat(np.arange(n_clusters), row)) for row in w],
                      dtype=np.float64)


def show(low_high: Sequence[float] | None, digits: int = 3, label: str = "") -> str:
    """ " [low, high]" for a person ("" when there is no interval)."""
    if low_high is None:
        return ""
    return f" [{label}{low_high[0]:.{digits}f}, {low_high[1]:.{digits}f}]"


def pairs(names: Sequence[str], intervals: np.ndarray) -> dict[str, list[float]]:
    """{name: [low, high]} for JSON."""
    return {n: [float(v) for v in iv] for n, iv in zip(names, intervals, strict=True)}


# -- means over units, studentised ------------------------------------------------------------
#: |t| is capped here: a replicate that drew a single distinct unit has a standard error of 0.
T_CAP = 1e3


@dataclass
class Studentised:
    """Bootstrap of column means over resampled units: the means `point` [D], their standard
    errors `se` [D], and the studentised replicates t [B, D] = (mean* - point) / se*, whose
    distribution stands in for that of (mean - truth) / se."""

    point: np.ndarray
    se: np.ndarray
    t: np.ndarray

    def upper(self, alpha: float) -> np.ndarray:
        """Each mean's own one-sided upper bound at level 1 - alpha: [D]."""
        return self.point - np.quantile(self.t, alpha, axis=0) * self.se

    def lower(self, alpha: float) -> np.ndarray:
        """Each mean's own one-sided lower bound at level 1 - alpha: [D]."""
        return self.point - np.quantile(self.t, 1 - alpha, axis=0) * self.se

    def joint_lower(self, cells: np.ndarray, alpha: float) -> np.ndarray:
        """Lower bounds on the means of `cells` that hold all together with probability
        1 - alpha (the quantile of the largest studentised deviation): [len(cells)]."""
        q = np.quantile(self.t[:, cells].max(axis=1), 1 - alpha)
        return self.point[cells] - q * self.se[cells]

    def joint_band(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided bounds on every mean holding all together with probability 1 - alpha:
        (low [D], high [D])."""
        q = np.quantile(np.abs(self.t).max(axis=1), 1 - alpha)
        return self.point - q * self.se, self.point + q * self.se


def studentised(units: np.ndarray, n_boot: int, seed: int) -> Studentised:
    """Bootstrap-t replicates of the column means of `units` [n, ...] (one row per resampled
    unit, e.g. a prompt): multinomial unit counts drawn once, each replicate's mean and
    standard error as weighted sums. A constant column gets t = 0 (its mean is exact)."""
    x = np.asarray(units, dtype=np.float64).reshape(len(units), -1)
    n = len(x)
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 units, got {n}")
    point = x.mean(axis=0)
    x = x - point                                    # centred: sums of squares stay exact
    w = cluster_counts(n, n_boot, seed).astype(np.float64)           # [B, n]
    shift = (w @ x) / n                                              # mean* - point
    var = np.clip((w @ x ** 2) / n - shift ** 2, 0.0, None) * n / (n - 1)
    se_star = np.sqrt(var / n)
    se = np.sqrt((x ** 2).sum(axis=0) / (n - 1) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se_star > 0, shift / se_star, np.sign(shift) * T_CAP)
    t = np.where(se > 1e-12 * (1 + np.abs(point)), np.clip(t, -T_CAP, T_CAP), 0.0)
    return Studentised(point, se, t)


@dataclass
class MaxIntervals:
    """Intervals for the max over types of mean regrets, per policy (`max_intervals`)."""

    point: np.ndarray      # [K, J] mean regret of type i under policy j
    matrix: np.ndarray     # [K, J, 2] each entry's own two-sided interval
    max_point: np.ndarray  # [J] max_i point
    max: np.ndarray        # [J, 2] interval of the true max


def max_intervals(units: np.ndarray, n_boot: int, seed: int,
                  level: float = LEVEL) -> MaxIntervals:
    """For units [n, K, J] (per prompt: type i's regret of policy j), an interval for each
    policy's max regret max_i R_ij with coverage >= level however many types bind:
    - low = max_i (lower bounds on R_ij holding together over i at 1 - a/2): the true max is
      at least every R_ij, so it is above the max of the lower bounds when they all hold;
    - high = max_i (R_ij's own upper bound at 1 - a/2): the true max is some type's R_ij,
      which is below its own upper bound with probability 1 - a/2.
    Each end fails with probability at most a/2, a = 1 - level."""
    n, k, j = units.shape
    boot = studentised(units.reshape(n, k * j), n_boot, seed)
    alpha = 1 - level
    cells = np.arange(k * j).reshape(k, j)
    low = np.stack([boot.joint_lower(cells[:, c], alpha / 2) for c in range(j)], axis=1)
    high = boot.upper(alpha / 2).reshape(k, j)
    matrix = np.stack([boot.lower(alpha / 2), boot.upper(alpha / 2)], -1).reshape(k, j, 2)
    point = boot.point.reshape(k, j)
    return MaxIntervals(point, matrix, point.max(axis=0),
                        np.stack([low.max(axis=0), high.max(axis=0)], axis=-1))


@dataclass
class Comparison:
    """Each policy against the fairest one (the lowest max regret on this data)."""

    best: int              # the fairest policy's index
    difference: np.ndarray  # [J, 2] interval of M_j - M_best (0 for best itself)
    worse: np.ndarray      # [J] bool: M_j > M_best is established (low end above 0)


def compare_with_best(units: np.ndarray, n_boot: int, seed: int,
                      level: float = LEVEL) -> Comparison:
    """Which policies are worse than the fairest one, with the choice of the fairest on the
    same prompts accounted for. M_j - M_l = max_i min_i' (R_ij - R_i'l) exactly, so bounds on
    the paired differences d = R_ij - R_i'l give bounds on it; the bounds hold together for
    every pair of policies (a max-|t| band over all of them), so they hold for whichever
    policy the data make look fairest. Where all policies are equally fair, some policy is
    called worse with probability at most 1 - level."""
    n, k, j = units.shape
    best = int(np.argmin(units.mean(axis=0).max(axis=0)))
    diff = np.zeros((j, 2))
    worse = np.zeros(j, dtype=bool)
    if j < 2:
        return Comparison(best, diff, worse)
    pairs = [(a, b) for a in range(j) for b in range(a + 1, j)]
    d = np.stack([units[:, :, a, None] - units[:, None, :, b] for a, b in pairs], axis=1)
    boot = studentised(d, n_boot, seed)                            # d: [n, pairs, K, K]
    low, high = (v.reshape(len(pairs), k, k) for v in boot.joint_band(1 - level))
    for p, (a, b) in enumerate(pairs):
        lo = low[p].min(axis=1).max()        # bounds on M_a - M_b
        hi = high[p].min(axis=1).max()
        if best in (a, b):
            other, sign = (b, -1.0) if a == best else (a, 1.0)
            diff[other] = sorted((sign * lo, sign * hi))
            worse[other] = diff[other][0] > 0
    return Comparison(best, diff, worse)
