"""Canonical records: validation reasons, parquet round trip, tamper detection."""

from __future__ import annotations

import json

import pytest

from pluralign.core.data import Annotation, FieldError, check_annotation, load, save


def _a(**over) -> Annotation:
    base = dict(annotator_id="h1", prompt="p", responses=["a", "b", "c"], ranking=[2, 0])
    base.update(over)
    return Annotation(**base)


@pytest.mark.parametrize("over, field, reason", [
    ({"responses": ["a"], "ranking": [0]}, "responses", "too_few_responses"),
    ({"ranking": [0, 3]}, "ranking", "ranking_out_of_range"),
    ({"ranking": [1, 1]}, "ranking", "repeated_index"),
    ({"ranking": []}, "ranking", "wrong_type"),
    ({"features": [[1.0], [2.0], [float("nan")]]}, "features", "non_finite"),
    ({"features": [[1.0], [2.0, 3.0], [1.0]]}, "features", "inconsistent_features"),
    ({"features": [[1.0], [2.0]]}, "features", "inconsistent_features"),
    ({"prompt": [{"role": "user"}]}, "prompt", "wrong_type"),
    ({"annotator_id": ""}, "annotator_id", "wrong_type"),
])
def test_check_annotation_names_field_and_reason(over, field, reason):
    with pytest.raises(FieldError) as e:
        check_annotation(_a(**over))
    assert (e.value.field, e.value.reason) == (field, reason)


def test_feature_width_is_pinned_across_rows():
    check_annotation(_a(features=[[1.0, 2.0]] * 3), feature_dim=2)
    with pytest.raises(FieldError, match="earlier rows have 2"):
        check_annotation(_a(features=[[1.0]] * 3), feature_dim=2)


def test_empty_response_is_valid_unless_refused():
    check_annotation(_a(responses=["a", "", "c"]))
    with pytest.raises(FieldError) as e:
        check_annotation(_a(responses=["a", " ", "c"]), allow_empty=False)
    assert e.value.reason == "empty_response"


def test_save_load_round_trip_keeps_every_field(tmp_path):
    records = [
        _a(features=[[1.5, -2.0]] * 3, item_id="i1", true_type="t0", split="train",
           metadata={"x": [1, 2], "y": "z"}),
        _a(annotator_id="h2", prompt=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}],
           responses=["x", "y"], ranking=[1, 0], group="g"),
    ]
    manifest = save(records, tmp_path)
    loaded = load(tmp_path)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in records]
    assert manifest["rows"] == 2 and manifest["feature_dim"] == 2
    assert loaded.annotator_ids == ["h1", "h2"]


def test_load_detects_a_modified_folder(tmp_path):
    save([_a()], tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["fingerprint"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="fingerprint"):
        load(tmp_path)


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations.parquet"):
        load(tmp_path)


def test_memo_keys_are_per_object_and_the_heap_pause_nests():
    """Backends memoise under memo_key: two datasets never share one (even with equal
    content: a cache hit must never depend on a hash collision of objects), a dataset keeps
    its own. The collector pause freezes on entry, survives nesting, and unfreezes once."""
    import gc

    from pluralign.core import heap
    from pluralign.core.data import Annotations
    a = Annotations([Annotation("h", "p", ["x", "y"], [0, 1])])
    b = Annotations(list(a))
    assert a.memo_key == a.memo_key and a.memo_key != b.memo_key != a[:1].memo_key
    assert gc.get_freeze_count() == 0
    with heap.frozen():
        assert gc.get_freeze_count() > 0
        with heap.frozen():
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_jsonl_lines_hold_one_record_whatever_the_strings(tmp_path):
    """U+0085, U+2028 and U+2029 end a line for str.splitlines (and JavaScript): written raw
    inside a JSONL string they split one reject in two (found by tests/test_fuzz.py)."""
    from pluralign.core.io import write_jsonl
    rows = [{"raw": {"annotator_id": "\x85"}}, {"text": "a\u2028b\u2029c\x0bd é"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    lines = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
