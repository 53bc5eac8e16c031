"""Plackett–Luce log-probabilities and sampling against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from pluralign.core.plackett_luce import log_prob, sample_ranking


@pytest.mark.parametrize("m, length", [(2, 2), (3, 3), (4, 4), (4, 2), (4, 1), (3, 1)])
def test_probabilities_over_all_rankings_sum_to_one(m, length):
    r = np.random.default_rng(m * 10 + length).normal(size=m)
    total = sum(math.exp(log_prob(r, list(p))) for p in itertools.permutations(range(m), length))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_pairwise_is_bradley_terry():
    r = np.array([0.3, -1.2])
    assert math.exp(log_prob(r, [0, 1])) == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_partial_ranking_is_marginal_of_full_rankings():
    r = np.array([0.5, -0.2, 1.1, 0.0])
    full = sum(math.exp(log_prob(r, [2, 0, *rest]))
               for rest in itertools.permutations([1, 3]))
    assert math.exp(log_prob(r, [2, 0])) == pytest.approx(full, abs=1e-12)


def test_sampling_frequencies_match_exact_probabilities():
    rng = np.random.default_rng(0)
    r = np.array([1.0, 0.0, -0.5])
    perms = list(itertools.permutations(range(3)))
    n = 30000
    counts = {p: 0 for p in perms}
    for _ in range(n):
        counts[tuple(sample_ranking(r, 3, rng))] += 1
    expected = [n * math.exp(log_prob(r, list(p))) for p in perms]
    _, pvalue = stats.chisquare([counts[p] for p in perms], expected)
    assert pvalue > 1e-3


def test_sampling_rejects_bad_length():
    with pytest.raises(ValueError):
        sample_ranking(np.zeros(3), 4, np.random.default_rng(0))
