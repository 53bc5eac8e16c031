"""Each discovery warning fires on a case built to trigger it and stays quiet on a clean one."""

from __future__ import annotations

import numpy as np

from pluralign.core import diagnostics as D
from pluralign.core.data import Annotations
from pluralign.em.estimator import EMDPO
from pluralign.simulate import SimulationConfig, simulate
from pluralign.stages.pipeline import split_annotators


def _codes(warnings: list[dict]) -> list[str]:
    return [w["code"] for w in warnings]


def test_heterogeneity_warnings():
    assert _codes(D.heterogeneity_warnings(-1.8, 20, 2)) == ["no_heterogeneity"]
    assert _codes(D.heterogeneity_warnings(1.0, 100, 2)) == ["small_heterogeneity"]
    # in-sample 1 nat per annotator, held-out 0.1: overconfident
    assert _codes(D.heterogeneity_warnings(100.0, 100, 3, 5.0, 50)) == ["overconfident_posteriors"]
    assert D.heterogeneity_warnings(100.0, 100, 3, 45.0, 50) == []   # held-out 0.9 of in-sample
    assert D.heterogeneity_warnings(-5.0, 100, 1) == []                # K = 1: nothing to test


def test_confidence_and_size_warnings():
    rng = np.random.default_rng(0)
    near_uniform = rng.dirichlet([50, 50], size=40)           # max posterior ~0.55
    assert _codes(D.confidence_warnings(near_uniform)) == ["near_uniform_posteriors"]
    sharp = np.eye(2)[rng.integers(0, 2, 40)] * 0.98 + 0.01
    assert D.confidence_warnings(sharp) == []
    small = np.vstack([np.tile([1.0, 0.0], (36, 1)), np.tile([0.0, 1.0], (4, 1))])
    (w,) = D.size_warnings(small)
    assert w["code"] == "few_annotators" and "type_1" in w["message"]
    assert D.size_warnings(sharp) == []


def test_unmatched_groups_warning():
    labels = ["a", "a", "b", "c"]
    (w,) = D.label_match_warnings({"a": 0, "b": 1}, labels, 2)
    assert w["code"] == "unmatched_groups" and "'c'" in w["message"]
    assert D.label_match_warnings({"a": 0, "b": 1, "c": 2}, labels, 3) == []


def test_split_warning_and_the_stratified_split():
    train = {"a": "x", "b": "x", "c": "y"}
    (w,) = D.split_warnings(train, {"d": "x"}, "group")
    assert w["code"] == "heldout_misses_group" and "'y'" in w["message"]
    assert D.split_warnings(train, {"d": "x", "e": "y"}) == []
    # a small labelled group is held out in proportion, never missed
    pop = simulate(SimulationConfig(types=3, annotators=40, per_annotator=2, seed=0,
                                    prior=(0.8, 0.15, 0.05)))
    data = Annotations(pop.records)
    for seed in range(20):
        train_part, held = split_annotators(data, 0.2, seed)
        labels = {a.true_type for a in held}
        assert labels == {a.true_type for a in data if
                          sum(b.true_type == a.true_type for b in data) >= 4}, seed
        assert not set(train_part.annotator_ids) & set(held.annotator_ids)
        assert len(held.annotator_ids) in (8, 9)


def test_a_clean_fit_is_quiet_and_a_structureless_one_warns():
    pop = simulate(SimulationConfig(types=2, annotators=60, per_annotator=8, seed=1))
    clean = EMDPO("linear", n_types=2, n_init=1).fit(Annotations(pop.records))
    assert clean.warnings_ == []
    noise = simulate(SimulationConfig(types=2, annotators=60, per_annotator=8, seed=1,
                                      misspecify={"random": 1.0}))
    em = EMDPO("linear", n_types=2, n_init=1, min_type_share=0, min_type_annotators=0,
               merge_nats=0).fit(Annotations(noise.records))
    small = [w for w in em.warnings_ if w["code"] == "small_heterogeneity"]
    assert len(small) == 1, em.warnings_
    per = em.heterogeneity_["gain_per_annotator"]   # the warning's own figure, below the bar
    assert 0 < per < D.SMALL_GAIN_PER_ANNOTATOR and f"{per:.3f}" in small[0]["message"]
