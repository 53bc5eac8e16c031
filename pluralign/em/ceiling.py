"""The supervised ceiling beside every discovery figure (DESIGN §4, "ceilings").

An ARI of 0.1 may be a weak method or data that cannot separate the groups; an ARI of 0.9 may
be a strong method or groups any model tells apart. The supervised ceiling says which: the
same backend, with the same settings, fitted with the labels known (one policy per label,
trained on that label's annotators, priors the label shares), then used to assign annotators
exactly as EM's policies are (one E-step). Discovery cannot beat it by more than noise; when
the ceiling itself is low, the model and the data size cannot tell the groups apart, whatever
the method.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.backends.base import PolicyBackend
from pluralign.core import bootstrap
from pluralign.core.data import Annotations, as_annotations
from pluralign.core.io import write_json
from pluralign.core.labels import adjusted_rand, annotator_labels

#: A ceiling ARI below this means the groups cannot be told apart at this model and data size.
LOW_CEILING_ARI = 0.2


class SupervisedCeiling:
    """The backend fitted with the labels known, scikit-learn style.

    make_backend: K -> a fresh backend (the run's own factory, so the same model and
    settings). `fit(data)` reads each annotator's label (true_type, else group; `column`
    picks one) and trains one policy per label on that label's annotators' annotations.
    Learned state: `labels_` (the label of policy k), `priors_` (label shares among the
    annotators), `backend_`."""

    def __init__(self, make_backend: Callable[[int], PolicyBackend], column: str | None = None):
        self.make_backend = make_backend
        self.column = column

    def fit(self, data: Any) -> SupervisedCeiling:
        data = as_annotations(data)
        labels = self._labels(data)
        if len(set(labels.values())) < 2:
            raise ValueError("a supervised ceiling needs annotators of at least 2 labels")
        return self._fit(data, labels, sorted(set(labels.values())))

    def cross_fit(self, data: Any, folds: int = 2,
                  random_state: int = 0) -> tuple[np.ndarray, list[str]]:
        """Each annotator's posterior over the labels from a ceiling fitted without them:
        annotators split into `folds` (stratified by label, seeded), each fold assigned by the
        ceiling of the others. The honest ceiling on the training data itself (a ceiling
        fitted and assigned on the same annotators memorises them). Uses the labels of a
        previous `fit` when there was one."""
        data = as_annotations(data)
        labels = self._labels(data)
        names = getattr(self, "labels_", None) or sorted(set(labels.values()))
        ids = data.annotator_ids
        rng = np.random.default_rng(random_state)
        fold = {}
        for label in sorted(set(labels.values())) + [None]:
            members = [h for h in ids if labels.get(h) == label]
            for i, h in enumerate(rng.permutation(np.asarray(members, dtype=object))):
                fold[h] = i % folds
        where = {h: i for i, h in enumerate(ids)}
        gamma = np.zeros((len(ids), len(names)))
        for f in range(folds):
            train = data.subset(i for i, a in enumerate(data) if fold[a.annotator_id] != f)
            test = data.subset(i for i, a in enumerate(data) if fold[a.annotator_id] == f)
            part = SupervisedCeiling(self.make_backend, self.column)._fit(
                train, self._labels(train), names)
            g, seen = part.predict_proba(test)
            gamma[[where[h] for h in seen]] = g
        return gamma, ids

    def _labels(self, data: Annotations) -> dict[str, str]:
        return annotator_labels(data, self.column)

    def _fit(self, data: Annotations, labels: dict[str, str],
             names: Sequence[str]) -> SupervisedCeiling:
        """One policy per label of `names` (a label no annotator carries keeps the reference
        policy and a prior of 0), trained on that label's annotators' annotations."""
        self.labels_ = list(names)
        index = {label: k for k, label in enumerate(self.labels_)}
        per_row = np.array([index.get(labels.get(a.annotator_id), -1) for a in data])
        counts = np.bincount([index[v] for v in labels.values()], minlength=len(self.labels_))
        self.priors_ = counts / counts.sum()
        self.backend_ = self.make_backend(len(self.labels_))
        for k in range(len(self.labels_)):
            self.backend_.fit(k, data, (per_row == k).astype(np.float64))
        return self

    def predict_proba(self, data: Any) -> tuple[np.ndarray, list[str]]:
        """Each annotator's posterior over the labels (one E-step with the fitted policies),
        with the annotator ids its rows follow."""
        from pluralign.em.estep import type_posteriors
        return type_posteriors(self.backend_, self.priors_, as_annotations(data))

    def save(self, path: str | Path) -> None:
        """policies/ (the backend's files) and ceiling.json (labels and priors) under path."""
        path = Path(path)
        self.backend_.save(path / "policies")
        write_json(path / "ceiling.json", {"labels": self.labels_,
                                           "priors": self.priors_.tolist(),
                                           "column": self.column})

    @classmethod
    def load(cls, path: str | Path,
             make_backend: Callable[[int], PolicyBackend]) -> SupervisedCeiling:
        """What `save` wrote, with `make_backend` building the backend to load into."""
        path = Path(path)
        info = json.loads((path / "ceiling.json").read_text())
        out = cls(make_backend, info.get("column"))
        out.labels_, out.priors_ = info["labels"], np.asarray(info["priors"], dtype=np.float64)
        out.backend_ = make_backend(len(out.labels_))
        out.backend_.load(path / "policies")
        return out


def compare(truth: Sequence[str], discovered: np.ndarray, ceiling: np.ndarray,
            ceiling_labels: Sequence[str], n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """EM's discovery beside the supervised ceiling on the same annotators: ARI and accuracy
    of each (EM's types matched to labels by the Hungarian assignment; the ceiling's policies
    carry their labels), bootstrap intervals over annotators (the same resamples for both),
    the ratio of the ARIs and the interval of their difference. discovered / ceiling:
    posteriors [H, K] / [H, L]."""
    truth = [str(t) for t in truth]
    em_pred = discovered.argmax(axis=1)
    mapping = match_labels(truth, em_pred, discovered.shape[1])
    em_hit = np.array([mapping.get(t, -1) == p for t, p in zip(truth, em_pred, strict=True)])
    ceil_pred = np.asarray(ceiling_labels, dtype=object)[ceiling.argmax(axis=1)]
    ceil_hit = np.array([t == p for t, p in zip(truth, ceil_pred, strict=True)])
    codes = {label: i for i, label in enumerate(sorted(set(truth) | set(ceiling_labels)))}
    t = np.array([codes[x] for x in truth])
    c = np.array([codes[x] for x in ceil_pred])

    def both(i: np.ndarray) -> list[float]:
        return [adjusted_rand(t[i], em_pred[i]), adjusted_rand(t[i], c[i]),
                em_hit[i].mean(), ceil_hit[i].mean()]

    em_ari, ceil_ari, em_acc, ceil_acc = both(np.arange(len(t)))
    out: dict[str, Any] = {
        "annotators": len(t), "em": {"ari": em_ari, "accuracy": float(em_acc)},
        "ceiling": {"ari": ceil_ari, "accuracy": float(ceil_acc), "labels": list(ceiling_labels)},
        "ratio": em_ari / ceil_ari if ceil_ari > 1e-9 else None}
    if n_boot > 0 and len(t) > 1:
        reps = bootstrap.replicates(len(t), both, n_boot, seed)          # [B, 4]
        iv = bootstrap.interval(reps)
        out["em"].update(ari_interval=iv[0].tolist(), accuracy_interval=iv[2].tolist())
        out["ceiling"].update(ari_interval=iv[1].tolist(), accuracy_interval=iv[3].tolist())
        out["ari_difference_interval"] = bootstrap.interval(reps[:, 0] - reps[:, 1]).tolist()
    return out


def match_labels(truth: Sequence[Any], pred: np.ndarray, k: int) -> dict[str, int]:
    """Label -> discovered type by the assignment that maximises agreement (Hungarian);
    labels beyond K stay unmatched."""
    from scipy.optimize import linear_sum_assignment
    labels = sorted(set(map(str, truth)))
    counts = np.zeros((len(labels), k))
    for t, p in zip(map(str, truth), pred, strict=True):
        counts[labels.index(t), p] += 1
    rows, cols = linear_sum_assignment(-counts)
    return {labels[r]: int(c) for r, c in zip(rows, cols, strict=True)}


def ceiling_warnings(result: dict[str, Any], where: str) -> list[dict[str, str]]:
    """A warning when the ceiling itself is low: the groups cannot be told apart here."""
    from pluralign.core.diagnostics import warning
    ari = result["ceiling"]["ari"]
    if ari >= LOW_CEILING_ARI:
        return []
    shown = bootstrap.show(result["ceiling"].get("ari_interval"))
    return [warning("low_ceiling", (
        f"At this model and data size these groups cannot be told apart: even fitted with the "
        f"labels known, the same backend assigns the {where} annotators with ARI {ari:.3f}"
        f"{shown} (below {LOW_CEILING_ARI}). A low discovery ARI here is the data's limit, "
        "not the method's; a high one would be luck."))]
