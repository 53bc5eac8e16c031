"""The labels some data carries about its annotators (true_type from a simulation, or a
group such as a Pew demographic): never used to fit, only to audit discovery, to fit the
supervised ceiling and to check that a held-out split keeps every labelled group."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pluralign.core import diagnostics
from pluralign.core.data import Annotations

LABEL_COLUMNS = ("true_type", "group")


def annotator_labels(data: Annotations, column: str | None = None) -> dict[str, str]:
    """Each annotator's known label in `column` (None: true_type, else group; the most frequent
    one), for the annotators that have one."""
    labels: dict[str, Counter] = {}
    for a in data:
        if column is None:
            label = a.true_type if a.true_type is not None else a.group
        else:
            label = getattr(a, column)
        if label is not None:
            labels.setdefault(a.annotator_id, Counter())[str(label)] += 1
    return {h: c.most_common(1)[0][0] for h, c in labels.items()}


def label_columns(data: Annotations) -> dict[str, dict[str, str]]:
    """Every label column the data carries (true_type, group), each as annotator -> label."""
    out = {c: annotator_labels(data, c) for c in LABEL_COLUMNS}
    return {c: v for c, v in out.items() if v}


def split_label_warnings(train: Annotations, held: Annotations) -> list[dict[str, str]]:
    """Labelled groups of the training data that the held-out data misses, per label column."""
    held_labels = label_columns(held)
    return [w for col, labels in label_columns(train).items()
            for w in diagnostics.split_warnings(labels, held_labels.get(col, {}), col)]


def _contingency(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Counts of (true label, predicted label) pairs [labels, clusters]."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    width = int(p.max()) + 1 if p.size else 0
    rows = int(t.max()) + 1 if t.size else 0
    return np.bincount(t * width + p, minlength=rows * width).reshape(rows, width).astype(
        np.float64)


def adjusted_rand(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie), from their contingency table:
    sklearn's adjusted_rand_score without its per-call validation, for bootstraps that call
    it hundreds of times (a test keeps the two equal)."""
    table = _contingency(truth, pred)
    n = table.sum()
    pairs = (table * (table - 1)).sum() / 2
    rows, cols = table.sum(1), table.sum(0)
    a, b = (rows * (rows - 1)).sum() / 2, (cols * (cols - 1)).sum() / 2
    expected = a * b / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (a + b) / 2
    if top == expected:  # one cluster each, or every point alone: sklearn's convention
        return 1.0
    return float((pairs - expected) / (top - expected))


def normalized_mutual_info(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies: sklearn's
    normalized_mutual_info_score (its default average, its conventions for one cluster) from
    the contingency table, without the per-call validation (a test keeps the two equal)."""
    table = _contingency(truth, pred)
    if table.shape[0] == table.shape[1] <= 1:  # neither labeling splits the data: a match
        return 1.0
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    nz = table > 0
    mi = float((table[nz] / n * np.log(table[nz] * n / np.outer(rows, cols)[nz])).sum())
    if mi <= 0:  # (a single cluster on one side was handled above: 0 is no match at all)
        return 0.0

    def entropy(counts: np.ndarray) -> float:
        q = counts[counts > 0] / n
        return float(-(q * np.log(q)).sum())

    return mi / ((entropy(rows) + entropy(cols)) / 2)
