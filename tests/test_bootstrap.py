"""Bootstrap intervals: the percentile interval covers the truth at about its nominal rate on
simulated cases whose truth is known in closed form (or from a huge sample); the interval of a
max regret keeps its coverage however many types bind; comparisons with the fairest policy do
not fire when every policy is equally fair."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.aggregate.regret import candidate_contributions
from pluralign.core import bootstrap


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


def _draws(binding: int, rng: np.random.Generator, k: int = 5, n: int = 60,
           sd: float = 0.3) -> np.ndarray:
    """Per-prompt regrets [n, K, 1] of one policy: `binding` types at 1.0 (the max), the rest
    at 0.5, independent noise (the case the percentile interval of the max fails)."""
    truth = np.r_[np.ones(binding), np.full(k - binding, 0.5)]
    return (truth + sd * rng.normal(size=(n, k)))[:, :, None]


@pytest.mark.parametrize("binding", [1, 2, 3, 5])
def test_max_regret_interval_keeps_its_coverage_however_many_types_bind(binding):
    """400 simulated held-out sets of 60 prompts, 5 types: the reported 95% interval of the
    max covers the true max (1.0) in at least 93% of them."""
    rng = np.random.default_rng(10 + binding)
    hits = 0
    for _ in range(400):
        lo, hi = bootstrap.max_intervals(_draws(binding, rng), 300,
                                         int(rng.integers(1e9))).max[0]
        hits += lo <= 1.0 <= hi
    assert hits / 400 >= 0.93, hits / 400


def test_the_percentile_interval_of_the_max_would_not():
    """The method it replaces: a percentile interval of the resampled max, with 5 binding
    types, sits above the truth most of the time (why max_intervals exists)."""
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(100):
        units = _draws(5, rng)[:, :, 0]
        reps = bootstrap.mean_replicates(units, np.arange(len(units)), 300,
                                         int(rng.integers(1e9)))
        lo, hi = bootstrap.interval(reps.max(axis=1))
        hits += lo <= 1.0 <= hi
    assert hits / 100 < 0.6


def test_max_interval_with_one_type_is_the_bootstrap_t_interval_of_its_mean():
    rng = np.random.default_rng(4)
    x = rng.exponential(size=(40, 1, 1))
    got = bootstrap.max_intervals(x, 2000, 7)
    boot = bootstrap.studentised(x[:, :, 0], 2000, 7)
    assert got.max[0] == pytest.approx([boot.lower(0.025)[0], boot.upper(0.025)[0]])
    assert got.max[0][0] < x.mean() < got.max[0][1]
    assert boot.se[0] == pytest.approx(x.std(ddof=1) / np.sqrt(40))


def test_studentised_replicates_equal_a_plain_loop():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 3))
    x[:, 2] = 1.5                                             # a constant column: exact
    boot = bootstrap.studentised(x, 4, seed=9)
    counts = bootstrap.cluster_counts(12, 4, seed=9)
    for b in range(4):
        rows = np.repeat(np.arange(12), counts[b])
        sample = x[rows]
        t = (sample.mean(0)[:2] - x.mean(0)[:2]) / (sample.std(0, ddof=1)[:2] / np.sqrt(12))
        assert boot.t[b, :2] == pytest.approx(t)
    assert (boot.t[:, 2] == 0).all() and boot.se[2] == 0


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_equally_fair_policies_are_not_called_different(rho):
    """4 policies with the same regrets for 3 types (independent, or correlated across
    policies through a shared prompt effect): some policy is called worse than the fairest
    in at most 5% of 400 draws, although the fairest is picked on the same prompts."""
    rng = np.random.default_rng(20 + int(10 * rho))
    fired = 0
    for _ in range(400):
        z = rng.normal(size=(60, 3, 4))
        z = np.sqrt(1 - rho) * z + np.sqrt(rho) * rng.normal(size=(60, 3, 1))
        fired += bootstrap.compare_with_best(1.0 + 0.3 * z, 300,
                                             int(rng.integers(1e9))).worse.any()
    assert fired / 400 <= 0.05, fired / 400


def test_a_clearly_worse_policy_is_called_worse():
    rng = np.random.default_rng(6)
    found = 0
    for _ in range(50):
        units = 1.0 + 0.3 * rng.normal(size=(60, 3, 3))
        units[:, 1, 2] += 0.4                              # policy 2 serves type 1 worse
        c = bootstrap.compare_with_best(units, 300, int(rng.integers(1e9)))
        found += bool(c.worse[2]) and c.best != 2
        assert c.difference[c.best].tolist() == [0.0, 0.0]
    assert found / 50 >= 0.8
