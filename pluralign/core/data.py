"""Canonical annotation data (DESIGN §2): one record per judgement, stored as parquet + manifest.

`Annotation` is the record; `check_annotation` is the single validity rule every producer
(ingestion presets, the simulator) goes through; `save` / `load` move a dataset to and from a
folder holding `annotations.parquet` and `manifest.json`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.core import columns
from pluralign.core.io import write_json, write_with
from pluralign.core.schema import integer, manifest_info, text

SCHEMA_VERSION = 1
ANNOTATIONS_FILE = "annotations.parquet"
MANIFEST_FILE = "manifest.json"

Message = dict[str, str]
Prompt = str | list[Message]

#: Canonical fields in storage order, and whether each is required.
CANONICAL_FIELDS: dict[str, bool] = {
    "annotator_id": True,
    "prompt": True,
    "responses": True,
    "ranking": True,
    "features": False,
    "item_id": False,
    "true_type": False,
    "group": False,
    "split": False,
    "metadata": False,
}

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([
    ("annotator_id", pa.string()),
    ("prompt", pa.string()),                 # text prompt; null when the prompt is chat messages
    ("prompt_messages", pa.list_(_MESSAGE)),  # chat prompt; null when the prompt is text
    ("responses", pa.list_(pa.string())),
    ("ranking", pa.list_(pa.int32())),
    ("features", pa.list_(pa.list_(pa.float64()))),
    ("item_id", pa.string()),
    ("true_type", pa.string()),
    ("group", pa.string()),
    ("split", pa.string()),
    ("metadata", pa.string()),               # JSON object of free source fields, kept as-is
    ("source", pa.string()),                 # where the record came from (file or simulator)
    ("source_row", pa.int64()),              # 1-based line or row in that source
])


class FieldError(ValueError):
    """A field is missing or invalid: `field` names it, `reason` is a short code for reports."""

    def __init__(self, field: str, message: str, reason: str = "invalid_value"):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message
        self.reason = reason


@dataclass
class Annotation:
    """One judgement: `annotator_id` ranked `responses` to `prompt`; `ranking` is best first."""

    annotator_id: str
    prompt: Prompt
    responses: list[str]
    ranking: list[int]
    features: list[list[float]] | None = None
    item_id: str | None = None
    true_type: str | None = None
    group: str | None = None
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    source_row: int | None = None

    @property
    def m(self) -> int:
        """Number of candidate responses."""
        return len(self.responses)

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name for the ranking length
        """Ranking length (L = m for a full ranking, L = 1 for a top-1 choice)."""
        return len(self.ranking)

    def content_key(self, with_annotator: bool = True) -> str:
        """Hash of what was judged and how; equal keys are duplicates. Text is compared in
        Unicode NFC, so composed and decomposed copies of one row are one row."""
        payload = [self.prompt, self.responses, self.ranking]
        if with_annotator:
            payload.insert(0, self.annotator_id)
        text = unicodedata.normalize("NFC", _canonical_json(payload))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, the `ranked` layout that ingestion reads back losslessly."""
        d = {name: getattr(self, name) for name in CANONICAL_FIELDS}  # no deep copy: hot path
        return {k: v for k, v in d.items() if v is not None and not (k == "metadata" and not v)}


