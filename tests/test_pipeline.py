"""`pluralign run`: bad YAML stops before any work; stages are skipped when unchanged and
redone with --from; a run killed with SIGKILL at random moments and re-run ends with the same
results as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TINY = """\
run: {{out: {out}, seed: 3}}
ingest: {{inputs: [{data}], heldout_fraction: 0.25}}
# 9 annotators in EM: no type floor and no merging, so that both adapters are trained
em: {{backend: lora, n_types: 2, max_iter: 3, init: linear, n_init: 1, min_type_share: 0,
      min_type_annotators: 0, merge_nats: 0}}
lora:
  model: builtin:tiny
  top_layers: 2
  max_prompt_tokens: 16
  max_response_tokens: 16
  batch_size: 4
  learning_rate: 0.01
  progress: false
  cache: {cache}
linear: {{l2: 0.5}}
"""


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    from pluralign.cli import main
    d = tmp_path_factory.mktemp("pipe") / "data"
    assert main(["simulate", "--out", str(d), "--flavour", "text", "--types", "2",
                 "--annotators", "12", "--per-annotator", "3", "--seed", "4"]) == 0
    return d


def _config(tmp: Path, data: Path, name: str = "run") -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(TINY.format(out=tmp / name, data=data, cache=tmp / f"{name}-cache"))
    return cfg


def _command(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pluralign.cli", "run", str(cfg)]


def _results(run: Path) -> dict:
    """Everything a run concludes, without wall times."""
    em = json.loads((run / "em.json").read_text())
    for key in ("timings", "config", "backend_options"):  # settings and clocks, not results
        em.pop(key)
    ev = json.loads((run / "evaluation.json").read_text())
    return {"posteriors": (run / "posteriors.csv").read_text(), "em": em,
            "aggregate": json.loads((run / "aggregate.json").read_text()),
            "metrics": ev["metrics"], "regret": ev["regret"],
            "report": json.loads((run / "report.json").read_text())["findings"]}


def test_unknown_key_wrong_type_and_missing_value_stop_before_work(population, tmp_path, cli):
    base = _config(tmp_path, population).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.replace("n_types: 2", "n_typez: 2"))
    rc, _, err = cli("run", bad)
    assert rc == 2 and "unknown key 'n_typez' in section 'em'" in err and str(bad) in err
    assert not (tmp_path / "run").exists()  # nothing was done
    bad.write_text(base.replace("top_layers: 2", "top_layers: two"))
    rc, _, err = cli("run", bad)
    assert rc == 2 and "'lora.top_layers' has the wrong type" in err and str(bad) in err
    bad.write_text(base.replace("ingest: {inputs: [" + str(population) + "], ",
                                "ingest: {"))
    rc, _, err = cli("run", bad)
    assert rc == 2 and "inputs is required" in err and str(bad) in err
    bad.write_text(base + "evaluation: {data: x}\n")
    rc, _, err = cli("run", bad)
    assert rc == 2 and "unknown section 'evaluation'" in err
    assert not (tmp_path / "run").exists()


ENV = {**os.environ, "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def clean(population, tmp_path_factory):
    """One uninterrupted run (a subprocess, as a user starts it): its config, its results as
    they were when it ended, and its wall time."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = _config(tmp, population, "run")
    t0 = time.perf_counter()
    subprocess.run(_command(cfg), check=True, env=ENV, capture_output=True)
    return cfg, _results(tmp / "run"), time.perf_counter() - t0


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(population, clean, tmp_path):
    env = ENV
    _, want, total = clean

    rng = np.random.default_rng(0)
    kills, scale = 0, 1.0
    for attempt in range(4):  # a machine under changing load can finish before any kill:
        name = f"killed{attempt}"  # then start afresh with earlier kill moments
        killed = _config(tmp_path, population, name)
        for _ in range(3):
            proc = subprocess.Popen(_command(killed), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=float(rng.uniform(0.3, 0.9)) * total * scale)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        if kills:
            break
        scale /= 2
    assert kills >= 1
    done = subprocess.run(_command(killed), check=True, env=env, capture_output=True,
                          text=True)
    assert "report: " in done.stdout
    got = _results(tmp_path / name)
    assert got["posteriors"] == want["posteriors"]
    assert got["em"] == want["em"]
    assert got["aggregate"]["regret_matrix"] == pytest.approx(
        np.asarray(want["aggregate"]["regret_matrix"]), abs=1e-9)
    assert got["aggregate"]["weights"] == pytest.approx(want["aggregate"]["weights"], abs=1e-9)
    assert got["regret"] == want["regret"] and got["metrics"] == want["metrics"]
    assert got["report"] == want["report"]


@pytest.mark.slow
def test_rerun_skips_and_from_redoes(clean, cli):
    cfg = clean[0]  # the uninterrupted run, re-run here
    run = cfg.parent / "run"
    manifest = json.loads((run / "manifests" / "em.json").read_text())
    assert manifest["seed"] == 3 and manifest["versions"]["torch"]
    assert manifest["wall_seconds"] > 0 and manifest["peak_rss_mib"] > 0
    agg = json.loads((run / "aggregate.json").read_text())  # the min-max merge of 2 adapters
    assert agg["objective"] == "kl"
    assert agg["fair"]["max_regret"] == pytest.approx(agg["fair"]["value"], abs=1e-6)
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["regret"]["max_regret"]["fair"] == pytest.approx(agg["fair"]["max_regret"],
                                                               abs=1e-9)
    policy = json.loads((run / "fair" / "policy.json").read_text())  # the loadable merge
    assert policy["weights"] == agg["fair"]["weights"] and policy["type_policies"] == "adapters"
    said = [cli("generate", "--run", run, "--prompt", "Hello", "--policy", "fair",
                "--samples", "2", "--seed", "1") for _ in range(2)]
    assert said[0][0] == 0 and "the min-max merge" in said[0][2]
    served = agg["served"]["max_regret"]["fair"]   # the LoRA run measured it as decoded
    assert policy["served_max_regret"] == served and f"as served {served:.4f}" in said[0][2]
    assert said[0][1] == said[1][1]  # seeded
    rc, out, _ = cli("run", cfg)
    assert rc == 0 and out.count("up to date, skipped") == 6
    rc, out, _ = cli("run", cfg, "--from", "aggregate")
    assert out.count("up to date, skipped") == 3 and "[aggregate] running" in out
    cfg.write_text(cfg.read_text().replace("linear: {l2: 0.5}",
                                           "aggregate: {estimator: sampled, n_samples: 2}"))
    rc, out, _ = cli("run", cfg)  # linear's l2 shapes the LoRA run's start: em and after
    assert "[reference] up to date" in out and "[em] running" in out
    assert "[aggregate] running" in out
    rc, _, err = cli("run", cfg, "--from", "nowhere")
    assert rc == 2 and "--from must be one of" in err
