"""Group-level answer distributions: a question, its options, each group's share per option.

Two layouts are read, the two the field publishes:
- OpinionQA waves (Santurkar et al. 2023): a wave folder holds `info.csv` (key, question,
  references = the options in order, option_ordinal = the ordinal value of the first options)
  and `{ATTRIBUTE}_data.json` = {key: {"question_text", "MC_options", group: {option: count}}}.
  A folder of wave folders reads every wave that has the attribute.
- List-of-records files (GlobalOpinionQA as Modular Pluralism prepared it): a JSON list, JSONL,
  optionally .gz, of {question, options, attribute (the group), gold_distribution}; the records
  of one question text are one question, each record one group's shares.

A group may be missing from a question (GlobalOpinionQA asks most questions in a few countries):
its shares are then simply absent. Errors name the file, the question and the field.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.ingest.errors import IngestError

#: Options that are no answer: dropped from the questions unless refusals are kept.
REFUSAL = re.compile(r"refus|don'?t know|\bdk\b|not sure|no answer|decline", re.IGNORECASE)
#: Group names that are no group (OpinionQA's respondents with the attribute missing).
NON_GROUPS = ("nan", "Refused", "")
_INFO = "info.csv"
_SUFFIX = "_data.json"


@dataclass
class GroupQuestion:
    """One question: its options, their ordinal values (None where unordered) and each group's
    answer distribution over the options (a share vector summing to 1)."""

    key: str
    text: str
    options: list[str]
    shares: dict[str, np.ndarray]
    ordinal: list[float | None] | None = None

    def without_refusals(self) -> GroupQuestion | None:
        """The question with its refusal options removed and shares renormalised; None when
        fewer than 2 options or no group's shares are left."""
        keep = [i for i, o in enumerate(self.options) if not REFUSAL.search(o)]
        if len(keep) < 2:
            return None
        shares = {g: s[keep] / s[keep].sum() for g, s in self.shares.items() if s[keep].sum() > 0}
        if not shares:
            return None
        ordinal = None if self.ordinal is None else [self.ordinal[i] for i in keep]
        return replace(self, options=[self.options[i] for i in keep], shares=shares,
                       ordinal=ordinal)

    @property
    def ordered(self) -> bool:
        """Whether every option has an ordinal value (EMD is defined)."""
        return self.ordinal is not None and all(v is not None for v in self.ordinal)


@dataclass
class GroupTable:
    """The questions of one source and attribute."""

    source: str
    layout: str
    attribute: str | None
    questions: list[GroupQuestion]

    @property
    def groups(self) -> list[str]:
        """Every group that has shares on at least one question, sorted."""
        return sorted({g for q in self.questions for g in q.shares})

    def coverage(self) -> dict[str, int]:
        """Questions per group."""
        return {g: sum(g in q.shares for q in self.questions) for g in self.groups}


def read_groups(path: str | Path, attribute: str | None = None) -> GroupTable:
    """Read group answer distributions from an OpinionQA wave folder, a folder of waves, or a
    list-of-records file (module docstring)."""
    p = Path(path)
    if not p.exists():
        raise IngestError("not a file or folder", str(p), reason="not_found")
    if p.is_file():
        if attribute is not None:
            raise IngestError("a list-of-records file names each record's group in its "
                              "`attribute` field; --attribute is for OpinionQA wave folders",
                              str(p), "attribute", reason="bad_option")
        return GroupTable(str(p), "records", None, _read_records(p))
    waves = sorted({f.parent for f in (*p.rglob(_INFO), *p.rglob(f"*{_SUFFIX}"))})
    if not waves:
        raise IngestError(f"no OpinionQA wave here (a folder with ATTRIBUTE{_SUFFIX} and, "
                          f"for the options' order and ordinal values, {_INFO})", str(p),
                          reason="unknown_layout")
    attribute = _attribute(p, waves, attribute)
    questions = [q for w in waves if (w / f"{attribute}{_SUFFIX}").is_file()
                 for q in _read_wave(w, attribute)]
    return GroupTable(str(p), "opinionqa", attribute, questions)


def _attribute(root: Path, waves: list[Path], attribute: str | None) -> str:
    found = sorted({f.name[: -len(_SUFFIX)] for w in waves for f in w.glob(f"*{_SUFFIX}")})
    if attribute is None and len(found) == 1:
        return found[0]
    if attribute is None or attribute not in found:
        what = "choose one with --attribute" if attribute is None else \
            f"no wave here has the attribute {attribute!r}"
        raise IngestError(f"{what}; attributes found: {', '.join(found) or 'none'}", str(root),
                          "attribute", reason="bad_option")
    return attribute


def _read_wave(wave: Path, attribute: str) -> list[GroupQuestion]:
    info = _wave_info(wave / _INFO) if (wave / _INFO).is_file() else {}  # else MC_options
    source = wave / f"{attribute}{_SUFFIX}"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IngestError(f"cannot read: {e}", str(source), reason="bad_file") from e
    if not isinstance(data, dict):
        raise IngestError("expected an object of questions", str(source), reason="bad_file")
    return [_wave_question(source, key, entry, info.get(key)) for key, entry in data.items()]


