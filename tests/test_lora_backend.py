"""LoRA backend on builtin:tiny: trunk caching is exact, fit trains one adapter only, adapters
round-trip through the standard PEFT layout, bad training stops with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluralign.backends.lora import LoRABackend
from pluralign.core.data import Annotations
from pluralign.simulate import SimulationConfig, simulate

SMALL = dict(max_prompt_tokens=40, max_response_tokens=40, cache="", progress=False)


@pytest.fixture(scope="module")
def data() -> Annotations:
    pop = simulate(SimulationConfig(flavour="text", annotators=6, per_annotator=2,
                                    list_size=(2, 3), ranking_length=2, seed=0))
    return Annotations(pop.records)


def _randomise(backend: LoRABackend, seed: int = 0) -> None:
    """LoRA starts at B = 0 (policy = reference); give every adapter distinct weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _adapter_params(backend: LoRABackend, k: int) -> dict[str, torch.Tensor]:
    tag = f".{backend.adapter(k)}."
    return {n: p.detach().clone() for n, p in backend.model.named_parameters() if tag in n}


def _same_gradients(a: LoRABackend, b: LoRABackend, data, w: np.ndarray, adapter: int,
                    atol: float) -> None:
    """The weighted loss's gradients agree between two backends, parameter by parameter."""
    grads = []
    for backend in (a, b):
        backend.model.set_adapter(backend.adapter(adapter))
        backend.model.zero_grad()
        loss, _, _ = backend._micro_loss(backend.prepare(data), np.arange(len(data)), w,
                                         float(w.mean()))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in backend.model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=atol), name


def test_trunk_cached_and_plain_forward_agree(data):
    cached = LoRABackend(types=2, top_layers=2, **SMALL)
    plain = LoRABackend(types=2, top_layers=2, trunk_cache=False, **SMALL)
    assert cached.trunk and not plain.trunk
    _randomise(cached)
    _randomise(plain)
    s_cached, s_plain = cached.logratios(data), plain.logratios(data)
    assert np.nanmax(np.abs(s_cached)) > 0.1  # adapters really change the policy
    # 1e-4: on a GPU float32 sequence log-probs near -400 differ by an ulp (3e-5) between
    # the two paths; a wrong trunk (another layer, a stale cache) is off by ~0.1
    assert np.allclose(s_cached, s_plain, atol=1e-4, equal_nan=True)
    w = np.linspace(0.1, 1.0, len(data))
    _same_gradients(cached, plain, data, w, adapter=1, atol=1e-5)


def test_adapters_live_only_in_the_top_layers(data):
    b = LoRABackend(types=1, top_layers=1, **SMALL)
    layers = {int(n.split(".layers.")[1].split(".")[0])
              for n, _ in b.model.named_parameters() if "lora_" in n}
    assert layers == {3} and b.start_layer == 3


def test_fit_lowers_loss_and_leaves_other_adapters_bit_for_bit(data):
    b = LoRABackend(types=3, top_layers=2, learning_rate=2e-2, epochs=4, batch_size=4,
                    warmup_ratio=0.0, **SMALL)
    _randomise(b)
    w = np.random.default_rng(0).random(len(data))
    w[::3] = 0.0
    before = {k: _adapter_params(b, k) for k in range(3)}
    loss_before = b.loss(1, data, w)
    stats = b.fit(1, data, w)
    assert b.loss(1, data, w) < loss_before - 0.05
    assert stats["annotations"] == int((w > 0).sum())  # zero-weight rows are skipped
    for k in (0, 2):
        after = _adapter_params(b, k)
        assert all(torch.equal(before[k][n], after[n]) for n in after)
    changed = _adapter_params(b, 1)
    assert any(not torch.equal(before[1][n], changed[n]) for n in changed)


