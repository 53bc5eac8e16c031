"""EM-DPO: the E-step by hand, recovery, monotonicity, resume after a kill, identifiability."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pluralign.core.data import Annotation, Annotations
from pluralign.core.rankings import Rankings
from pluralign.em.estep import annotation_loglik, annotator_loglik, e_step
from pluralign.em.estimator import EMDPO, IdentifiabilityError
from pluralign.simulate import SimulationConfig, simulate


def _ari(pop, em: EMDPO) -> float:
    truth = [pop.truth["annotators"][h]["type"] for h in em.annotator_ids_]
    return adjusted_rand_score(truth, em.posteriors_.argmax(1))


@pytest.fixture(scope="module")
def three_types():
    pop = simulate(SimulationConfig(types=3, annotators=150, per_annotator=8, seed=5))
    return pop, Annotations(pop.records)


def test_e_step_matches_a_hand_computed_example():
    # Annotator A judged two pairs, B one 3-way ranking. Type 0 likes response 0, type 1
    # response 1 (log-ratio +1 on the liked one), beta = 2, priors (0.25, 0.75).
    data = [Annotation("A", "p", ["x", "y"], [0, 1]), Annotation("A", "q", ["x", "y"], [0, 1]),
            Annotation("B", "r", ["x", "y", "z"], [1, 0, 2])]
    s = np.full((3, 3, 2), np.nan)
    s[:2, :2, 0], s[:2, :2, 1] = [1.0, 0.0], [0.0, 1.0]
    s[2, :, 0], s[2, :, 1] = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    per = annotation_loglik(s, Rankings.from_annotations(data), beta=2.0)
    lik = annotator_loglik(per, np.array([0, 0, 1]), 2)
    gamma, loglik = e_step(lik, np.array([0.25, 0.75]))

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    e2 = math.exp(2)
    a0, a1 = sig(2) ** 2, sig(-2) ** 2                     # A under type 0 / type 1
    b0 = (1 / (e2 + 2)) * (e2 / (e2 + 1))                  # B: y first of 3, then x over z
    b1 = (e2 / (e2 + 2)) * (1 / 2)
    assert lik[0] == pytest.approx([math.log(a0), math.log(a1)])
    assert lik[1] == pytest.approx([math.log(b0), math.log(b1)])
    assert gamma[0, 0] == pytest.approx(0.25 * a0 / (0.25 * a0 + 0.75 * a1))
    assert gamma[1, 1] == pytest.approx(0.75 * b1 / (0.25 * b0 + 0.75 * b1))
    assert loglik == pytest.approx(math.log(0.25 * a0 + 0.75 * a1) +
                                   math.log(0.25 * b0 + 0.75 * b1))


def test_linear_em_recovers_types_and_never_decreases(three_types):
    pop, data = three_types
    em = EMDPO("linear", n_types=3, random_state=0).fit(data)
    assert _ari(pop, em) > 0.9
    assert np.all(np.diff(em.loglik_history_) >= -1e-6 * np.abs(em.loglik_history_[:-1]))
    assert em.warnings_ == [] and em.converged_
    assert em.posteriors_.shape == (150, 3) and np.allclose(em.posteriors_.sum(1), 1)
    assert em.priors_ == pytest.approx(em.posteriors_.mean(0))
    assert em.heterogeneity_["gain"] > 50  # K=3 explains far more than plain DPO (K=1)
    gamma = em.predict_proba(data)
    # predict_proba uses priors_ (the mean of the final posteriors); the last E-step used the
    # previous iteration's mean: at convergence the two agree closely.
    assert isinstance(gamma, np.ndarray) and np.allclose(gamma, em.posteriors_, atol=1e-3)
    assert em.assign(data)[1] == em.annotator_ids_ == data.annotator_ids
    assert np.array_equal(em.predict(data), gamma.argmax(1))


@pytest.mark.parametrize("selection", ["cv", "heldout"])
def test_auto_picks_the_true_number_of_types(three_types, selection):
    pop, data = three_types
    em = EMDPO("linear", n_types="auto", max_types=4, n_init=2, selection=selection,
               random_state=1).fit(data)
    assert em.n_types_ == 3
    assert [r["k"] for r in em.selection_] == [1, 2, 3, 4]
    held = {"cv": 150, "heldout": round(0.25 * 150)}[selection]  # cv: everyone, once
    assert all(r["heldout_annotators"] == held for r in em.selection_)


def test_cv_folds_partition_the_annotators():
    ids = [f"a{i}" for i in range(23)]
    folds = EMDPO(selection="cv", heldout_fraction=0.2, random_state=4)._folds(ids)
    assert len(folds) == 5 and sorted(x for f in folds for x in f) == sorted(ids)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    one = EMDPO(selection="heldout", heldout_fraction=0.2, random_state=4)._folds(ids)
    assert len(one) == 1 and len(one[0]) == 5


def test_sparse_m_step_skips_work_and_keeps_the_answer(three_types):
    pop, data = three_types
    dense = EMDPO("linear", n_types=3, random_state=0).fit(data)
    sparse = EMDPO("linear", n_types=3, random_state=0, sparse_threshold=0.01).fit(data)
    assert sparse.sparse_skipped_share_ > 0.3
    assert adjusted_rand_score(dense.posteriors_.argmax(1), sparse.posteriors_.argmax(1)) > 0.95


def test_resume_after_interruption_equals_an_uninterrupted_run(three_types, tmp_path):
    _, data = three_types
    plain = EMDPO("linear", n_types=3, n_init=2, random_state=3).fit(data)
    calls = []

    def kill_at_second(k: int, it: int, objective: float) -> None:
        calls.append((k, it))
        if k == 3 and it == 1:
            raise KeyboardInterrupt  # as if killed right after the second iteration's checkpoint

    with pytest.raises(KeyboardInterrupt):  # checkpoint_interval 0: after every iteration
        EMDPO("linear", n_types=3, n_init=2, random_state=3, checkpoint_dir=tmp_path,
              callback=kill_at_second, checkpoint_interval=0).fit(data)
    done_before = len(calls)
    resumed = EMDPO("linear", n_types=3, n_init=2, random_state=3, checkpoint_dir=tmp_path,
                    callback=lambda k, it, objective: calls.append((k, it)),
                    checkpoint_interval=0).fit(data)
    first_resumed = calls[done_before]
    assert first_resumed == (3, 2)  # iterations 0 and 1 were not run again
    assert np.allclose(resumed.posteriors_, plain.posteriors_, atol=1e-10)
    assert resumed.loglik_history_ == pytest.approx(plain.loglik_history_, abs=1e-8)


def test_quick_runs_write_no_checkpoint_and_end_the_same(three_types, tmp_path):
    """checkpoint_interval: a run is saved once that much of its work is unsaved; runs quicker
    than it write nothing (re-running them costs less than the files), with the same result."""
    _, data = three_types
    every = EMDPO("linear", n_types=2, n_init=1, checkpoint_dir=tmp_path / "every",
                  checkpoint_interval=0).fit(data)
    assert list((tmp_path / "every").glob("*/*/state.json"))
    lazy = EMDPO("linear", n_types=2, n_init=1, checkpoint_dir=tmp_path / "lazy",
                 checkpoint_interval=3600).fit(data)
    assert not list((tmp_path / "lazy").glob("*/*/state.json"))
    assert np.array_equal(lazy.posteriors_, every.posteriors_)
    with pytest.raises(ValueError, match="checkpoint_interval"):
        EMDPO("linear", checkpoint_interval=-1).fit(data)


def test_checkpoints_of_other_settings_are_not_resumed(three_types, tmp_path):
    _, data = three_types
    EMDPO("linear", n_types=2, n_init=1, checkpoint_dir=tmp_path, checkpoint_interval=0).fit(data)
    calls = []
    other = EMDPO("linear", n_types=2, n_init=1, sparse_threshold=0.01, checkpoint_dir=tmp_path,
                  callback=lambda k, it, o: calls.append((k, it))).fit(data)
    assert calls[0] == (2, 0)  # started afresh instead of reusing the finished run
    fresh = EMDPO("linear", n_types=2, n_init=1, sparse_threshold=0.01).fit(data)
    assert np.allclose(other.posteriors_, fresh.posteriors_)


def test_a_changed_start_is_not_resumed(three_types, tmp_path):
    """The checkpoint key holds the starting posteriors: a run from another start (another
    init, or a linear start with other options) begins afresh and ends as a fresh fit."""
    _, data = three_types
    n = len(data.annotator_ids)
    starts = [np.random.default_rng(s).dirichlet(np.ones(2), size=n) for s in (0, 1)]
    EMDPO("linear", n_types=2, init=starts[0], checkpoint_dir=tmp_path,
          checkpoint_interval=0).fit(data)
    calls = []
    other = EMDPO("linear", n_types=2, init=starts[1], checkpoint_dir=tmp_path,
                  callback=lambda k, it, o: calls.append((k, it))).fit(data)
    assert calls[0] == (2, 0)
    fresh = EMDPO("linear", n_types=2, init=starts[1]).fit(data)
    assert np.allclose(other.posteriors_, fresh.posteriors_)


def test_linear_start_of_a_lora_run_takes_the_linear_options():
    em = EMDPO("lora", n_types=2, backend_options={"model": "builtin:tiny", "rank": 4},
               init_options={"l2": 30.0})
    opts = em._linear_start(2).backend_options
    assert opts == {"model": "builtin:tiny", "l2": 30.0, "features": "embedding"}
    em.set_params(init_options={"features": "onehot"})  # a survey's questions repeat
    assert em._linear_start(2).backend_options["features"] == "onehot"


def test_one_pair_per_annotator_is_refused_and_forcing_finds_nothing():
    pop = simulate(SimulationConfig(types=3, annotators=300, per_annotator=1, list_size=(2, 2),
                                    seed=0))
    data = Annotations(pop.records)
    with pytest.raises(IdentifiabilityError, match="not-identifiable.*force"):
        EMDPO("linear", n_types=3).fit(data)
    forced = EMDPO("linear", n_types=3, force=True, random_state=0).fit(data)
    assert abs(_ari(pop, forced)) < 0.1  # the theory: one comparison each identifies nothing


def test_lora_em_runs_from_linear_initialisation(tmp_path, caplog):
    pop = simulate(SimulationConfig(flavour="text", types=2, annotators=6, per_annotator=2,
                                    seed=1))
    data = Annotations(pop.records)
    opts = dict(model="builtin:tiny", top_layers=2, max_prompt_tokens=32,
                max_response_tokens=32, cache=str(tmp_path / "cache"), progress=False,
                batch_size=4)
    with caplog.at_level("INFO", logger="pluralign.em"):
        em = EMDPO("lora", n_types=2, backend_options=opts, max_iter=2,  # 6 annotators: no
                   min_type_share=0, min_type_annotators=0, merge_nats=0,  # floor: keep both
                   checkpoint_dir=tmp_path / "ckpt", checkpoint_interval=0).fit(data)
    # before each LoRA run, its estimated time (a timed probe), then the run
    said = [r.getMessage() for r in caplog.records if "per EM iteration" in r.getMessage()]
    assert said and said[0].startswith("K=2: about ") and "at most 2 iteration(s): up to" in \
        said[0]
    assert em.posteriors_.shape == (6, 2) and len(em.loglik_history_) == 2
    assert (tmp_path / "ckpt" / "final-K2" / "init0" / "state.json").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt" / "final-K2" / "init0").glob(
        "backend-*/type_*")) == ["type_0", "type_1"]


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="n_types"):
        EMDPO(n_types=0).fit([])
    with pytest.raises(ValueError, match="selection"):
        EMDPO(selection="aic").fit([])


def test_lora_run_reports_types_its_linear_start_pruned(tmp_path):
    """6 annotators of 2 types asked for 4: the linear start prunes the 2 empty types, the
    LoRA run trains the 2 that remain (each above the floor), and the pruning is reported
    as the linear start's, one action per type removed."""
    pop = simulate(SimulationConfig(flavour="text", types=2, annotators=6, per_annotator=2,
                                    seed=1))
    opts = dict(model="builtin:tiny", top_layers=2, max_prompt_tokens=32,
                max_response_tokens=32, cache=str(tmp_path / "cache"), progress=False,
                batch_size=4)
    em = EMDPO("lora", n_types=4, backend_options=opts, max_iter=1, min_type_annotators=1,
               merge_nats=0).fit(Annotations(pop.records))
    assert em.n_types_ == 2 and em.posteriors_.shape == (6, 2)
    assert em.backend_.n_types == 2 and all(len(h) == 1 for h in em.backend_.history_.values())
    assert [a["k"] for a in em.actions_] == [4, 3]
    assert all(a["stage"] == "linear start" and a["action"] == "pruned" for a in em.actions_)
    assert em.posteriors_.sum(0).min() >= 1 - 1e-9      # every type left is above the floor


