"""`ingest`: read inputs, map columns, pick presets, validate, deduplicate, report, write."""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign import __version__
from pluralign.core.data import Annotation, Annotations, FieldError, check_annotation, load, save
from pluralign.core.io import sha256_file, write_json, write_jsonl
from pluralign.ingest.errors import IngestError
from pluralign.ingest.layouts import detect, get_preset
from pluralign.ingest.presets import TIES, Context, Preset, RatingsOptions, Unit
from pluralign.ingest.ratings import account, check_account
from pluralign.ingest.readers import MAX_INPUT_MB, RawRow, read_source, rows_of
from pluralign.ingest.report import describe
from pluralign.settings import EMPTY, ON_ERROR, IngestOptions

REPORT_FILE = "report.json"
REJECTS_FILE = "rejects.jsonl"
CANONICAL_NAMES = frozenset({
    "annotator_id", "prompt", "responses", "ranking", "features", "item_id", "true_type",
    "group", "split", "chosen", "rejected", "scores", "response", "rank", "score"})
#: Lists longer than this are reported: every tensor is padded per batch to its widest list,
#: so one 10,000-response row costs memory and time out of proportion (see --max-responses).
WIDE_LIST = 64
#: Column names that suggest an annotator id when `annotator_id` is absent.
ANNOTATOR_HINTS = ("worker", "worker_id", "user", "user_id", "rater", "rater_id", "annotator",
                   "labeler", "labeler_id", "judge", "participant", "respondent")


@dataclass
class IngestResult:
    """What one ingestion produced: the accepted records, the report and the rejects."""

    records: list[Annotation]
    report: dict[str, Any]
    rejects: list[dict[str, Any]] = field(default_factory=list)


def parse_mapping(pairs: list[str] | None) -> dict[str, str]:
    """`["annotator_id=worker", ...]` -> {"worker": "annotator_id"} (source -> canonical)."""
    mapping: dict[str, str] = {}
    for pair in pairs or []:
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical or not source:
            raise IngestError(f"--map expects CANONICAL=SOURCE, got '{pair}'",
                              reason="bad_option")
        if canonical not in CANONICAL_NAMES:
            raise IngestError(f"--map {pair}: '{canonical}' is not a canonical field; known: "
                              f"{', '.join(sorted(CANONICAL_NAMES))}", reason="bad_option")
        mapping[source] = canonical
    return mapping


def ingest_with(inputs: list[str], options: IngestOptions) -> IngestResult:
    """ingest() with the reading options of a settings.IngestOptions (flags or YAML)."""
    return ingest(inputs, preset=options.preset, on_error=options.on_error,
                  mapping=parse_mapping(options.map), ties=options.ties,
                  empty_responses=options.empty_responses, max_responses=options.max_responses,
                  max_input_mb=options.max_input_mb, ratings=RatingsOptions(
                      options.list_size, options.ratings_seed, options.default_prompt))


