"""The fused, chunked LM head equals the plain logit - logsumexp in values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pluralign.lm.head import target_logps


@pytest.mark.parametrize("chunks", [(7, 13), (64, 1000), (4096, 100_000)])
def test_fused_head_equals_the_plain_computation(chunks):
    """Chunks that do not divide the tokens or the vocabulary, and one chunk for all."""
    torch.manual_seed(0)
    tokens, width, vocab = 150, 24, 1237
    head = nn.Linear(width, vocab, bias=False).requires_grad_(False)
    head.weight.mul_(4)  # peaked softmaxes: the running max must move across chunks
    h = torch.randn(tokens, width, dtype=torch.float32, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    upstream = torch.randn(tokens)
    fused = target_logps(head, h, targets, *chunks)
    (fused * upstream).sum().backward()
    got = h.grad.clone()
    h.grad = None
    logits = head(h)
    plain = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, -1)
    (plain * upstream).sum().backward()
    assert torch.allclose(fused, plain, atol=1e-5, rtol=1e-6)
    assert torch.allclose(got, h.grad, atol=1e-5, rtol=1e-5)


def test_without_a_gradient_no_expectation_is_kept_and_values_agree():
    torch.manual_seed(1)
    head = nn.Linear(8, 300, bias=False).requires_grad_(False)
    h, targets = torch.randn(40, 8), torch.randint(0, 300, (40,))
    with torch.no_grad():
        fused = target_logps(head, h, targets, 16, 64)
    assert not fused.requires_grad
    assert torch.allclose(fused, torch.log_softmax(head(h), -1)[torch.arange(40), targets],
                          atol=1e-6)


def test_bf16_states_keep_float32_softmax_arithmetic_and_inputs_are_untouched():
    """bf16 logits are upcast before the in-place max, exp and sum (never exponentiated in
    bf16), and the walk writes only into its own buffers."""
    torch.manual_seed(3)
    head = nn.Linear(16, 700, bias=False).requires_grad_(False).to(torch.bfloat16)
    head.weight.mul_(3)
    h, targets = torch.randn(33, 16, dtype=torch.bfloat16), torch.randint(0, 700, (33,))
    h0, w0 = h.clone(), head.weight.clone()
    with torch.no_grad():
        fused = target_logps(head, h, targets, 8, 128)
        exact = torch.log_softmax(h.float() @ head.weight.float().T, -1)[torch.arange(33), targets]
        in_bf16 = torch.log_softmax(h @ head.weight.T, -1)[torch.arange(33), targets].float()
    assert fused.dtype == torch.float32
    # only the products are rounded to bf16 (0.008 here); a bf16 softmax is off by 0.033
    assert (fused - exact).abs().max() < 0.02 < (in_bf16 - exact).abs().max()
    assert torch.equal(h, h0) and torch.equal(head.weight, w0)


def test_a_trainable_or_biased_head_takes_the_plain_path():
    torch.manual_seed(2)
    for head in (nn.Linear(8, 50, bias=True), nn.Linear(8, 50, bias=False)):  # grads on weight
        h, targets = torch.randn(10, 8), torch.randint(0, 50, (10,))
        out = target_logps(head, h, targets)
        out.sum().backward()
        assert head.weight.grad is not None
        assert torch.allclose(out, torch.log_softmax(head(h), -1)[torch.arange(10), targets],
                              atol=1e-6)
