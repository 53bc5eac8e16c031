"""Predicting a user's judgements (DESIGN §10): the stage sums against Plackett–Luce by hand,
the mixture's scores against their definitions, the user-weights MAP against scipy, and the
predictive experiment on a simulated population (the Bayes predictive never loses to the most
likely type in log-loss, and the oracle and pooled rows frame it)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

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


def _typed_population(rng: np.random.Generator, weights: list[np.ndarray], per: int = 25):
    """Users of known weights over a 2-type basis, each ranking 4 candidates by PL."""
    rows, users, scores = [], [], []
    for h, w in enumerate(weights):
        for _ in range(per):
            s = 2 * rng.normal(size=(4, 2))
            rank = [int(x) for x in np.argsort(-(s @ w + rng.gumbel(size=4)))]
            rows.append(Annotation(f"u{h}", "p", list("abcd"), rank))
            users.append(h)
            scores.append(s)
    return Annotations(rows), np.array(scores), np.array(users)


def test_the_slab_evidence_is_the_laplace_integral_and_spikes_are_exact():
    """parts(): a spike's responsibility is rho_k L(e_k), the slab's rho_slab times the
    marginal likelihood under the Gaussian, here against numerical integration over w."""
    from scipy.stats import multivariate_normal
    rng = np.random.default_rng(4)
    data, scores, _ = _typed_population(rng, [np.array([0.6, 0.3])], per=15)
    stages, rows = Stages.of(data), np.arange(len(data))
    model = UserWeights(beta=1.0)
    model.prior_mean_, model.prior_cov_ = np.array([0.3, 0.2]), np.diag([0.4, 0.3])
    model.mixing_ = np.array([0.2, 0.3, 0.5])
    resp, w, _ = model.parts(scores, stages, rows)
    loglik = [stages.logprob(model.rewards(scores, v)).sum() for v in np.eye(2)]
    grid = np.linspace(-3, 4, 241)  # the marginal likelihood on a fine grid (trapezoids)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    points = np.column_stack([a.ravel(), b.ravel()])
    x = scores[stages.row]                                      # [T, 4, 2]
    r = np.where(stages.left[..., None], x @ points.T, -np.inf)  # [T, 4, G]
    ll = (r[np.arange(len(r)), stages.chosen] - logsumexp(r, axis=1)).sum(axis=0)
    density = np.exp(ll - ll.max()) * multivariate_normal(
        model.prior_mean_, model.prior_cov_).pdf(points)
    integral = np.trapezoid(np.trapezoid(density.reshape(a.shape), grid, axis=1), grid)
    peak = ll.max()
    evidence = np.array([*loglik, np.log(integral) + peak])
    assert w.shape == (2,)
    exact = np.exp(np.log(model.mixing_) + evidence - (np.log(model.mixing_) + evidence).max())
    assert np.allclose(resp[:2] / resp[:2].sum(), exact[:2] / exact[:2].sum(), atol=1e-9)
    assert np.allclose(resp, exact / exact.sum(), atol=0.01)  # Laplace: close, not exact


def test_with_the_mass_on_the_spikes_the_prediction_is_the_posterior_predictive():
    from pluralign.em.estep import e_step
    rng = np.random.default_rng(6)
    data = _data(rng, n=24, users=1)
    scores = rng.normal(size=(len(data), 5, 3))
    stages = Stages.of(data)
    model = UserWeights(beta=0.8)
    model.prior_mean_, model.prior_cov_ = np.zeros(3), np.eye(3)
    priors = np.array([0.5, 0.3, 0.2])
    model.mixing_ = np.append(priors, 0.0)
    shown, rest = np.arange(6), np.arange(6, 24)
    per_type = np.stack([stages.logprob(0.8 * scores[..., k]) for k in range(3)], axis=1)
    gamma = e_step(per_type[shown].sum(axis=0, keepdims=True), priors)[0][0]
    mine = model.predict(scores, stages, shown, rest, draws=4)
    theirs = Prediction(np.tile(gamma, (len(rest), 1)), 0.8 * scores[rest])
    sub, sub_stages = data.subset(rest), stages.subset(rest)
    ours = mine.scores(sub, sub_stages)
    for name, value in theirs.scores(sub, sub_stages).items():
        assert np.allclose(ours[name], value)
    assert np.allclose(model.mean_weights(scores, stages, shown), gamma)


def test_empirical_bayes_puts_typed_users_on_the_spikes_and_blended_ones_on_the_slab():
    rng = np.random.default_rng(8)
    typed = [np.eye(2)[h % 2] for h in range(60)]
    data, scores, users = _typed_population(rng, typed)
    on_types = UserWeights(beta=1.0).fit(scores, Stages.of(data), users)
    assert on_types.mixing_[:2].sum() > 0.8
    assert np.allclose(on_types.mixing_[:2], 0.5 * on_types.mixing_[:2].sum(), atol=0.15)
    blended = [np.array([a, 1 - a]) for a in rng.uniform(0.3, 0.7, size=60)]
    data, scores, users = _typed_population(rng, blended)
    between = UserWeights(beta=1.0).fit(scores, Stages.of(data), users)
    assert between.mixing_[-1] > 0.8
    assert np.allclose(between.prior_mean_, [0.5, 0.5], atol=0.15)


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


def test_the_seen_split_holds_out_part_of_every_annotator_and_loses_nothing():
    from pluralign.stages.pipeline import split_annotations
    rows = [Annotation(f"u{h}", f"p{h}-{i}", ["a", "b", "c"], [0, 1, 2])
            for h, n in enumerate((1, 2, 8, 20)) for i in range(n)]
    data = Annotations(rows)
    kept, seen = split_annotations(data, 0.25, seed=3)
    assert len(kept) + len(seen) == len(data)
    assert {a.content_key() for a in kept} | {a.content_key() for a in seen} == \
        {a.content_key() for a in data}
    count = {h: sum(a.annotator_id == h for a in seen) for h in ("u0", "u1", "u2", "u3")}
    assert count == {"u0": 0, "u1": 1, "u2": 2, "u3": 5}
    assert set(kept.annotator_ids) == {"u0", "u1", "u2", "u3"}  # nobody loses all
    again = split_annotations(data, 0.25, seed=3)[1]
    assert [a.prompt for a in again] == [a.prompt for a in seen]
    assert split_annotations(data, 0.0, seed=3) == (data, None)


def test_the_oracle_knows_only_labels_that_name_a_type():
    from pluralign.stages.evaluate import oracle_types
    ids = [f"u{i}" for i in range(9)]
    labels = {h: ("a" if i < 3 else "b" if i < 6 else "blend") for i, h in enumerate(ids)}
    pred = np.array([0, 0, 0, 1, 1, 2, 2, 0, 1])
    mapping = {"a": 0, "b": 1, "blend": 2}  # a one-to-one match gives the spread label a type
    assert oracle_types(labels, ids, pred, mapping) == {"a": 0, "b": 1}
    assert oracle_types(labels, ids, pred, None) == {}