def ingest(inputs: list[str], preset: str = "auto", on_error: str = "fail",
           mapping: dict[str, str] | None = None, ties: str = "truncate",
           empty_responses: str = "keep", max_responses: int | None = None,
           max_input_mb: int = MAX_INPUT_MB,
           ratings: RatingsOptions | None = None) -> IngestResult:
    """Read and validate `inputs`; raise IngestError at the first bad row when on_error='fail'.

    `empty_responses`: "keep" accepts an empty string as a real (empty) answer and lists where
    it occurs in the report's warnings; "reject" treats it as a bad row. A null is always bad.
    `max_responses`: a row with more responses is a bad row (reason too_many_responses).
    `max_input_mb`: a file larger than this once decompressed is refused (0: no limit).
    `ratings`: how the ratings layout makes lists (pluralign.ingest.ratings).
    """
    if max_responses is not None and max_responses < 2:
        raise IngestError(f"--max-responses must be >= 2, got {max_responses}",
                          reason="bad_option")
    if on_error not in ON_ERROR:
        raise IngestError(f"unknown --on-error '{on_error}'; use fail or skip",
                          reason="bad_option")
    if ties not in TIES:
        raise IngestError(f"unknown --ties '{ties}'; use {' or '.join(TIES)}",
                          reason="bad_option")
    if empty_responses not in EMPTY:
        raise IngestError(f"unknown --empty-responses '{empty_responses}'; use keep or reject",
                          reason="bad_option")
    if not inputs:
        raise IngestError("no inputs given", reason="bad_option")
    fixed = None if preset == "auto" else get_preset(preset)
    run = _Run(on_error, allow_empty=empty_responses == "keep", max_responses=max_responses,
               ratings=ratings)
    for spec in inputs:
        try:
            name, rows = read_source(spec, max_input_mb)
        except IngestError as e:
            if on_error == "skip" and e.reason == "empty_file":
                run.warnings.append(f"{spec}: {e.detail}; skipped")
                run.files.append({"path": spec, "skipped": e.detail})
                continue
            raise
        run.add_file(name, _apply_mapping(rows, mapping or {}, name), fixed, ties)
    if not run.records:
        raise IngestError(f"no annotation was accepted from {', '.join(inputs)}; nothing to "
                          "write"
                          + (f" ({run.rejected} rejected, see the report)" if run.rejected
                             else ""), reason="no_data")
    run.warn_repeats()
    run.warn_id_collisions()
    run.warn_wide_lists()
    if run.identical_at:
        run.warnings.append(
            f"{len(run.identical_at)} accepted annotation(s) rank a response against an "
            f"identical one (same text, same features): {_shown(run.identical_at)}; kept, as "
            "real data has them (HH-RLHF: a chosen equal to its rejected), but such a comparison "
            "says nothing about the annotator and adds a constant to the likelihood")
    if run.empty_at:
        run.warnings.append(f"{len(run.empty_at)} accepted annotation(s) hold an empty response "
                            f"(kept as a real empty answer; --empty-responses reject refuses "
                            f"them): {_shown(run.empty_at)}")
    options = {"preset": preset, "on_error": on_error, "ties": ties,
               **({"ratings": vars(ratings)} if ratings is not None else {}),
               "empty_responses": empty_responses, "max_responses": max_responses,
               "map": {v: k for k, v in (mapping or {}).items()}}
    return IngestResult(run.records, run.report(options), run.rejects)


def write(result: IngestResult, out_dir: str | os.PathLike, with_rejects: bool) -> None:
    """Write annotations, manifest, report and (with_rejects) rejects.jsonl into `out_dir`."""
    out = Path(out_dir)
    sources = [{k: f[k] for k in ("path", "sha256", "preset") if k in f}
               for f in result.report["files"]]
    save(result.records, out, {"created_by": f"pluralign {__version__} ingest",
                               "sources": sources}, validate=False)  # checked while ingesting
    write_json(out / REPORT_FILE, result.report)
    rejects = out / REJECTS_FILE
    if with_rejects:
        write_jsonl(rejects, result.rejects)
    elif rejects.exists():
        rejects.unlink()  # a stale file from an earlier run would misdescribe this one


def _shown(places: list[str]) -> str:
    """The first few locations of a list, for a warning."""
    return ", ".join(places[:5]) + (" ..." if len(places) > 5 else "")


def identical_ranked(a: Annotation) -> bool:
    """Whether two candidates with the same text (and the same features, when given) are
    compared: at least one of them is ranked."""
    ranked = set(a.ranking)
    seen: dict[Any, int] = {}
    for j, r in enumerate(a.responses):
        key = (r, None if a.features is None else tuple(a.features[j]))
        if key in seen and (j in ranked or seen[key] in ranked):
            return True
        seen.setdefault(key, j)
    return False