def _wave_info(path: Path) -> dict[str, dict[str, Any]]:
    """info.csv: the options in order and their ordinal values, by question key."""
    out = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row, r in enumerate(csv.DictReader(f), start=2):
            key = r.get("key")
            if not key:
                raise IngestError("no question key", f"{path}, row {row}", "key",
                                  reason="missing_field")
            out[key] = {"options": _literal(r.get("references"), path, row, "references"),
                        "ordinal": _literal(r.get("option_ordinal"), path, row, "option_ordinal",
                                            required=False),
                        "text": r.get("question") or ""}
    return out


def _literal(text: str | None, path: Path, row: int, name: str, required: bool = True) -> Any:
    try:
        value = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list):
        if required:
            raise IngestError(f"expected a list, got {text!r}", f"{path}, row {row}", name,
                              reason="bad_field")
        return None
    return value


def _wave_question(source: Path, key: str, entry: Any, info: dict[str, Any] | None
                   ) -> GroupQuestion:
    where = f"{source}, question {key}"
    if not isinstance(entry, dict):
        raise IngestError("expected an object", where, reason="bad_field")
    options = list(info["options"]) if info else entry.get("MC_options")
    if not isinstance(options, list) or len(options) < 2:
        raise IngestError("fewer than 2 options", where, "MC_options", reason="bad_field")
    options = [str(o) for o in options]
    index = {o: i for i, o in enumerate(options)}
    folded = {o.casefold(): i for i, o in enumerate(options)}  # Pew's own typos ("noR")
    shares = {}
    for group, counts in entry.items():
        if group in ("MC_options", "question_text"):
            continue
        if not isinstance(counts, dict):
            raise IngestError("expected {option: count}", where, group, reason="bad_field")
        v = np.zeros(len(options))
        for option, count in counts.items():
            j = index.get(option, folded.get(str(option).casefold()))
            if j is None:
                raise IngestError(f"option {option!r} is not one of {options}", where, group,
                                  reason="unknown_option")
            v[j] += _count(count, where, group)
        if v.sum() > 0:
            shares[str(group)] = v / v.sum()
    ordinal = None
    if info and info["ordinal"]:
        values = [float(x) if _finite(x) else None for x in info["ordinal"]]
        ordinal = (values + [None] * len(options))[: len(options)]
    text = str(entry.get("question_text") or (info or {}).get("text") or key)
    return GroupQuestion(key, text, options, shares, ordinal)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _count(x: Any, where: str, name: str) -> float:
    if not _finite(x) or x < 0:
        raise IngestError(f"a count must be a finite number >= 0, got {x!r}", where, name,
                          reason="bad_field")
    return float(x)


def _read_records(path: Path) -> list[GroupQuestion]:
    rows = _records(path)
    questions: dict[str, GroupQuestion] = {}
    for i, r in enumerate(rows, start=1):
        where = f"{path}, record {i}"
        if not isinstance(r, dict):
            raise IngestError("expected an object", where, reason="bad_field")
        for name in ("question", "options", "attribute", "gold_distribution"):
            if r.get(name) in (None, ""):
                raise IngestError("missing", where, name, reason="missing_field")
        options = r["options"]
        if not isinstance(options, list) or len(options) < 2:
            raise IngestError("expected a list of 2 or more options", where, "options",
                              reason="bad_field")
        dist = r["gold_distribution"]
        if not isinstance(dist, list) or len(dist) != len(options):
            raise IngestError(f"expected {len(options)} shares, one per option", where,
                              "gold_distribution", reason="bad_field")
        v = np.array([_count(x, where, "gold_distribution") for x in dist])
        if v.sum() <= 0:
            raise IngestError("all shares are 0", where, "gold_distribution", reason="bad_field")
        text = str(r["question"])
        q = questions.setdefault(text, GroupQuestion(
            str(r.get("key") or _short_key(text)), _question_text(text),
            [str(o) for o in options], {}, r.get("ordinal")))
        if [str(o) for o in options] != q.options:
            raise IngestError(f"options differ from an earlier record of the same question "
                              f"({q.options})", where, "options", reason="inconsistent_group")
        group = str(r["attribute"])
        if group in q.shares:
            raise IngestError(f"a second distribution of group {group!r} for this question",
                              where, "attribute", reason="duplicate")
        q.shares[group] = v / v.sum()
    if not questions:
        raise IngestError("the file holds no records", str(path), reason="empty_file")
    return list(questions.values())


def _records(path: Path) -> list[Any]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise IngestError(f"cannot read as JSON or JSONL: {e}", str(path),
                          reason="bad_file") from e


def _question_text(text: str) -> str:
    """GlobalOpinionQA's prompt form 'Question: ... Options: A. ... Answer:' -> the question."""
    m = re.match(r"\s*Question:\s*(.*?)\s*(?:\n\s*Options:.*)?$", text, re.DOTALL)
    return m.group(1) if m else text


def _short_key(text: str) -> str:
    """A question's key when the record names none: a hash of its text."""
    return "q" + hashlib.sha256(text.encode()).hexdigest()[:10]
