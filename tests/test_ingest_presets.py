"""Each preset and input format becomes the expected canonical annotations."""

from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ranked_row, write_jsonl

from pluralign.core.data import load
from pluralign.ingest import IngestError, ingest, parse_mapping


def test_pairwise_strings(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"annotator_id": "w1", "prompt": "Q?", "chosen": "good", "rejected": "bad",
         "extra": 7}])
    (a,) = ingest([str(f)]).records
    assert (a.prompt, a.responses, a.ranking) == ("Q?", ["good", "bad"], [0, 1])
    assert a.metadata == {"extra": 7} and a.source_row == 1


def test_pairwise_trl_conversational_and_implicit_prompt(tmp_path):
    user = {"role": "user", "content": "Hi"}
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"annotator_id": 1, "prompt": [user],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"annotator_id": 2, "chosen": [user, {"role": "assistant", "content": "A"}],
         "rejected": [user, {"role": "assistant", "content": "B"}]},
    ])
    a, b = ingest([str(f)]).records
    assert a.prompt == [user] and a.responses == ["Hello!", "Go away."]
    assert a.annotator_id == "1"
    assert b.prompt == [user] and b.responses == ["A", "B"]


def test_ranked_partial_with_features(tmp_path):
    f = write_jsonl(tmp_path / "r.jsonl", [
        ranked_row(ranking=[2], features=[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]],
                   true_type="t1", item_id=5)])
    (a,) = ingest([str(f)]).records
    assert a.ranking == [2] and a.features[2] == [0.5, 0.5]
    assert (a.true_type, a.item_id) == ("t1", "5")


@pytest.mark.parametrize("scores, ties, expected", [
    ([1, 5, 3], "truncate", [1, 2, 0]),
    ([3, 2, 2, 1], "truncate", [0]),      # tie below the top: strictly ordered prefix only
    ([3, 2, 1, 1], "truncate", [0, 1]),
    ([2.5, 2.5, 1], "truncate", "tie_at_top"),
    ([3, 2, 2, 1], "reject", "tied_scores"),
])
def test_scored_ties_are_explicit(tmp_path, scores, ties, expected):
    responses = [f"r{i}" for i in range(len(scores))]
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"annotator_id": "w", "prompt": "Q", "responses": responses, "scores": scores}])
    if isinstance(expected, str):
        with pytest.raises(IngestError, match="field 'scores'") as e:
            ingest([str(f)], ties=ties)
        assert e.value.reason == expected
        return
    res = ingest([str(f)], ties=ties)
    (a,) = res.records
    assert a.ranking == expected and a.metadata["scores"] == [float(s) for s in scores]
    assert res.report["ties_truncated"] == (len(expected) < len(scores))


def test_long_layout_groups_rows_by_annotator_and_item(tmp_path):
    rows = [
        {"annotator_id": "w1", "item_id": "q1", "prompt": "Q1", "response": "a", "rank": 2},
        {"annotator_id": "w1", "item_id": "q1", "prompt": "Q1", "response": "b", "rank": 1},
        {"annotator_id": "w2", "item_id": "q1", "prompt": "Q1", "response": "a", "rank": 1},
        {"annotator_id": "w1", "item_id": "q1", "prompt": "Q1", "response": "c", "rank": 3},
        {"annotator_id": "w2", "item_id": "q1", "prompt": "Q1", "response": "b", "rank": 2},
    ]
    res = ingest([str(write_jsonl(tmp_path / "l.jsonl", rows))])
    a, b = res.records
    assert (a.annotator_id, a.responses, a.ranking) == ("w1", ["a", "b", "c"], [1, 0, 2])
    assert (b.annotator_id, b.responses, b.ranking) == ("w2", ["a", "b"], [0, 1])
    assert res.report["read"] == 2 and a.metadata["ranks"] == [2.0, 1.0, 3.0]