def fold_id(text: str) -> str:
    """An id as a person reads it: compatibility-normalised (full-width letters), invisible
    format characters (zero-width space, joiners) removed, spaces stripped, case folded."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip().casefold()


class _Run:
    """Accumulates accepted records, rejects and counts across input files."""

    def __init__(self, on_error: str, allow_empty: bool, max_responses: int | None = None,
                 ratings: RatingsOptions | None = None):
        self.on_error = on_error
        self.ratings = ratings or RatingsOptions()
        self.tally: Counter[str] = Counter()
        self.max_responses = max_responses
        self.allow_empty = allow_empty
        self.empty_at: list[str] = []
        self.identical_at: list[str] = []
        self.records: list[Annotation] = []
        self.rejects: list[dict[str, Any]] = []
        self.by_reason: Counter[str] = Counter()
        self.seen: dict[str, str] = {}
        self.read = self.duplicates = self.ties_truncated = self.same_content = 0
        self.duplicate_examples: list[dict[str, str]] = []
        self.files: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.feature_dim: int | None = None

    @property
    def rejected(self) -> int:
        return sum(self.by_reason.values())

    def add_file(self, name: str, rows: list[RawRow], fixed: Preset | None, ties: str) -> None:
        columns = {k for r in rows if r.data for k in r.data}
        before = (self.read, len(self.records), self.rejected, self.duplicates)
        preset_name, synthetic = None, False
        if not columns and fixed is None:  # no row could be read: report the rows themselves
            units = (Unit(r.location, r.raw, None, r.error or FieldError(
                "(line)", "an empty record: no fields at all", "missing_field")) for r in rows)
        else:
            preset = fixed or detect(columns, name)
            preset_name, synthetic = preset.name, "annotator_id" not in columns
            if synthetic:
                self._warn_no_annotator(name, columns)
            units = preset.units(rows, Context(synthetic, ties, self.ratings, self.tally))
        for unit in units:
            self.read += 1
            self._take(unit, preset_name, synthetic)
        self.files.append({
            "path": name, "sha256": sha256_file(name) if Path(name).is_file() else None,
            "preset": preset_name,
            "synthetic_annotators": synthetic, "read": self.read - before[0],
            "accepted": len(self.records) - before[1], "rejected": self.rejected - before[2],
            "duplicates": self.duplicates - before[3]})

    def warn_wide_lists(self) -> None:
        """Report lists longer than WIDE_LIST: accepted, but costly (memory, time)."""
        wide = [a.m for a in self.records if a.m > WIDE_LIST]
        if wide:
            self.warnings.append(
                f"{len(wide)} annotation(s) list more than {WIDE_LIST} responses (widest: "
                f"{max(wide)}); they are handled, but scoring and training pad a batch to its "
                "widest list, so they cost memory and time out of proportion; "
                "--max-responses N rejects longer lists")

    def warn_repeats(self) -> None:
        """Report equal rows kept apart because the file names no annotator."""
        if self.same_content:
            self.warnings.append(
                f"{self.same_content} row(s) without an annotator field repeat another row's "
                "judgement; each is kept as its own annotation (they may be different people)")

    def warn_id_collisions(self) -> None:
        """Warn about annotator ids that look alike (case, surrounding spaces, full-width
        letters, invisible characters): kept apart, as they may be different people, but
        usually one person spelled two ways. Ids holding invisible characters are listed too."""
        spellings: dict[str, set[str]] = {}
        for a in {a.annotator_id for a in self.records}:
            spellings.setdefault(fold_id(a), set()).add(a)
        clashes = [sorted(v) for v in spellings.values() if len(v) > 1]
        if clashes:
            shown = "; ".join(" / ".join(ascii(i) for i in c) for c in sorted(clashes)[:5])
            self.warnings.append(
                f"{len(clashes)} group(s) of annotator ids look alike (they differ only by "
                f"case, spaces, full-width letters or zero-width characters) and are kept "
                f"apart: {shown}{' ...' if len(clashes) > 5 else ''}; if they are one person, "
                "fix the ids in the source")
        hidden = sorted(i for v in spellings.values() for i in v if any(
            unicodedata.category(ch) == "Cf" for ch in i))
        if hidden:
            self.warnings.append(
                f"{len(hidden)} annotator id(s) hold invisible (zero-width or format) "
                f"characters: {', '.join(ascii(i) for i in hidden[:5])}"
                f"{' ...' if len(hidden) > 5 else ''}")

    def _warn_no_annotator(self, name: str, columns: set[str]) -> None:
        hints = [c for c in sorted(columns) if c.lower() in ANNOTATOR_HINTS]
        self.warnings.append(
            f"{name}: NO ANNOTATOR FIELD - every annotation becomes its own annotator, so "
            "annotator types cannot be learned from this file"
            + (f"; did you mean --map annotator_id={hints[0]}?" if hints else ""))

    def _take(self, unit: Unit, preset: str | None, synthetic: bool) -> None:
        try:
            if unit.error is not None:
                raise unit.error
            assert unit.build is not None
            a = unit.build()
            check_annotation(a, self.feature_dim, self.allow_empty)
            if self.max_responses is not None and a.m > self.max_responses:
                raise FieldError("responses", f"{a.m} responses, more than --max-responses "
                                              f"{self.max_responses}", "too_many_responses")
        except FieldError as e:
            self._reject(unit, e, preset)
            return
        # Without an annotator field two equal rows may be two people's equal judgements: each
        # source line stays its own annotation, and only the count of repeats is reported.
        key = a.content_key(with_annotator=not synthetic)
        if synthetic:
            self.same_content += key in self.seen
            self.seen.setdefault(key, str(unit.location))
        elif key in self.seen:
            self.duplicates += 1
            if preset == "ratings":
                account(self.tally, "duplicate", unit.raw)
            if len(self.duplicate_examples) < 10:
                self.duplicate_examples.append({"at": str(unit.location),
                                                "same_as": self.seen[key]})
            return
        self.seen[key] = str(unit.location)
        if a.features is not None and self.feature_dim is None:
            self.feature_dim = len(a.features[0])
        if any(not r.strip() for r in a.responses):
            self.empty_at.append(str(unit.location))
        if identical_ranked(a):
            self.identical_at.append(str(unit.location))
        if preset in ("scored", "long", "ratings") and a.L < a.m:
            self.ties_truncated += 1
        if preset == "ratings":
            account(self.tally, "in_lists", unit.raw)
        self.records.append(a)

    def _reject(self, unit: Unit, e: FieldError, preset: str | None = None) -> None:
        if preset == "ratings":
            account(self.tally, "rejected", unit.raw)
        location = getattr(e, "location", unit.location)
        field = None if e.field.startswith("(") else e.field  # "(line)": no single field
        if self.on_error == "fail":
            raise IngestError(e.message, location, field, e.reason) from e
        self.by_reason[e.reason] += 1
        self.rejects.append({"source": location.file, location.unit: location.number,
                             "field": field, "reason": e.reason, "message": e.message,
                             "raw": unit.raw})

    def report(self, options: dict[str, Any]) -> dict[str, Any]:
        assert self.read == len(self.records) + self.rejected + self.duplicates
        return {
            "read": self.read, "accepted": len(self.records),
            "rejected": {"total": self.rejected, "by_reason": dict(sorted(self.by_reason.items()))},
            "duplicates": self.duplicates, "duplicate_examples": self.duplicate_examples,
            "repeats_without_annotator": self.same_content,
            "ties_truncated": self.ties_truncated, "feature_dim": self.feature_dim,
            **describe(self.records),
            "files": self.files, "warnings": self.warnings,
            "empty_responses": len(self.empty_at), "options": options,
            **({"ratings": check_account(self.tally)} if self.tally else {}),
        }


def _apply_mapping(rows: list[RawRow], mapping: dict[str, str], name: str) -> list[RawRow]:
    """Rename source columns to canonical names; a displaced column is kept as `original_X`."""
    if not mapping:
        return rows
    columns = {k for r in rows if r.data for k in r.data}
    for source, canonical in mapping.items():
        if source not in columns:
            raise IngestError(f"--map {canonical}={source}: there is no column '{source}' "
                              f"(columns: {', '.join(sorted(columns))})", name,
                              reason="bad_option")
    for r in rows:
        if r.data is None:
            continue
        renamed = {}
        for k, v in r.data.items():
            if k in mapping:
                renamed[mapping[k]] = v
            elif k in mapping.values():
                renamed[f"original_{k}"] = v
            else:
                renamed.setdefault(k, v)
        r.data = renamed
    return rows


def to_annotations(data: Any, preset: str = "auto") -> Annotations:
    """Any input a user has at hand as a canonical dataset: an Annotations (itself), a dataset
    folder made by `pluralign ingest` (loaded), any other path `pluralign ingest` reads (a file,
    a datasets folder), a pandas DataFrame or a list of dicts (rows in any preset's columns),
    or a list of Annotation. Rows are validated as ingestion does: the first bad one raises
    IngestError naming the row and the field."""
    if isinstance(data, Annotations):
        return data
    if isinstance(data, (str, os.PathLike)):
        if (Path(data) / "manifest.json").is_file():
            return load(data)
        return Annotations(ingest([str(data)], preset=preset).records)  # files, hub names
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return _from_rows(data.to_dict("records"), "DataFrame", preset)
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(a, Annotation) for a in data):
            return Annotations(data)
        if data and all(isinstance(r, dict) for r in data):
            return _from_rows(list(data), "rows", preset)
    raise TypeError(f"cannot read annotations from {type(data).__name__}: pass a dataset "
                    "folder or file path, an Annotations, a pandas DataFrame, or a non-empty "
                    "list of dicts or of Annotation")


def _from_rows(items: list[dict], name: str, preset: str) -> Annotations:
    """In-memory rows through the ingestion's presets and checks (row numbers from 1)."""
    run = _Run("fail", allow_empty=True)
    run.add_file(name, rows_of(items, name), None if preset == "auto" else get_preset(preset),
                 "truncate")
    if not run.records:
        raise IngestError(f"no annotation in the {len(items)} {name}", reason="no_data")
    return Annotations(run.records)
