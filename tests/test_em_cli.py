"""`pluralign em`: files written, YAML settings checked before work, re-runs resume."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    from pluralign.cli import main
    d = tmp_path_factory.mktemp("pop")
    assert main(["simulate", "--out", str(d), "--types", "2", "--annotators", "60",
                 "--per-annotator", "6", "--seed", "2"]) == 0
    return d


def test_em_writes_posteriors_report_and_policies(population, tmp_path, cli):
    rc, out, err = cli("em", "--data", population, "--out", tmp_path, "--types", 2, "--seed", 1)
    assert rc == 0, err
    rows = list(csv.reader((tmp_path / "posteriors.csv").open()))
    assert rows[0] == ["annotator_id", "type_0", "type_1"] and len(rows) == 61
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in rows[1:])
    report = json.loads((tmp_path / "em.json").read_text())
    assert report["n_types"] == 2 and report["audit"]["ari"] > 0.9
    assert report["loglik_history"] and "heterogeneity" in report
    assert (tmp_path / "linear" / "linear.npz").is_file()
    assert (tmp_path / "baseline" / "linear.npz").is_file()
    assert "audit against known labels: ARI" in out
    # one line per iteration with its time and what is left at worst
    assert re.search(r"K=2 iteration 1/100: objective -?\d+\.\d+ \(\d+\.\d s; this run ends "
                     r"within \d+\.\d (s|min)\)", err), err


def test_quiet_and_verbose(population, tmp_path, cli):
    rc, out, err = cli("--quiet", "em", "--data", population, "--out", tmp_path / "q",
                       "--types", 2)
    assert rc == 0 and "objective" not in err and "audit against known labels" in out
    rc, out2, err = cli("em", "--data", population, "--out", tmp_path / "q2", "--types", 2,
                        "-q")  # after the command too
    assert rc == 0 and "objective" not in err and out2.splitlines()[-1] == \
        out.splitlines()[-1].replace("/q/", "/q2/")
    rc, _, err = cli("em", "--data", population, "--out", tmp_path / "v", "-q", "-v")
    assert rc == 2 and "--quiet and --verbose contradict each other" in err
    import os
    assert "PLURALIGN_QUIET" not in os.environ  # main() restored the environment


def test_rerun_resumes_from_checkpoints(population, tmp_path, cli):
    every = ("--checkpoint-interval", 0)  # runs this quick would otherwise not be saved
    assert cli("em", "--data", population, "--out", tmp_path, "--types", 2, *every)[0] == 0
    first = (tmp_path / "posteriors.csv").read_text()
    rc, _, err = cli("em", "--data", population, "--out", tmp_path, "--types", 2, *every)
    assert rc == 0 and "objective" not in err  # every run was already done: nothing re-fit
    assert "resuming" in err and "after iteration" in err  # and it says so
    assert (tmp_path / "posteriors.csv").read_text() == first


def test_config_file_is_checked_before_any_work(population, tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("em:\n  n_types: 2\n  max_iters: 5\n")
    rc, _, err = cli("em", "--data", population, "--out", tmp_path / "o", "--config", cfg)
    assert rc == 2 and f"{cfg}: unknown key 'max_iters' in section 'em'" in err
    cfg.write_text("em:\n  n_types: 2\nlinear:\n  features: pixels\n")
    rc, _, err = cli("em", "--data", population, "--out", tmp_path / "o", "--config", cfg)
    assert rc == 2 and "section 'linear'" in err and "features must be one of" in err
    cfg.write_text("em:\n  n_types: 2\nlora:\n  rank: 4\n")  # not the chosen backend's section
    rc, _, _ = cli("em", "--data", population, "--out", tmp_path / "o", "--config", cfg)
    assert rc == 0
    assert not (tmp_path / "o" / "adapters").exists()


def test_not_identifiable_data_is_refused_unless_forced(tmp_path, cli):
    assert cli("simulate", "--out", tmp_path / "d", "--annotators", 80, "--per-annotator", 1,
               "--list-size", 2)[0] == 0
    rc, _, err = cli("em", "--data", tmp_path / "d", "--out", tmp_path / "o")
    assert rc == 2 and "not-identifiable" in err and "--force" in err
    rc, _, _ = cli("em", "--data", tmp_path / "d", "--out", tmp_path / "o", "--force")
    assert rc == 0 and np.isfinite(json.loads((tmp_path / "o" / "em.json").read_text())[
        "loglik_history"][-1])


def test_posteriors_csv_neutralises_spreadsheet_formulas_and_round_trips(tmp_path):
    """Ids such as =HYPERLINK(...) would run as formulas in a spreadsheet: the cell gets a
    leading ', and reading the file back gives the original ids."""
    import csv

    import numpy as np

    from pluralign.runfolder.posteriors import read_posteriors, write_posteriors
    ids = ['=HYPERLINK("http://x","y")', "+1", "-2", "@SUM(A1)", "'quoted", 'a,"b"', "plain"]
    gamma = np.tile([0.25, 0.75], (len(ids), 1))
    path = tmp_path / "posteriors.csv"
    write_posteriors(path, ids, gamma)
    with open(path, newline="", encoding="utf-8") as f:
        cells = [row[0] for row in csv.reader(f)][1:]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    assert cells[0] == '\'=HYPERLINK("http://x","y")' and cells[-1] == "plain"
    back, g = read_posteriors(path)
    assert back == ids and np.allclose(g, gamma)
