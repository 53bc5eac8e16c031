"""A score that is not a finite number (NaN, inf) on a real candidate stops every stage with
a message naming the annotation (its annotator, item and source row), instead of being read
as a number (a NaN log-ratio once became 0 before the E-step)."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.backends.linear import LinearBackend

BAD_ROW, BAD_CANDIDATE = 3, 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pluralign.cli import main
    from pluralign.core.data import load
    root = tmp_path_factory.mktemp("finite")
    assert main(["simulate", "--out", str(root / "data"), "--types", "2", "--annotators", "30",
                 "--per-annotator", "4", "--seed", "4"]) == 0
    assert main(["simulate", "--out", str(root / "new"), "--types", "2", "--annotators", "6",
                 "--per-annotator", "4", "--seed", "5"]) == 0
    assert main(["em", "--data", str(root / "data"), "--out", str(root / "run"), "--types",
                 "2"]) == 0
    return root, load(root / "data"), load(root / "new")


def _poison(monkeypatch, method: str) -> None:
    """Make the linear backend's `method` return NaN on one real candidate of row BAD_ROW."""
    original = getattr(LinearBackend, method)

    def poisoned(self, data):
        out = np.array(original(self, data), dtype=np.float64)
        out[BAD_ROW, BAD_CANDIDATE] = np.nan
        return out
    monkeypatch.setattr(LinearBackend, method, poisoned)


def _names(err: str, data) -> None:
    a = data[BAD_ROW]
    assert f"candidate {BAD_CANDIDATE} of annotation {BAD_ROW}" in err, err
    assert repr(a.annotator_id) in err and f"{a.source} row {a.source_row}" in err, err
    assert "nan" in err


def test_em_stops_on_a_nan_log_ratio(world, monkeypatch, cli, tmp_path):
    root, data, _ = world
    _poison(monkeypatch, "_logratios")
    # the linear E-step scores rankings directly; a non-finite one sends it to the log-ratios
    original = LinearBackend.ranking_loglik
    monkeypatch.setattr(LinearBackend, "ranking_loglik", lambda self, d: original(self, d) * (
        np.where(np.arange(len(d))[:, None] == BAD_ROW, np.nan, 1.0)))
    rc, _, err = cli("em", "--data", root / "data", "--out", tmp_path / "run", "--types", "2")
    assert rc == 2
    _names(err, data)
    assert not (tmp_path / "run" / "em.json").exists()


@pytest.mark.parametrize("method", ["_logratios", "_reference_logps"])
def test_aggregate_stops_on_a_nan_score(world, monkeypatch, cli, method):
    root, data, _ = world
    _poison(monkeypatch, method)
    rc, _, err = cli("aggregate", "--run", root / "run")
    assert rc == 2
    _names(err, data)


def test_evaluate_stops_on_a_nan_score_computed_or_read_back(world, monkeypatch, cli):
    root, data, _ = world
    assert cli("aggregate", "--run", root / "run")[0] == 0
    scores = root / "run" / "scores.npz"
    with np.load(scores) as z:
        saved = {name: z[name] for name in z.files}
    bad = dict(saved)
    bad["p:_s"] = saved["p:_s"].copy()
    bad["p:_s"][BAD_ROW, BAD_CANDIDATE, 0] = np.nan
    np.savez(scores, **bad)                      # a corrupted scores file, key intact
    rc, _, err = cli("evaluate", "--run", root / "run")
    assert rc == 2
    _names(err, data)
    scores.unlink()                              # recomputed by the backend
    _poison(monkeypatch, "_logratios")
    rc, _, err = cli("evaluate", "--run", root / "run")
    assert rc == 2
    _names(err, data)


def test_assign_stops_on_a_nan_log_ratio(world, monkeypatch, cli):
    root, _, new = world
    _poison(monkeypatch, "_logratios")
    rc, _, err = cli("assign", "--run", root / "run", "--data", root / "new")
    assert rc == 2
    _names(err, new)


def test_the_e_step_refuses_a_nan_on_a_real_candidate_and_ignores_padding():
    import torch

    from pluralign.backends.base import NonFiniteScoreError
    from pluralign.core.rankings import Rankings
    from pluralign.em.estep import annotation_loglik
    rank = Rankings(torch.tensor([[0, 1], [1, -1]]), torch.tensor([[True, True, False],
                                                                   [True, True, True]]))
    s = np.zeros((2, 3, 1))
    s[0, 2] = np.nan                                    # padding: fine
    assert np.isfinite(annotation_loglik(s, rank, 1.0)).all()
    s[1, 2] = np.nan                                    # a real candidate: an error
    with pytest.raises(NonFiniteScoreError, match="candidate 2 of annotation 1"):
        annotation_loglik(s, rank, 1.0)
