"""Issue 12's hostile-user findings, one test each (the finding's number in the test's name)."""

from __future__ import annotations

import csv
import unicodedata

from conftest import ranked_row, write_jsonl

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
