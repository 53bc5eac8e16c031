"""Bootstrap confidence intervals (percentile method) for the audit's figures.

Resampling units are clusters: held-out prompts for regrets (every annotation of a prompt goes
together), annotators for accuracies, ARI and the personalization curve. A statistic that is a
ratio of cluster sums (a mean over annotations) is resampled exactly and fast by drawing
multinomial cluster counts once and taking weighted sums; any other statistic takes the
resampled cluster indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def distinguishable(samples_a: np.ndarray, samples_b: np.ndarray, level: float = LEVEL) -> bool:
    """Whether the paired replicates of two statistics differ at `level` (the interval of
    their difference excludes zero)."""
    lo, hi = interval(np.asarray(samples_a) - np.asarray(samples_b), level)
    return bool(lo > 0 or hi < 0)


def show(low_high: Sequence[float] | None, digits: int = 3, label: str = "") -> str:
    """ " [low, high]" for a person ("" when there is no interval)."""
    if low_high is None:
        return ""
    return f" [{label}{low_high[0]:.{digits}f}, {low_high[1]:.{digits}f}]"


def pairs(names: Sequence[str], intervals: np.ndarray) -> dict[str, list[float]]:
    """{name: [low, high]} for JSON."""
    return {n: [float(v) for v in iv] for n, iv in zip(names, intervals, strict=True)}
