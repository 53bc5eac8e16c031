"""The two ceilings of a group population, written beside the data (ceilings.json).

- Bayes oracle: each annotator's posterior over the groups under the true shares (the law that
  drew the answers) and the true group prior. No method does better on average.
- Supervised: a tabular Plackett–Luce model per (question, group), fitted with the labels known
  on the other annotators (2 folds, stratified by group, seeded), then used as the oracle uses
  the truth. The model has one free utility per option, the most any backend can learn about a
  question from its answers alone; discovery (labels unknown) is judged against it.

A question's Plackett–Luce law on utilities u (u_j = 0 allowed: never chosen before the
others) is P(tau) = prod_t u_{tau_t} / sum_{j not yet placed} u_j, with the options of zero
utility ranked uniformly among themselves once only they remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from pluralign.core.data import Annotation
from pluralign.ingest.groups import GroupQuestion

#: Pseudo-count of the supervised fit: each option chosen this often from the full list.
PSEUDO = 0.5
FOLDS = 2


def ceilings(records: Sequence[Annotation], groups: list[str], pool: list[GroupQuestion],
             prior: np.ndarray, seed: int) -> dict[str, Any]:
    """Both ceilings' ARI and accuracy over all annotators, and each annotator's assignment."""
    ids = sorted({a.annotator_id for a in records})
    truth = {a.annotator_id: groups.index(str(a.true_type)) for a in records}
    y = np.array([truth[h] for h in ids])
    by_q = {q.key: q for q in pool}
    oracle = posteriors(records, ids, len(groups), prior, {
        q.key: np.stack([q.shares.get(g, np.full(len(q.options), np.nan)) for g in groups])
        for q in pool})
    fold = _folds(y, seed)
    supervised = np.zeros_like(oracle)
    where = {h: i for i, h in enumerate(ids)}
    for f in range(FOLDS):
        train = [a for a in records if fold[where[a.annotator_id]] != f]
        test = [a for a in records if fold[where[a.annotator_id]] == f]
        share = np.bincount(y[fold != f], minlength=len(groups)) + 1.0
        table = fit_tabular(train, groups, by_q)
        part_ids = [h for h in ids if fold[where[h]] == f]
        supervised[[where[h] for h in part_ids]] = posteriors(
            test, part_ids, len(groups), share / share.sum(), table)
    out = {"annotators": len(ids), "groups": groups,
           "note": "oracle: the true shares and prior; supervised: a Plackett–Luce utility per "
                   "(question, option, group) fitted with the labels known on the other half "
                   "of the annotators (2 folds, stratified)"}
    for name, gamma in (("oracle", oracle), ("supervised", supervised)):
        pred = gamma.argmax(1)
        out[name] = {"ari": round(float(adjusted_rand_score(y, pred)), 6),
                     "accuracy": round(float((pred == y).mean()), 6),
                     "mean_confidence": round(float(gamma.max(1).mean()), 6)}
    out["assignments"] = {h: {"group": groups[y[i]], "oracle": groups[oracle[i].argmax()],
                              "supervised": groups[supervised[i].argmax()]}
                          for i, h in enumerate(ids)}
    return out


def _folds(y: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 7)
    fold = np.zeros(len(y), dtype=int)
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        fold[members] = np.arange(len(members)) % FOLDS
    return fold


def posteriors(records: Sequence[Annotation], ids: list[str], n_groups: int, prior: np.ndarray,
               utilities: dict[str, np.ndarray]) -> np.ndarray:
    """[H, G] posteriors of the annotators `ids` from their answers, given each question's
    utilities [G, m] (NaN rows: a group without the question, which then says nothing)."""
    where = {h: i for i, h in enumerate(ids)}
    loglik = np.zeros((len(ids), n_groups))
    for key, rows in _by_question(records).items():
        u = utilities.get(key)
        if u is None:
            continue
        ll = ranking_loglik(u, [r.ranking for r in rows])
        # a group without the question never asks it: an annotator who answered it is not theirs
        np.add.at(loglik, [where[r.annotator_id] for r in rows], np.where(np.isnan(ll), -np.inf,
                                                                          ll))
    with np.errstate(divide="ignore"):
        loglik = loglik + np.log(prior)
    top = loglik.max(1, keepdims=True)
    loglik -= np.where(np.isfinite(top), top, 0.0)
    gamma = np.exp(loglik)
    return gamma / gamma.sum(1, keepdims=True)


def ranking_loglik(u: np.ndarray, rankings: Sequence[Sequence[int]]) -> np.ndarray:
    """log P(ranking) under each row of utilities u [G, m] (module doc): [n, G]."""
    n, (g, m) = len(rankings), u.shape
    out = np.zeros((n, g))
    remaining = np.ones((n, m), dtype=bool)
    for t in range(max(len(r) for r in rankings)):
        live = np.array([len(r) > t for r in rankings])
        y = np.array([r[t] if len(r) > t else 0 for r in rankings])
        total = remaining.astype(float) @ u.T  # [n, G]
        mine = u[:, y].T  # [n, G]
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(total > 0, np.log(mine) - np.log(total),
                            -np.log(remaining.sum(1, keepdims=True)))
        out += np.where(live[:, None], step, 0.0)
        remaining[np.flatnonzero(live), y[live]] = False
    return out


def fit_tabular(records: Sequence[Annotation], groups: list[str],
                questions: dict[str, GroupQuestion], iters: int = 100) -> dict[str, np.ndarray]:
    """Per question, each group's PL utilities [G, m] by minorise-maximise (Hunter 2004) with
    PSEUDO choices of every option from the full list (so never 0); normalised to sum 1."""
    out = {}
    index = {g: k for k, g in enumerate(groups)}
    for key, rows in _by_question(records).items():
        m = len(questions[key].options)
        z = np.array([index[str(r.true_type)] for r in rows])
        u = np.full((len(groups), m), 1.0 / m)
        wins = np.full((len(groups), m), PSEUDO)
        for r, k in zip(rows, z, strict=True):
            np.add.at(wins[k], r.ranking[: m - 1], 1.0)
        for _ in range(iters):
            new = wins / _exposure(u, rows, z, m)
            new /= new.sum(1, keepdims=True)
            done = np.abs(new - u).max() < 1e-6
            u = new
            if done:
                break
        out[key] = u
    return out


def _exposure(u: np.ndarray, rows: list[Annotation], z: np.ndarray, m: int) -> np.ndarray:
    """MM's denominator: sum over choice stages of 1 / (the remaining options' utility) for
    each option still remaining, plus the pseudo-count's m * PSEUDO / sum u."""
    out = np.tile(m * PSEUDO / u.sum(1, keepdims=True), (1, m))
    remaining = np.ones((len(rows), m), dtype=bool)
    for t in range(min(m - 1, max(len(r.ranking) for r in rows))):
        live = np.array([len(r.ranking) > t for r in rows])
        total = (remaining * u[z]).sum(1)
        np.add.at(out, z[live], remaining[live] / total[live, None])
        y = np.array([r.ranking[t] for r in rows if len(r.ranking) > t])
        remaining[np.flatnonzero(live), y] = False
    return out


def _by_question(records: Sequence[Annotation]) -> dict[str, list[Annotation]]:
    out: dict[str, list[Annotation]] = {}
    for a in records:
        out.setdefault(str(a.item_id), []).append(a)
    return out
