"""The run folder's files as a command reads them back: each checked on load (types, shapes,
finiteness, the number of types agreeing across files), so that a hand-edited or corrupted
file stops the command with one line naming the file and the field, never a traceback or a
NaN carried into results."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pluralign.settings import BACKENDS, BASE_MEASURES, OBJECTIVES


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


# -- the files --------------------------------------------------------------------------------
def em_info(path: str | Path) -> dict[str, Any]:
    """em.json: the fit's summary, checked."""
    info = read_object(path)
    check(info, path, {"backend": one_of(*BACKENDS), "n_types": integer(1),
                       "policies": _relative, "backend_options": mapping,
                       "data": optional(text), "warnings": sequence(), "audit": optional(mapping),
                       "loglik_history": sequence(optional(number))},
          optional_keys=("data", "warnings", "audit", "loglik_history"))
    check(info, path, {"priors": sequence(number)})
    if len(info["priors"]) != info["n_types"]:
        raise ArtifactError(path, "n_types", f"{info['n_types']}, but priors lists "
                                             f"{len(info['priors'])} types")
    return check(info, path, {"priors": probabilities(info["n_types"])})


def _relative(v: Any) -> str | None:
    """A folder name inside the run folder (never a path leading out of it)."""
    if not isinstance(v, str) or not v or "/" in v or "\\" in v or v in (".", ".."):
        return f"expected a folder name inside the run folder, got {v!r}"
    return None


def aggregate_info(path: str | Path, n_types: int) -> dict[str, Any]:
    """aggregate.json, checked against the run's number of types."""
    agg = read_object(path)
    check(agg, path, {"types": sequence(text, n_types), "policies": sequence(text),
                      "weights": probabilities(n_types), "max_regret": number,
                      "binding": sequence(length=n_types), "baselines": mapping,
                      "objective": one_of(*OBJECTIVES), "made_from": mapping,
                      "base_measure": optional(one_of(*BASE_MEASURES))})
    return check(agg, path, {"regret_matrix": matrix(n_types, len(agg["policies"]))})


def evaluation_info(path: str | Path) -> dict[str, Any]:
    """evaluation.json, checked."""
    ev = read_object(path)
    return check(ev, path, {"policies": sequence(text), "regret": mapping, "metrics": mapping,
                            "spread": mapping, "personalization": mapping,
                            "discovery": mapping, "confidence_histogram": sequence(),
                            "annotators": integer(0), "annotations": integer(0),
                            "made_from": mapping})


def manifest_info(path: str | Path, rules: dict[str, Rule],
                  optional_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A manifest (a stage's or a dataset's), checked."""
    return check(read_object(path), path, rules, optional_keys)


def posteriors_rows(path: str | Path, rows: list[list[str]],
                    n_types: int | None = None) -> tuple[list[str], list[list[float]]]:
    """posteriors.csv's rows (header first) as ids and probabilities, checked: the header
    annotator_id, type_0, ..., every row as wide, each a finite distribution."""
    if not rows:
        raise ArtifactError(path, None, "is empty")
    header = rows[0]
    k = len(header) - 1
    want = ["annotator_id", *[f"type_{j}" for j in range(k)]]
    if header != want or k < 1:
        raise ArtifactError(path, None, f"header {header}, expected annotator_id, type_0, ...",
                            1)
    if n_types is not None and k != n_types:
        raise ArtifactError(path, f"type_{min(k, n_types)}", f"{k} type columns, but em.json "
                            f"says n_types {n_types}", 1)
    ids, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != k + 1:
            raise ArtifactError(path, None, f"{len(row)} cells, the header has {k + 1}", line)
        probs = []
        for j, cell in enumerate(row[1:]):
            try:
                p = float(cell)
            except ValueError:
                raise ArtifactError(path, f"type_{j}", f"not a number: {cell!r}", line) from None
            if not (math.isfinite(p) and 0 <= p <= 1):
                raise ArtifactError(path, f"type_{j}", f"not a probability: {cell}", line)
            probs.append(p)
        if abs(sum(probs) - 1) > 1e-3:
            raise ArtifactError(path, None, f"the probabilities sum to {sum(probs):.6g}", line)
        ids.append(row[0])
        values.append(probs)
    return ids, values
