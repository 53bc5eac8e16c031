"""The predictive personalization experiment (DESIGN §10), as PAL, LoRe and VPL report it:
reveal n of each user's annotations (several random orders), predict the rest, as n grows.

Predictors of a user's remaining judgements, from what the n revealed ones say:
- pooled: the K=1 policy (one DPO fit to everyone), the same for every user;
- argmax: the most likely type's policy (the priors' mode at n = 0);
- posterior: the Bayes predictive sum_k gamma_k P_k(tau), gamma the posterior from the n;
- user_weights: the user's own weights over the type basis (pluralign.personalize.user_weights)
  under the prior fitted to the training users;
- scratch: a per-user linear reward on the candidates' own features fitted to the n alone (no
  basis: what the basis buys), when the annotations carry features;
- oracle: the policy of the user's true type (labels matched to types), when labels exist.
Each user's scores are averaged over their remaining annotations, then over orders; a curve
point is the mean over users with more than n annotations, with an annotator-bootstrap
interval, and paired differences between predictors per user. Seen users (predictive_curve's
`context`): their training annotations are known to every predictor and never predicted.
The questions curve (query_curve) puts `suggest`'s order of questions beside a random one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pluralign.aggregate.evaluation import doubling
from pluralign.core import bootstrap
from pluralign.core.data import Annotation, Annotations
from pluralign.core.labels import annotator_labels
from pluralign.em.estep import e_step
from pluralign.personalize.predictive import Prediction, Stages
from pluralign.personalize.serving import information_gain
from pluralign.personalize.user_weights import UserWeights, fit_user_prior

METRICS = ("log_loss", "top1", "pairwise")
#: Draws from a user's weight posterior that the user-weights prediction averages over.
WEIGHT_DRAWS = 32
#: The most answers (orderings of a question's first places) a question's information gain
#: is computed over on the questions curve (6! : a full ranking of 6); longer lists use their
#: first places.
QUERY_ANSWERS = 720
#: Paired comparisons reported at every n: (better candidate, against), in log-loss.
PAIRS = (("posterior", "argmax"), ("user_weights", "posterior"), ("posterior", "pooled"),
         ("user_weights", "scratch"), ("suggested_queries", "random_queries"))


@dataclass
class Basis:
    """What the run gives for the users' annotations: the type log-ratios [n, M, K], the pooled
    policy's [n, M], beta and the priors; the fitted user-weights prior."""

    scores: np.ndarray
    pooled: np.ndarray
    beta: float
    priors: np.ndarray
    user_model: UserWeights | None = None


