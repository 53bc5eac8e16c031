"""Group answer distributions in (OpinionQA waves, list-of-records files), populations out
(simulate --from-groups), with the Bayes oracle's and the supervised ceilings. The files here
are made up: an attribute and a wave that ../shared does not hold."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from pluralign.core.plackett_luce import log_prob
from pluralign.ingest import IngestError
from pluralign.ingest.groups import read_groups
from pluralign.settings import SimulationConfig
from pluralign.simulate import simulate, write_population
from pluralign.simulate.group_ceilings import fit_tabular, ranking_loglik
from pluralign.simulate.groups import draw_ranking
from tests.conftest import SHARED

OPTIONS = ["Strongly agree", "Agree", "Disagree", "Strongly disagree", "Refused"]
SHARES = {"Q1_W99": {"Liberal": [50, 30, 10, 5, 5], "Conservative": [5, 10, 30, 50, 5],
                     "Moderate": [10, 40, 40, 10, 0]},
          "Q2_W99": {"Liberal": [10, 20, 30, 40, 0], "Conservative": [40, 30, 20, 10, 0],
                     "Moderate": [25, 25, 25, 25, 0]},
          "Q3_W99": {"Liberal": [70, 20, 5, 5, 0], "Conservative": [70, 20, 5, 5, 0],
                     "Moderate": [0, 0, 50, 50, 0]}}


def write_wave(root: Path, attribute: str = "POLIDEOLOGY") -> Path:
    """A made-up OpinionQA wave: info.csv and {attribute}_data.json."""
    wave = root / "American_Trends_Panel_W99"
    wave.mkdir(parents=True)
    lines = [",key,question,references,option_ordinal"]
    for i, key in enumerate(SHARES):
        lines.append(f'{i},{key},"Question {key}?","{OPTIONS}","[1.0, 2.0, 3.0, 4.0]"')
    (wave / "info.csv").write_text("\n".join(lines) + "\n")
    data = {key: {"question_text": f"Question {key}?", "MC_options": OPTIONS,
                  **{g: {o: c for o, c in zip(OPTIONS, counts, strict=True) if c}
                     for g, counts in groups.items()},
                  "nan": {}}
            for key, groups in SHARES.items()}
    data["Q1_W99"]["Liberal"] = {o.upper() if o == "Agree" else o: c  # Pew's typos in case
                                 for o, c in data["Q1_W99"]["Liberal"].items()}
    (wave / f"{attribute}_data.json").write_text(json.dumps(data))
    return wave


def test_a_wave_folder_reads_options_ordinals_and_every_groups_shares(tmp_path):
    write_wave(tmp_path)
    table = read_groups(tmp_path, "POLIDEOLOGY")  # a folder of waves
    assert table.layout == "opinionqa" and table.groups == ["Conservative", "Liberal",
                                                           "Moderate"]
    q = {q.key: q for q in table.questions}["Q1_W99"]
    assert q.options == OPTIONS and q.ordinal == [1.0, 2.0, 3.0, 4.0, None]
    assert np.allclose(q.shares["Liberal"], np.array(SHARES["Q1_W99"]["Liberal"]) / 100)
    kept = q.without_refusals()
    assert kept.options == OPTIONS[:4] and kept.ordered
    assert np.allclose(kept.shares["Liberal"], np.array([50, 30, 10, 5]) / 95)
    assert read_groups(tmp_path / "American_Trends_Panel_W99").questions[0].key == "Q1_W99"


def test_a_bad_wave_names_the_file_the_question_and_the_field(tmp_path):
    wave = write_wave(tmp_path)
    with pytest.raises(IngestError, match="attributes found: POLIDEOLOGY"):
        read_groups(tmp_path, "RELIG")
    data = json.loads((wave / "POLIDEOLOGY_data.json").read_text())
    data["Q2_W99"]["Moderate"] = {"Maybe": 3}
    (wave / "POLIDEOLOGY_data.json").write_text(json.dumps(data))
    with pytest.raises(IngestError) as e:
        read_groups(tmp_path, "POLIDEOLOGY")
    assert "POLIDEOLOGY_data.json, question Q2_W99" in str(e.value)
    assert "field 'Moderate'" in str(e.value) and "'Maybe'" in str(e.value)


def records_file(path: Path) -> Path:
    """A GlobalOpinionQA-like file: most questions asked in a few of the countries."""
    rows = []
    for key, groups in SHARES.items():
        for g, counts in groups.items():
            if key == "Q2_W99" and g == "Moderate":
                continue  # a country not asked this question
            rows.append({"question": f"Question: {key}?\nOptions: A. ...\nAnswer:",
                         "options": OPTIONS, "attribute": g,
                         "gold_distribution": [c / 100 for c in counts]})
    with gzip.open(path, "wt") as f:
        json.dump(rows, f)
    return path


def test_a_records_file_is_read_with_groups_missing_per_question(tmp_path):
    table = read_groups(records_file(tmp_path / "g.json.gz"))
    assert table.layout == "records" and len(table.questions) == 3
    assert table.coverage() == {"Conservative": 3, "Liberal": 3, "Moderate": 2}
    assert table.questions[1].text == "Q2_W99?"
    with pytest.raises(IngestError, match="--attribute is for OpinionQA"):
        read_groups(tmp_path / "g.json.gz", "COUNTRY")


def test_simulated_first_choices_converge_to_the_files_shares():
    """Chi-square goodness of fit of each (question, group)'s first choices, top-1 answers
    and full rankings alike (PL on log-shares: the first place is drawn with the shares)."""
    rng = np.random.default_rng(0)
    shares = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    for length in (1, None):
        first = [draw_ranking(shares, length, rng)[0] for _ in range(20000)]
        counts = np.bincount(first, minlength=5)
        assert counts[4] == 0  # an option nobody in the group chose is never first
        assert chisquare(counts[:4], 20000 * shares[:4]).pvalue > 1e-3


def test_a_population_from_a_wave_follows_each_groups_shares(tmp_path):
    write_wave(tmp_path)
    config = SimulationConfig(from_groups=str(tmp_path), attribute="POLIDEOLOGY",
                              annotators=3000, per_annotator=3, ranking_length=1, seed=3)
    pop = simulate(config)
    assert {a.true_type for a in pop.records} == {"Liberal", "Conservative", "Moderate"}
    assert all(a.responses == OPTIONS[:4] for a in pop.records)  # Refused dropped
    for key, groups in SHARES.items():
        for g, counts in groups.items():
            first = [a.ranking[0] for a in pop.records if a.item_id == key and a.true_type == g]
            expected = np.array(counts[:4], dtype=float)
            keep = expected > 0
            observed = np.bincount(first, minlength=4)
            assert observed[~keep].sum() == 0
            assert chisquare(observed[keep], len(first) * expected[keep] / expected.sum()
                             ).pvalue > 1e-4, (key, g)
    a = pop.records[0]
    assert np.allclose(a.metadata["group_distribution"],
                       np.array(SHARES[a.item_id][a.true_type][:4]) /
                       sum(SHARES[a.item_id][a.true_type][:4]), atol=1e-6)
    assert a.metadata["ordinal"] == [1.0, 2.0, 3.0, 4.0]


def test_the_pl_law_on_shares_sums_to_one_and_matches_plackett_luce():
    """ranking_loglik against brute-force enumeration (zero shares included) and against the
    core PL log-probability on log-shares."""
    u = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    rankings = [list(p) for p in itertools.permutations(range(4))]
    ll = ranking_loglik(u, rankings)
    assert np.allclose(np.exp(ll).sum(0), 1.0)
    for length in (1, 2):
        tops = [list(p) for p in itertools.permutations(range(4), length)]
        assert np.allclose(np.exp(ranking_loglik(u, tops)).sum(0), 1.0)
    for r, row in zip(rankings, ll, strict=True):
        assert np.isclose(row[1], log_prob(np.log(u[1]), r))


def test_the_supervised_table_recovers_the_shares_and_the_oracle_is_the_ceiling(tmp_path):
    write_wave(tmp_path)
    pop = simulate(SimulationConfig(from_groups=str(tmp_path), attribute="POLIDEOLOGY",
                                    annotators=1500, per_annotator=3, seed=1))
    table = read_groups(tmp_path, "POLIDEOLOGY")
    questions = {q.key: q.without_refusals() for q in table.questions}
    fitted = fit_tabular(pop.records, ["Conservative", "Liberal", "Moderate"], questions)
    for key, q in questions.items():
        for k, g in enumerate(["Conservative", "Liberal", "Moderate"]):
            assert np.abs(fitted[key][k] - q.shares[g]).max() < 0.05, (key, g)
    c = pop.ceilings
    assert c["oracle"]["ari"] >= c["supervised"]["ari"] - 0.05
    assert 0.2 < c["supervised"]["ari"] <= 1
    assert len(c["assignments"]) == 1500
    write_population(pop, tmp_path / "pop")
    assert json.loads((tmp_path / "pop" / "ceilings.json").read_text())["oracle"] == c["oracle"]


def test_a_shared_questionnaire_and_missing_groups(tmp_path):
    path = records_file(tmp_path / "g.json.gz")
    pop = simulate(SimulationConfig(from_groups=str(path), annotators=30, per_annotator=5,
                                    shared_questions=True, seed=0))
    assert {a.item_id for a in pop.records} == {q.key for q in read_groups(path).questions
                                                if len(q.shares) == 3}
    free = simulate(SimulationConfig(from_groups=str(path), annotators=60, per_annotator=5,
                                     seed=0))
    asked = {(a.true_type, a.item_id) for a in free.records}
    q2 = next(q.key for q in read_groups(path).questions if len(q.shares) == 2)
    assert ("Moderate", q2) not in asked  # a group is asked only what its country was asked
    with pytest.raises(ValueError, match="no distribution for the group"):
        simulate(SimulationConfig(from_groups=str(path), groups=["Narnia", "Liberal"]))


@pytest.mark.skipif(not (SHARED / "data" / "opinionqa_groups").exists(),
                    reason="../shared/data is absent")
def test_simulate_from_the_shared_waves_prints_its_ceilings(cli, tmp_path):
    code, out, err = cli("simulate", "--from-groups",
                         str(SHARED / "data" / "opinionqa_groups"), "--attribute", "CREGION",
                         "--annotators", "40", "--per-annotator", "5", "--out",
                         str(tmp_path / "p"))
    assert code == 0, err
    assert "Bayes oracle ARI" in out and (tmp_path / "p" / "ceilings.json").is_file()
    code, _, err = cli("simulate", "--from-groups", str(SHARED / "data" / "opinionqa_groups"),
                       "--out", str(tmp_path / "q"))
    assert code == 2 and "choose one with --attribute" in err


def test_a_group_recipe_reports_distributional_alignment_and_its_ceilings(cli, tmp_path):
    write_wave(tmp_path / "waves")
    recipe = tmp_path / "groups.yaml"
    recipe.write_text(f"""