def check_annotation(a: Annotation, feature_dim: int | None = None,
                     allow_empty: bool = True) -> None:
    """Raise FieldError naming the first invalid field of `a`.

    `feature_dim` pins the feature width. An empty response is a real answer (a model that said
    nothing; HH-RLHF's harmless raters sometimes prefer it), so it is valid unless
    `allow_empty` is False.
    """
    if not isinstance(a.annotator_id, str) or not a.annotator_id:
        raise FieldError("annotator_id", "must be a non-empty string", "wrong_type")
    _check_prompt(a.prompt)
    if not isinstance(a.responses, list) or not all(isinstance(r, str) for r in a.responses):
        raise FieldError("responses", "must be a list of strings", "wrong_type")
    if len(a.responses) < 2:
        raise FieldError("responses", f"needs at least 2 responses, got {len(a.responses)}",
                         "too_few_responses")
    for i, r in enumerate(a.responses):
        if not allow_empty and not r.strip():
            raise FieldError("responses", f"response {i} is empty", "empty_response")
    _check_ranking(a.ranking, len(a.responses))
    if a.features is not None:
        _check_features(a.features, len(a.responses), feature_dim)
    for name in ("item_id", "true_type", "group", "split"):
        value = getattr(a, name)
        if value is not None and not isinstance(value, str):
            raise FieldError(name, f"must be a string, got {type(value).__name__}",
                             "wrong_type")
    if not isinstance(a.metadata, dict):
        raise FieldError("metadata", "must be an object", "wrong_type")


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FieldError("prompt", "is empty", "empty_prompt")
        return
    if not isinstance(prompt, list) or not prompt:
        raise FieldError("prompt", "must be a string or a non-empty list of chat messages",
                         "wrong_type")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise FieldError("prompt", f"message {i} must be an object with exactly "
                                       "'role' and 'content'", "wrong_type")
        if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
            raise FieldError("prompt", f"message {i}: 'role' and 'content' must be strings",
                             "wrong_type")


def _check_ranking(ranking: Any, m: int) -> None:
    if not isinstance(ranking, list) or not ranking:
        raise FieldError("ranking", "must be a non-empty list of response indices, best first",
                         "wrong_type")
    for idx in ranking:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise FieldError("ranking", f"index {idx!r} is not an integer", "wrong_type")
        if not 0 <= idx < m:
            raise FieldError("ranking", f"index {idx} is out of range for {m} responses",
                             "ranking_out_of_range")
    if len(set(ranking)) != len(ranking):
        dup = next(i for i in ranking if ranking.count(i) > 1)
        raise FieldError("ranking", f"index {dup} appears more than once", "repeated_index")


def _check_features(features: Any, m: int, dim: int | None) -> None:
    if not isinstance(features, list) or len(features) != m:
        raise FieldError("features", f"needs one vector per response ({m})",
                         "inconsistent_features")
    for i, vec in enumerate(features):
        if not isinstance(vec, list) or not vec:
            raise FieldError("features", f"vector {i} must be a non-empty list of numbers",
                             "wrong_type")
        for x in vec:
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise FieldError("features", f"vector {i} holds a non-number {x!r}", "wrong_type")
            if not math.isfinite(x):
                raise FieldError("features", f"vector {i} holds a non-finite value {x}",
                                 "non_finite")
    widths = {len(v) for v in features}
    if len(widths) > 1:
        raise FieldError("features", f"vectors have inconsistent lengths {sorted(widths)}",
                         "inconsistent_features")
    width = widths.pop()
    if dim is not None and width != dim:
        raise FieldError("features", f"vectors have length {width}, earlier rows have {dim}",
                         "inconsistent_features")


#: Source of `Annotations.memo_key`: unique within a process, never reused (an id() would be).
_MEMO_KEYS = itertools.count()