def predictive_curve(basis: Basis, data: Annotations, sizes: Sequence[int] | None = None,
                     orders: int = 3, labels: np.ndarray | None = None, n_boot: int = 1000,
                     seed: int = 0, context: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The curve over n (see the module docstring). `labels[h]`: user h's true type index
    (-1: unknown), users numbered as data.annotator_codes(). `context` [len(data)], seen users:
    the rows every prediction knows (the user's training annotations), never predicted; n
    counts the others."""
    codes, ids = data.annotator_codes()
    known = np.zeros(len(data), dtype=bool) if context is None else np.asarray(context, bool)
    stages = Stages.of(data, basis.scores.shape[1])
    per_type = _per_type(basis, stages)
    sizes = _sizes(codes[~known], sizes)
    features = _features(data, np.arange(len(data)))
    rng = np.random.default_rng(seed)
    table: dict[tuple[int, str], dict[int, list[dict[str, float]]]] = {}
    for h in range(len(ids)):
        rows, given = np.flatnonzero((codes == h) & ~known), np.flatnonzero((codes == h) & known)
        for _ in range(orders):
            order = rows[rng.permutation(len(rows))]
            for n in (n for n in sizes if n < len(rows)):
                label = -1 if labels is None else int(labels[h])
                for name, scores in _predict(basis, data, stages, per_type, features,
                                             np.concatenate([given, order[:n]]), order[n:],
                                             label).items():
                    table.setdefault((n, name), {}).setdefault(h, []).append(scores)
    return [_point(n, table, n_boot, seed) for n in sizes
            if any(key[0] == n for key in table)]


def query_curve(basis: Basis, data: Annotations, sizes: Sequence[int] | None = None,
                orders: int = 3, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """`suggest`'s queries against random ones on the same curve: each user's annotations are
    split at random (per order) into a pool of questions (half, rounded up) and a test set;
    n questions are asked from the pool, chosen at random or greedily by expected information
    gain about the type (what `suggest` ranks by, with the answers the user actually gave);
    the posterior predictive after them is scored on the test set."""
    codes, ids = data.annotator_codes()
    stages = Stages.of(data, basis.scores.shape[1])
    per_type = _per_type(basis, stages)
    s = basis.beta * np.nan_to_num(basis.scores)
    pools = np.bincount(codes) - np.bincount(codes) // 2
    sizes = [n for n in _sizes(codes, sizes) if n <= pools.max()]
    rng = np.random.default_rng(seed)
    table: dict[tuple[int, str], dict[int, list[dict[str, float]]]] = {}
    for h in range(len(ids)):
        rows = np.flatnonzero(codes == h)
        for _ in range(orders):
            order = rows[rng.permutation(len(rows))]
            pool, test = order[: pools[h]], order[pools[h]:]
            if not len(test):
                continue
            asked = {"random_queries": pool, "suggested_queries": _greedy(
                data, s, per_type, basis.priors, pool, max(sizes))}
            sub, sub_stages = data.subset(test), stages.subset(test)
            for n in (n for n in sizes if n <= len(pool)):
                for name, chosen in asked.items():
                    gamma = e_step(per_type[chosen[:n]].sum(axis=0, keepdims=True),
                                   basis.priors)[0][0]
                    pred = Prediction(np.tile(gamma, (len(test), 1)), s[test])
                    scores = pred.scores(sub, sub_stages)
                    table.setdefault((n, name), {}).setdefault(h, []).append(
                        {m: float(v.mean()) for m, v in scores.items()})
    return [_point(n, table, n_boot, seed) for n in sizes
            if any(key[0] == n for key in table)]


def _greedy(data: Annotations, s: np.ndarray, per_type: np.ndarray, priors: np.ndarray,
            pool: np.ndarray, steps: int) -> np.ndarray:
    """The pool's rows in the order `suggest` would ask them: each the largest expected
    information gain under the posterior after the answers so far."""
    left, out = list(pool), []
    for _ in range(min(steps, len(pool))):
        gamma = e_step(per_type[out].sum(axis=0, keepdims=True) if out else
                       np.zeros((1, len(priors))), priors)[0][0]
        best = max(left, key=lambda i: information_gain(
            s[i, : data[int(i)].m], gamma, _answer_length(data[int(i)])))
        left.remove(best)
        out.append(best)
    return np.asarray(out, dtype=np.int64)


def _answer_length(a: Annotation) -> int:
    """The places of an answer the question's information is computed over: all that the user
    ranked, or the first ones when their orderings number more than QUERY_ANSWERS."""
    length = len(a.ranking)
    while length > 1 and math.perm(a.m, length) > QUERY_ANSWERS:
        length -= 1
    return length


def _per_type(basis: Basis, stages: Stages) -> np.ndarray:
    """log P_k(tau) of every annotation under every type [n, K]."""
    return np.stack([stages.logprob(basis.beta * np.nan_to_num(basis.scores[..., k]))
                     for k in range(basis.scores.shape[2])], axis=1)


def _sizes(codes: np.ndarray, sizes: Sequence[int] | None) -> list[int]:
    """n = 0, 1, 2, 4, ... below the most annotations a user has, unless given."""
    if sizes is not None:
        return list(sizes)
    most = int(np.bincount(codes).max()) if len(codes) else 0
    return [0, *(n for n in doubling(most) if n < most)]


def _predict(basis: Basis, data: Annotations, stages: Stages, per_type: np.ndarray,
             features: np.ndarray | None, shown: np.ndarray, rest: np.ndarray,
             label: int) -> dict[str, dict[str, float]]:
    """Each predictor's mean scores on `rest` after seeing `shown`."""
    gamma = e_step(per_type[shown].sum(axis=0, keepdims=True), basis.priors)[0][0]
    s = basis.beta * np.nan_to_num(basis.scores[rest])                  # [r, M, K]
    preds = {"pooled": Prediction.single(basis.beta * np.nan_to_num(basis.pooled[rest])),
             "argmax": Prediction.single(s[..., int(gamma.argmax())]),
             "posterior": Prediction(np.tile(gamma, (len(rest), 1)), s)}
    if basis.user_model is not None:  # the Bayes predictive under the fitted prior
        preds["user_weights"] = basis.user_model.predict(basis.scores, stages, shown, rest,
                                                         WEIGHT_DRAWS, seed=len(shown))
    if features is not None:
        scratch = UserWeights(beta=1.0)
        scratch.prior_mean_ = np.zeros(features.shape[2])
        scratch.prior_cov_ = np.eye(features.shape[2])  # unit L2 on a reward of its own
        w = scratch.user_weights(features, stages, shown)
        preds["scratch"] = Prediction.single(features[rest] @ w)
    if label >= 0:
        preds["oracle"] = Prediction.single(s[..., label])
    sub = data.subset(rest)
    mine = stages.subset(rest)
    return {name: {m: float(v.mean()) for m, v in p.scores(sub, mine).items()}
            for name, p in preds.items()}


def _features(data: Annotations, rows: np.ndarray) -> np.ndarray | None:
    """The candidates' own features [len(rows), M, D] (0 padding), when every row has them."""
    picked = [data[int(i)] for i in rows]
    if not picked or any(a.features is None for a in picked):
        return None
    width = max(a.m for a in data)
    dim = len(picked[0].features[0])
    out = np.zeros((len(picked), width, dim))
    for i, a in enumerate(picked):
        out[i, : a.m] = np.asarray(a.features, dtype=np.float64)
    return out


def _point(n: int, table: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """One curve point: each predictor's mean over users (orders averaged per user), its
    interval, and the paired differences."""
    users: dict[str, dict[int, dict[str, float]]] = {
        name: {h: {m: float(np.mean([s[m] for s in runs])) for m in METRICS}
               for h, runs in per_user.items()}
        for (size, name), per_user in table.items() if size == n}
    out: dict[str, Any] = {"annotations": n, "users": len(next(iter(users.values()))),
                           "predictors": {}, "paired": {}}
    for name, per in users.items():
        values = np.array([[v[m] for m in METRICS] for v in per.values()])
        row = {m: float(values[:, j].mean()) for j, m in enumerate(METRICS)}
        if n_boot > 0 and len(values) > 1:
            reps = bootstrap.mean_replicates(values, np.arange(len(values)), n_boot, seed)
            for j, m in enumerate(METRICS):
                row[f"{m}_interval"] = bootstrap.interval(reps[:, j]).tolist()
        out["predictors"][name] = row
    for better, worse in PAIRS:
        if better in users and worse in users:
            both = sorted(set(users[better]) & set(users[worse]))
            diff = np.array([users[worse][h]["log_loss"] - users[better][h]["log_loss"]
                             for h in both])
            pair = {"log_loss_gain": float(diff.mean()), "users": len(both)}
            if n_boot > 0 and len(diff) > 1:
                reps = bootstrap.mean_replicates(diff, np.arange(len(diff)), n_boot, seed)
                pair["interval"] = bootstrap.interval(reps).tolist()
            out["paired"][f"{better}_vs_{worse}"] = pair
    return out


def predictive_experiment(run: Any, data: Annotations, train: Annotations, orders: int,
                          label_to_type: dict[str, int], n_boot: int = 1000,
                          seed: int = 0, scores: np.ndarray | None = None,
                          seen: Annotations | None = None,
                          user_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """The curves for a fitted run (pluralign.em.fitted.FittedRun): `data`'s users (unseen when
    held out), with `suggest`'s queries against random ones; with `seen` (held-out annotations
    of training users), the seen users' curve, their training annotations known. `scores`: the
    type log-ratios on `data` when already computed; the user-weights prior is fitted to
    `train`'s users (`user_weights`: UserWeights' options); the oracle from labels matched to
    types (`label_to_type`)."""
    s = run.backend.logratios(data) if scores is None else scores
    s_train = s if train is data else run.backend.logratios(train)  # scored once
    model = fit_user_prior(run, train, s_train, **(user_weights or {}))
    out = {"orders": orders, "prior_mean": model.prior_mean_.round(4).tolist(),
           "prior_mixing": model.mixing_.round(4).tolist()}
    basis = _basis(run, data, s, model)
    out["curve"] = predictive_curve(basis, data, orders=orders,
                                    labels=_labels(data, label_to_type), n_boot=n_boot,
                                    seed=seed)
    out["queries"] = query_curve(basis, data, orders=orders, n_boot=n_boot, seed=seed)
    if seen is not None and len(seen):
        users = set(seen.annotator_ids)
        known = [i for i, a in enumerate(train) if a.annotator_id in users]
        both = Annotations([train[i] for i in known] + list(seen), train.manifest)
        context = np.arange(len(both)) < len(known)
        s_both = _rows_of(s_train[known], run.backend.logratios(seen))
        out["seen_curve"] = predictive_curve(
            _basis(run, both, s_both, model), both, orders=orders,
            labels=_labels(both, label_to_type), n_boot=n_boot, seed=seed, context=context)
    return out


def _rows_of(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two [n, M, K] score arrays stacked, the narrower padded with NaN (no candidate)."""
    width = max(first.shape[1], second.shape[1])
    pad = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=np.nan)
           for x in (first, second)]
    return np.concatenate(pad, axis=0)


def _basis(run: Any, data: Annotations, scores: np.ndarray, model: UserWeights) -> Basis:
    return Basis(scores, run.baseline.logratios(data)[..., 0], run.backend.beta, run.priors,
                 model)


def _labels(data: Annotations, label_to_type: dict[str, int]) -> np.ndarray:
    """Each user's true type index by their label (-1: none, or a label with no type)."""
    labels_of = annotator_labels(data)
    return np.array([label_to_type.get(str(labels_of.get(h)), -1)
                     for h in data.annotator_codes()[1]])
