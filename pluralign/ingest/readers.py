"""Read preference files into raw rows, each tagged with its file and line or row number.

Formats: .jsonl/.ndjson, .json, .csv/.tsv, .parquet (each optionally .gz), a folder written by
`datasets.save_to_disk`, a canonical pluralign dataset folder, a folder of data files or a
dataset name for `datasets.load_dataset`.
A row that cannot be read (undecodable bytes, truncated JSON) becomes a RawRow with an error, so
that `--on-error skip` can reject it and go on; problems with a whole file raise IngestError.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign.core import hub
from pluralign.core.data import FieldError, read_parquet
from pluralign.ingest.errors import IngestError, Location
from pluralign.settings import MAX_INPUT_MB

#: Deepest nesting of JSON arrays and objects accepted in a row (a chat prompt needs 3).
MAX_DEPTH = 64
# A CSV cell may be as long as a JSON Lines value: up to the input size limit (the csv
# module's default refuses cells over 128 KiB).
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
           ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class RawRow:
    """One input row: its `data` (a dict) or the `error` that kept it from being read."""

    location: Location
    data: dict[str, Any] | None
    raw: Any
    error: FieldError | None = None
    textual: bool = False  # values came from text cells (CSV): numbers may arrive as strings


def read_source(spec: str, max_input_mb: int = MAX_INPUT_MB) -> tuple[str, list[RawRow]]:
    """Read every row of one input; returns its display name and rows. A file larger than
    `max_input_mb` once decompressed is refused before it is all in memory (0: no limit)."""
    path = Path(spec)
    if path.is_dir():
        return spec, _read_hf_folder(path)
    if not path.exists():
        if hub.only_local(spec):  # no hub lookup for what can only be a path
            raise IngestError("not a file or folder", spec, reason="not_found")
        hub.offline_unless_reachable()
        return spec, _read_hub(spec)
    inner = path.name[:-3] if path.name.endswith(".gz") else path.name
    fmt = FORMATS.get(Path(inner).suffix.lower())
    if fmt is None:
        raise IngestError(f"unknown file format '{Path(inner).suffix or inner}'; expected one of "
                          f"{', '.join(sorted(FORMATS))} (optionally .gz), a dataset folder or "
                          "a dataset name", spec, reason="unknown_format")
    data = _read_bytes(path, spec, max_input_mb)
    if data.startswith(codecs.BOM_UTF8):  # Excel and Notepad write one: not part of the header
        data = data[len(codecs.BOM_UTF8):]
    if not data.strip():
        raise IngestError("the file is empty", spec, reason="empty_file")
    rows = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "tsv": _read_tsv,
            "parquet": _read_parquet}[fmt](data, spec)
    if not rows:
        raise IngestError("the file holds no rows", spec, reason="empty_file")
    return spec, rows


def _read_bytes(path: Path, spec: str, max_input_mb: int) -> bytes:
    """The file's bytes, decompressed when .gz, refusing more than `max_input_mb` MB, and a
    .gz that expands more than BOMB_RATIO-fold past BOMB_FLOOR_MB (both lifted by 0)."""
    limit = max_input_mb * 2**20 if max_input_mb else None
    gz = path.name.endswith(".gz")
    bomb = max(BOMB_RATIO * path.stat().st_size, BOMB_FLOOR_MB * 2**20) \
        if gz and limit is not None else None
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            data = _read_upto(f, min(limit, bomb) if bomb is not None else limit)
    except (OSError, EOFError) as e:
        if not gz or isinstance(e, PermissionError | FileNotFoundError):
            raise
        raise IngestError(f"not a readable gzip file ({e})", spec, reason="bad_file") from e
    if limit is not None and len(data) > limit:
        raise IngestError(f"larger than {max_input_mb} MB{' once decompressed' if gz else ''}; "
                          f"if the file is genuine, raise --max-input-mb (0: no limit)", spec,
                          reason="too_large")
    if bomb is not None and len(data) > bomb:
        raise IngestError(f"expands more than {BOMB_RATIO}-fold once decompressed (past "
                          f"{len(data) >> 20} MB from {path.stat().st_size >> 10} KB): a "
                          "decompression bomb? If the file is genuine, pass --max-input-mb 0 "
                          "(no limit)", spec, reason="too_large")
    return data


#: A .gz expanding more than this many times over, once past BOMB_FLOOR_MB, is refused: text
#: compresses 3-15 fold, a bomb of repeated bytes a thousandfold.
BOMB_RATIO = 100
BOMB_FLOOR_MB = 64


def _read_upto(f: io.BufferedIOBase, limit: int | None) -> bytes:
    """All of `f`, or a little over `limit` bytes when longer: read in 1 MiB chunks, as
    f.read(n) would allocate n bytes up front."""
    chunks, size = [], 0
    while limit is None or size <= limit:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Duplicate(dict):
    """A JSON object in which a key appeared twice (the last value would silently win)."""

    key: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a plain dict, or a _Duplicate naming the repeated key."""
    out = _Duplicate() if len({k for k, _ in pairs}) < len(pairs) else {}
    for k, v in pairs:
        if k in out and isinstance(out, _Duplicate) and not out.key:
            out.key = k
        out[k] = v
    return out