def test_saved_adapter_loads_with_peft_from_pretrained(data, tmp_path):
    from peft import PeftModel

    from pluralign.lm.models import load_model
    b = LoRABackend(types=2, **SMALL)
    _randomise(b, seed=3)
    s = b.logratios(data)
    b.save(tmp_path)
    base, _ = load_model("builtin:tiny")
    peft = PeftModel.from_pretrained(base, tmp_path / "type_1")
    fresh = LoRABackend(types=2, **SMALL)
    fresh.model.base_model.model.load_state_dict(peft.base_model.model.state_dict(),
                                                 strict=False)
    fresh.load(tmp_path)
    # float32 sequence log-probs near -400 differ by an ulp (3e-5) across GPU kernels;
    # exact on a CPU, and a wrong or missing adapter is off by ~0.1
    assert np.allclose(fresh.logratios(data), s, atol=1e-4, equal_nan=True)


def test_non_finite_loss_stops_with_a_clear_error(data):
    from pluralign.lm import reference
    b = LoRABackend(types=2, **SMALL)
    prep = b.prepare(data)
    prep.ref.logps[:] = float("nan")
    try:
        with pytest.raises(FloatingPointError, match="type_0: loss is nan at step 1"):
            b.fit(0, data, np.ones(len(data)))
    finally:  # the poisoned pass is remembered in process: later backends must not get it
        reference.forget()


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="top_layers"):
        LoRABackend(types=2, top_layers=0)
    with pytest.raises(ValueError, match="unknown loss"):
        LoRABackend(types=2, loss="kto")


def test_merged_adapter_is_the_weighted_sum_of_the_deltas(data):
    from peft.tuners.lora import LoraLayer
    b = LoRABackend(types=3, top_layers=2, **SMALL)
    _randomise(b, seed=3)
    p = np.array([0.2, 0.5, 0.3])
    merged = b.merge(p)
    layers = [m for m in b.model.modules() if isinstance(m, LoraLayer) and "merged" in m.lora_A]
    assert layers
    for m in layers:  # the oracle: sum_k p_k B_k A_k * scaling_k, layer by layer
        want = sum(pk * m.get_delta_weight(f"type_{k}") for k, pk in enumerate(p))
        assert torch.allclose(m.get_delta_weight("merged"), want, atol=1e-6)
    assert merged.n_types == 1 and merged.logratios(data).shape[2] == 1
    one_hot = b.merge(np.array([0.0, 1.0, 0.0]))  # replaces "merged": now type 1 itself
    assert np.allclose(one_hot.logratios(data)[..., 0], b.logratios(data)[..., 1],
                       atol=1e-4, equal_nan=True)  # float32 sums over 40 tokens
    with pytest.raises(ValueError, match="summing to 1"):
        b.merge(np.array([0.5, 0.5, 0.5]))


