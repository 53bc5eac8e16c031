"""Regrets of LoRA policies as served (DESIGN §6) against exact enumeration: on builtin:tiny
with a horizon of 2 new tokens, every response (259 first tokens, then 259 second ones) is
enumerated with plain model forwards, independently of the sampler and scorer under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluralign.aggregate.regret import RegretEstimator, policies_of
from pluralign.aggregate.served import ServedSettings, served_policies, served_regret
from pluralign.core import bootstrap
from pluralign.core.data import Annotation, Annotations

BETA, MERGE, MIX = 0.5, np.array([0.3, 0.7]), np.array([0.5, 0.5])


@pytest.fixture(scope="module")
def tiny():
    """Two distinct adapters on builtin:tiny, its head sharpened so that they disagree."""
    from pluralign.backends.lora import LoRABackend
    b = LoRABackend(types=2, top_layers=2, max_prompt_tokens=16, max_response_tokens=2,
                    beta=BETA, cache="", progress=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        b.head.weight.mul_(8.0)
        for name, p in b.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    data = Annotations([Annotation(f"h{i}", f"Question number {i}: what now?", ["a", "b"],
                                   [0, 1]) for i in range(16)])
    return b, data


def _next(b, seqs: list[list[int]], spec) -> torch.Tensor:
    """log p(next token) after each sequence under spec (adapter k, None: base, or merge
    weights): plain forwards of the peft model, [len(seqs), V]."""
    def one(k):
        if k is None:
            with b.model.disable_adapter():
                logits = b.model(input_ids=torch.tensor(seqs)).logits[:, -1]
        else:
            b.model.set_adapter(f"type_{k}")
            logits = b.model(input_ids=torch.tensor(seqs)).logits[:, -1]
        return torch.log_softmax(logits.double(), -1)
    if spec is None or isinstance(spec, int):
        return one(spec)
    return torch.log_softmax(sum(float(w) * one(k) for k, w in enumerate(spec)), -1)


@torch.no_grad()
def _sequences(b, prompt: str, spec) -> np.ndarray:
    """log pi(y) of every response of at most 2 tokens: [1 + (V - 1) V] (first: the end of
    sequence at once; then (t1, t2) for every first token t1 that is not the end)."""
    ids, eos = b.prompt_tokens(prompt), b.tokenizer.eos_token_id
    first = _next(b, [ids], spec)[0]
    v = len(first)
    second = _next(b, [ids + [t] for t in range(v)], spec)                  # [V, V]
    rest = (first[:, None] + second)[torch.arange(v) != eos].reshape(-1)
    return torch.cat([first[eos:eos + 1], rest]).numpy()


def _exact(b, data, specs: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per prompt: log-probs of every response under each spec, the mixture's and the
    reference's."""
    logp = {name: np.stack([_sequences(b, a.prompt, s) for a in data])
            for name, s in specs.items()}
    mix = np.logaddexp(np.log(MIX[0]) + logp["type_0"], np.log(MIX[1]) + logp["type_1"])
    return logp, mix, logp["base"]


