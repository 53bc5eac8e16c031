"""Linear backend: recovers the true reward, one-hot fits equal choix's MLE, logratios are
proper log-ratios of normalised policies, zero weights cost nothing, state round-trips."""

from __future__ import annotations

import choix
import numpy as np
import pytest
from scipy.special import logsumexp

from pluralign.backends.linear import LinearBackend
from pluralign.core.data import Annotation, Annotations
from pluralign.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def feature_pop():
    return simulate(SimulationConfig(types=1, annotators=400, per_annotator=10,
                                     list_size=(2, 4), seed=11))


def test_k1_fit_recovers_the_true_reward_direction(feature_pop):
    data = Annotations(feature_pop.records)
    b = LinearBackend(types=1)
    stats = b.fit(0, data, np.ones(len(data)))
    truth = np.array(feature_pop.truth["types"][0]["weights"])
    cosine = b.theta_[0] @ truth / np.linalg.norm(b.theta_[0]) / np.linalg.norm(truth)
    assert stats["converged"] and cosine > 0.95


def test_onehot_fit_equals_choix_mle():
    rng = np.random.default_rng(4)
    n_items, l2 = 5, 2.0
    rankings = choix.generate_rankings(rng.normal(size=n_items), 80, size=n_items)
    data = Annotations([Annotation(f"h{i}", "Pick one", [f"option {j}" for j in range(n_items)],
                                   [int(x) for x in r], item_id="q")
                        for i, r in enumerate(rankings)])
    b = LinearBackend(types=1, features="onehot", l2=l2, tol=1e-10)
    b.fit(0, data, np.ones(len(data)))
    # Ours: summed NLL + l2/2 |theta|^2; choix: summed NLL + alpha |theta|^2.
    theirs = choix.opt_rankings(n_items, rankings, alpha=l2 / 2, tol=1e-9)
    ours = b.theta_[0][[b.vocab_[f'["q", "option {j}"]'] for j in range(n_items)]]
    assert np.allclose(ours, theirs, atol=1e-4)


def test_logratios_are_log_ratios_of_normalised_policies(feature_pop):
    data = Annotations(feature_pop.records[:200])
    b = LinearBackend(types=3)
    b.design(data)
    b.theta_ = np.random.default_rng(0).normal(size=b.theta_.shape)
    s = b.logratios(data)
    assert s.shape == (200, 4, 3)
    for i, a in enumerate(data):
        # sum_y pi_ref(y) exp(s_k(y)) = sum_y pi_k(y) = 1, pi_ref uniform over the candidates
        assert np.allclose(logsumexp(s[i, : a.m] - np.log(a.m), axis=0), 0, atol=1e-12)
        assert np.isnan(s[i, a.m:]).all()
        z = np.array(a.features) @ b.theta_.T
        assert np.allclose(s[i, : a.m] - s[i, :1], z - z[:1])  # s = theta . phi + const


def test_zero_weights_cost_nothing(feature_pop):
    data = Annotations(feature_pop.records[:300])
    w = np.random.default_rng(1).random(len(data))
    w[:100] = 0.0
    full = LinearBackend(types=1)
    full.fit(0, data, w)
    sub = LinearBackend(types=1)
    sub.fit(0, data.subset(range(100, 300)), w[100:])
    assert np.allclose(full.theta_, sub.theta_, atol=1e-5)
    assert full.penalty() == pytest.approx(0.5 * (full.theta_ ** 2).sum())


def test_embedding_features_use_the_lm_reference(tmp_path):
    pop = simulate(SimulationConfig(flavour="text", annotators=8, per_annotator=3, seed=2))
    data = Annotations(pop.records)
    b = LinearBackend(types=2, features="embedding", model="builtin:tiny", cache=str(tmp_path),
                      max_prompt_tokens=32, max_response_tokens=32, progress=False)
    d = b.design(data)
    assert d.phi.shape == (len(data), 3, 64 + 1)
    # standardised and divided by sqrt(width): |phi|^2 is 1 on average, so l2 = 1 is a unit
    # prior on the reward's scale for any LM width
    assert (d.phi[..., :64] ** 2).sum(-1).mean().item() == pytest.approx(1.0, rel=0.1)
    # the last column: log of each response's token count before the 32-token cut,
    # standardised on its own (unit scale), so length stays visible past the truncation
    from pluralign.lm.models import load_model
    _, tok = load_model("builtin:tiny")
    n_tok = np.array([[len(tok(r, add_special_tokens=False).input_ids) + 1 for r in a.responses]
                      for a in data], dtype=float)
    assert n_tok.max() > 32
    assert np.corrcoef(np.log(n_tok).ravel(), d.phi[..., 64].numpy().ravel())[0, 1] > 0.999
    assert d.phi[..., 64].std().item() == pytest.approx(1.0, rel=0.2)
    plain = LinearBackend(types=2, features="embedding", model="builtin:tiny",
                          cache=str(tmp_path), max_prompt_tokens=32, max_response_tokens=32,
                          progress=False, length_feature=False)
    assert plain.design(data).phi.shape[-1] == 64
    assert np.allclose(logsumexp(d.log_ref.numpy(), axis=1), 0)  # pi_ref over the candidates
    stats = b.fit(1, data, np.ones(len(data)))
    s = b.logratios(data)
    assert stats["loss"] < np.log(6)  # below a uniform full ranking of 3
    assert np.allclose(logsumexp(d.log_ref.numpy()[..., None] + s, axis=1), 0)


def test_state_round_trips(tmp_path, feature_pop):
    data = Annotations(feature_pop.records[:100])
    b = LinearBackend(types=2, features="onehot")
    b.fit(0, data, np.ones(len(data)))
    b.save(tmp_path)
    again = LinearBackend(types=2, features="onehot")
    again.load(tmp_path)
    assert np.array_equal(again.logratios(data), b.logratios(data), equal_nan=True)
    with pytest.raises(ValueError, match="saved with features='onehot'"):
        LinearBackend(types=1).load(tmp_path)


def test_given_features_must_exist():
    data = Annotations([Annotation("h", "p", ["a", "b"], [0, 1])])
    with pytest.raises(ValueError, match="annotation 0 has none"):
        LinearBackend(types=1).logratios(data)
