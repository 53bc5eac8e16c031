"""aggregate -> evaluate -> report on a simulated run: the files hold what the issue asks,
the numbers agree across files, the personalization curve equals a plain loop, and the page
renders in headless Chromium with every image loaded (skipped where Chromium is absent)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from pluralign.aggregate.evaluation import doubling
from pluralign.em.estep import e_step
from pluralign.stages.evaluate import personalization_curve
from pluralign.stages.report import FIGURES
from pluralign.stages.report_content import md_escape
from pluralign.stages.report_html import browser_check, find_chromium


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A linear EM run on 150 simulated annotators of 3 types, and 45 held-out annotators."""
    from pluralign.cli import main
    root = tmp_path_factory.mktemp("report")
    common = ["--types", "3", "--prior", "0.5,0.3,0.2", "--seed", "5"]
    assert main(["simulate", "--out", str(root / "train"), "--annotators", "150", *common]) == 0
    assert main(["simulate", "--out", str(root / "held"), "--annotators", "45",
                 "--per-annotator", "16", *common]) == 0
    assert main(["em", "--data", str(root / "train"), "--out", str(root / "run"),
                 "--types", "3"]) == 0
    return root


def test_aggregate_evaluate_report(run, cli):
    rc, out, err = cli("report", "--run", run / "run")
    assert rc == 2 and "aggregate.json is missing" in err and "pluralign aggregate" in err
    rc, out, _ = cli("aggregate", "--run", run / "run", "--data", run / "held")
    assert rc == 0 and "MMRA max regret" in out
    agg = json.loads((run / "run" / "aggregate.json").read_text())
    r = np.asarray(agg["regret_matrix"])
    assert agg["policies"][:3] == ["type_0", "type_1", "type_2"] and r.shape == (3, 10)
    assert np.allclose(np.diag(r[:, :3]), 0.0)
    col = agg["policies"].index("mmra")  # KL objective: the mixture measured as a distribution
    assert agg["max_regret"] == pytest.approx(r[:, col].max(), abs=1e-9)
    assert agg["max_regret"] <= (r[:, :3] @ agg["weights"]).max() + 1e-9  # convexity
    assert agg["fair"]["max_regret"] <= agg["max_regret"]
    assert agg["baselines"]["pooled"]["max_regret"] > agg["max_regret"]
    assert (run / "run" / "merged" / "linear.npz").is_file()

    rc, out, _ = cli("evaluate", "--run", run / "run", "--data", run / "held")
    assert rc == 0
    ev = json.loads((run / "run" / "evaluation.json").read_text())
    assert ev["groups"] == "true types" and not ev["in_sample"]
    assert set(ev["policies"]) >= {"type_0", "pooled", "base", "merged", "mmra", "uniform",
                                   "utilitarian"}
    for metric in ("loglik", "top1", "pairwise", "kendall_tau"):
        assert set(ev["metrics"][metric]) == {"type_0", "type_1", "type_2"}
    assert ev["regret"]["max_regret"]["mmra"] == pytest.approx(agg["max_regret"], rel=1e-6)
    assert ev["metrics"]["pairwise"]["type_0"]["base"] == pytest.approx(0.5)  # no preference
    assert ev["discovery"]["ari"] > 0.8
    curve = ev["personalization"]["curve"]
    assert [c["annotations"] for c in curve] == [1, 2, 4, 8, 16]
    assert curve[-1]["accuracy"] >= 0.9 and curve[-1]["accuracy"] > curve[0]["accuracy"]

    rc, out, _ = cli("report", "--run", run / "run")
    assert rc == 0
    story = json.loads((run / "run" / "report.json").read_text())
    assert story["pooled"]["worst_regret"] == pytest.approx(
        agg["baselines"]["pooled"]["max_regret"])
    assert story["mmra"]["reduction"] > 0
    assert any("serves" in f and "worst" in f for f in story["findings"])
    page = (run / "run" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    md = (run / "run" / "report.md").read_text()
    for link in re.findall(r"\]\((report_files/[^)]+)\)", md):
        assert (run / "run" / link).is_file()
    # what an auditor reads: definitions, sample sizes, intervals, the confusion matrix of
    # discovered types against the labels, identifiability and warnings, the configuration
    for text in ("Definitions", "Regret of serving type i with policy j", "45 annotators",
                 "95% CI", "true_type \\ discovered", "Warnings and identifiability",
                 "rankings:", "Run configuration", "base measure uniform"):
        assert text in page, text
    mmra_ci = agg["intervals"]["max_regret"]["mmra"]
    assert mmra_ci[0] <= agg["max_regret"] <= mmra_ci[1]
    assert f"[{ev['intervals']['max_regret']['mmra'][0]:.3f}," in page
    fair = min(ev["policies"], key=lambda n: ev["regret"]["max_regret"][n])
    assert ev["intervals"]["fairest"] == fair
    assert ev["intervals"]["vs_fairest"]["base"]["distinguishable"]  # the base is far worse
    confusion = ev["confusion"]["true_type"]
    assert np.asarray(confusion["confusion"]).sum() == ev["annotators"] == 45
    assert "held-out" in page and "in-sample" not in page.split("<h2>Run configuration")[0]


def test_report_explains_an_accuracy_loss_and_lists_warnings():
    """A constructed evaluation where the fairest policy ranks one group's pairs worse than
    the base model: a finding says so and explains why; every warning is on the page."""
    from pluralign.stages.report import findings, page, summary
    em = {"priors": [0.5, 0.5], "n_types": 2, "n_iter": 3, "converged": True,
          "loglik_history": [-10.0, -9.0, -8.5], "annotators": 30, "annotations": 240,
          "identifiability": {"verdict": "rankings", "explanation": "ok"},
          "warnings": [{"code": "near_uniform_posteriors", "message": "posteriors are flat"}],
          "actions": [{"action": "pruned", "k": 3, "types": [2], "reason": "prior 0.01"}]}
    names = ["type_0", "type_1", "base", "mmra"]
    ev = {"policies": names, "annotators": 10, "annotations": 80, "prompts": 40,
          "in_sample": False, "confidence_histogram": [0] * 10,
          "regret": {"estimator": "candidates", "types": ["type_0", "type_1"],
                     "matrix": [[0, 1, 0.8, 0.5], [1, 0, 0.8, 0.5]],
                     "max_regret": dict(zip(names, [1, 1, 0.8, 0.5], strict=True)),
                     "gap": dict(zip(names, [1, 1, 0, 0], strict=True))},
          "metrics": {"pairwise": {"g1": dict(zip(names, [0.7, 0.3, 0.5, 0.45], strict=True)),
                                   "g2": dict(zip(names, [0.3, 0.7, 0.5, 0.55], strict=True))}},
          "spread": {"pairwise": {n: {"worst_group": "g1", "worst": 0.4} for n in names}},
          "personalization": {"curve": []},
          "warnings": [{"code": "heldout_misses_group", "message": "no one of group 'z'"}]}
    agg = {"weights": [0.5, 0.5], "binding": [True, True], "types": ["type_0", "type_1"],
           "estimator": "candidates", "base_measure": "uniform"}
    story = summary(em, agg, ev)
    loss = [f for f in findings(story) if "less well than the base model" in f]
    assert len(loss) == 1 and "g1" in loss[0] and "0.450" in loss[0]
    assert any("pruned" in f for f in findings(story))
    html = page(story, em, agg, ev, {n: b"" for n in FIGURES})
    for code in ("near_uniform_posteriors", "heldout_misses_group"):
        assert code in html


def test_report_md_escapes_data_strings():
    """A group named with markup and a pipe stays text and cannot split a table row."""
    from pluralign.stages.report_content import _md_table, md_escape
    evil = "<script>alert(1)</script>|x"
    assert "<script>" not in md_escape(evil) and "\\|" in md_escape(evil)
    header, row = ["group", "value"], [evil, "0.5"]
    table = _md_table(header, [row])
    unescaped_pipes = [line.replace("\\|", "").count("|") for line in table[:3]]
    assert unescaped_pipes[0] == unescaped_pipes[2] == 3   # | a | b |: the row keeps 2 cells


@pytest.mark.slow
def test_evaluation_reuses_aggregation_scores_only_when_they_match(run, monkeypatch):
    """evaluate reads the log-probs aggregate saved (scores.npz) instead of scoring again, with
    the same result; scores of other data or another mixture are not used."""
    from pluralign.aggregate.fair import policy_weights
    from pluralign.em.fitted import load_run
    from pluralign.stages.aggregate import load_scores, run_aggregate, scores_key
    from pluralign.stages.evaluate import run_evaluate
    folder, held = run / "run", str(run / "held")
    agg = run_aggregate(folder, held)
    fitted = load_run(folder)
    data = fitted.data(held)
    weights = policy_weights(agg)  # the mixture's and the merges': they fix the policies
    saved = load_scores(folder, scores_key(folder, data, weights))
    assert set(saved) == {"_s", *agg["policies"]}
    assert load_scores(folder, scores_key(folder, fitted.data(), weights)) == {}
    assert load_scores(folder, scores_key(folder, data, weights[::-1])) == {}
    reused = run_evaluate(folder, held)
    calls = []
    monkeypatch.setattr("pluralign.stages.evaluate.load_scores", lambda *a: calls.append(a) or {})
    fresh = run_evaluate(folder, held)
    assert calls  # the second evaluation scored everything itself
    assert reused["metrics"] == fresh["metrics"]
    assert np.allclose(reused["regret"]["matrix"], fresh["regret"]["matrix"], atol=1e-12)


def test_bad_run_folders_and_flags(run, cli, tmp_path):
    rc, _, err = cli("aggregate", "--run", tmp_path)
    assert rc == 2 and "no em.json" in err
    rc, _, err = cli("aggregate", "--run", run / "run", "--type-weights", "1,2")
    assert rc == 2 and "--type-weights needs 3 values" in err


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(run, cli, tmp_path):
    for step in ("aggregate", "evaluate", "report"):
        assert cli(step, "--run", run / "run")[0] == 0
    page = run / "run" / "report.html"
    shot = tmp_path / "report.png"
    assert browser_check(page, screenshot=shot) == (len(FIGURES), len(FIGURES))
    assert shot.stat().st_size > 10_000
    # what to serve, in one sentence, and every candidate for it with its interval
    text = page.read_text()
    agg = json.loads((run / "run" / "aggregate.json").read_text())
    assert text.count(f"Deploy {agg['deploy']['policy']}:") == 1
    for name in ("mmra", "fair", "merged", "pooled", "uniform", "utilitarian"):
        assert re.search(rf"<td[^>]*>{name}</td><td[^>]*>[0-9.]+ \[[0-9.]+, [0-9.]+\]",
                         text), name
    broken = tmp_path / "broken.html"  # the check can fail: one image's data cut short
    broken.write_text(page.read_text().replace("base64,iVBOR", "base64,XXXX", 1))
    assert browser_check(broken) == (len(FIGURES) - 1, len(FIGURES))


def test_personalization_curve_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=40)
    per = rng.normal(size=(40, 3))
    priors = np.array([0.5, 0.3, 0.2])
    target = np.array([0, 1, 2, 0, -1, 1])
    curve = personalization_curve(per, codes, priors, target)
    counts = np.bincount(codes, minlength=6)
    assert [c["annotations"] for c in curve] == doubling(int(counts.max()))
    for point in curve:
        n, hits, who = point["annotations"], [], 0
        for h in range(6):
            rows = np.flatnonzero(codes == h)[:n]
            if counts[h] < n or target[h] < 0:
                continue
            gamma, _ = e_step(per[rows].sum(0, keepdims=True), priors)
            hits.append(gamma[0].argmax() == target[h])
            who += 1
        assert point["annotators"] == who and point["accuracy"] == pytest.approx(np.mean(hits))


