"""posteriors.csv: one row per annotator, one probability column per type (type_0, ...),
written through io.csv_text and checked on load (every row a finite distribution, as many type
columns as em.json's n_types)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pluralign.core.io import csv_text, unguard_cell, write_text
from pluralign.core.schema import ArtifactError


def read_posteriors(path: Path, n_types: int | None = None) -> tuple[list[str], np.ndarray]:
    """The inverse of write_posteriors, checked (posteriors_rows): `n_types` type
    columns when given, each row a finite distribution."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ArtifactError(path, None, f"not a readable CSV file ({e})") from None
    ids, values = posteriors_rows(path, rows, n_types)
    return [unguard_cell(h) for h in ids], np.array(values, dtype=np.float64).reshape(
        len(ids), len(rows[0]) - 1)


def posteriors_table(ids: list[str], gamma: np.ndarray, summary: bool = False,
                     digits: int = 6, weights: np.ndarray | None = None) -> str:
    """annotator_id, (with `summary`: the most likely type and its probability,) then one
    probability column per type named type_0, type_1, ..., then (given `weights`) each
    annotator's own weights over the type basis w_0, w_1, ...: CSV through io.csv_text."""
    k = gamma.shape[1]
    extra = np.zeros((len(ids), 0)) if weights is None else weights
    header = ["annotator_id", *(["type", "confidence"] if summary else []),
              *[f"type_{j}" for j in range(k)], *[f"w_{j}" for j in range(extra.shape[1])]]
    rows = [[h, *([f"type_{row.argmax()}", float(row.max())] if summary else []),
             *map(float, row), *map(float, more)]
            for h, row, more in zip(ids, gamma, extra, strict=True)]
    return csv_text(header, rows, digits)


def write_posteriors(path: Path, ids: list[str], gamma: np.ndarray,
                     weights: np.ndarray | None = None) -> None:
    """The posteriors table (posteriors_table) written atomically."""
    write_text(path, posteriors_table(ids, gamma, weights=weights))


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
