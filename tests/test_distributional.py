"""Distributional alignment: JS, TV and EMD against scipy; a policy that answers with a group's
exact distribution is at 0 from that group; targets from the source or from first choices."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from pluralign.aggregate.distributional import (
    PERSONALISED,
    UNIFORM,
    emd,
    group_alignment,
    js,
    tv,
)
from pluralign.core.data import Annotation, Annotations


def test_distances_match_scipy_on_random_distributions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(2, 8))
        p, q = rng.dirichlet(np.full(m, 0.5)), rng.dirichlet(np.full(m, 0.5))
        p[rng.random(m) < 0.2] = 0  # zero shares happen in real groups
        p = p / p.sum() if p.sum() else np.full(m, 1 / m)
        x = rng.normal(size=m) * 3
        assert np.isclose(js(p, q), jensenshannon(p, q, base=2), atol=1e-9)
        assert np.isclose(tv(p, q), 0.5 * np.abs(p - q).sum())
        span = x.max() - x.min()
        assert np.isclose(emd(p, q, x), wasserstein_distance(x, x, p, q) / span, atol=1e-9)
        assert js(p, p) < 1e-7 and tv(p, p) == 0 and emd(p, p, x) < 1e-12
    assert np.isclose(js([1, 0], [0, 1]), 1.0) and np.isclose(emd([1, 0, 0], [0, 0, 1],
                                                                  [1, 2, 3]), 1.0)


SHARES = {"A": [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], "B": [[0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]}


def _data(with_targets: bool, answers_per_group: int = 30) -> Annotations:
    """Two questions, groups A and B, each annotator answering both by a group's first choice
    drawn from its shares; the group's distribution in metadata when `with_targets`."""
    rng = np.random.default_rng(1)
    rows = []
    for g, shares in SHARES.items():
        for h in range(answers_per_group):
            for q, dist in enumerate(shares):
                top = int(rng.choice(3, p=dist))
                meta = {"group_distribution": dist, "ordinal": [1, 2, 3]} if with_targets \
                    else {}
                rows.append(Annotation(f"{g}{h}", f"question {q}?", ["yes", "maybe", "no"],
                                       [top], item_id=f"q{q}", true_type=g, metadata=meta))
    return Annotations(rows)


def _logps(data: Annotations) -> np.ndarray:
    """Columns: type 0 answers as A, type 1 as B, a third policy uniformly."""
    out = np.zeros((len(data), 3, 3))
    for i, a in enumerate(data):
        q = int(a.item_id[1])
        out[i, :, 0] = np.log(SHARES["A"][q])
        out[i, :, 1] = np.log(SHARES["B"][q])
    return out


def test_a_policy_answering_with_a_groups_distribution_is_at_zero_from_it():
    data = _data(with_targets=True)
    gamma = np.array([[1.0, 0.0] if h.startswith("A") else [0.0, 1.0]
                      for h in data.annotator_codes()[1]])
    out = group_alignment(data, _logps(data), ["type_0", "type_1", "flat"], gamma, 2,
                          n_boot=50)
    assert out["target"].startswith("the source's") and out["groups"] == ["A", "B"]
    for metric in ("js", "tv", "emd"):
        by = out[metric]["by_group"]
        assert by["type_0"]["A"] < 1e-7 and by["type_1"]["B"] < 1e-7
        assert by["type_0"]["B"] > 0.1 and out[metric]["worst_group"]["type_0"] == "B"
        assert out[metric]["worst"][PERSONALISED] < 1e-7  # each served their own group's
        assert np.isclose(out[metric]["worst"]["flat"], out[metric]["worst"][UNIFORM])
    expected = max(np.mean([jensenshannon(SHARES[g][q], [1 / 3] * 3, base=2)
                            for q in range(2)]) for g in "AB")
    assert np.isclose(out["js"]["worst"][UNIFORM], expected)
    low, high = out["js"]["worst_interval"]["type_0"]
    assert low <= out["js"]["worst"]["type_0"] <= high
    low, high = out["js"]["by_group_interval"]["flat"]["A"]
    assert low < out["js"]["by_group"]["flat"]["A"] < high


def test_without_source_distributions_the_targets_are_first_choices():
    data = _data(with_targets=False, answers_per_group=40)
    gamma = np.full((len(data.annotator_ids), 2), 0.5)
    out = group_alignment(data, _logps(data), ["type_0", "type_1", "flat"], gamma, 2)
    assert out["target"].startswith("each group's first choices") and "emd" not in out
    empirical = {}
    for a in data:
        empirical.setdefault((a.item_id, a.true_type), np.zeros(3))[a.ranking[0]] += 1
    want = np.mean([js(SHARES["A"][q], empirical[(f"q{q}", "A")]) for q in range(2)])
    assert np.isclose(out["js"]["by_group"]["type_0"]["A"], want)
    too_few = _data(with_targets=False, answers_per_group=3)  # fewer than MIN_ANSWERS
    assert group_alignment(too_few, _logps(too_few), ["a", "b", "c"],
                           np.full((6, 2), 0.5), 2) is None