def _kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL per prompt: [P]."""
    return (np.exp(logp) * (logp - logq)).sum(axis=1)


@pytest.mark.slow
def test_served_regrets_match_exact_enumeration(tiny):
    b, data = tiny
    specs = {"type_0": 0, "type_1": 1, "base": None, "fair": MERGE}
    logp, mix, _ = _exact(b, data, specs)
    exact = {name: BETA * np.stack([_kl(lp, logp[f"type_{i}"]) for i in range(2)], axis=1)
             for name, lp in {**logp, "mix": mix}.items()}                 # [P, K] each
    policies = served_policies(b, None, None, MERGE, {"mix": MIX})
    est = served_regret(b, data, policies, ServedSettings(n_samples=200, max_prompts=None,
                                                          random_state=3))
    assert est.info["prompts"] == 16 and est.info["max_new_tokens"] == 2
    iv = bootstrap.max_intervals(est.units, 1000, 0)
    for j, name in enumerate(est.names):
        # paired by prompt: the difference is the sampling error alone
        diff = est.units[:, :, j] - exact[name]
        se = diff.std(axis=0, ddof=1) / np.sqrt(len(diff))
        assert (np.abs(diff.mean(axis=0)) < 4 * np.maximum(se, 1e-12)).all(), (name, diff)
        truth = exact[name].mean(axis=0)
        assert iv.max[j][0] <= truth.max() <= iv.max[j][1], (name, iv.max[j], truth)
    # the token-level merge is a policy of its own, with a real regret for both types
    assert exact["fair"].mean(axis=0).min() > 0.005
    assert est.matrix[0, 0] == 0 and est.matrix[1, 1] == 0


def test_sampled_estimator_matches_exact_enumeration_of_expected_rewards(tiny):
    """The paper objective's sampled estimator on a decoding backend: R_ij = V_i(pi_i) -
    V_i(pi_j) with V_i(pi) = beta E_{y ~ pi}[log pi_i(y) - log pi_ref(y)], from token ids."""
    b, data = tiny
    logp, _, ref = _exact(b, data, {"type_0": 0, "type_1": 1, "base": None})
    value = {name: [BETA * float((np.exp(lp) * (logp[f"type_{i}"] - ref)).sum(1).mean())
                    for i in range(2)] for name, lp in logp.items()}
    est = RegretEstimator(b, data, "sampled", n_samples=64, random_state=5,
                          objective="paper").estimate(policies_of(b, base=True))
    exact = np.array([[value[f"type_{i}"][i] - value[n][i] for n in est.names]
                      for i in range(2)])
    z = np.abs(est.matrix - exact) / np.maximum(est.stderr, 1e-12)
    assert (z < 4).all(), (est.matrix, exact)
    assert exact[0, 2] > 0.05          # the base model serves type 0 measurably worse


def test_decoding_with_a_shared_trunk_draws_and_scores_as_the_whole_model(tiny):
    """Adapters in the top 2 layers: decoding runs the layers below once per step for every
    adapter it needs and scores the drawn responses in the same passes. The same seed draws
    the same responses as decoding with the whole model per adapter, and the scores equal an
    exact scoring of those responses afterwards."""
    from pluralign.backends import generation
    b, data = tiny
    ids = [b.prompt_tokens(a.prompt) for a in data][:6]
    assert b.trunk
    shared = b.draw(ids, MERGE, 3, seed=9, max_new_tokens=2, score=(0, 1, None, MERGE))
    b.trunk = False
    try:
        whole = b.draw(ids, MERGE, 3, seed=9, max_new_tokens=2)
    finally:
        b.trunk = True
    assert shared.ids == whole.ids
    flat = [(q, y) for q, rows in enumerate(shared.ids) for y in rows]
    after = generation.continuation_logps(b, ids, flat, [0, 1, None, MERGE])
    assert np.allclose(shared.logps.reshape(-1, 4), after, atol=1e-4)


@pytest.mark.slow
def test_tuning_picks_the_weights_that_serve_best_on_other_prompts(tiny):
    """The token-level merge's weights tuned on the served objective: of three candidates the
    one with the lowest exact worst-type regret on the tuning prompts, which are the held-out
    prompts the served measure does not use."""
    import json

    from pluralign.aggregate.served import _prompts, tune_merge
    b, data = tiny
    settings = ServedSettings(n_samples=200, max_prompts=8, random_state=3)
    candidates = {"program": MERGE, "even": np.array([0.5, 0.5]), "lopsided": np.array([0.95,
                                                                                        0.05])}
    chosen, info = tune_merge(b, data, candidates, settings)
    measured = {json.dumps(p, sort_keys=True) for p in _prompts(data, settings)}
    rest = Annotations([a for a in data if json.dumps(a.prompt, sort_keys=True) not in measured])
    assert info["prompts"] == len(rest) == 8
    types = [np.stack([_sequences(b, a.prompt, i) for a in rest]) for i in range(2)]
    exact = {name: max(BETA * _kl(np.stack([_sequences(b, a.prompt, q) for a in rest]),
                                  t).mean() for t in types) for name, q in candidates.items()}
    assert chosen == min(exact, key=exact.get), (info, exact)
    for name, seen in info["candidates"].items():
        assert seen["max_regret"] == pytest.approx(exact[name], rel=0.3)


@pytest.mark.slow
def test_a_split_posterior_is_served_better_by_its_mixture_than_by_its_argmax(tiny):
    """A user at posterior (0.55, 0.45): the token-level geometric mixture at their posterior
    (what `generate --annotator` decodes) has a lower expected regret sum_k gamma_k R_k than
    their most likely type's adapter, exactly (enumeration) and as measured by sampling."""
    b, data = tiny
    data = data.subset(range(8))  # 8 prompts: enough for the gap, half the enumeration
    gamma = np.array([0.55, 0.45])
    specs = {"type_0": 0, "type_1": 1, "base": None, "posterior": gamma}
    logp, _, _ = _exact(b, data, specs)
    exact = {name: float(gamma @ (BETA * np.stack([_kl(logp[name], logp[f"type_{i}"]).mean()
                                                   for i in range(2)])))
             for name in ("type_0", "posterior")}
    assert exact["posterior"] < exact["type_0"]
    policies = served_policies(b, None, None, gamma, {})   # "fair": the merge at gamma
    est = served_regret(b, data, policies, ServedSettings(n_samples=200, max_prompts=None,
                                                          random_state=5))
    cols = {n: j for j, n in enumerate(est.names)}
    per_prompt = np.einsum("k,pkj->pj", gamma, est.units)                    # [P, J]
    gap = per_prompt[:, cols["type_0"]] - per_prompt[:, cols["fair"]]
    assert gap.mean() > 2 * gap.std(ddof=1) / np.sqrt(len(gap))              # measured
    assert abs(per_prompt[:, cols["fair"]].mean() - exact["posterior"]) < 0.25 * \
        exact["posterior"] + 1e-3


