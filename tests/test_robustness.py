"""Issue 12's hostile-user findings, one test each (the finding's number in the test's name)."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import unicodedata

import pytest
from conftest import ranked_row, write_jsonl

from pluralign.cli import main
from pluralign.data import load
from pluralign.ingest import ingest


def test_13_rows_without_an_annotator_field_are_never_merged(tmp_path):
    # 45 workers judge the same 8 pairs; the worker column is not mapped, so each row becomes
    # its own annotator, and equal judgements of different workers must all be kept.
    path = tmp_path / "judgements.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "prompt", "chosen", "rejected"])
        for worker in range(45):
            for q in range(8):
                pair = ["long", "short"] if (worker + q) % 3 else ["short", "long"]
                w.writerow([f"w{worker}", f"question {q}", *pair])
    res = ingest([str(path)])
    r = res.report
    assert (r["read"], r["accepted"], r["duplicates"]) == (360, 360, 0)
    assert r["repeats_without_annotator"] == 360 - 16
    assert any("repeat another row" in w for w in r["warnings"])


def test_10_annotator_ids_are_nfc_and_near_collisions_are_flagged(tmp_path):
    nfc = unicodedata.normalize("NFC", "José")
    nfd = unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    f = write_jsonl(tmp_path / "x.jsonl", [
        ranked_row(nfc, prompt="P1"), ranked_row(nfd, prompt="P2"),  # one annotator
        ranked_row(nfd, prompt="P1"),                                # NFD copy of row 1
        ranked_row("Ann", prompt="P1"), ranked_row(" ann ", prompt="P2")])  # near-collision
    res = ingest([str(f)])
    ids = {a.annotator_id for a in res.records}
    assert nfc in ids and nfd not in ids
    assert res.report["duplicates"] == 1
    assert res.report["accepted"] == 4
    (warning,) = [w for w in res.report["warnings"] if "differ only by case" in w]
    assert "'Ann'" in warning and "' ann '" in warning


def test_10_nfd_text_of_a_row_is_a_duplicate(tmp_path):
    nfc = unicodedata.normalize("NFC", "Crème brûlée?")
    nfd = unicodedata.normalize("NFD", nfc)
    f = write_jsonl(tmp_path / "x.jsonl", [ranked_row("w1", prompt=nfc),
                                           ranked_row("w1", prompt=nfd)])
    assert ingest([str(f)]).report["duplicates"] == 1


@pytest.fixture(scope="module")
def small_population(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust") / "pop"
    assert main(["simulate", "--out", str(d), "--types", "2", "--annotators", "12",
                 "--per-annotator", "4", "--seed", "1"]) == 0
    return d


def test_11_ingest_reads_a_canonical_dataset_folder(small_population, tmp_path, cli):
    rc, out, err = cli("ingest", small_population, "--out", tmp_path / "again")
    assert rc == 0, err
    again = load(tmp_path / "again")
    assert len(again) == 48 and again.fingerprint() == load(small_population).fingerprint()


def test_11_a_bad_config_is_reported_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {inputs: [x]}\nem: {n_typez: 2}\n")
    code = ("import sys; from pluralign.cli import main; rc = main(['run', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert "unknown key 'n_typez' in section 'em'" in done.stderr


def test_11_sigterm_says_so_and_exits_143(tmp_path):
    code = ("import sys, time; import pluralign.cli as c\n"
            "def slow(args):\n    print('started', flush=True); time.sleep(60)\n"
            "c.cmd_run = slow\nsys.exit(c.main(['run', 'x.yaml']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip() == ("pluralign run: terminated (SIGTERM); re-run the same command to "
                           "resume")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_8_full_or_read_only_disk_is_one_line_naming_the_path(small_population, tmp_path, cli,
                                                              monkeypatch, code, words):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), src)
    monkeypatch.setattr(os, "replace", refuse)
    out = tmp_path / "copy"
    rc, _, err = cli("ingest", small_population, "--out", out)
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"pluralign ingest: error: {out / 'annotations.parquet'}: {words}")
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temporary left behind


def test_8_an_unwritable_place_is_one_line(small_population, cli):
    rc, _, err = cli("ingest", small_population, "--out", "/proc/pluralign-test/out")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "/proc/pluralign-test" in err
