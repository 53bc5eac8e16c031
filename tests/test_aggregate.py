"""MMRA against scipy's linprog and a brute-force simplex grid; never worse than a baseline;
the candidates regret estimator against a plain loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linprog

from pluralign.aggregate.fair import aggregate
from pluralign.aggregate.mmra import mixture_logps
from pluralign.aggregate.program import MinMaxRegretAggregator
from pluralign.aggregate.regret import (
    Policy,
    RegretEstimator,
    baselines,
    candidate_regret,
    policies_of,
    policy_logps,
)
from pluralign.core.data import Annotations


def _linprog_optimum(r: np.ndarray) -> float:
    """min t s.t. R p - t <= 0, sum p = 1, p >= 0, as scipy states it (variables p, t)."""
    k, j = r.shape
    res = linprog(c=np.r_[np.zeros(j), 1.0], A_ub=np.c_[r, -np.ones(k)], b_ub=np.zeros(k),
                  A_eq=np.r_[np.ones(j), 0.0][None], b_eq=[1.0],
                  bounds=[(0, None)] * j + [(None, None)], method="highs")
    return float(res.fun)


def _grid_optimum(r: np.ndarray, steps: int) -> float:
    """min over the simplex grid {p = c / steps} of max_i (R p)_i."""
    j = r.shape[1]
    best = np.inf
    for cut in itertools.combinations(range(steps + j - 1), j - 1):  # stars and bars
        parts = np.diff([-1, *cut, steps + j - 1]) - 1
        best = min(best, float((r @ (parts / steps)).max()))
    return best


@pytest.mark.parametrize("k, steps", [(2, 400), (3, 60), (4, 24)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_optimum_equals_linprog_and_the_grid(k, steps, seed):
    r = np.random.default_rng(seed).uniform(0, 3, size=(k, k))
    np.fill_diagonal(r, 0.0)
    agg = MinMaxRegretAggregator().fit(r)
    assert agg.max_regret_ == pytest.approx(_linprog_optimum(r), abs=1e-6)
    grid = _grid_optimum(r, steps)
    assert agg.max_regret_ <= grid + 1e-7                  # the LP is never beaten by the grid
    assert grid - agg.max_regret_ <= np.abs(r).max() * k / steps  # and the grid approaches it
    assert agg.weights_.sum() == pytest.approx(1) and (agg.weights_ >= 0).all()
    assert np.allclose(agg.regrets_[agg.binding_], agg.max_regret_, atol=1e-6)


@st.composite
def _regret_matrices(draw) -> np.ndarray:
    """[K, J] with J >= K: every type has its own policy column, and more may follow."""
    k = draw(st.integers(2, 4))
    j = draw(st.integers(k, 5))
    return draw(arrays(np.float64, (k, j), elements=st.floats(-5, 5, allow_nan=False)))


@settings(max_examples=60, deadline=None)
@given(_regret_matrices(), st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4))
def test_mmra_is_never_worse_than_a_baseline(r, prior):
    k = r.shape[0]
    eta = np.array(prior[:k]) / sum(prior[:k])
    agg = MinMaxRegretAggregator().fit(r)
    for name, b in baselines(r, eta).items():
        assert agg.max_regret_ <= b["max_regret"] + 1e-6, name


def test_type_weights_scale_rows():
    r = np.array([[0.0, 2.0], [1.0, 0.0]])
    plain = MinMaxRegretAggregator().fit(r)  # regrets: type 0 2 p2, type 1 p1; equal at p1 = 2 p2
    assert plain.weights_ == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    heavy = MinMaxRegretAggregator(type_weights=[1.0, 4.0]).fit(r)  # now 2 p2 = 4 p1
    assert heavy.weights_ == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    assert heavy.binding_.all()
    with pytest.raises(ValueError, match="type_weights needs 2"):
        MinMaxRegretAggregator(type_weights=[1.0]).fit(r)


def test_solver_fallback_and_failure():
    r = np.array([[0.0, 1.0], [1.0, 0.0]])
    agg = MinMaxRegretAggregator(solvers=("NO_SUCH_SOLVER", "HIGHS")).fit(r)
    assert agg.solver_ == "HIGHS" and agg.max_regret_ == pytest.approx(0.5, abs=1e-7)
    with pytest.raises(RuntimeError, match="no solver"):
        MinMaxRegretAggregator(solvers=("NO_SUCH_SOLVER",)).fit(r)


def test_utilitarian_baseline_minimises_prior_weighted_regret():
    r = np.array([[0.0, 1.0, 3.0], [2.0, 0.0, 0.5], [4.0, 1.0, 0.0]])
    out = baselines(r, [0.2, 0.5, 0.3])
    mean = [np.dot([0.2, 0.5, 0.3], r[:, j]) for j in range(3)]
    assert out["utilitarian"]["weights"] == list(np.eye(3)[int(np.argmin(mean))])
    assert out["uniform"]["max_regret"] == pytest.approx((r @ np.full(3, 1 / 3)).max())


def test_candidate_regret_equals_a_plain_loop():
    rng = np.random.default_rng(4)
    n, m, k, beta = 5, 4, 3, 0.5
    s = rng.normal(size=(n, m, k))
    sizes = [4, 3, 2, 4, 3]
    for a, size in enumerate(sizes):
        s[a, size:] = np.nan
    log_ref = rng.normal(size=(n, m))
    extra = rng.normal(size=(n, m, 1))                       # e.g. a pooled policy's log-probs
    log_pol = np.concatenate([log_ref[..., None] + s, extra], axis=2)
    got = candidate_regret(beta * s, log_pol)
    assert got.shape == (3, 4)
    value = np.zeros((k, k + 1))
    for a, size in enumerate(sizes):
        for j in range(k + 1):
            q = np.exp(log_pol[a, :size, j]) / np.exp(log_pol[a, :size, j]).sum()
            for i in range(k):
                value[i, j] += (q * beta * s[a, :size, i]).sum() / n
    assert np.allclose(got, np.diag(value)[:, None] - value)
    assert np.allclose(np.diag(got), 0.0)


@pytest.fixture(scope="module")
def fitted():
    """A simulated 3-type population (unequal priors), EM on 200 annotators, 50 held out."""
    from pluralign.em.estimator import EMDPO
    from pluralign.simulate import SimulationConfig, simulate
    pop = simulate(SimulationConfig(types=3, annotators=250, per_annotator=10, seed=3,
                                    prior=(0.6, 0.25, 0.15)))
    data = Annotations(pop.records)
    held = set(data.annotator_ids[200:])
    train = data.subset(i for i, a in enumerate(data) if a.annotator_id not in held)
    test = data.subset(i for i, a in enumerate(data) if a.annotator_id in held)
    return EMDPO("linear", n_types=3, random_state=0).fit(train), test


def test_pooled_policy_serves_the_worst_type_worse_than_mmra(fitted):
    """On a population with known, disagreeing types, plain DPO (K=1) leaves some type with
    more regret than the min-max mixture of the type policies (DESIGN §3 misspecification)."""
    em, test = fitted
    policies = policies_of(em.backend_, {"pooled": em.baseline_.backend}, base=True)
    est = RegretEstimator(em.backend_, test).estimate(policies)
    r = est.matrix
    assert est.names == ["type_0", "type_1", "type_2", "pooled", "base"]
    assert np.allclose(np.diag(r), 0.0) and (r[:, :3] >= -1e-9).all()
    mmra = MinMaxRegretAggregator().fit(r[:, :3])
    assert r[:, 3].max() > mmra.max_regret_ + 0.05


def test_sampled_estimator_converges_to_the_candidates_one(fitted):
    """Linear policies live on the candidates, so sampling them is a Monte Carlo version of the
    exact candidates estimate: they agree within a few standard errors."""
    em, test = fitted
    policies = policies_of(em.backend_, {"pooled": em.baseline_.backend}, base=True)
    exact = RegretEstimator(em.backend_, test).estimate(policies).matrix
    mc = RegretEstimator(em.backend_, test, "sampled", n_samples=64,
                         random_state=1).estimate(policies)
    assert mc.names == [p.name for p in policies] and np.allclose(np.diag(mc.matrix), 0.0)
    z = np.abs(mc.matrix - exact) / np.maximum(mc.stderr, 1e-12)
    off = ~np.eye(*exact.shape, dtype=bool)
    assert z[off].max() < 4.5, z
    assert np.abs(mc.matrix - exact).max() < 0.1 * np.abs(exact).max()


def test_a_mixture_column_has_regret_r_p(fitted):
    """Regret is linear in the mixture: the mixture's own column equals R p."""
    em, test = fitted
    policies = policies_of(em.backend_)
    logps = policy_logps(policies, test)
    p = np.array([0.5, 0.2, 0.3])
    r = candidate_regret(em.backend_.beta * em.backend_.logratios(test),
                         np.concatenate([logps, mixture_logps(logps, p)[..., None]], axis=2))
    assert np.allclose(r[:, 3], r[:, :3] @ p)