def json_value(text: str) -> Any:
    """json.loads with duplicate keys and deep nesting found: raises FieldError naming the
    key, or the depth (Python's reader would overflow its stack past ~1,000 levels)."""
    try:
        obj = json.loads(text, object_pairs_hook=_object)
    except RecursionError:
        raise FieldError("(line)", f"nested too deeply (more than {MAX_DEPTH} levels of "
                                   "arrays and objects)", "too_deep") from None
    _check_shape(obj)
    return obj


def _check_shape(obj: Any) -> None:
    """Walk `obj` without recursion: a duplicate key or nesting past MAX_DEPTH raises."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FieldError("(line)", f"nested too deeply (more than {MAX_DEPTH} levels of "
                                       "arrays and objects)", "too_deep")
        if isinstance(value, _Duplicate):
            raise FieldError(value.key, "appears twice in one object (the second value would "
                                        "silently replace the first)", "duplicate_key")
        children = value.values() if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _read_jsonl(data: bytes, name: str) -> list[RawRow]:
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        loc = Location(name, "line", number)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(RawRow(loc, None, line.decode("utf-8", "replace"), FieldError(
                "(line)", f"undecodable bytes: not UTF-8 at byte {e.start}", "undecodable")))
            continue
        rows.append(_parse_json_row(text, loc))
    return rows


def _parse_json_row(text: str, loc: Location) -> RawRow:
    try:
        obj = json_value(text)
    except json.JSONDecodeError as e:
        return RawRow(loc, None, _shown(text), FieldError(
            "(line)", f"truncated or invalid JSON ({e.msg}, column {e.colno})", "invalid_json"))
    except FieldError as e:
        return RawRow(loc, None, _shown(text), e)
    if not isinstance(obj, dict):
        return RawRow(loc, None, text, FieldError(
            "(line)", f"expected a JSON object, got {type(obj).__name__}", "invalid_json"))
    return RawRow(loc, obj, obj)


def _shown(text: str, limit: int = 2000) -> str:
    """A rejected line as kept in rejects.jsonl: cut when long (a 100,000-deep line would
    make the rejects file as deep to read back)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _decode_whole(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise IngestError(f"undecodable bytes: not UTF-8 at byte {e.start}",
                          Location(name, "line", line), reason="undecodable") from e


def _read_json(data: bytes, name: str) -> list[RawRow]:
    text = _decode_whole(data, name)
    try:
        obj = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved under a .json name
            return _read_jsonl(data, name)
        raise IngestError(f"truncated or invalid JSON ({e.msg}, column {e.colno})",
                          Location(name, "line", e.lineno), reason="invalid_json") from e
    except RecursionError:
        raise IngestError(f"nested too deeply (more than {MAX_DEPTH} levels of arrays and "
                          "objects)", name, reason="too_deep") from None
    if isinstance(obj, _Duplicate):
        raise IngestError(f"key '{obj.key}' appears twice in the top-level object", name,
                          reason="duplicate_key")
    if isinstance(obj, dict):  # {"data": [...]} or similar: the one list of objects inside
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise IngestError("expected a list of objects, or an object holding exactly one "
                              "such list", name, reason="invalid_json")
        obj = lists[0]
    if not isinstance(obj, list):
        raise IngestError("expected a list of objects", name, reason="invalid_json")
    rows = []
    for number, item in enumerate(obj, start=1):
        loc = Location(name, "row", number)
        try:
            _check_shape(item)
        except FieldError as e:
            rows.append(RawRow(loc, None, _shown(json.dumps(item)[:2000]), e))
            continue
        if isinstance(item, dict):
            rows.append(RawRow(loc, item, item))
        else:
            rows.append(RawRow(loc, None, item, FieldError(
                "(row)", f"expected an object, got {type(item).__name__}", "invalid_json")))
    return rows


def _read_csv(data: bytes, name: str, delimiter: str = ",") -> list[RawRow]:
    # surrogateescape keeps undecodable bytes visible per record instead of failing the file.
    text = data.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise IngestError("the file is empty", name, reason="empty_file") from None
    if any(_has_surrogates(h) for h in header):
        raise IngestError("undecodable bytes in the header", Location(name, "line", 1),
                          reason="undecodable")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise IngestError(f"column {twice[0]!r} appears more than once in the header (one "
                          "column's values would silently replace the other's)",
                          Location(name, "line", 1), reason="duplicate_column")
    rows = []
    start = reader.line_num + 1
    for cells in reader:
        loc = Location(name, "line", start)
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        raw = dict(zip(header, cells, strict=False))
        if any(_has_surrogates(c) for c in cells):
            clean = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                     for k, v in raw.items()}
            rows.append(RawRow(loc, None, clean, FieldError(
                "(line)", "undecodable bytes: not UTF-8", "undecodable")))
            continue
        if len(cells) != len(header):
            rows.append(RawRow(loc, None, raw, FieldError(
                "(line)", f"{len(cells)} cells, the header has {len(header)}", "invalid_csv")))
            continue
        try:
            cells_read = {k: _csv_cell(v) for k, v in raw.items()}
        except FieldError as e:
            rows.append(RawRow(loc, None, {k: _shown(v) for k, v in raw.items()}, e))
            continue
        rows.append(RawRow(loc, cells_read, raw, textual=True))
    return rows


