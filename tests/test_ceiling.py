"""The supervised ceiling beside every discovery figure: the same backend fitted with the
labels known, assigning the same annotators. On separable types it reaches what EM reaches;
on labels that say nothing about preferences it is low, and the audit says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pluralign.backends.linear import LinearBackend
from pluralign.core.data import Annotations
from pluralign.em.ceiling import SupervisedCeiling, compare
from pluralign.simulate import SimulationConfig, simulate


def _population(seed: int, annotators: int, **extra) -> Annotations:
    return Annotations(simulate(SimulationConfig(types=3, annotators=annotators,
                                                 per_annotator=6, seed=seed,
                                                 **extra)).records)


def test_ceiling_fits_one_policy_per_label_on_that_labels_annotations():
    data = _population(1, 60)
    ceiling = SupervisedCeiling(lambda k: LinearBackend(types=k)).fit(data)
    assert ceiling.labels_ == sorted({a.true_type for a in data})
    for k, label in enumerate(ceiling.labels_):      # the oracle: a plain fit on those rows
        own = LinearBackend(types=1)
        own.design(data)
        own.fit(0, data, np.array([a.true_type == label for a in data], dtype=float))
        assert np.allclose(ceiling.backend_.theta_[k], own.theta_[0], atol=1e-6)
    shares = [sum(a.true_type == t for a in data) / len(data) for t in ceiling.labels_]
    assert ceiling.priors_ == pytest.approx(shares)   # 6 annotations each: annotator shares


def test_the_cross_fitted_ceiling_assigns_each_annotator_without_its_own_data():
    """Every annotator of a fold is assigned by the policies fitted on the other fold: their
    posterior equals the one a ceiling fitted on the other fold's annotations alone gives."""
    data = _population(2, 40)
    make = lambda k: LinearBackend(types=k)  # noqa: E731
    gamma, ids = SupervisedCeiling(make).cross_fit(data, folds=2, random_state=0)
    assert gamma.shape == (40, 3) and np.allclose(gamma.sum(axis=1), 1)
    first = ids[0]
    # the oracle: refit on exactly the other fold, assign the held-out fold
    rng = np.random.default_rng(0)
    labels = {a.annotator_id: a.true_type for a in data}
    fold = {}
    for label in sorted(set(labels.values())) + [None]:
        members = [h for h in ids if labels.get(h) == label]
        for i, h in enumerate(rng.permutation(np.asarray(members, dtype=object))):
            fold[h] = i % 2
    other = data.subset(i for i, a in enumerate(data) if fold[a.annotator_id] != fold[first])
    mine = data.subset(i for i, a in enumerate(data) if fold[a.annotator_id] == fold[first])
    g, seen = SupervisedCeiling(make).fit(other).predict_proba(mine)
    assert np.allclose(gamma[0], g[seen.index(first)])


def test_compare_scores_both_against_the_labels_and_resamples_them_together():
    truth = ["a"] * 5 + ["b"] * 5
    em = np.eye(2)[[1] * 5 + [0] * 4 + [1]]           # types swapped, one annotator wrong
    ceiling = np.eye(2)[[0] * 5 + [1] * 5]            # perfect, columns named a, b
    out = compare(truth, em, ceiling, ["a", "b"], n_boot=50, seed=0)
    assert out["em"]["accuracy"] == pytest.approx(0.9) and out["ceiling"]["accuracy"] == 1.0
    assert out["ceiling"]["ari"] == pytest.approx(1.0)
    assert out["ratio"] == pytest.approx(out["em"]["ari"])
    lo, hi = out["ari_difference_interval"]
    assert lo <= out["em"]["ari"] - 1.0 <= hi


@pytest.mark.slow
def test_run_reports_the_ceiling_beside_every_discovery_figure(tmp_path, cli):
    common = ["--types", "3", "--seed", "8", "--per-annotator", "6"]
    assert cli("simulate", "--out", tmp_path / "train", "--annotators", "90", *common)[0] == 0
    assert cli("simulate", "--out", tmp_path / "held", "--annotators", "30", *common)[0] == 0
    rc, out, err = cli("em", "--data", tmp_path / "train", "--out", tmp_path / "run",
                       "--types", "3")
    assert rc == 0, err
    assert "supervised ceiling (same backend, labels known, cross-fitted over 2 folds) ARI" in out
    em = json.loads((tmp_path / "run" / "em.json").read_text())
    c = em["audit"]["ceiling"]
    assert c["cross_fitted_folds"] == 2 and c["ceiling"]["ari"] > 0.8 and c["ratio"] > 0.8
    assert c["em"]["ari"] == pytest.approx(em["audit"]["ari"])
    assert (tmp_path / "run" / "ceiling" / "ceiling.json").is_file()
    for step in (["aggregate", "--data", tmp_path / "held"], ["evaluate", "--data",
                                                              tmp_path / "held"], ["report"]):
        rc, _, err = cli(step[0], "--run", tmp_path / "run", *step[1:])
        assert rc == 0, err
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    held = ev["ceiling"]
    assert held["assigned"] == "held-out" and held["annotators"] == 30
    assert held["em"]["ari"] == pytest.approx(ev["discovery"]["ari"])
    lo, hi = held["ceiling"]["ari_interval"]
    assert lo <= held["ceiling"]["ari"] <= hi and held["ceiling"]["accuracy_interval"]
    assert "low_ceiling" not in [w["code"] for w in ev["warnings"]]
    rc, _, err = cli("evaluate", "--run", tmp_path / "run")     # in-sample: the cross-fit
    assert rc == 0, err
    own = json.loads((tmp_path / "run" / "evaluation.json").read_text())["ceiling"]
    assert own["assigned"] == "cross-fitted"
    assert own["ceiling"]["ari"] == pytest.approx(c["ceiling"]["ari"])
    assert cli("evaluate", "--run", tmp_path / "run", "--data", tmp_path / "held")[0] == 0
    assert cli("report", "--run", tmp_path / "run")[0] == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any("supervised ceiling" in f and f"{held['ceiling']['ari']:.3f}" in f
               for f in report["findings"])


def test_labels_that_say_nothing_give_a_low_ceiling_and_a_warning(tmp_path, cli):
    """Two real types, but each annotator labelled by a coin flip: even with the labels known
    nobody can tell those groups apart, and the audit says so."""
    from dataclasses import replace

    from pluralign.core.data import save
    records = simulate(SimulationConfig(types=2, annotators=60, per_annotator=6,
                                        seed=3)).records
    coin = {h: str(c) for h, c in zip(sorted({a.annotator_id for a in records}),
                                      np.random.default_rng(0).integers(0, 2, size=60),
                                      strict=True)}
    save([replace(a, true_type=coin[a.annotator_id]) for a in records], tmp_path / "data")
    rc, out, err = cli("em", "--data", tmp_path / "data", "--out", tmp_path / "run",
                       "--types", "2")
    assert rc == 0, err
    em = json.loads((tmp_path / "run" / "em.json").read_text())
    assert em["audit"]["ceiling"]["ceiling"]["ari"] < 0.2
    assert "low_ceiling" in [w["code"] for w in em["warnings"]]
    assert "cannot be told apart" in out
