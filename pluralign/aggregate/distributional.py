"""Distributional alignment (OpinionQA, GlobalOpinionQA, Modular Pluralism): how far a policy's
answer distribution over a question's options is from each group's.

A policy's answer distribution is the candidates estimator's: softmax over the question's
options of its column (DESIGN §6; under the uniform base measure exp(s_j) normalised). Under
Plackett–Luce a type's first-choice law is softmax(beta * s), and the KL-regularised optimum of
that reward is softmax(s): the two coincide at beta = 1, the temperature at which a type policy
can answer with its group's distribution exactly.

Distances, each in [0, 1], 0 for equal distributions:
- JS: the Jensen–Shannon distance in bits, sqrt(JSD_2) (scipy's `jensenshannon`, base 2);
- TV: total variation, half the L1 distance;
- EMD: the Wasserstein-1 distance between the two laws on the options' ordinal values, divided
  by the span of those values (ordered options only: OpinionQA's option_ordinal).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from pluralign.aggregate.regret import softmax
from pluralign.core import bootstrap
from pluralign.core.data import Annotation, Annotations
from pluralign.core.labels import annotator_labels

METRICS = ("js", "tv", "emd")
UNIFORM = "uniform answer"
PERSONALISED = "personalised"


def js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance, base 2: sqrt of the mean KL of p and q to their midpoint."""
    p, q = _norm(p), _norm(q)
    mid = (p + q) / 2
    return float(np.sqrt(max(0.0, (_kl2(p, mid) + _kl2(q, mid)) / 2)))


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance."""
    return float(np.abs(_norm(p) - _norm(q)).sum() / 2)


def emd(p: np.ndarray, q: np.ndarray, positions: Sequence[float]) -> float:
    """Wasserstein-1 distance on the ordinal `positions`, over their span (0 when they
    coincide): the integral of |F_p - F_q| between consecutive sorted positions."""
    x = np.asarray(positions, dtype=float)
    order = np.argsort(x, kind="stable")
    x, p, q = x[order], _norm(p)[order], _norm(q)[order]
    span = x[-1] - x[0]
    if span <= 0:
        return 0.0
    gaps = np.diff(x)
    return float((np.abs(np.cumsum(p - q)[:-1]) * gaps).sum() / span)


def _norm(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 0, None)
    return p / p.sum()


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    m = p > 0
    return float((p[m] * np.log2(p[m] / q[m])).sum())


def distances(p: np.ndarray, q: np.ndarray, positions: Sequence[float] | None
              ) -> dict[str, float]:
    """JS, TV and (with ordinal positions) EMD between p and q."""
    out = {"js": js(p, q), "tv": tv(p, q)}
    if positions is not None:
        out["emd"] = emd(p, q, positions)
    return out


def alignment(answers: dict[str, np.ndarray], targets: dict[tuple[str, str], np.ndarray],
              questions: Sequence[str], positions: dict[str, list[float] | None],
              groups_all: Sequence[str] = (), n_boot: int = 0, seed: int = 0
              ) -> dict[str, Any]:
    """Each policy's distance to each group, averaged over the questions the group has.

    answers: policy -> [Q, M] answer distributions, a row per question of `questions` (NaN
    past its options), or [Q, G, M], a row per group of `groups_all`; targets: (question,
    group) -> the group's distribution; positions: question -> ordinal values or None.
    Returns, per metric, policy -> group -> mean, the worst group's mean, and (n_boot > 0)
    percentile intervals with questions resampled."""
    targets = {k: v for k, v in targets.items() if k[0] in set(questions)}
    questions = list(questions)
    groups = sorted({g for _, g in targets})
    names = list(answers)
    index = {q: i for i, q in enumerate(questions)}
    values = np.full((len(METRICS), len(questions), len(groups), len(names)), np.nan)
    for (q, g), target in targets.items():
        for j, name in enumerate(names):
            a = answers[name][index[q]]
            answer = (a[groups_all.index(g)] if a.ndim == 2 else a)[: len(target)]
            for m, v in distances(answer, target, positions.get(q)).items():
                values[METRICS.index(m), index[q], groups.index(g), j] = v
    out: dict[str, Any] = {"questions": len({q for q, _ in targets}), "groups": groups,
                           "policies": names,
                           "ordered_questions": sum(positions.get(q) is not None
                                                    for q in questions)}
    for m, metric in enumerate(METRICS):
        table = _means(values[m])
        if np.isnan(table).all():
            continue
        out[metric] = _summary(table, groups, names)
        if n_boot > 0:
            out[metric].update(_intervals(values[m], groups, names, n_boot, seed))
    return out


def _intervals(values: np.ndarray, groups: list[str], names: list[str], n_boot: int,
               seed: int) -> dict[str, Any]:
    """Percentile intervals, questions resampled, of each policy's worst-group mean and of
    its mean on each group (the same replicates)."""
    reps = bootstrap.replicates(values.shape[0], lambda idx: _means(values[idx]), n_boot, seed)
    with _quiet():
        worst = bootstrap.interval(np.nanmax(reps, axis=1))
        each = bootstrap.interval(reps)  # [groups, policies, 2]
    return {"worst_interval": bootstrap.pairs(names, worst),
            "by_group_interval": {n: {g: [round(float(x), 6) for x in each[i, j]]
                                      for i, g in enumerate(groups)}
                                  for j, n in enumerate(names)}}


def _means(v: np.ndarray) -> np.ndarray:
    """[questions, groups, policies] -> [groups, policies], NaN-aware (a group's questions)."""
    with _quiet():
        return np.nanmean(v, axis=0)


def _worst(table: np.ndarray) -> np.ndarray:
    with _quiet():
        return np.nanmax(table, axis=0)


def _summary(table: np.ndarray, groups: list[str], names: list[str]) -> dict[str, Any]:
    worst = _worst(table)
    return {"by_group": {n: {g: _round(table[i, j]) for i, g in enumerate(groups)}
                         for j, n in enumerate(names)},
            "worst": {n: _round(worst[j]) for j, n in enumerate(names)},
            "worst_group": {n: groups[int(np.nanargmax(table[:, j]))]
                            if not np.isnan(table[:, j]).all() else None
                            for j, n in enumerate(names)}}


def _round(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


@contextmanager
def _quiet() -> Iterator[None]:
    """nanmean/nanmax of an all-NaN slice (a group without a question) is NaN, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- from a run's evaluation data ------------------------------------------------------------
#: Fewest first choices of a group on a question for its empirical distribution to count.
MIN_ANSWERS = 5


def group_alignment(data: Annotations, logps: np.ndarray, names: Sequence[str],
                    gamma: np.ndarray, n_types: int, train: Annotations | None = None,
                    n_boot: int = 0, seed: int = 0) -> dict[str, Any] | None:
    """Every policy's (columns of `logps` [n, M, P], `names`) answer distribution on each
    question of `data` against each labelled group's, plus the uniform answer and the
    personalised policy (each annotator served softmax(sum_k gamma_hk log q_k), averaged over
    the group's annotators). Targets: the source's group distributions when the annotations
    carry them (simulate --from-groups: metadata group_distribution), else the group's first
    choices (MIN_ANSWERS or more). None without labels or targets. `train`: questions it
    holds are "seen"; the figures are also given on the unseen ones alone."""
    labels = annotator_labels(data)
    if not labels:
        return None
    rows = _first_rows(data)
    targets, source = _targets(data, rows, labels)
    if not targets:
        return None
    questions = list(rows)
    codes, ids = data.annotator_codes()
    first = np.fromiter(rows.values(), dtype=int, count=len(rows))
    answers = {name: _answers(logps[first, :, j]) for j, name in enumerate(names)}
    answers[UNIFORM] = _answers(logps[first, :, 0] * 0.0)  # 0 on the options, NaN past them
    groups_all = sorted(set(labels.values()))
    answers[PERSONALISED] = _personalised(logps[first, :, :n_types], gamma,
                                          [labels.get(h) for h in ids], groups_all)
    positions = {q: _ordinal(data[rows[q]]) for q in questions}
    out = alignment(answers, targets, questions, positions, groups_all, n_boot, seed)
    out["target"] = source
    if train is not None:
        seen = {question_key(a) for a in train}
        unseen = [q for q in questions if q not in seen]
        out["unseen_questions"] = len(unseen)
        if unseen and len(unseen) < len(questions):
            keep = [questions.index(q) for q in unseen]
            out["unseen"] = alignment({n: a[keep] for n, a in answers.items()}, targets,
                                      unseen, positions, groups_all, n_boot, seed)
    return out


def question_key(a: Annotation) -> str:
    """A question's identity: its item id, else its prompt and options."""
    return str(a.item_id) if a.item_id is not None else json.dumps([a.prompt, a.responses])


def _first_rows(data: Annotations) -> dict[str, int]:
    """Each question's first annotation, whose option order is the question's."""
    out: dict[str, int] = {}
    for i, a in enumerate(data):
        out.setdefault(question_key(a), i)
    return out


def _targets(data: Annotations, rows: dict[str, int], labels: dict[str, str]
             ) -> tuple[dict[tuple[str, str], np.ndarray], str]:
    given: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], np.ndarray] = {}
    for a in data:
        q, g = question_key(a), labels.get(a.annotator_id)
        options = data[rows[q]].responses
        if g is None or sorted(a.responses) != sorted(options):
            continue
        order = [a.responses.index(o) for o in options]
        dist = a.metadata.get("group_distribution")
        if isinstance(dist, list) and len(dist) == a.m:
            given.setdefault((q, g), np.asarray(dist, dtype=float)[order])
        c = counts.setdefault((q, g), np.zeros(len(options)))
        c[options.index(a.responses[a.ranking[0]])] += 1
    if given:
        return given, "the source's group distributions (metadata group_distribution)"
    return ({k: c / c.sum() for k, c in counts.items() if c.sum() >= MIN_ANSWERS},
            f"each group's first choices in the evaluation data ({MIN_ANSWERS}+ per question)")


def _answers(columns: np.ndarray) -> np.ndarray:
    """[Q, M] softmax over each question's options of a policy's column (NaN padding: 0)."""
    return softmax(np.where(np.isnan(columns), -np.inf, columns))


def _personalised(types: np.ndarray, gamma: np.ndarray, groups_of: list[str | None],
                  groups: list[str]) -> np.ndarray:
    """[Q, G, M]: each group's mean over its annotators of their served answer distribution,
    from the type columns [Q, M, K] of each question's first row."""
    out = np.full((len(types), len(groups), types.shape[1]), np.nan)
    members = [np.flatnonzero([x == g for x in groups_of]) for g in groups]
    for r, column in enumerate(types):
        served = _answers(gamma @ column.T)  # [H, M]: softmax of sum_k gamma_hk log q_k
        for gi, mine in enumerate(members):
            if mine.size:
                out[r, gi] = served[mine].mean(0)
    return out


def _ordinal(a: Annotation) -> list[float] | None:
    values = a.metadata.get("ordinal")
    if isinstance(values, list) and len(values) == a.m and all(
            isinstance(v, (int, float)) for v in values):
        return [float(v) for v in values]
    return None