def _read_tsv(data: bytes, name: str) -> list[RawRow]:
    return _read_csv(data, name, delimiter="\t")


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _csv_cell(cell: str) -> Any:
    """Empty cells are missing; cells holding a JSON list or object are decoded."""
    if cell == "":
        return None
    stripped = cell.strip()
    if stripped[:1] in "[{":
        try:
            return json_value(stripped)
        except json.JSONDecodeError:
            return cell
    return cell


def _read_parquet(data: bytes, name: str) -> list[RawRow]:
    import pyarrow as pa
    try:
        table = read_parquet(pa.BufferReader(data))
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise IngestError(f"not a readable parquet file ({e})", name, reason="bad_file") from e
    names = table.schema.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IngestError(f"column {twice[0]!r} appears more than once (one column's values "
                          "would silently replace the other's)", name, reason="duplicate_column")
    return rows_of(table.to_pylist(), name)


def rows_of(items: list[dict], name: str, split: str | None = None) -> list[RawRow]:
    rows = []
    for number, item in enumerate(items, start=1):
        item = {k: _nan_to_none(v) for k, v in item.items()}
        if split is not None and item.get("split") is None:
            item["split"] = split
        rows.append(RawRow(Location(name, "row", number), item, item))
    return rows


def _nan_to_none(v: Any) -> Any:
    """Columnar formats write a missing string as null or NaN; both mean missing for scalars."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _dataset_rows(ds: Any, name: str) -> list[RawRow]:
    """Rows of a datasets.Dataset or DatasetDict; the split name fills a missing `split`."""
    import datasets
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        rows: list[RawRow] = []
        for split in ds:
            rows.extend(rows_of(list(ds[split]), f"{name}[{split}]", split))
        return rows
    return rows_of(list(ds), name)


def _read_canonical(path: Path) -> list[RawRow]:
    """A folder `pluralign ingest` or `simulate` wrote: its records in the `ranked` layout
    (re-ingesting re-validates and deduplicates; the fingerprint is checked first)."""
    from pluralign.core.data import load
    try:
        data = load(path)
    except (OSError, ValueError) as e:
        raise IngestError(f"a pluralign dataset folder that cannot be read ({e})", str(path),
                          reason="bad_file") from e
    return rows_of([a.to_dict() for a in data], str(path))


def _read_hf_folder(path: Path) -> list[RawRow]:
    from pluralign.core.data import ANNOTATIONS_FILE, MANIFEST_FILE
    if (path / ANNOTATIONS_FILE).is_file() and (path / MANIFEST_FILE).is_file():
        return _read_canonical(path)
    import datasets
    name = str(path)
    saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
    try:
        ds = datasets.load_from_disk(name) if saved else datasets.load_dataset(name)
    except Exception as e:
        raise IngestError(f"cannot read this folder as a dataset ({type(e).__name__}: {e})",
                          name, reason="bad_file") from e
    rows = _dataset_rows(ds, name)
    if not rows:
        raise IngestError("the dataset holds no rows", name, reason="empty_file")
    return rows


def _read_hub(spec: str) -> list[RawRow]:
    """`datasets.load_dataset(spec)`; works when a hub is reachable or the name is cached."""
    import datasets
    name, _, split = spec.partition("@")
    try:
        ds = datasets.load_dataset(name, split=split or None)
    except Exception as e:
        raise IngestError(f"not a file or folder, and datasets.load_dataset could not load it "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                          spec, reason="not_found") from e
    rows = _dataset_rows(ds, spec if not split else spec)
    if not rows:
        raise IngestError("the dataset holds no rows", spec, reason="empty_file")
    return rows
