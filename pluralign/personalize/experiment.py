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
interval, and paired differences between predictors per user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pluralign.aggregate.evaluation import doubling
from pluralign.core import bootstrap
from pluralign.core.data import Annotations
from pluralign.core.labels import annotator_labels
from pluralign.em.estep import e_step
from pluralign.personalize.predictive import Prediction, Stages
from pluralign.personalize.user_weights import UserWeights

METRICS = ("log_loss", "top1", "pairwise")
#: Draws from a user's weight posterior that the user-weights prediction averages over.
WEIGHT_DRAWS = 32
#: Paired comparisons reported at every n: (better candidate, against), in log-loss.
PAIRS = (("posterior", "argmax"), ("user_weights", "posterior"), ("posterior", "pooled"),
         ("user_weights", "scratch"))


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
                     seed: int = 0) -> list[dict[str, Any]]:
    """The curve over n (see the module docstring). `labels[h]`: user h's true type index
    (-1: unknown), users numbered as data.annotator_codes()."""
    codes, ids = data.annotator_codes()
    stages = Stages.of(data, basis.scores.shape[1])
    per_type = np.stack([stages.logprob(basis.beta * np.nan_to_num(basis.scores[..., k]))
                         for k in range(basis.scores.shape[2])], axis=1)
    most = int(np.bincount(codes).max())  # n = 0, 1, 2, 4, ... below the most annotations
    sizes = list(sizes) if sizes is not None else [0, *(n for n in doubling(most) if n < most)]
    features = _features(data, np.arange(len(data)))
    rng = np.random.default_rng(seed)
    table: dict[tuple[int, str], dict[int, list[dict[str, float]]]] = {}
    for h in range(len(ids)):
        rows = np.flatnonzero(codes == h)
        for _ in range(orders):
            order = rows[rng.permutation(len(rows))]
            for n in (n for n in sizes if n < len(rows)):
                label = -1 if labels is None else int(labels[h])
                for name, scores in _predict(basis, data, stages, per_type, features,
                                             order[:n], order[n:], label).items():
                    table.setdefault((n, name), {}).setdefault(h, []).append(scores)
    return [_point(n, table, n_boot, seed) for n in sizes
            if any(key[0] == n for key in table)]


def _predict(basis: Basis, data: Annotations, stages: Stages, per_type: np.ndarray,
             features: np.ndarray | None, shown: np.ndarray, rest: np.ndarray,
             label: int) -> dict[str, dict[str, float]]:
    """Each predictor's mean scores on `rest` after seeing `shown`."""
    gamma = e_step(per_type[shown].sum(axis=0, keepdims=True), basis.priors)[0][0]
    s = basis.beta * np.nan_to_num(basis.scores[rest])                  # [r, M, K]
    preds = {"pooled": Prediction.single(basis.beta * np.nan_to_num(basis.pooled[rest])),
             "argmax": Prediction.single(s[..., int(gamma.argmax())]),
             "posterior": Prediction(np.tile(gamma, (len(rest), 1)), s)}
    if basis.user_model is not None:  # averaged over the weights' posterior (Laplace)
        draws = basis.user_model.draws(basis.scores, stages, shown, WEIGHT_DRAWS,
                                       seed=len(shown))
        rewards = np.stack([basis.user_model.rewards(basis.scores[rest], w) for w in draws],
                           axis=2)
        preds["user_weights"] = Prediction(np.full((len(rest), len(draws)), 1 / len(draws)),
                                           rewards)
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
                          seed: int = 0, scores: np.ndarray | None = None) -> dict[str, Any]:
    """The curve for a fitted run (pluralign.em.fitted.FittedRun) on `data`'s users: the type
    and pooled log-ratios (`scores`: the type log-ratios on `data` when already computed), the
    user-weights prior fitted to `train`'s users, the oracle from the users' labels matched to
    types (`label_to_type`)."""
    s = run.backend.logratios(data) if scores is None else scores
    s_train = s if train is data else run.backend.logratios(train)
    model = UserWeights(beta=run.backend.beta).fit(
        s_train, Stages.of(train, s_train.shape[1]), train.annotator_codes()[0])
    basis = Basis(s, run.baseline.logratios(data)[..., 0],
                  run.backend.beta, run.priors, model)
    labels_of = annotator_labels(data)
    labels = np.array([label_to_type.get(str(labels_of.get(h)), -1)
                       for h in data.annotator_codes()[1]])
    return {"orders": orders, "prior_mean": model.prior_mean_.round(4).tolist(),
            "curve": predictive_curve(basis, data, orders=orders, labels=labels,
                                      n_boot=n_boot, seed=seed)}
