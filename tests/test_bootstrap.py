"""Bootstrap intervals: the percentile interval covers the truth at about its nominal rate on
simulated cases whose truth is known in closed form (or from a huge sample)."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign import bootstrap
from pluralign.aggregate import candidate_contributions


def test_mean_replicates_equal_a_plain_loop():
    rng = np.random.default_rng(0)
    values, clusters = rng.normal(size=(30, 2)), rng.integers(0, 7, 30)
    reps = bootstrap.mean_replicates(values, clusters, 5, seed=3)
    codes, inverse = np.unique(clusters, return_inverse=True)
    counts = bootstrap.cluster_counts(len(codes), 5, seed=3)
    for b in range(5):
        rows = np.concatenate([np.tile(np.flatnonzero(inverse == c), counts[b, c])
                               for c in range(len(codes))])
        assert reps[b] == pytest.approx(values[rows].mean(axis=0))


def test_annotator_bootstrap_covers_a_known_accuracy():
    """Accuracy of annotators with heterogeneous skill p_h ~ Beta(4, 2) over 5 judgements each:
    the population accuracy is E[p] = 2/3 exactly."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        p = rng.beta(4, 2, size=40)
        correct = rng.random((40, 5)) < p[:, None]
        values, who = correct.reshape(-1).astype(float), np.repeat(np.arange(40), 5)
        lo, hi = bootstrap.interval(bootstrap.mean_replicates(values, who, 400,
                                                              int(rng.integers(1e9))))
        hits += lo <= 2 / 3 <= hi
    assert hits / 200 >= 0.90


def test_prompt_bootstrap_covers_the_true_regret():
    """Regret of serving type 0 with type 1's policy on 3 candidates whose features are random:
    truth from a million prompts; 150 small held-out sets of 60 prompts."""
    rng = np.random.default_rng(2)
    theta = np.array([[1.5, 0.0], [0.0, 1.5]])

    def contributions(n: int) -> np.ndarray:
        s = rng.normal(size=(n, 3, 2)) @ theta.T                      # log-ratios [n, M, K]
        return candidate_contributions(s, s)[:, 0, 1]

    truth = contributions(1_000_000).mean()
    assert truth > 0.3  # a real regret, not a degenerate zero
    hits = 0
    for _ in range(150):
        c = contributions(60)
        lo, hi = bootstrap.interval(bootstrap.mean_replicates(c, np.arange(60), 400,
                                                              int(rng.integers(1e9))))
        hits += lo <= truth <= hi
    assert hits / 150 >= 0.90


def test_distinguishable_reads_the_paired_difference():
    rng = np.random.default_rng(3)
    a = rng.normal(size=500)
    assert not bootstrap.distinguishable(a, a + rng.normal(0, 0.01, 500) + 0.0)
    assert bootstrap.distinguishable(a + 1.0, a + rng.normal(0, 0.01, 500))
