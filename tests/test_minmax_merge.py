"""The min-max merge (DESIGN §6) against independent oracles: a brute-force search over a fine
simplex grid of merges, the best randomised mixture (the LP on the KL regret matrix), and
scipy's own minimisation of the max regret over the policy itself on tiny instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import log_softmax

from pluralign.aggregate.merge import MinMaxMerge, kl_contributions, merge_logps
from pluralign.aggregate.program import MinMaxRegretAggregator


def _grid(k: int, steps: int) -> np.ndarray:
    """Every point of the simplex with coordinates in multiples of 1/steps."""
    pts = [c for c in itertools.product(range(steps + 1), repeat=k - 1) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in pts], dtype=float) / steps


def _merge_max_regrets(log_types: np.ndarray, weights: np.ndarray, beta: float,
                       scale: np.ndarray) -> np.ndarray:
    k = log_types.shape[2]
    out = []
    for w in weights:
        cols = np.concatenate([log_types, merge_logps(log_types, w)[..., None]], axis=2)
        out.append((scale * kl_contributions(cols, k, beta).mean(axis=0)[:, k]).max())
    return np.array(out)


def _resolution(points: np.ndarray, values: np.ndarray, steps: int) -> float:
    """Largest difference of the max regret between grid neighbours (one step moved from one
    coordinate to another): how far the best grid point may sit above the true minimum."""
    index = {tuple(np.rint(p * steps).astype(int)): v for p, v in zip(points, values,
                                                                       strict=True)}
    k = points.shape[1]
    worst = 0.0
    for c, v in index.items():
        for a, b in itertools.permutations(range(k), 2):
            nb = list(c)
            nb[a], nb[b] = nb[a] + 1, nb[b] - 1
            if tuple(nb) in index:
                worst = max(worst, abs(index[tuple(nb)] - v))
    return worst


@st.composite
def instances(draw):
    k = draw(st.integers(2, 3))
    n, m = draw(st.integers(1, 6)), draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**31))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, m, k)) * scale
    sizes = rng.integers(2, m + 1, size=n)
    logits[np.arange(m)[None, :] >= sizes[:, None]] = np.nan  # ragged lists
    weighted = draw(st.booleans())  # type importance weights c: min max_i c_i R_i
    scale = rng.uniform(0.3, 3.0, size=k) if weighted else None
    return logits, draw(st.sampled_from([0.1, 1.0, 2.0])), scale


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(instance=instances())
def test_program_equals_grid_search_and_beats_every_mixture(instance):
    log_types, beta, scale = instance
    k = log_types.shape[2]
    fit = MinMaxMerge(beta=beta, type_weights=scale).fit(log_types)
    c = np.ones(k) if scale is None else scale
    steps = 400 if k == 2 else 60
    points = _grid(k, steps)
    grid = _merge_max_regrets(log_types, points, beta, c)
    # the program is the min over ALL policies: no merge on the grid does better, and the grid
    # reaches it to its resolution: within the largest change between neighbouring grid points
    assert fit.value_ <= grid.min() + 1e-7
    assert grid.min() - fit.value_ <= _resolution(points, grid, steps) + 1e-9
    # strong duality: the served merge's measured max regret equals the program's value
    assert fit.max_regret_ == pytest.approx(fit.value_, abs=1e-6)
    # the best randomised mixture of the type policies, under the same objective
    r = kl_contributions(log_types, k, beta).mean(axis=0)
    assert (r >= -1e-9).all() and (fit.regrets_ >= -1e-9).all()
    mixture = MinMaxRegretAggregator(scale).fit(r)
    assert fit.value_ <= mixture.max_regret_ + 1e-7


def test_program_equals_direct_minimisation_over_policies():
    """Tiny instance: minimise max_i beta mean_x KL(pi || pi_i) over pi itself (softmax
    parameters, a smooth epigraph by Nelder-Mead from many starts): the same value."""
    rng = np.random.default_rng(3)
    log_types = rng.normal(size=(2, 3, 2)) * 1.5
    beta = 0.7
    fit = MinMaxMerge(beta=beta).fit(log_types)
    logq = log_softmax(log_types, axis=1)

    def worst(theta: np.ndarray) -> float:
        logp = log_softmax(theta.reshape(2, 3), axis=1)
        kl = (np.exp(logp)[..., None] * (logp[..., None] - logq)).sum(axis=1).mean(axis=0)
        return beta * kl.max()

    best = min(minimize(worst, rng.normal(size=6), method="Nelder-Mead",
                        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).fun
               for _ in range(20))
    assert fit.value_ == pytest.approx(best, abs=1e-5)
    assert fit.value_ <= best + 1e-9


def test_one_type_and_identical_types_have_zero_regret():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(5, 3, 1))
    assert MinMaxMerge().fit(one).value_ == pytest.approx(0.0, abs=1e-9)
    same = np.repeat(one, 3, axis=2)
    fit = MinMaxMerge().fit(same)
    assert fit.max_regret_ == pytest.approx(0.0, abs=1e-9)