def test_aggregate_reports_mmra_baselines_and_a_measured_merge(fitted):
    em, test = fitted
    out, merged = aggregate(em.backend_, test, em.priors_, pooled=em.baseline_.backend,
                            objective="paper")
    assert out["policies"] == ["type_0", "type_1", "type_2", "pooled", "base", "mmra", "uniform",
                               "utilitarian", "merged"]
    assert np.allclose(merged.theta_[0], np.asarray(out["weights"]) @ em.backend_.theta_)
    r = np.asarray(out["regret_matrix"])
    assert out["max_regret"] == pytest.approx((r[:, :3] @ out["weights"]).max(), abs=1e-6)
    assert r[:, 5] == pytest.approx(r[:, :3] @ out["weights"])  # the mixture's column: R p
    assert out["max_regret"] == pytest.approx(out["lp_max_regret"], abs=1e-6)
    for name in ("uniform", "utilitarian", "type_0", "type_1", "type_2"):  # all in the simplex
        assert out["max_regret"] <= out["baselines"][name]["max_regret"] + 1e-6, name
    assert set(out["baselines"]) >= {"pooled", "base", "merged"}
    # the merged policy's regret is measured: its column, not the mixture's R p
    own = RegretEstimator(em.backend_, test).estimate(
        [*policies_of(em.backend_), Policy("merged", merged, 0)]).matrix[:, 3]
    assert out["baselines"]["merged"]["regrets"] == pytest.approx(own.tolist())


