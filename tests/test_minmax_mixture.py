"""The exact min-max mixture under the KL objective (DESIGN §6) against a brute-force grid over
the simplex of mixtures, on instances where only one or two types bind at the optimum of the
LP on the pure types' columns (where the LP's weights are not the min-max mixture)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pluralign.aggregate.merge import MinMaxMerge, kl_contributions
from pluralign.aggregate.mmra import MinMaxMixture, mixture_regrets
from pluralign.aggregate.program import MinMaxRegretAggregator


def _grid(k: int, steps: int) -> np.ndarray:
    pts = [c for c in itertools.product(range(steps + 1), repeat=k - 1) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in pts], dtype=float) / steps


def _instances(count: int, k: int = 3) -> list[tuple[np.ndarray, float]]:
    """Random type policies on ragged candidate lists whose LP optimum binds < k types."""
    out, seed = [], 0
    while len(out) < count:
        rng = np.random.default_rng(seed)
        seed += 1
        n, m = 12, int(rng.integers(2, 5))
        log_types = rng.normal(size=(n, 1, 1)) + rng.normal(size=(n, m, k)) * rng.uniform(
            0.2, 3.0, size=k)
        if rng.random() < 0.5:   # two near-identical types: a common way for LP ties to go
            log_types[..., 2] = log_types[..., 0] + 0.2 * rng.normal(size=(n, m))
        sizes = rng.integers(2, m + 1, size=n)
        log_types[np.arange(m)[None, :] >= sizes[:, None]] = np.nan
        beta = float(rng.choice([0.1, 1.0]))
        r = kl_contributions(log_types, k, beta).mean(axis=0)
        if MinMaxRegretAggregator().fit(r).binding_.sum() < k:
            out.append((log_types, beta))
    return out


def test_min_max_mixture_equals_a_grid_search_where_the_lp_binds_few_types():
    steps = 80
    points = _grid(3, steps)
    gains = []
    for log_types, beta in _instances(8):
        n = log_types.shape[0]
        w = np.full(n, 1 / n)
        fit = MinMaxMixture(beta).fit(log_types)
        grid = np.array([mixture_regrets(log_types, p, beta, w).max() for p in points])
        assert fit.max_regret_ <= grid.min() + 1e-7           # never beaten by the grid
        assert grid.min() - fit.max_regret_ <= 0.02 * grid.min() + 1e-6  # and reached by it
        assert fit.max_regret_ == pytest.approx(fit.regrets_.max())
        # the LP's weights measured as the mixture they serve: never better
        lp = MinMaxRegretAggregator().fit(kl_contributions(log_types, 3, beta).mean(axis=0))
        lp_measured = mixture_regrets(log_types, lp.weights_, beta, w).max()
        assert fit.max_regret_ <= lp_measured + 1e-7
        assert lp_measured <= lp.max_regret_ + 1e-9           # the LP value is an upper bound
        gains.append(lp_measured - fit.max_regret_)
        # the min-max merge is the min over all policies: never worse than the best mixture
        assert MinMaxMerge(beta).fit(log_types).value_ <= fit.max_regret_ + 1e-7
    assert max(gains) > 1e-3   # on some instance the LP's weights are not the min-max mixture


def test_row_weights_act_as_repeated_rows():
    rng = np.random.default_rng(7)
    log_types = rng.normal(size=(5, 3, 3)) * 1.5
    weights = np.array([1.0, 3.0, 1.0, 2.0, 1.0])
    repeated = np.repeat(log_types, weights.astype(int), axis=0)
    for model in (MinMaxMixture(0.5), MinMaxMerge(0.5)):
        a = type(model)(0.5).fit(log_types, weights)
        b = type(model)(0.5).fit(repeated)
        assert a.max_regret_ == pytest.approx(b.max_regret_, abs=1e-7)
        assert a.regrets_ == pytest.approx(b.regrets_, abs=1e-6)


def test_type_weights_weigh_the_worst_case():
    rng = np.random.default_rng(2)
    log_types = rng.normal(size=(10, 3, 3)) * 2
    c = np.array([3.0, 1.0, 0.5])
    fit = MinMaxMixture(1.0, type_weights=c).fit(log_types)
    w = np.full(10, 0.1)
    grid = np.array([(c * mixture_regrets(log_types, p, 1.0, w)).max() for p in _grid(3, 60)])
    assert fit.max_regret_ <= grid.min() + 1e-7
    assert fit.regrets_ == pytest.approx(c * mixture_regrets(log_types, fit.weights_, 1.0, w))