@pytest.mark.slow
def test_lora_run_quotes_served_regrets_in_aggregate_and_report(tmp_path, cli):
    """A LoRA run (builtin:tiny): aggregate measures every deployable policy as served
    (decoded and scored exactly), the deploy sentence in the CLI, aggregate.json and the report
    quotes that figure beside the candidate-set certificate, and the sampled estimator runs
    on token ids (its numbers are checked against enumeration in test_served.py)."""
    assert cli("simulate", "--out", tmp_path / "data", "--flavour", "text", "--types", "2",
               "--annotators", "6", "--per-annotator", "3", "--seed", "1")[0] == 0
    (tmp_path / "em.yaml").write_text(
        "em:\n  backend: lora\n  max_iter: 2\n  min_type_share: 0\n  min_type_annotators: 0\n"
        "  merge_nats: 0\nlora:\n  model: builtin:tiny\n  top_layers: 2\n"
        f"  max_prompt_tokens: 32\n  max_response_tokens: 8\n  cache: {tmp_path / 'cache'}\n"
        "  progress: false\n  batch_size: 4\n")
    run = tmp_path / "run"
    rc, _, err = cli("em", "--data", tmp_path / "data", "--out", run, "--types", "2",
                     "--config", tmp_path / "em.yaml")
    assert rc == 0, err
    rc, out, err = cli("aggregate", "--run", run, "--served-samples", "3", "--served-prompts",
                       "6")
    assert rc == 0, err
    agg = json.loads((run / "aggregate.json").read_text())
    served = agg["served"]
    deployable = ["type_0", "type_1", "pooled", "base", "fair", "mmra", "uniform",
                  "utilitarian", "merged"]
    tuning = agg["fair"]["tuning"]   # the weights tried on 6 of the 12 other prompts
    assert tuning["prompts"] == 6 and set(tuning["candidates"]) == {"program", "uniform",
                                                                      "mmra"}
    if tuning["chosen"] != "program":  # other weights served better there: a column of its own
        deployable.insert(5, "fair_tuned")
        assert agg["fair_tuned"]["weights"] == tuning["candidates"][tuning["chosen"]]["weights"]
        assert "fair_tuned" in agg["policies"] and "fair_tuned" in agg["baselines"]
    assert served["policies"] == deployable and served["n_samples"] == 3
    assert served["prompts"] == 6 and served["of_prompts"] == agg["prompts"]
    assert set(served["intervals"]["max_regret"]) == set(deployable)
    r = np.asarray(served["regret_matrix"])
    assert r.shape == (2, len(deployable)) and r[0, 0] == 0 and r[1, 1] == 0
    assert (r[:, 2:] != 0).any()
    d = agg["deploy"]
    assert d["measured"] == "served" and d["policy"] in ("merged", "fair", "mmra")
    assert d["max_regret"] == pytest.approx(served["max_regret"][d["policy"]])
    quoted = f"{d['max_regret']:.4f}"
    assert "as served" in d["why"] and quoted in d["why"] and "certified" in d["why"]
    assert d["why"] in out and "as served" in out
    assert (run / "merged" / "merged" / "adapter_config.json").is_file()
    for step in ("evaluate", "report"):
        rc, _, err = cli(step, "--run", run)
        assert rc == 0, err
    md = (run / "report.md").read_text()
    assert md_escape(d["why"]) in md and "as served" in md
    rc, _, err = cli("aggregate", "--run", run, "--estimator", "sampled", "--samples", "2")
    assert rc == 0, err
    sampled = json.loads((run / "aggregate.json").read_text())
    assert sampled["estimator"] == "sampled" and sampled["objective"] == "paper"
    assert sampled["policies"] == [n for n in deployable if not n.startswith("fair")]  # paper
    assert np.asarray(sampled["regret_stderr"]).shape == (2, 8)
    assert sampled["deploy"]["measured"] == "candidates"
