"""Checking a JSON file pluralign wrote and reads back: rules that each name what is wrong
with a value, applied field by field, so that a hand-edited or corrupted file stops with one
line naming the file and the field (used by the run-folder artifacts and dataset manifests)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """A run-folder file that cannot be what pluralign wrote; names the file and the field."""

    def __init__(self, path: str | Path, field: str | None, problem: str,
                 line: int | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f": field '{field}'" if field else ""
        super().__init__(f"{where}{what}: {problem} (was the file edited or damaged? re-run "
                         "the step that writes it)")


def read_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object; anything else is an ArtifactError."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(path, None, f"not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(path, None, f"not valid JSON ({e.msg})", e.lineno) from None
    if not isinstance(obj, dict):
        raise ArtifactError(path, None, f"expected a JSON object, got {_kind(obj)}")
    return obj


# -- rules: each returns the problem with a value, or None ------------------------------------
Rule = Callable[[Any], str | None]


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def integer(low: int = 0) -> Rule:
    def rule(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {_kind(v)} {v!r}"
        return None if v >= low else f"must be >= {low}, got {v}"
    return rule


def number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"expected a number, got {_kind(v)} {v!r}"
    return None if math.isfinite(v) else f"must be finite, got {v}"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) else f"expected a string, got {_kind(v)}"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else \
        f"must be one of {', '.join(choices)}, got {v!r}"


def mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"expected an object, got {_kind(v)}"


def sequence(item: Rule | None = None, length: int | None = None) -> Rule:
    def rule(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"expected a list, got {_kind(v)}"
        if length is not None and len(v) != length:
            return f"has {len(v)} entries, expected {length}"
        for i, x in enumerate(v if item is not None else ()):
            problem = item(x)
            if problem:
                return f"entry {i}: {problem}"
        return None
    return rule


def probabilities(length: int | None = None) -> Rule:
    """Finite numbers >= 0 that sum to 1 (to the precision they were written with)."""
    def rule(v: Any) -> str | None:
        problem = sequence(number, length)(v)
        if problem:
            return problem
        if any(x < 0 for x in v):
            return f"holds a negative probability: {v}"
        return None if abs(sum(v) - 1) < 1e-4 else f"must sum to 1, sums to {sum(v):.6g}"
    return rule


def matrix(rows: int, cols: int) -> Rule:
    return sequence(sequence(optional(number), cols), rows)


def check(obj: dict[str, Any], path: str | Path, rules: dict[str, Rule],
          optional_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """`obj` itself when every field meets its rule; the first that does not raises."""
    for key, rule in rules.items():
        if key not in obj:
            if key in optional_keys:
                continue
            raise ArtifactError(path, key, "is missing")
        problem = rule(obj[key])
        if problem:
            raise ArtifactError(path, key, problem)
    return obj


def manifest_info(path: str | Path, rules: dict[str, Rule],
                  optional_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A manifest (a stage's or a dataset's), checked."""
    return check(read_object(path), path, rules, optional_keys)
