"""Every bad-input class: fail mode exits 2 naming file, line and field and writes nothing;
skip mode rejects exactly that row with its reason, and the counts reconcile."""

from __future__ import annotations

import json

import pytest
from conftest import ranked_row, write_jsonl

GOOD = ranked_row("w1")
SCORED = {"annotator_id": "w1", "prompt": "Q", "responses": ["a", "b", "c"], "scores": [1, 2, 3]}

# id, good row for lines 1 and 3, bad line 2, field named, reason, extra CLI args
CASES = [
    ("missing-field", GOOD, ranked_row("w2", ranking=None), "ranking", "missing_field", []),
    ("wrong-type", GOOD, ranked_row("w2", ranking="first"), "ranking", "wrong_type", []),
    ("wrong-type-responses", GOOD, ranked_row("w2", responses="Hi"), "responses", "wrong_type",
     []),
    ("empty-response", GOOD, ranked_row("w2", responses=["a", "  ", "c"]), "responses",
     "empty_response", ["--empty-responses", "reject"]),
    ("null-response", GOOD, ranked_row("w2", responses=["a", None, "c"]), "responses",
     "empty_response", []),
    ("index-out-of-range", GOOD, ranked_row("w2", ranking=[0, 3]), "ranking",
     "ranking_out_of_range", []),
    ("repeated-index", GOOD, ranked_row("w2", ranking=[1, 1]), "ranking", "repeated_index", []),
    ("too-few-responses", GOOD, ranked_row("w2", responses=["only"], ranking=[0]), "responses",
     "too_few_responses", []),
    ("nan-score", SCORED, '{"annotator_id": "w2", "prompt": "Q", "responses": ["a", "b"], '
     '"scores": [1, NaN]}', "scores", "non_finite", []),
    ("infinite-feature", ranked_row(features=[[1.0]] * 3),
     '{"annotator_id": "w2", "prompt": "Q", "responses": ["a", "b"], "ranking": [0], '
     '"features": [[1.0], [Infinity]]}', "features", "non_finite", []),
    ("features-inconsistent-in-row", ranked_row(features=[[1.0, 2.0]] * 3),
     ranked_row("w2", features=[[1.0, 2.0], [1.0], [3.0, 4.0]]), "features",
     "inconsistent_features", []),
    ("features-inconsistent-across-rows", ranked_row(features=[[1.0, 2.0]] * 3),
     ranked_row("w2", features=[[1.0, 2.0, 3.0]] * 3), "features", "inconsistent_features",
     []),
    ("undecodable-bytes", GOOD, b'{"annotator_id": "w\xff\xfe2", "prompt": "Q"}', None,
     "undecodable", []),
    ("truncated-json", GOOD, '{"annotator_id": "w2", "prompt": "Q", "respo', None,
     "invalid_json", []),
]


def _file(tmp_path, good, bad):
    third = dict(good, annotator_id="w3")
    return write_jsonl(tmp_path / "in.jsonl", [good, bad, third])