def test_long_layout_by_score_from_csv(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("worker,prompt,response,score\nu,Q,x,0.2\nu,Q,y,0.9\nu,Q,z,0.5\n")
    (a,) = ingest([str(f)], mapping=parse_mapping(["annotator_id=worker"])).records
    assert (a.annotator_id, a.responses, a.ranking) == ("u", ["x", "y", "z"], [1, 2, 0])


def test_auto_detection_is_refused_when_ambiguous(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [ranked_row(chosen="a", rejected="b")])
    with pytest.raises(IngestError, match="pairwise, ranked") as e:
        ingest([str(f)])
    assert e.value.reason == "ambiguous_layout"
    assert ingest([str(f)], preset="ranked").records[0].metadata == {"chosen": "a",
                                                                     "rejected": "b"}


def test_auto_detection_names_columns_when_nothing_fits(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"annotator_id": "w", "question": "Q", "answer": "A"}])
    with pytest.raises(IngestError, match=r"\['annotator_id', 'answer', 'question'\]"):
        ingest([str(f)])


def test_map_renames_and_rejects_unknown_names(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [
        {"worker": "w9", "question": "Q", "chosen": "a", "rejected": "b"}])
    (a,) = ingest([str(f)], mapping=parse_mapping(["annotator_id=worker",
                                                   "prompt=question"])).records
    assert (a.annotator_id, a.prompt) == ("w9", "Q")
    with pytest.raises(IngestError, match="not a canonical field"):
        parse_mapping(["annotator=worker"])
    with pytest.raises(IngestError, match="no column 'nobody'"):
        ingest([str(f)], mapping=parse_mapping(["annotator_id=nobody"]))


def test_missing_annotator_field_makes_row_annotators_loudly(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [
        {"worker_id": 1, "prompt": "Q", "chosen": "a", "rejected": "b"},
        {"worker_id": 1, "prompt": "Q2", "chosen": "a", "rejected": "b"}])
    res = ingest([str(f)])
    assert len({a.annotator_id for a in res.records}) == 2
    (warning,) = res.report["warnings"]
    assert "NO ANNOTATOR FIELD" in warning and "--map annotator_id=worker_id" in warning
    assert res.report["identifiability"]["verdict"] == "not-identifiable"


def test_exact_duplicates_are_counted_not_kept(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [ranked_row(), ranked_row(), ranked_row("w2")])
    r = ingest([str(f)]).report
    assert (r["read"], r["accepted"], r["duplicates"]) == (3, 2, 1)
    assert r["duplicate_examples"][0]["same_as"].endswith("line 1")


def _rows() -> list[dict]:
    return [ranked_row("w1"), ranked_row("w2", ranking=[0])]


def test_json_csv_parquet_and_gzip_read_alike(tmp_path):
    rows = _rows()
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    with (tmp_path / "c.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["annotator_id", "prompt", "responses", "ranking"])
        for r in rows:
            w.writerow([r["annotator_id"], r["prompt"], json.dumps(r["responses"]),
                        json.dumps(r["ranking"])])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as g:
        g.write("\n".join(json.dumps(r) for r in rows))
    expected = [(r["annotator_id"], r["responses"], r["ranking"]) for r in rows]
    for name in ("a.json", "b.json", "c.csv", "d.parquet", "e.jsonl.gz"):
        got = [(a.annotator_id, a.responses, a.ranking)
               for a in ingest([str(tmp_path / name)]).records]
        assert got == expected, name


def test_datasets_folders(tmp_path):
    import datasets
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows()),
                               "test": datasets.Dataset.from_list([ranked_row("w3")])})
    ds.save_to_disk(str(tmp_path / "saved"))
    recs = ingest([str(tmp_path / "saved")]).records
    assert [(a.annotator_id, a.split) for a in recs] == [("w1", "train"), ("w2", "train"),
                                                         ("w3", "test")]
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "train.jsonl", _rows())
    assert [a.annotator_id for a in ingest([str(files)]).records] == ["w1", "w2"]


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(IngestError, match="not a file or folder"):
        ingest(["no-such-owner/no-such-dataset-xyz"])


def test_written_folder_loads_and_reconciles(tmp_path):
    from pluralign.ingest import write
    f = write_jsonl(tmp_path / "x.jsonl", _rows())
    res = ingest([str(f)])
    write(res, tmp_path / "out", with_rejects=False)
    data = load(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(data) == report["accepted"] == 2
    assert data.manifest["sources"][0]["preset"] == "ranked"
