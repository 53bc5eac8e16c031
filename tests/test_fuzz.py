"""Fuzzing what a user feeds pluralign: random YAML configs and random JSONL/CSV files, in
random encodings and sizes. Every case ends in a result whose counts reconcile, or in one line
that names the file: never a traceback, never unbounded memory (aliases are refused, sizes are
capped by the strategies, and a tracemalloc bound checks the readers)."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pluralign.settings.config import ConfigError
from pluralign.stages.pipeline import SECTIONS, PipelineConfig

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEYS = ["inputs", "out", "seed", "n_types", "backend", "l2", "features", "type_weights",
        "heldout_fraction", "estimator", "n_boot", "model", "top_layers", "types",
        "annotators", "list_size", "prior", "bogus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)
documents = st.dictionaries(st.sampled_from([*SECTIONS, "other"]),
                            st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values,
                                                              max_size=5)), max_size=6)
# Text that is not a plain document: aliases, duplicate keys, bad indentation, tabs, binary.
nasty = st.sampled_from([
    "a: &x [1, 2]\nb: *x\n", "run: {seed: 1}\nrun: {seed: 2}\n", "em:\n n_types: 2\n  tol: 1\n",
    "em:\t{n_types: 2}\n", "[1, 2, 3]\n", "just text\n",
    "em: {n_types: !!python/object:os.system x}\n",
    "aggregate: {type_weights: [.nan, 1]}\n", "linear: {l2: 1e-3}\n", "---\na: 1\n---\nb: 2\n",
    "em: {n_types: 2, n_types: 3}\n", "\x00\x01\x02", "ingest: {inputs: ['\udcff']}\n"])


def _check_config(path: Path) -> None:
    try:
        PipelineConfig.load(path)
    except ConfigError as e:
        message = str(e)
        assert str(path) in message, message
        assert "\n" not in message.strip(), message


@FUZZ
@given(doc=documents)
def test_random_yaml_configs_load_or_name_the_file(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    _check_config(path)


@FUZZ
@given(text=st.one_of(nasty, st.text(max_size=200)), encoding=st.sampled_from(
    ["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_nasty_yaml_text_is_refused_in_one_line(tmp_path_factory, text, encoding):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_bytes(text.encode(encoding, "surrogateescape" if encoding == "utf-8" else
                                 "replace"))
    _check_config(path)


FIELDS = ["annotator_id", "prompt", "responses", "ranking", "chosen", "rejected", "scores",
          "features", "item_id", "response", "rank", "worker", "split", "true_type"]
cells = st.one_of(scalars, st.lists(st.one_of(st.integers(-2, 6), st.text(max_size=6),
                                              st.floats(allow_nan=True)), max_size=6),
                  st.lists(st.lists(st.floats(-1e300, 1e300), min_size=1, max_size=3),
                           max_size=4))
valid = st.builds(lambda who, m, k: {"annotator_id": f"w{who}", "prompt": f"q{k}",
                                    "responses": [f"r{i}" for i in range(m)],
                                    "ranking": list(range(m))[::-1]},
                  st.integers(0, 5), st.integers(2, 4), st.integers(0, 3))
rows = st.lists(st.one_of(valid, st.dictionaries(st.sampled_from(FIELDS), cells, max_size=8)),
                min_size=0, max_size=30)


def _encode(rows: list[dict], fmt: str, encoding: str, bom: bool, cut: int | None) -> bytes:
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        header = sorted({k for r in rows for k in r}) or ["prompt"]
        w = csv.writer(buf)
        w.writerow(header)
        for r in rows:
            w.writerow([json.dumps(r[k]) if isinstance(r.get(k), list) else
                        ("" if r.get(k) is None else r.get(k)) for k in header])
        text = buf.getvalue()
    data = text.encode(encoding, "replace")
    if bom:
        data = "\ufeff".encode(encoding) + data if encoding == "utf-8" else data
    return data[:cut] if cut is not None else data


@pytest.mark.slow
@FUZZ
@given(rows=rows, fmt=st.sampled_from(["jsonl", "csv"]),
       encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]), bom=st.booleans(),
       cut=st.one_of(st.none(), st.integers(0, 400)),
       on_error=st.sampled_from(["fail", "skip"]))
def test_random_files_ingest_reconciled_or_refused_in_one_line(tmp_path_factory, cli, rows, fmt,
                                                               encoding, bom, cut, on_error):
    d = tmp_path_factory.mktemp("ingest")
    path = d / f"input.{fmt}"
    path.write_bytes(_encode(rows, fmt, encoding, bom, cut))
    tracemalloc.start()
    try:
        rc, out, err = cli("ingest", path, "--out", d / "out", "--on-error", on_error,
                           "--json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # inputs are at most a few kB: no blow-up
    assert rc in (0, 2), err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pluralign ingest: error: "), err
        assert str(path) in lines[0] or "--" in lines[0], err
        assert not (d / "out").exists()
        return
    report = json.loads(out)
    total = report["accepted"] + report["rejected"]["total"] + report["duplicates"]
    assert report["read"] == total
    written = json.loads((d / "out" / "manifest.json").read_text())["rows"]
    assert written == report["accepted"]
    if on_error == "skip":
        rejects = (d / "out" / "rejects.jsonl").read_text().splitlines()
        assert len(rejects) == report["rejected"]["total"]



HEADER_NAMES = [*FIELDS, "", " annotator_id", "x,y", 'q"uote', "ranking "]


@FUZZ
@given(header=st.lists(st.sampled_from(HEADER_NAMES), min_size=1, max_size=8),
       n=st.integers(0, 4))
def test_random_csv_headers_are_read_or_refused_naming_the_column(tmp_path_factory, cli, header,
                                                                  n):
    d = tmp_path_factory.mktemp("headers")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for i in range(n):
        w.writerow([{"annotator_id": f"w{i}", "prompt": f"q{i}", "chosen": "a", "rejected": "b",
                     "responses": '["a", "b"]', "ranking": "[1, 0]"}.get(h, "x") for h in header])
    path = d / "input.csv"
    path.write_text(buf.getvalue())
    rc, out, err = cli("ingest", path, "--out", d / "out")
    assert rc in (0, 2) and "Traceback" not in err, err
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        assert rc == 2 and f"{path}, line 1: column {twice[0]!r} appears" in err, err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err


@FUZZ
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["[", "{"]),
       dup=st.sampled_from([None, "top", "inner"]), on_error=st.sampled_from(["fail", "skip"]))
@example(depth=63, kind="[", dup=None, on_error="fail")  # 64 levels: the most allowed
@example(depth=64, kind="{", dup=None, on_error="fail")  # 65: one too many
def test_nested_json_and_duplicate_keys_are_refused_naming_the_line(tmp_path_factory, cli, depth,
                                                                    kind, dup, on_error):
    d = tmp_path_factory.mktemp("nested")
    inner = '{"k": 1, "k": 2}' if dup == "inner" else "1"
    value = ("[" * depth + inner + "]" * depth if kind == "[" else
             '{"a": ' * depth + inner + "}" * depth)
    extra = ', "annotator_id": "again"' if dup == "top" else ""
    good = json.dumps({"annotator_id": "w0", "prompt": "p", "responses": ["a", "b"],
                       "ranking": [1, 0]})
    line = f'{{"annotator_id": "w1", "prompt": "q", "responses": ["a", "b"], "ranking": [0, 1], ' \
           f'"metadata": {value}{extra}}}'
    path = d / "input.jsonl"
    path.write_text(good + "\n" + line + "\n")
    rc, out, err = cli("ingest", path, "--out", d / "out", "--on-error", on_error)
    assert rc in (0, 2) and "Traceback" not in err, err
    # arrays and objects: the row, then metadata's value and what it nests (its key is no level)
    levels = 1 + depth + (dup == "inner")
    bad = dup is not None or levels > 64
    if on_error == "fail" and bad:
        assert rc == 2 and f"{path}, line 2" in err, err
        if dup is None or levels <= 64:
            assert ("twice" if dup else "nested too deeply") in err, err
        else:  # both wrong: whichever the reader meets first
            assert "twice" in err or "nested too deeply" in err, err
    if on_error == "skip" and bad:
        assert rc == 0 and len((d / "out" / "rejects.jsonl").read_text().splitlines()) == 1
