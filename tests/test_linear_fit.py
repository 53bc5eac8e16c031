"""The linear M-step: blocks of L-BFGS in lockstep against scipy, PL-DPO's closed-form objective
against autograd, the row-skipping rule's error bound, and the fused E-step against a
brute-force Plackett–Luce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from pluralign.backends import linear_fit
from pluralign.backends.linear import LinearBackend
from pluralign.core import plackett_luce
from pluralign.core.data import Annotations
from pluralign.core.labels import adjusted_rand, normalized_mutual_info
from pluralign.core.lbfgs import minimize_blocks
from pluralign.em.estep import annotation_loglik
from pluralign.settings.backends import LinearConfig
from pluralign.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def mixed():
    """Three types, lists of 2-5 candidates ranked top-2 (partial rankings, padding)."""
    pop = simulate(SimulationConfig(types=3, annotators=60, per_annotator=6, list_size=(2, 5),
                                    ranking_length=2, seed=5))
    return Annotations(pop.records)


def _soft_weights(data: Annotations, k: int, seed: int = 0) -> np.ndarray:
    codes, ids = data.annotator_codes()
    gamma = np.random.default_rng(seed).dirichlet(np.full(k, 0.3), size=len(ids))
    return gamma[codes]


def test_blocks_in_lockstep_reach_scipys_minimiser_of_each_block():
    rng = np.random.default_rng(0)
    k, d = 4, 12
    a = rng.normal(size=(k, d, d))
    # curvatures from 1e-2 to 1e3: blocks of very different scale share every evaluation
    h = a @ a.transpose(0, 2, 1) / d + np.eye(d) * np.array([1e-2, 1, 10, 1e3])[:, None, None]
    b = rng.normal(size=(k, d))

    def blocks(x: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        soft = np.logaddexp(0, x)  # convex, not quadratic
        f = 0.5 * np.einsum("kd,kde,ke->k", x, h, x) - (b * x).sum(1) + soft.sum(1)
        return f, np.einsum("kde,ke->kd", h, x) - b + 1 / (1 + np.exp(-x))

    res = minimize_blocks(blocks, np.zeros((k, d)), gtol=1e-10, ftol=0)
    assert res.converged.all()
    assert res.nfev < 200  # shared: far fewer than the blocks' evaluations one after another
    for j in range(k):
        def one(v: np.ndarray, j: int = j) -> tuple[float, np.ndarray]:
            x = np.zeros((k, d))
            x[j] = v
            f, g = blocks(x, np.ones(k, dtype=bool))
            return f[j], g[j]
        ref = minimize(one, np.zeros(d), jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-12, "ftol": 0, "maxiter": 10_000})
        assert np.allclose(res.x[j], ref.x, atol=1e-7)


@pytest.mark.parametrize("features", ["given", "onehot"])
def test_pl_closed_form_objective_equals_autograd(mixed, features, monkeypatch):
    """PL-DPO's numpy objective (values, gradients) against the autograd path of the same
    loss, on ragged lists and partial rankings, for several types with their own rows."""
    b = LinearBackend(types=3, features=features, beta=0.7, l2=0.5)
    d = b.design(mixed)
    w = _soft_weights(mixed, 3)
    rows = [linear_fit.kept_rows(w[:, j], 0.05) for j in range(3)]
    weights = [w[:, j] for j in range(3)]
    theta = np.random.default_rng(1).normal(size=b.theta_.shape)
    rank = d.rankings.select(np.concatenate(rows))
    used, pos = np.unique(np.concatenate(rows), return_inverse=True)
    slot = np.concatenate([np.full(r.size, i) for i, r in enumerate(rows)])
    wt = np.concatenate([wk[r] / wk.sum() for r, wk in zip(rows, weights, strict=True)])
    parts = (d.select(used), pos, slot, rank, wt, 3)
    closed = linear_fit._pl_loss(*parts, b.config.beta)
    auto = linear_fit._autograd_loss(*parts, b.config, b._z)
    every = np.ones(3, dtype=bool)
    (f1, g1), (f2, g2) = closed(theta, every), auto(theta, every)
    assert np.allclose(f1, f2, rtol=1e-12) and np.allclose(g1, g2, atol=1e-12)
    monkeypatch.setattr(linear_fit, "PAIR_CHUNK", 37)  # many chunks, the last one short
    f3, g3 = closed(theta, every)
    assert np.allclose(f3, f1, rtol=1e-12) and np.allclose(g3, g1, atol=1e-12)
    # past the feature budget, chunks are gathered at each evaluation: the same numbers
    monkeypatch.setattr(linear_fit, "FEATURE_BUDGET", 37 * 3 * 8 * 8)
    f5, g5 = linear_fit._pl_loss(*parts, b.config.beta)(theta, every)
    assert np.allclose(f5, f1, rtol=1e-12) and np.allclose(g5, g1, atol=1e-12)
    some = np.array([True, False, True])  # the types L-BFGS still moves: theirs are exact
    f4, g4 = closed(theta, some)
    assert np.allclose(f4[some], f1[some], rtol=1e-12) and np.allclose(g4[some], g1[some])
    # and the objective PL-DPO uses is the closed form plus each type's prior
    f, g = linear_fit.objective(d, rows, weights, b.config, b._z)(theta, every)
    prior = np.array([0.5 * b.config.l2 / wk.sum() for wk in weights])
    assert np.allclose(f, f1 + prior * (theta ** 2).sum(1), rtol=1e-12)
    assert np.allclose(g, g1 + 2 * prior[:, None] * theta, atol=1e-12)


def test_fitting_types_together_equals_fitting_them_one_by_one(mixed):
    w = _soft_weights(mixed, 3, seed=2)
    together = LinearBackend(types=3, skip_mass=0)
    together.fit_types(range(3), mixed, w)
    apart = LinearBackend(types=3, skip_mass=0)
    for k in range(3):
        apart.fit(k, mixed, w[:, k])
    assert np.allclose(together.theta_, apart.theta_, atol=1e-6)


def test_skipped_rows_bound_the_gradient_error(mixed):
    """kept_rows drops at most skip_mass of a type's weight, and the fit on the kept rows is
    stationary for the full objective up to skip_mass * G, G = 2 beta L max|phi| (PL-DPO)."""
    codes, ids = mixed.annotator_codes()
    w = (np.random.default_rng(3).random(len(ids)) ** 8)[codes]  # many light rows
    skip = 0.02
    rows = linear_fit.kept_rows(w, skip)
    dropped = np.setdiff1d(np.flatnonzero(w > 0), rows)
    assert dropped.size > 20 and w[dropped].sum() <= skip * w.sum()
    assert w[dropped].max() <= w[rows].min()  # the lightest go first
    b = LinearBackend(types=1, beta=1.5, skip_mass=skip, tol=1e-12)
    stats = b.fit(0, mixed, w)
    assert stats["skipped"] == dropped.size
    full = linear_fit.objective(b.design(mixed), [np.flatnonzero(w > 0)], [w],
                                LinearConfig(beta=1.5, skip_mass=0), b._z)
    grad = full(b.theta_, np.ones(1, dtype=bool))[1][0]
    phi = b.design(mixed).phi.numpy()
    g_row = 2 * 1.5 * max(a.L for a in mixed) * np.linalg.norm(phi, axis=2).max()
    assert 0 < np.linalg.norm(grad) <= skip * g_row
    exact = LinearBackend(types=1, beta=1.5, skip_mass=0, tol=1e-12)
    exact.fit(0, mixed, w)
    assert np.linalg.norm(full(exact.theta_, np.ones(1, dtype=bool))[1][0]) < \
        1e-3 * np.linalg.norm(grad)


def test_annotation_loglik_equals_brute_force_plackett_luce(mixed):
    s = np.random.default_rng(4).normal(size=(len(mixed), max(a.m for a in mixed), 2))
    for i, a in enumerate(mixed):
        s[i, a.m:] = np.nan
    got = annotation_loglik(s, mixed.rankings(), beta=0.8)
    for i, a in enumerate(mixed):
        for k in range(2):
            want = plackett_luce.log_prob(0.8 * s[i, : a.m, k], list(a.ranking))
            assert got[i, k] == pytest.approx(want, abs=1e-10)


def test_ordered_pl_equals_autograds_plackett_luce():
    """The eager log P and gradient (linear M-step, E-step) against the autograd function the
    other losses use, partial and full rankings."""
    from pluralign.core.losses import _OrderedPL, ordered_pl
    rng = np.random.default_rng(5)
    a = torch.as_tensor(rng.normal(size=(5, 40)))
    length = torch.as_tensor(rng.integers(1, 6, 40))
    placed = torch.arange(5)[:, None] < length[None, :]
    ll, g = ordered_pl(a.clone(), placed)
    t = a.T.clone().requires_grad_(True)
    out = _OrderedPL.apply(t, length)
    out.sum().backward()
    assert torch.allclose(ll, out.detach()) and torch.allclose(g, t.grad.T)
    from pluralign.core import losses
    loop = losses.LOOP_PLACES
    losses.LOOP_PLACES = 2  # the long-list path (logcumsumexp) on the same lists
    try:
        ll2, g2 = ordered_pl(a.clone(), placed)
    finally:
        losses.LOOP_PLACES = loop
    assert torch.allclose(ll2, ll) and torch.allclose(g2, g)
    full_ll, full_g = ordered_pl(a.clone(), None)  # full rankings: every place
    want_ll, want_g = ordered_pl(a.clone(), torch.ones_like(placed))
    assert torch.allclose(full_ll, want_ll) and torch.allclose(full_g, want_g)
    assert ordered_pl(a.clone(), placed, grad=False)[1] is None


def test_adjusted_rand_and_nmi_equal_sklearn():
    rng = np.random.default_rng(6)
    for n in (1, 2, 5, 50):
        for _ in range(100):
            a, b = rng.integers(0, rng.integers(1, 5), n), rng.integers(0, rng.integers(1, 5), n)
            if rng.random() < 0.2:
                b = a.copy()
            elif rng.random() < 0.2:
                b = 7 - 2 * a  # the same partition under other names
            assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
            assert normalized_mutual_info(a, b) == pytest.approx(
                normalized_mutual_info_score(a, b), abs=1e-12)


@pytest.mark.parametrize("features", ["given", "onehot"])
def test_the_linear_e_step_equals_plackett_luce_on_the_log_ratios(mixed, features):
    """ranking_loglik skips log Z and the log-ratio array; it equals the generic E-step's
    Plackett–Luce on logratios, chunk boundaries included."""
    b = LinearBackend(types=3, features=features, beta=0.6)
    b.design(mixed)
    b.theta_ = np.random.default_rng(7).normal(size=b.theta_.shape)
    want = annotation_loglik(b.logratios(mixed), mixed.rankings(), 0.6)
    chunk = linear_fit.PAIR_CHUNK
    linear_fit.PAIR_CHUNK = 30  # several chunks, the last one short
    try:
        got = b.ranking_loglik(mixed)
    finally:
        linear_fit.PAIR_CHUNK = chunk
    assert np.allclose(got, want, atol=1e-10)