class Annotations(Sequence[Annotation]):
    """A canonical dataset: a list of annotations plus the manifest it was stored with.

    Treat it as immutable: backends memoise their work under its `memo_key`, and its
    fingerprint is computed once. One made `from_table` holds the arrow table and builds
    records only when something asks for them; what linear EM reads (codes, sizes, rankings,
    given features) comes from the columns (pluralign.core.columns)."""

    def __init__(self, records: Iterable[Annotation] = (),
                 manifest: dict[str, Any] | None = None):
        self._records: list[Annotation] | None = list(records)
        self._table: pa.Table | None = None
        self.manifest = manifest or {}
        self.memo_key = f"annotations-{next(_MEMO_KEYS)}"
        self._fingerprint: str | None = None
        self._codes: tuple[np.ndarray, list[str]] | None = None
        self._rankings: Any = None

    @classmethod
    def from_table(cls, table: pa.Table, manifest: dict[str, Any] | None = None) -> Annotations:
        """A dataset backed by a canonical arrow `table` (SCHEMA's columns), records built on
        first access."""
        data = cls((), manifest)
        data._records, data._table = None, table
        return data

    @property
    def records(self) -> list[Annotation]:
        """The annotations as objects (built from the table on first access)."""
        if self._records is None:
            self._records = from_table(self._table)
        return self._records

    @property
    def columnar(self) -> bool:
        """Whether the columns are read from an arrow table (no records needed)."""
        return self._table is not None

    def __len__(self) -> int:
        return self._table.num_rows if self._records is None else len(self._records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            if self._records is None:
                return Annotations.from_table(self._table.take(np.arange(len(self))[i]),
                                              self.manifest)
            return Annotations(self.records[i], self.manifest)
        if self._records is None:  # one row, not all of them
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"annotation {i} out of range for {n}")
            return from_table(self._table.slice(i % n, 1))[0]
        return self.records[i]

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.records)

    @property
    def annotator_ids(self) -> list[str]:
        """Distinct annotator ids in order of first appearance (computed once, with the
        codes)."""
        return self.annotator_codes()[1]

    def annotator_codes(self) -> tuple[np.ndarray, list[str]]:
        """Integer code of each record's annotator, and the ids the codes index (computed
        once: EM asks at every run)."""
        if self._codes is None:
            self._codes = columns.codes(self._table) if self.columnar \
                else columns.record_codes(self.records)
        return self._codes[0].copy(), list(self._codes[1])

    def sizes(self) -> np.ndarray:
        """Number of candidate responses of each annotation."""
        return columns.sizes(self._table) if self.columnar \
            else columns.record_sizes(self.records)

    def feature_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate's `features`, rows in order ([candidates, D]), and the sizes;
        raises columns.MissingFeatures naming the first annotation without them."""
        return columns.feature_values(self._table) if self.columnar \
            else columns.record_feature_values(self.records)

    def rankings(self) -> Any:
        """The padded rankings (`pluralign.core.rankings.Rankings`), built once: losses, E-steps and
        backends all read them, and building them walks every record."""
        if self._rankings is None:
            from pluralign.core.rankings import Rankings  # torch: imported only when computing
            self._rankings = Rankings.from_columns(
                *(columns.ranking_columns(self._table) if self.columnar
                  else columns.record_ranking_columns(self.records)))
        return self._rankings

    def subset(self, indices: Iterable[int]) -> Annotations:
        """The records at `indices`, in that order."""
        if self._records is None:
            return Annotations.from_table(
                self._table.take(np.fromiter(indices, np.int64)), self.manifest)
        return Annotations([self.records[i] for i in indices], self.manifest)

    def fingerprint(self) -> str:
        """Content hash of every record (stable across storage formats and library versions)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.records)
        return self._fingerprint

    def to_jsonl(self, path: str | os.PathLike) -> None:
        """Export in the `ranked` JSONL layout that `pluralign ingest` reads back losslessly."""
        from pluralign.core.io import write_jsonl
        write_jsonl(path, [a.to_dict() for a in self.records])


def as_annotations(data: Annotations | Sequence[Annotation]) -> Annotations:
    """`data` itself when it is an Annotations (keeping its memoised fingerprint), else wrapped."""
    return data if isinstance(data, Annotations) else Annotations(data)