def test_sampling_is_seeded_and_scored_by_every_type(data):
    from pluralign.aggregate.regret import RegretEstimator, policies_of
    b = LoRABackend(types=2, top_layers=2, **{**SMALL, "max_response_tokens": 8})
    _randomise(b, seed=4)
    first = b.sample(data, 1, 3, seed=5)
    assert len(first) == len(data) and all(len(a.responses) == 3 for a in first)
    assert [a.responses for a in first] == [a.responses for a in b.sample(data, 1, 3, seed=5)]
    assert [a.responses for a in first] != [a.responses for a in b.sample(data, 0, 3, seed=5)]
    est = RegretEstimator(b, data, "sampled", n_samples=2).estimate(policies_of(b, base=True))
    assert est.names == ["type_0", "type_1", "base"] and est.matrix.shape == (2, 3)
    assert np.allclose(np.diag(est.matrix), 0.0) and np.isfinite(est.stderr).all()
    # builtin:tiny's tokens are bytes: N new tokens decode to at most N characters
    longer = b.sample(data[:3], 1, 2, seed=5, max_new_tokens=12)
    assert max(len(r) for a in longer for r in a.responses) > 3  # the bound below can bind
    short = b.sample(data[:3], 1, 2, seed=5, max_new_tokens=3, temperature=0.7, top_p=0.9)
    assert all(len(r) <= 3 for a in short for r in a.responses)
    merged = b.sample_combined(data[:2], np.array([0.5, 0.5]), 2, seed=1, max_new_tokens=2,
                               top_p=0.5)
    assert all(len(r) <= 2 for a in merged for r in a.responses)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        b.sample(data[:1], 0, 1, seed=0, temperature=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        b.sample_combined(data[:1], np.array([1.0, 0.0]), 1, seed=0, top_p=1.5)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    """Against brute force: for every row, the kept tokens are the most likely ones, their mass
    reaches top_p, dropping the least likely kept one would not, and the rest is renormalised."""
    from pluralign.backends.generation import nucleus
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 12, generator=gen) * 2, -1)
    for top_p in (0.05, 0.3, 0.8, 0.999, 1.0):
        kept = nucleus(probs, top_p)
        assert torch.allclose(kept.sum(-1), torch.ones(50, dtype=kept.dtype))
        for row, out in zip(probs, kept, strict=True):
            order = row.argsort(descending=True)
            mass = row[order].cumsum(0)
            n = int((mass < top_p).sum()) + 1  # the smallest prefix reaching top_p
            want = torch.zeros_like(row)
            want[order[:n]] = row[order[:n]] / row[order[:n]].sum()
            assert torch.allclose(out, want, atol=1e-6), top_p


def test_length_groups_give_the_padded_batch_s_log_probs_and_gradients(monkeypatch):
    """policy_logps in snug length groups equals one padded batch of every sequence (values in
    the caller's order, and gradients), and each group's padding stays within the slack."""
    import pluralign.backends.lora as lora
    from pluralign.core.data import Annotation
    from pluralign.lm.reference import PAD_SLACK, snug
    mixed = Annotations([Annotation(f"a{i}", f"Question {i}?", ["Yes." * (1 + 3 * i), "No."],
                                    [0, 1]) for i in range(6)])  # 2 to 70 response tokens
    backend = LoRABackend(types=2, top_layers=2, **{**SMALL, "max_response_tokens": 80})
    _randomise(backend)
    prep = backend.prepare(mixed)
    ids = list(range(len(prep.seqs)))[::-1]
    groups = list(snug(ids, prep.seqs))
    lengths = {i: len(prep.seqs.prompts[i]) + len(prep.seqs.responses[i]) for i in ids}
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == sorted(ids)
    for g in groups:
        if len(g) > 1:
            assert max(lengths[i] for i in g) * len(g) <= PAD_SLACK * sum(lengths[i] for i in g)
    results = []
    for split in (True, False):
        if not split:
            monkeypatch.setattr(lora, "snug", lambda order, seqs, **_: iter([list(order)]))
        backend.model.set_adapter(backend.adapter(0))
        backend.model.zero_grad()
        out = backend.policy_logps(prep, ids)
        out.sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in
                                       backend.model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-4)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5), name