run: {{out: {tmp_path / 'run'}, seed: 0}}
simulate: {{from_groups: {tmp_path / 'waves'}, attribute: POLIDEOLOGY, annotators: 90,
           per_annotator: 3, seed: 0}}
ingest: {{heldout_fraction: 0.3}}
em: {{backend: linear, n_types: 3, n_init: 1, max_iter: 30}}
linear: {{features: onehot, beta: 1.0}}
evaluate: {{n_boot: 50}}
""")
    code, out, err = cli("run", str(recipe))
    assert code == 0, err
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    d = ev["distributional"]
    assert d["groups"] == ["Conservative", "Liberal", "Moderate"] and d["questions"] == 3
    assert d["target"].startswith("the source's") and d["ordered_questions"] == 3
    for name in ev["policies"] + ["uniform answer", "personalised"]:
        assert 0 <= d["js"]["worst"][name] <= 1 and name in d["emd"]["worst"]
    assert ev["group_ceilings"]["annotators"] == 90
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Distributional alignment" in report and "Bayes oracle ARI" in report
    assert (tmp_path / "run" / "report_files" / "distributional.png").is_file()
    # the distributions are an input: an edited count re-runs the population, as a file would
    from pluralign.stages.pipeline import PipelineConfig, input_fingerprint
    cfg = PipelineConfig.load(recipe)
    before = input_fingerprint(cfg)
    data = tmp_path / "waves" / "American_Trends_Panel_W99" / "POLIDEOLOGY_data.json"
    data.write_text(data.read_text().replace("50", "51", 1))
    assert input_fingerprint(cfg) != before


def test_a_wave_without_info_csv_takes_the_options_from_the_data_file(tmp_path):
    wave = write_wave(tmp_path, attribute="RELIG")
    (wave / "info.csv").unlink()
    table = read_groups(wave)  # one attribute: no need to name it
    q = table.questions[0]
    assert table.attribute == "RELIG" and q.options == OPTIONS and q.ordinal is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no OpinionQA wave here"):
        read_groups(tmp_path / "empty", "RELIG")


def test_em_on_a_group_population_comes_near_its_supervised_ceiling(tmp_path):
    """30 made-up questions, two groups whose shares differ a little on each: the linear
    backend on one-hot (question, option) features, started by k-means on the standardised
    score statistics, discovers the groups nearly as well as the ceiling simulate writes."""
    from sklearn.metrics import adjusted_rand_score

    from pluralign.core.data import Annotations
    from pluralign.em.estep import kmeans_posteriors
    from pluralign.em.estimator import EMDPO
    rng = np.random.default_rng(5)
    rows = []
    for q in range(30):
        m = int(rng.integers(2, 6))
        base = rng.dirichlet(np.full(m, 3.0))
        for g in ("north", "south"):
            shares = rng.dirichlet(40 * base)  # near the common answer, not at it
            rows.append({"question": f"Question {q}?", "options": [f"option {j}" for j in
                                                                 range(m)],
                         "attribute": g, "gold_distribution": shares.tolist()})
    path = tmp_path / "regions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pop = simulate(SimulationConfig(from_groups=str(path), annotators=200, per_annotator=30,
                                    shared_questions=True, seed=2))
    data = Annotations(pop.records)
    em = EMDPO("linear", n_types=2, n_init=1, random_state=0,
               backend_options={"features": "onehot", "beta": 1.0})
    truth = {a.annotator_id: a.true_type for a in data}
    y = [truth[h] for h in data.annotator_ids]
    ceiling = pop.ceilings["supervised"]["ari"]
    assert 0.3 < ceiling < 0.99
    # the start alone: k-means on the raw statistics finds nothing here (ARI about 0)
    statistics = em._init_features(data)
    for seed in range(3):
        start = adjusted_rand_score(y, kmeans_posteriors(statistics, 2, seed).argmax(1))
        assert start >= 0.6 * ceiling, (seed, start, ceiling)
    ari = adjusted_rand_score(y, em.fit(data).posteriors_.argmax(1))
    assert ari >= 0.85 * ceiling, (ari, ceiling)
