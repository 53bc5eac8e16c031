"""A dataset read from its arrow columns is the dataset read as records: codes, sizes, rankings,
features, indexing, errors and a whole linear EM fit; and the columnar simulator draws
Plackett–Luce rankings (checked against the closed-form probabilities)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pluralign.core.columns import MissingFeatures
from pluralign.core.data import Annotation, Annotations, load, save
from pluralign.core.plackett_luce import log_prob
from pluralign.em.estimator import EMDPO
from pluralign.settings import SimulationConfig
from pluralign.simulate import simulate
from pluralign.simulate.columnar import simulate_columnar


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A ragged population (2..4 candidates, top-2 rankings) as records, and its folder."""
    pop = simulate(SimulationConfig(types=3, annotators=40, per_annotator=6, list_size=(2, 4),
                                    ranking_length=2, seed=3))
    folder = tmp_path_factory.mktemp("cols")
    save(pop.records, folder)
    return Annotations(pop.records), folder


def test_columns_equal_records(both):
    rec, col = both[0], load(both[1], verify=False)
    assert col.columnar and not rec.columnar
    codes_r, ids_r = rec.annotator_codes()
    codes_c, ids_c = col.annotator_codes()
    assert ids_c == ids_r and np.array_equal(codes_c, codes_r)
    assert np.array_equal(col.sizes(), rec.sizes())
    assert np.array_equal(col.sizes(), [a.m for a in rec])
    r, c = rec.rankings(), col.rankings()
    assert np.array_equal(c.ranking, r.ranking) and np.array_equal(c.mask, r.mask)
    assert c.ranking[5, : rec[5].L].tolist() == rec[5].ranking
    (vr, sr), (vc, sc) = rec.feature_values(), col.feature_values()
    assert np.array_equal(vc, vr) and np.array_equal(sc, sr)
    assert np.array_equal(vc[: rec[0].m], rec[0].features)
    assert col._records is None  # none of the above built a record


def test_indexing_and_subsets_stay_columnar(both):
    rec, col = both[0], load(both[1], verify=False)
    assert col[7] == rec[7] and col[-1] == rec[-1]
    with pytest.raises(IndexError):
        col[len(col)]
    part = col[3:11:2]
    assert part.columnar and list(part) == list(rec[3:11:2])
    sub = col.subset([9, 2, 2])
    assert sub.columnar and list(sub) == [rec[9], rec[2], rec[2]]
    assert col._records is None
    assert list(col) == list(rec)  # iteration builds the records, equal to the originals


def test_linear_em_on_columns_equals_records_and_builds_no_record(both):
    rec, col = both[0], load(both[1], verify=False)
    fits = [EMDPO("linear", n_types=3, n_init=2, random_state=0).fit(d) for d in (rec, col)]
    assert col._records is None
    np.testing.assert_allclose(fits[1].posteriors_, fits[0].posteriors_, atol=1e-10)
    assert fits[1].identifiability_ == fits[0].identifiability_


def _rows(features):
    return [Annotation("h", "p", ["x", "y"], [0], features=f) for f in features]


@pytest.mark.parametrize("columnar", [False, True])
def test_feature_errors_name_the_row(tmp_path, columnar):
    ok = [[1.0, 2.0], [3.0, 4.0]]
    for rows, match in ((_rows([ok, None, ok]), "annotation 1 has none"),
                        (_rows([ok, ok, [[1.0], [2.0]]]), "annotation 2: .* width \\[1\\]")):
        data = Annotations(rows)
        if columnar:
            save(rows, tmp_path, validate=False)
            data = load(tmp_path, verify=False)
        with pytest.raises(ValueError, match=match) as e:
            data.feature_values()
        if "none" in match:
            assert isinstance(e.value, MissingFeatures) and e.value.row == 1


def test_columnar_simulator_draws_plackett_luce():
    """One item, one type: the frequencies of the 6 full rankings of 3 match PL's closed-form
    probabilities (chi-square, 5 degrees of freedom, far above the 0.001 critical value 20.5
    only if the draws are wrong); the truth's type codes are the rows' labels."""
    cfg = SimulationConfig(types=1, annotators=4000, per_annotator=5, items=1, seed=7)
    data, truth = simulate_columnar(cfg, block=1500)
    rec = data[0]
    w = np.array(truth["types"][0]["weights"])
    rewards = np.array(rec.features) @ w
    perms = list(itertools.permutations(range(3)))
    seen = {p: 0 for p in perms}
    for row in data.rankings().ranking.tolist():
        seen[tuple(row)] += 1
    expected = np.array([np.exp(log_prob(rewards, list(p))) for p in perms]) * len(data)
    chi2 = float(((np.array([seen[p] for p in perms]) - expected) ** 2 / expected).sum())
    assert chi2 < 20.5
    assert len(truth["type_codes"]) == cfg.annotators and len(data.annotator_ids) == 4000


def test_columnar_simulator_records_are_valid_and_typed():
    from pluralign.core.data import check_annotation
    cfg = SimulationConfig(types=3, annotators=30, per_annotator=3, list_size=(2, 4),
                           ranking_length=2, seed=1)
    data, truth = simulate_columnar(cfg, block=7)
    names = [t["name"] for t in truth["types"]]
    codes, ids = data.annotator_codes()
    for a, c in zip(data, codes, strict=True):
        check_annotation(a, cfg.feature_dim)
        assert a.true_type == names[truth["type_codes"][c]] == a.metadata["used_type"]
        assert a.L == min(2, a.m)
    with pytest.raises(ValueError, match="feature flavour"):
        simulate_columnar(SimulationConfig(flavour="text"))