def test_device_and_dtype_are_checked_and_key_the_reference_cache(data, tmp_path):
    from pluralign.settings.backends import LoRAConfig
    for bad, field in (({"dtype": "fp8"}, "dtype"), ({"device": "tpu"}, "device")):
        with pytest.raises(ValueError, match=field):
            LoRAConfig(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            LoRABackend(types=1, device="cuda", **SMALL)
    opts = {**SMALL, "cache": str(tmp_path)}
    fp32 = LoRABackend(types=1, device="cpu", **opts)
    bf16 = LoRABackend(types=1, device="cpu", dtype="bfloat16", **opts)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert bf16.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert fp32.model_id != bf16.model_id and fp32.model_id.endswith(":cpu:float32")
    ref32, ref16 = fp32.reference_logps(data), bf16.reference_logps(data)
    assert not bf16.prepare(data).ref.from_cache  # its own pass, not fp32's cached one
    # bf16 log-probs are close to fp32's but not equal: the key keeps them apart
    assert np.nanmax(np.abs(ref32 - ref16)) > 0 and np.allclose(ref32, ref16, rtol=0.05,
                                                                 equal_nan=True)
    stats = bf16.fit(0, data, np.ones(len(data)))
    assert np.isfinite(stats["loss"]).all()
    lora_dtypes = {p.dtype for n, p in bf16.model.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.float32}  # adapters train in float32 on bf16 weights


def test_gradient_checkpointing_gives_the_same_gradients(data):
    backends = []
    for ckpt in (False, True):
        b = LoRABackend(types=1, top_layers=2, gradient_checkpointing=ckpt, **SMALL)
        assert {getattr(layer, "gradient_checkpointing", False)
                for layer in b.decoder.layers} == {ckpt}
        _randomise(b)
        b.model.train()
        backends.append(b)
    _same_gradients(*backends, data, np.ones(len(data)), adapter=0, atol=1e-6)


def test_the_time_probe_leaves_the_adapters_as_they_were(data):
    b = LoRABackend(types=2, top_layers=2, **SMALL)
    _randomise(b, seed=2)
    before = {n: p.detach().clone() for n, p in b.model.named_parameters() if "lora_" in n}
    seconds = b.iteration_seconds(data)
    assert 0 < seconds < 3600
    after = dict(b.model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in before.items())
    assert all(p.grad is None for p in b.model.parameters())


def test_reset_is_seeded_and_gives_the_reference_policy(data):
    """A reset draws A from the backend's seed (not the global generator: warm_start: false
    runs used to differ between runs and between one and two processes), sets B = 0 so the
    policy is the reference again, and leaves the other adapters alone."""
    backends = [LoRABackend(types=2, top_layers=2, seed=3, **SMALL) for _ in range(2)]
    for b, global_seed in zip(backends, (1, 2), strict=True):
        _randomise(b)
        torch.manual_seed(global_seed)  # a different global generator state in each
        b.reset(1)
    a, b = (_adapter_params(x, 1) for x in backends)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(not p.any() for n, p in a.items() if "lora_B" in n)
    assert any(p.abs().sum() > 0 for n, p in a.items() if "lora_A" in n)
    assert np.nanmax(np.abs(backends[0].logratios(data)[..., 1])) < 1e-6
    other = LoRABackend(types=2, top_layers=2, seed=3, **SMALL)
    _randomise(other)
    assert all(torch.equal(p, _adapter_params(backends[0], 0)[n])
               for n, p in _adapter_params(other, 0).items())
    backends[0].history_[1].append({})  # after a fit, the next reset draws afresh
    backends[0].reset(1)
    again = _adapter_params(backends[0], 1)
    assert any(not torch.equal(again[n], a[n]) for n in a if "lora_A" in n)


@pytest.mark.parametrize("top_layers", [2, None])
def test_rows_shared_by_a_prompt_s_responses_change_no_value(data, top_layers):
    """Packing a prompt's responses into one row (trunk.Batch) gives the scores and the
    weighted loss's gradients of one sequence per row, from cached trunk states (top 2
    layers) and from the embeddings (every layer); and it packs here (3 rows per 2-3
    candidates)."""
    from pluralign.lm.reference import make_batch
    packed = LoRABackend(types=2, top_layers=top_layers, **SMALL)
    plain = LoRABackend(types=2, top_layers=top_layers, **SMALL)
    assert packed.pack and packed.trunk == (top_layers is not None)
    plain.pack = False
    for backend in (packed, plain):
        _randomise(backend)
    seqs = packed.prepare(data).seqs
    rows = make_batch(seqs, list(range(len(seqs))), 0, pack=True).input_ids.shape[0]
    assert rows == len({tuple(p) for p in seqs.prompts}) < len(seqs)
    assert np.allclose(packed.logratios(data), plain.logratios(data), atol=1e-5, equal_nan=True)
    _same_gradients(packed, plain, data, np.linspace(0.2, 1.0, len(data)), 1, atol=1e-5)
