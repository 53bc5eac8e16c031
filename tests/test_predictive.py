"""Predicting a user's judgements (DESIGN §10): the stage sums against Plackett–Luce by hand,
the mixture's scores against their definitions, the user-weights MAP against scipy, and the
predictive experiment on a simulated population (the Bayes predictive never loses to the most
likely type in log-loss, and the oracle and pooled rows frame it)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from pluralign.aggregate.evaluation import ranking_metrics
from pluralign.core.data import Annotation, Annotations
from pluralign.core.plackett_luce import log_prob
from pluralign.personalize.predictive import Prediction, Stages
from pluralign.personalize.user_weights import UserWeights


def _data(rng: np.random.Generator, n: int = 30, users: int = 3) -> Annotations:
    rows = []
    for i in range(n):
        m = int(rng.integers(2, 6))
        length = int(rng.integers(1, m + 1))
        rows.append(Annotation(f"u{i % users}", f"p{i}", [f"r{j}" for j in range(m)],
                               [int(x) for x in rng.permutation(m)[:length]]))
    return Annotations(rows)


def test_stage_sums_are_plackett_luce_of_full_and_top_l_rankings():
    rng = np.random.default_rng(0)
    data = _data(rng)
    rewards = rng.normal(size=(len(data), 5))
    got = Stages.of(data).logprob(rewards)
    want = [log_prob(rewards[i, : a.m], list(a.ranking)) for i, a in enumerate(data)]
    assert np.allclose(got, want)
    rows = np.array([3, 7, 1])
    assert np.allclose(Stages.of(data).subset(rows).logprob(rewards[rows]), got[rows])


def test_a_mixture_scores_by_its_definitions():
    rng = np.random.default_rng(1)
    data = _data(rng)
    m = np.array([a.m for a in data])
    real = np.arange(5)[None, :] < m[:, None]
    rewards = np.where(real[..., None], rng.normal(size=(len(data), 5, 2)), 0.0)
    weights = rng.dirichlet(np.ones(2), size=len(data))
    stages = Stages.of(data)
    got = Prediction(weights, rewards).scores(data, stages)
    by_hand = [np.log(sum(weights[i, c] * np.exp(log_prob(rewards[i, : a.m, c],
                                                          list(a.ranking)))
                          for c in range(2))) for i, a in enumerate(data)]
    assert np.allclose(got["log_loss"], -np.array(by_hand))
    one = Prediction.single(rewards[..., 0]).scores(data, stages)  # one reward: as evaluate
    theirs = ranking_metrics(np.where(real, rewards[..., 0], np.nan), data.rankings())
    assert np.allclose(one["top1"], theirs["top1"]) and np.allclose(one["pairwise"],
                                                                      theirs["pairwise"])


def test_user_weights_are_the_map_of_the_penalised_likelihood():
    rng = np.random.default_rng(2)
    data = _data(rng, n=40, users=1)
    scores = rng.normal(size=(len(data), 5, 3))
    stages = Stages.of(data)
    model = UserWeights(beta=0.7)
    mean, cov = np.array([0.2, -0.1, 0.5]), np.diag([0.5, 1.0, 2.0])
    model.prior_mean_, model.prior_cov_ = mean, cov
    w = model.user_weights(scores, stages, np.arange(len(data)))

    def objective(v):
        lp = stages.logprob(model.rewards(scores, v)).sum()
        return -lp + 0.5 * (v - mean) @ np.linalg.inv(cov) @ (v - mean)
    theirs = minimize(objective, np.zeros(3), method="Nelder-Mead",
                      options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    assert np.allclose(w, theirs, atol=1e-4)
    assert np.allclose(model.user_weights(scores, stages, np.array([], dtype=int)), mean)


def test_the_prior_is_fitted_to_the_training_users():
    """Users whose weights are drawn from a known Gaussian: the fitted prior finds its mean."""
    rng = np.random.default_rng(3)
    true_mean = np.array([1.5, -1.0])
    rows, users, scores = [], [], []
    for h in range(120):
        w = true_mean + 0.3 * rng.normal(size=2)
        for _ in range(30):
            s = rng.normal(size=(4, 2))
            rank = [int(x) for x in np.argsort(-(s @ w + rng.gumbel(size=4)))]
            rows.append(Annotation(f"u{h}", "p", list("abcd"), rank))
            users.append(h)
            scores.append(s)
    data = Annotations(rows)
    model = UserWeights(beta=1.0).fit(np.array(scores), Stages.of(data), np.array(users))
    assert np.allclose(model.prior_mean_, true_mean, atol=0.15)
    assert np.all(np.diag(model.prior_cov_) < 0.5)


@pytest.fixture(scope="module")
def curve():
    from pluralign.em.ceiling import match_labels
    from pluralign.em.estimator import EMDPO
    from pluralign.personalize.experiment import Basis, predictive_curve
    from pluralign.simulate import SimulationConfig, simulate
    pop = simulate(SimulationConfig(types=3, annotators=160, per_annotator=12, seed=5))
    data = Annotations(pop.records)
    held = set(data.annotator_ids[:50])
    train = data.subset(i for i, a in enumerate(data) if a.annotator_id not in held)
    test = data.subset(i for i, a in enumerate(data) if a.annotator_id in held)
    em = EMDPO("linear", n_types=3, random_state=0).fit(train)
    s_train = em.backend_.logratios(train)
    model = UserWeights(beta=em.backend_.beta).fit(
        s_train, Stages.of(train, s_train.shape[1]), train.annotator_codes()[0])
    truth = [pop.truth["annotators"][h]["type"] for h in em.annotator_ids_]
    mapping = match_labels(truth, em.posteriors_.argmax(1), 3)
    codes, ids = test.annotator_codes()
    labels = np.array([mapping.get(pop.truth["annotators"][h]["type"], -1) for h in ids])
    basis = Basis(em.backend_.logratios(test), em.baseline_.backend.logratios(test)[..., 0],
                  em.backend_.beta, em.priors_, model)
    return predictive_curve(basis, test, sizes=[0, 1, 2, 4, 8], orders=2, labels=labels,
                            n_boot=200)


def test_the_bayes_predictive_never_loses_to_the_most_likely_type(curve):
    assert [p["annotations"] for p in curve] == [0, 1, 2, 4, 8]
    for point in curve:
        rows = point["predictors"]
        assert set(rows) == {"pooled", "argmax", "posterior", "user_weights", "scratch",
                             "oracle"}
        gain = point["paired"]["posterior_vs_argmax"]  # never worse by a meaningful margin
        assert gain["log_loss_gain"] > -0.01 and gain["interval"][1] > -0.01
        assert rows["oracle"]["log_loss"] <= rows["pooled"]["log_loss"]
        low, high = rows["posterior"]["log_loss_interval"]
        assert low <= rows["posterior"]["log_loss"] <= high
    gain = {p["annotations"]: p["paired"]["posterior_vs_argmax"] for p in curve}
    assert gain[1]["interval"][0] > 0 and gain[2]["interval"][0] > 0
    # revealing more helps: the posterior predictive approaches the oracle
    assert curve[-1]["predictors"]["posterior"]["log_loss"] < \
        curve[0]["predictors"]["posterior"]["log_loss"]
