"""What population-scale EM reads of a dataset, as flat numpy arrays: annotator codes, list
sizes, rankings and `given` features. Read from the canonical arrow table's columns (list
offsets and values, no Python object per annotation: 10^7 records as objects are about 15 GB)
or, for a dataset held as records, in flat passes over them. Both give the same arrays."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pluralign.core.data import Annotation


def codes(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Each row's annotator code and the ids the codes index, in order of first appearance
    (arrow's dictionary encoding numbers values as it first meets them)."""
    encoded = pc.dictionary_encode(table.column("annotator_id").combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), \
        encoded.dictionary.to_pylist()


def sizes(table: pa.Table) -> np.ndarray:
    """Number of candidate responses of each row."""
    return _lengths(table.column("responses"))


def ranking_columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sizes, ranking lengths, every ranking's indices concatenated in row order)."""
    ranking = table.column("ranking")
    flat = pc.list_flatten(ranking).to_numpy(zero_copy_only=False).astype(np.int64)
    return sizes(table), _lengths(ranking), flat


def feature_values(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(every candidate's feature vector, rows in row order [candidates, D]; sizes). Raises
    ValueError naming the first row without features or with a width unlike the first's."""
    column = table.column("features")
    if column.null_count:
        missing = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise MissingFeatures(missing)
    vectors = pc.list_flatten(column)
    widths = _lengths(vectors)
    if widths.size and (widths != widths[0]).any():
        per_row = np.repeat(np.arange(len(column)), _lengths(column))
        bad = int(per_row[np.flatnonzero(widths != widths[0])[0]])
        raise ValueError(f"annotation {bad}: feature vectors of width "
                         f"{sorted(set(widths[per_row == bad].tolist()))}, the first row's are "
                         f"{int(widths[0])}")
    values = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float64)
    width = int(widths[0]) if widths.size else 0
    return values.reshape(-1, width), _lengths(column)


class MissingFeatures(ValueError):
    """Annotation `row` has no features (the `given` features need them on every row)."""

    def __init__(self, row: int):
        super().__init__(f"features='given' needs `features` on every annotation; annotation "
                         f"{row} has none (try onehot or embedding)")
        self.row = row


def record_codes(records: Sequence[Annotation]) -> tuple[np.ndarray, list[str]]:
    """`codes` for records."""
    ids = list(dict.fromkeys(a.annotator_id for a in records))
    index = {a: i for i, a in enumerate(ids)}
    return np.fromiter((index[a.annotator_id] for a in records), np.int64, len(records)), ids


def record_sizes(records: Sequence[Annotation]) -> np.ndarray:
    """`sizes` for records."""
    return np.fromiter((len(a.responses) for a in records), np.int64, len(records))


def record_ranking_columns(
        records: Sequence[Annotation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ranking_columns` for records (flat passes, no list per record)."""
    lengths = np.fromiter((len(a.ranking) for a in records), np.int64, len(records))
    flat = np.fromiter(itertools.chain.from_iterable(a.ranking for a in records), np.int64,
                       int(lengths.sum()))
    return record_sizes(records), lengths, flat


def record_feature_values(records: Sequence[Annotation]) -> tuple[np.ndarray, np.ndarray]:
    """`feature_values` for records."""
    missing = next((i for i, a in enumerate(records) if a.features is None), None)
    if missing is not None:
        raise MissingFeatures(missing)
    n_sizes = record_sizes(records)
    widths = np.fromiter((len(v) for a in records for v in a.features), np.int64,
                         int(n_sizes.sum()))
    width = int(widths[0]) if widths.size else 0
    if (widths != width).any():  # fromiter below would broadcast a length-1 vector silently
        bad = int(np.repeat(np.arange(len(records)), n_sizes)[np.flatnonzero(widths != width)[0]])
        raise ValueError(f"annotation {bad}: feature vectors of width "
                         f"{sorted({len(v) for v in records[bad].features})}, the first row's "
                         f"are {width}")
    each = itertools.chain.from_iterable(a.features for a in records)
    values = np.fromiter(each, np.dtype((np.float64, width)), int(n_sizes.sum()))
    return values.reshape(-1, width), n_sizes


def _lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