def test_uniform_base_measure_ignores_what_the_reference_says_about_length():
    """A per-candidate offset in log pi_ref (the sequence-length effect) moves the `reference`
    estimate and leaves the `uniform` one, which depends on the log-ratios alone."""
    rng = np.random.default_rng(5)
    s = rng.normal(size=(6, 3, 2))
    length = -np.array([10.0, 150.0, 400.0])[None, :, None]      # log pi_ref ~ -tokens
    uniform = candidate_regret(s, s)
    with_length = candidate_regret(s, length + s)
    assert not np.allclose(uniform, with_length)
    assert np.abs(with_length).max() < 1e-12          # all mass on the shortest: R is zero
    assert np.abs(uniform).max() > 0.05


def test_lora_regret_is_not_all_zero_when_candidates_differ_in_length(tmp_path):
    """builtin:tiny with two distinct adapters, candidates of 1x, 8x and 30x the length: the
    reference measure puts every policy on the shortest candidate (R = 0); the uniform one
    measures what the adapters change."""
    import torch

    from pluralign.backends.lora import LoRABackend
    from pluralign.core.data import Annotation
    words = ["Yes.", "Sure, here is a longer answer. " * 2, "A very long answer indeed. " * 8]
    data = Annotations([Annotation(f"h{i}", f"Question {i}?", [w + str(i) for w in words],
                                   [i % 3, (i + 1) % 3, (i + 2) % 3]) for i in range(6)])
    backend = LoRABackend(types=2, top_layers=2, max_prompt_tokens=16, max_response_tokens=256,
                          cache="", progress=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    ref = backend.reference_logps(data)
    assert (np.nanmax(ref, axis=1) - np.nanmin(ref, axis=1)).min() > 50   # lengths dominate
    policies = policies_of(backend, base=True)
    ref_r = RegretEstimator(backend, data, base_measure="reference").estimate(policies).matrix
    uni_r = RegretEstimator(backend, data, base_measure="uniform").estimate(policies).matrix
    assert np.abs(ref_r).max() < 1e-6
    assert np.abs(uni_r).max() > 1e-3 and uni_r[0, 1] > 0 and uni_r[1, 0] > 0
    s = backend.logratios(data)
    assert np.allclose(uni_r[:, :2], candidate_regret(backend.beta * s, s), atol=1e-9)


def test_kl_objective_serves_the_min_max_merge_with_its_measured_regret(fitted):
    em, test = fitted
    out, merged = aggregate(em.backend_, test, em.priors_, pooled=em.baseline_.backend, n_boot=20)
    assert out["objective"] == "kl"
    assert out["policies"] == ["type_0", "type_1", "type_2", "pooled", "base", "fair", "mmra",
                               "uniform", "utilitarian", "merged"]
    fair = out["fair"]
    # the served merge's measured max regret equals the program's value (strong duality)
    assert fair["max_regret"] == pytest.approx(fair["value"], abs=1e-6)
    assert out["baselines"]["fair"]["max_regret"] == pytest.approx(fair["max_regret"], abs=1e-9)
    # the linear merge at the program's weights is that very policy, in one theta
    assert np.allclose(merged.theta_[0], np.asarray(fair["weights"]) @ em.backend_.theta_)
    assert out["baselines"]["merged"]["max_regret"] == pytest.approx(fair["max_regret"],
                                                                     abs=1e-9)
    # the fairest over all policies: no mixture, type policy or baseline does better
    for name, b in out["baselines"].items():
        assert fair["value"] <= b["max_regret"] + 1e-7, name
    assert fair["value"] <= out["max_regret"] + 1e-7
    assert min(min(b["regrets"]) for b in out["baselines"].values()) >= -1e-9
    assert out["deploy"]["policy"] == "merged" and "Deploy merged" in out["deploy"]["why"]
    assert set(out["intervals"]["max_regret"]) >= {"fair", "merged", "mmra"}


def test_kl_objective_with_type_weights_minimises_the_weighted_worst_regret(fitted):
    em, test = fitted
    c = [2.0, 1.0, 0.5]
    out, _ = aggregate(em.backend_, test, em.priors_, pooled=em.baseline_.backend,
                       type_weights=c, n_boot=0)
    fair = out["fair"]
    assert fair["max_regret"] == pytest.approx(fair["value"], abs=1e-6)
    plain = np.asarray(out["regret_matrix"])[:, out["policies"].index("fair")]
    assert fair["regrets"] == pytest.approx((np.asarray(c) * plain).tolist(), abs=1e-9)
    for name, b in out["baselines"].items():  # every policy judged on the weighted regrets
        assert fair["value"] <= b["max_regret"] + 1e-7, name


def test_each_prompt_weighs_once_in_both_estimators():
    """Prompt Q annotated 4 times (3 distinct rankings) and R twice give the same regrets as
    Q and R once each, for the candidates and the sampled estimator: the unit is the prompt,
    not the annotation nor the distinct ranking."""
    from pluralign.backends.linear import LinearBackend
    from pluralign.core.data import Annotation
    q_feats, r_feats = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]
    q = [Annotation(f"h{i}", "Q?", ["a", "b", "c"], r, features=q_feats)
         for i, r in enumerate([[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 1, 2]])]
    r = [Annotation(f"h{i}", "R?", ["d", "e", "f"], [0, 1, 2], features=r_feats)
         for i in (4, 5)]
    many, once = Annotations(q + r), Annotations([q[0], r[0]])
    backend = LinearBackend(types=2)
    backend.design(many)
    backend.theta_ = np.array([[1.5, -1.0], [-1.0, 2.0]])
    policies = policies_of(backend, base=True)
    per_prompt = candidate_regret(backend.beta * backend.logratios(once),
                                  policy_logps(policies, once))
    for estimator in ("candidates", "sampled"):
        a = RegretEstimator(backend, many, estimator, n_samples=40, random_state=3,
                            objective="paper").estimate(policies)
        b = RegretEstimator(backend, once, estimator, n_samples=40, random_state=3,
                            objective="paper").estimate(policies)
        assert a.units.shape[0] == 2, estimator
        assert a.matrix == pytest.approx(b.matrix, abs=1e-12), estimator
    exact = RegretEstimator(backend, many, objective="paper").estimate(policies).matrix
    assert exact == pytest.approx(per_prompt, abs=1e-12)   # the mean of the two prompts