def fingerprint(records: Iterable[Annotation]) -> str:
    """SHA-256 over each record in order: its canonical JSON, features apart as float64 bytes
    (the decimal text of 10^7 floats took most of a million-record hash)."""
    h = hashlib.sha256()
    for a in records:
        d = a.to_dict()
        features = d.pop("features", None)
        h.update(_canonical_json(d).encode())
        if features is not None:
            try:
                h.update(b"\x00" + np.asarray(features, dtype=np.float64).tobytes())
            except ValueError:  # ragged widths: check_annotation refuses them, JSON still hashes
                h.update(b"\x01" + _canonical_json(features).encode())
        h.update(b"\n")
    return h.hexdigest()


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_plain)


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists, so records built from numpy hash
    like records built from Python numbers."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_table(records: Sequence[Annotation]) -> pa.Table:
    """Arrow table of `records` in the canonical SCHEMA."""
    cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
    for a in records:
        text = a.prompt if isinstance(a.prompt, str) else None
        cols["annotator_id"].append(a.annotator_id)
        cols["prompt"].append(text)
        cols["prompt_messages"].append(None if text is not None else a.prompt)
        cols["responses"].append(a.responses)
        cols["ranking"].append(a.ranking)
        cols["features"].append(a.features)
        for name in ("item_id", "true_type", "group", "split", "source", "source_row"):
            cols[name].append(getattr(a, name))
        cols["metadata"].append(_canonical_json(a.metadata) if a.metadata else None)
    return pa.table(cols, schema=SCHEMA)


def from_table(table: pa.Table) -> list[Annotation]:
    """Records of a canonical arrow table."""
    out = []
    for row in table.to_pylist():
        prompt = row["prompt"] if row["prompt"] is not None else row["prompt_messages"]
        out.append(Annotation(
            annotator_id=row["annotator_id"], prompt=prompt, responses=row["responses"],
            ranking=row["ranking"], features=row["features"], item_id=row["item_id"],
            true_type=row["true_type"], group=row["group"], split=row["split"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            source=row["source"], source_row=row["source_row"]))
    return out


def save(records: Sequence[Annotation], out_dir: str | os.PathLike,
         extra_manifest: dict[str, Any] | None = None, validate: bool = True) -> dict[str, Any]:
    """Store `records` in `out_dir`, checking each unless the caller already did (`validate`);
    returns the manifest, which is written last."""
    dim = next((len(a.features[0]) for a in records if a.features is not None), None)
    for i, a in enumerate(records if validate else ()):
        try:
            check_annotation(a, dim)
        except FieldError as e:
            raise ValueError(f"record {i + 1} (annotator {a.annotator_id!r}): {e}") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = to_table(records)
    write_with(out / ANNOTATIONS_FILE, lambda p: pq.write_table(table, p))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "rows": len(records),
        "fingerprint": fingerprint(records),
        "feature_dim": dim,
        **(extra_manifest or {}),
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


def read_parquet(source: Any) -> Any:
    """A parquet file as a pyarrow Table, read without starting any pyarrow thread: its pool
    threads, still alive when Python exits, aborted the process now and then ("terminate
    called without an active exception", exit 134 instead of 2 on an input error)."""
    return pq.ParquetFile(source, pre_buffer=False).read(use_threads=False)


def load(data_dir: str | os.PathLike, verify: bool = True) -> Annotations:
    """Load a canonical dataset folder, backed by its arrow table; with `verify`, check row
    count and fingerprint (the fingerprint builds the records; without it, linear EM never
    does)."""
    d = Path(data_dir)
    manifest_path, table_path = d / MANIFEST_FILE, d / ANNOTATIONS_FILE
    for p in (table_path, manifest_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; is {d} a pluralign dataset folder "
                                    "(made by `pluralign ingest` or `pluralign simulate`)?")
    manifest = manifest_info(manifest_path, {"rows": integer(0), "fingerprint": text})
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{manifest_path}: schema_version {manifest.get('schema_version')!r}, "
                         f"this pluralign reads {SCHEMA_VERSION}")
    data = Annotations.from_table(read_parquet(table_path), manifest)
    if verify:
        if len(data) != manifest.get("rows"):
            raise ValueError(f"{table_path}: {len(data)} rows, manifest says "
                             f"{manifest.get('rows')}")
        if data.fingerprint() != manifest.get("fingerprint"):
            raise ValueError(f"{table_path}: content does not match the manifest fingerprint "
                             "(the folder was modified or partly written)")
    return data
