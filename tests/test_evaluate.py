"""Evaluation metrics against scipy's Kendall tau and hand counts; each type's own reward
predicts that type best; discovery metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from pluralign.aggregate.evaluation import policy_table, ranking_metrics
from pluralign.core.data import Annotation, Annotations
from pluralign.core.rankings import Rankings
from pluralign.stages.evaluate import discovery


def _rank(rows: list[tuple[int, list[int]]]) -> Rankings:
    return Rankings.from_annotations([Annotation("h", "p", [f"r{i}" for i in range(m)], r)
                                      for m, r in rows])


def test_full_rankings_match_scipy_kendall_tau():
    rng = np.random.default_rng(0)
    rows, scores = [], []
    for _ in range(30):
        m = int(rng.integers(3, 6))
        rows.append((m, list(rng.permutation(m))))
        s = np.full(5, np.nan)
        s[:m] = rng.normal(size=m)
        scores.append(s)
    got = ranking_metrics(np.array(scores), _rank(rows))
    for i, (m, ranking) in enumerate(rows):
        position = np.argsort(ranking)  # position of each candidate in the observed ranking
        tau = kendalltau(scores[i][:m], -position).statistic
        assert got["kendall_tau"][i] == pytest.approx(tau)
        assert got["pairwise"][i] == pytest.approx((tau + 1) / 2)
        assert got["top1"][i] == float(np.argmax(scores[i][:m]) == ranking[0])


def test_partial_rankings_and_ties():
    # top-1 of 3: candidate 2 beat 0 and 1. Scores prefer 2 over 0, tie 2 with 1.
    got = ranking_metrics(np.array([[0.0, 1.0, 1.0]]), _rank([(3, [2])]))
    assert got["pairwise"][0] == pytest.approx((1 + 0.5) / 2)
    assert got["kendall_tau"][0] == pytest.approx(0.5)
    assert got["top1"][0] == pytest.approx(0.5)  # tied with candidate 1 at the top
    flat = ranking_metrics(np.zeros((1, 4)), _rank([(4, [3, 1])]))  # a constant score: chance
    assert flat["top1"][0] == pytest.approx(0.25) and flat["pairwise"][0] == 0.5


def test_each_types_own_reward_predicts_it_best():
    from pluralign.simulate import SimulationConfig, simulate
    pop = simulate(SimulationConfig(types=3, annotators=120, per_annotator=8, seed=1))
    data = Annotations(pop.records)
    w = np.array([t["weights"] for t in pop.truth["types"]])
    rank = Rankings.from_annotations(data)
    rewards = np.full((*rank.mask.shape, 3), np.nan)
    for i, a in enumerate(data):
        rewards[i, : a.m] = np.array(a.features) @ w.T
    names = [t["name"] for t in pop.truth["types"]]
    table = policy_table(rewards, rank, [a.true_type for a in data], names)
    for metric in ("loglik", "pairwise", "top1", "kendall_tau"):
        for t in names:
            row = table[metric][t]
            assert max(row, key=row.get) == t, (metric, t, row)


def test_discovery_is_invariant_to_label_names():
    truth = ["a", "a", "b", "b", "c", "c"]
    post = np.eye(3)[[2, 2, 0, 0, 1, 1]] * 0.9 + 0.1 / 3
    d = discovery(truth, post)
    assert d["ari"] == pytest.approx(1.0) and d["nmi"] == pytest.approx(1.0)
    assert d["confusion"] == [[0, 0, 2], [2, 0, 0], [0, 2, 0]]
    assert d["confidence_mean"] == pytest.approx(0.9 + 0.1 / 3)
    assert sum(d["confidence_histogram"]) == 6
