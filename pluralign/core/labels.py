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


def adjusted_rand(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index of two integer labelings (Hubert & Arabie), from their contingency
    table: sklearn's adjusted_rand_score without its per-call validation, for bootstraps that
    call it hundreds of times (a test keeps the two equal)."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.bincount(t * (p.max() + 1) + p).astype(np.float64)
    pairs = (table * (table - 1)).sum() / 2
    rows = np.bincount(t).astype(np.float64)
    cols = np.bincount(p).astype(np.float64)
    a, b = (rows * (rows - 1)).sum() / 2, (cols * (cols - 1)).sum() / 2
    n = len(t)
    expected = a * b / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (a + b) / 2
    if top == expected:  # one cluster each, or every point alone: sklearn's convention
        return 1.0
    return float((pairs - expected) / (top - expected))