def test_too_few_annotators_give_a_feasible_k_or_a_clear_message():
    pop = simulate(SimulationConfig(types=2, annotators=3, per_annotator=4, seed=0))
    data = Annotations(pop.records)
    with pytest.raises(ValueError, match="n_types=5 exceeds the 3 annotator"):
        EMDPO("linear", n_types=5).fit(data)
    em = EMDPO("linear", n_types="auto", max_types=5).fit(data)   # folds of 1-2 train annotators
    assert 1 <= em.n_types_ <= 2 and max(r["k"] for r in em.selection_) <= 2
    one = Annotations([a for a in data if a.annotator_id == data.annotator_ids[0]])
    em = EMDPO("linear", n_types="auto").fit(one)
    assert em.n_types_ == 1 and "only feasible" in em.selection_[0]["note"]


def test_readme_sklearn_example_runs_and_clone_keeps_every_parameter():
    """The README's example, executed as written; then the scikit-learn contract itself."""
    import re
    from pathlib import Path

    from sklearn.base import clone
    from sklearn.metrics import adjusted_rand_score
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"<!-- example: sklearn -->\n```python\n(.*?)```", readme, re.S).group(1)
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102 - our own README
    proba, labels, auto, pop, rows = (env[n] for n in ("proba", "labels", "auto", "pop", "rows"))
    ids = list(dict.fromkeys(r["annotator_id"] for r in rows))
    assert proba.shape == (40, 2) and np.allclose(proba.sum(1), 1)
    truth = [pop.truth["annotators"][h]["type"] for h in ids]
    assert adjusted_rand_score(truth, labels) > 0.9 and auto.n_types_ == 2
    em = EMDPO("linear", n_types=4, max_iter=7, init_options={"l2": 2.0}, random_state=5)
    twin = clone(em)
    assert twin is not em and twin.get_params() == em.get_params()
    assert twin.set_params(n_types=2) is twin and twin.n_types == 2 and em.n_types == 4
    assert "max_iter=7" in repr(em)