def test_a_users_weights_decode_as_base_and_adapters_weighted_token_by_token(tiny):
    """`generate --serve weights`: pi_ref * exp(sum_k w_k log(pi_k / pi_ref)) token by token,
    any real w, against plain forwards; on the simplex it is the posterior mixture, at a
    corner the adapter, at 0 the base model."""
    from pluralign.backends.generation import user_spec
    b, data = tiny
    prompts = [b.prompt_tokens(a.prompt) for a in data.subset(range(3))]
    responses = [(p, [t, u]) for p in range(3) for t, u in ((5, 9), (17, 2), (40, 41))]
    w = np.array([0.8, -0.3])
    specs = [user_spec(w), user_spec([1.0, 0.0]), 0, user_spec([0.55, 0.45]),
             np.array([0.55, 0.45]), user_spec([0.0, 0.0]), None]
    ours = b.continuation_logps(prompts, responses, specs)

    def oracle(prompt, tokens):
        total = 0.0
        for i, t in enumerate(tokens):
            seq = [prompts[prompt] + tokens[:i]]
            mixed = (1 - w.sum()) * _next(b, seq, None) + sum(
                c * _next(b, seq, k) for k, c in enumerate(w))
            total += float(torch.log_softmax(mixed, -1)[0, t])
        return total
    assert np.allclose(ours[:, 0], [oracle(p, r) for p, r in responses], atol=1e-6)
    assert np.allclose(ours[:, 1], ours[:, 2], atol=1e-9)   # a corner: the adapter
    assert np.allclose(ours[:, 3], ours[:, 4], atol=1e-9)   # the simplex: the mixture
    assert np.allclose(ours[:, 5], ours[:, 6], atol=1e-9)   # zero: the base model
    drawn = b.draw(prompts, specs[0], n=2, seed=3, max_new_tokens=2, score=(specs[0],))
    again = b.continuation_logps(prompts, [(p, r) for p, rows in enumerate(drawn.ids)
                                           for r in rows], [specs[0]])
    assert np.allclose(drawn.logps.reshape(-1), again[:, 0], atol=1e-6)