@pytest.mark.parametrize("good, bad, field, reason, extra",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fail_mode_names_file_line_field_and_writes_nothing(tmp_path, cli, good, bad, field,
                                                            reason, extra):
    f = _file(tmp_path, good, bad)
    out = tmp_path / "out"
    rc, stdout, err = cli("ingest", f, "--out", out, *extra)
    assert rc == 2, err
    assert f"{f}, line 2:" in err
    if field:
        assert f"field '{field}'" in err
    assert err.count("\n") == 1  # one message
    assert not out.exists()


@pytest.mark.parametrize("good, bad, field, reason, extra",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_skip_mode_rejects_that_row_and_reconciles(tmp_path, cli, good, bad, field, reason,
                                                   extra):
    f = _file(tmp_path, good, bad)
    out = tmp_path / "out"
    rc, _, err = cli("ingest", f, "--out", out, "--on-error", "skip", *extra)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert (report["read"], report["accepted"], report["rejected"]["total"]) == (3, 2, 1)
    assert report["rejected"]["by_reason"] == {reason: 1}
    (reject,) = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert (reject["source"], reject["line"], reject["reason"]) == (str(f), 2, reason)
    assert reject["raw"]  # the raw row travels with its reason


def test_one_file_with_every_bad_row(tmp_path, cli):
    """A single ranked file holding one bad row of each row-level kind."""
    good = ranked_row(features=[[0.0, 1.0]] * 3)
    bad = [c[2] for c in CASES if c[1] is GOOD] + [
        ranked_row("w9", features=[[1.0, 2.0], [1.0], [3.0, 4.0]]),
        ranked_row("w9", features=[[1.0, 2.0, 3.0]] * 3),
        '{"annotator_id": "w9", "prompt": "Q", "responses": ["a", "b"], "ranking": [0], '
        '"features": [[1.0, 0.0], [NaN, 1.0]]}']
    rows = [good] + bad + [dict(good, annotator_id="w8")]
    f = write_jsonl(tmp_path / "all.jsonl", rows)
    rc, _, err = cli("ingest", f, "--out", tmp_path / "o1", "--empty-responses", "reject")
    assert rc == 2 and f"{f}, line 2: field 'ranking'" in err
    rc, _, _ = cli("ingest", f, "--out", tmp_path / "o2", "--on-error", "skip",
                   "--empty-responses", "reject")
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    rejects = [json.loads(x) for x in (tmp_path / "o2" / "rejects.jsonl").read_text().split("\n")
               if x]
    assert rc == 0
    assert report["read"] == report["accepted"] + report["rejected"]["total"] + \
        report["duplicates"] == len(rows)
    assert report["accepted"] == 2 and len(rejects) == len(bad)
    assert [r["line"] for r in rejects] == list(range(2, 2 + len(bad)))


def test_empty_file_fails_and_is_skipped_in_skip_mode(tmp_path, cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    rc, _, err = cli("ingest", empty, "--out", tmp_path / "o")
    assert rc == 2 and f"{empty}: the file is empty" in err
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    rc, out, _ = cli("ingest", empty, good, "--out", tmp_path / "o", "--on-error", "skip")
    assert rc == 0 and "empty.jsonl: the file is empty; skipped" in out


def test_unknown_preset_and_format(tmp_path, cli):
    f = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    rc, _, err = cli("ingest", f, "--out", tmp_path / "o", "--preset", "wide")
    assert rc == 2 and "unknown preset 'wide'" in err and "pairwise" in err
    other = tmp_path / "in.xlsx"
    other.write_text("x")
    rc, _, err = cli("ingest", other, "--out", tmp_path / "o")
    assert rc == 2 and "unknown file format '.xlsx'" in err


def test_csv_undecodable_row_and_parquet_nan(tmp_path, cli):
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = tmp_path / "x.csv"
    f.write_bytes(b"annotator_id,prompt,chosen,rejected\nw1,Q,a,b\nw2,Q\xff,a,b\n")
    rc, _, err = cli("ingest", f, "--out", tmp_path / "o")
    assert rc == 2 and f"{f}, line 3: undecodable" in err
    p = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([SCORED, dict(SCORED, scores=[1.0, float("nan"), 2.0])]),
                   p)
    rc, _, err = cli("ingest", p, "--out", tmp_path / "o")
    assert rc == 2 and f"{p}, row 2: field 'scores'" in err and "non-finite" in err


def test_failure_leaves_an_existing_folder_untouched(tmp_path, cli):
    out = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    assert cli("ingest", good, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write_jsonl(tmp_path / "bad.jsonl", [ranked_row(ranking=[5])])
    assert cli("ingest", bad, "--out", out, "--overwrite")[0] == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path, fmt):
    """Excel writes a UTF-8 BOM; read as text it would rename the first column
    (\\ufeffannotator_id) and make every row its own annotator."""
    from pluralign.ingest import ingest
    rows = [{"annotator_id": "w1", "prompt": "Q1", "chosen": "a", "rejected": "b"},
            {"annotator_id": "w1", "prompt": "Q2", "chosen": "c", "rejected": "d"},
            {"annotator_id": "w2", "prompt": "Q1", "chosen": "b", "rejected": "a"}]
    sep = {"csv": ",", "tsv": "\t"}.get(fmt)
    if sep:
        text = "\n".join(sep.join(r) for r in [list(rows[0]), *map(dict.values, rows)])
    elif fmt == "jsonl":
        text = "\n".join(json.dumps(r) for r in rows)
    else:
        text = json.dumps(rows)
    for first in (None, "prompt"):  # the second case: prompt as the first column
        f = tmp_path / f"bom-{first}.{fmt}"
        ordered = text
        if first and sep:
            ordered = "\n".join(sep.join([line.split(sep)[1], line.split(sep)[0],
                                          *line.split(sep)[2:]]) for line in text.split("\n"))
        f.write_bytes(b"\xef\xbb\xbf" + ordered.encode())
        result = ingest([str(f)])
        assert sorted(a.annotator_id for a in result.records) == ["w1", "w1", "w2"]
        assert result.report["accepted"] == 3