def test_fit_reads_every_input_form_and_names_a_bad_row(three_types, tmp_path):
    import pandas as pd

    from pluralign.core.data import save
    from pluralign.ingest import IngestError
    _, data = three_types
    rows = [a.to_dict() for a in data]
    want = EMDPO("linear", n_types=3, random_state=0).fit(data).posteriors_
    folder = tmp_path / "ds"
    save(list(data), folder)
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for form in (rows, pd.DataFrame(rows), folder, str(file), list(data)):
        got = EMDPO("linear", n_types=3, random_state=0).fit(form).posteriors_
        assert np.allclose(got, want, atol=1e-9), type(form).__name__
    bad = [dict(r) for r in rows[:5]]
    bad[3]["ranking"] = [0, 0]
    with pytest.raises(IngestError, match=r"rows, row 4: field 'ranking'"):
        EMDPO("linear", n_types=2).fit(bad)
    with pytest.raises(TypeError, match="cannot read annotations from int"):
        EMDPO("linear", n_types=2).fit(7)
    with pytest.raises(IngestError, match="nope: not a file or folder"):
        EMDPO("linear", n_types=2).fit(tmp_path / "nope")


def test_max_time_stops_each_run_with_a_warning(three_types):
    _, data = three_types
    with pytest.warns(UserWarning, match="max_time"):
        em = EMDPO("linear", n_types=3, n_init=3, max_iter=50, tol=1e-12, max_time=1e-3,
                   random_state=0).fit(data)
    assert em.n_iter_ == 1 and not em.converged_  # one iteration, then the budget stopped it
    assert any(w["code"] == "max_time" and "max_time (0.001 s) is spent" in w["message"]
               for w in em.warnings_)
    with pytest.raises(ValueError, match="max_time must be a positive"):
        EMDPO("linear", max_time=0).fit(data)
