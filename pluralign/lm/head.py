"""The LM head on response tokens, fused and chunked: log p(target) = logit_target - logsumexp
over the vocabulary, without ever holding [tokens, vocabulary] logits or their gradient.

On SmolLM2 the vocabulary has 49,152 entries: the plain computation writes a [tokens, 49,152]
float32 tensor, reads it back for the logsumexp, and in the backward writes its softmax and
gradient again. Here each block of tokens walks the vocabulary in chunks with an online
logsumexp (a running max and sum), and, when a gradient will be needed, also accumulates
E_softmax[W] = sum_v p_v W_v in the same walk (rescaled as the max moves). Since the head's
weights are frozen (LoRA never adapts it), d log p / dh = W_target - E_softmax[W] is then known
after the forward: the backward is one multiply, and the FLOPs are those of the plain forward
and backward (two [tokens, H] x [H, V] products). Measured on this 2-core CPU the step time is
about the same as the plain head's; the gain is memory (a chunk instead of the whole tensor).
"""

from __future__ import annotations

import torch
from torch import nn

#: Tokens and vocabulary entries per chunk: [512, 8192] float32 logits are 16 MiB, large enough
#: for efficient matmuls (smaller chunks were slower on this CPU) and a fraction of a GPU's
#: memory.
TOKEN_CHUNK = 512
VOCAB_CHUNK = 8192


class _FusedTargetLogp(torch.autograd.Function):
    """log softmax(h W^T)[target] per row of h, for a weight W that takes no gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                token_chunk: int, vocab_chunk: int) -> torch.Tensor:
        need = ctx.needs_input_grad[0]
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad_dir = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need else None
        for t0 in range(0, h.shape[0], token_chunk):
            rows = slice(t0, t0 + token_chunk)
            lse, expected = _walk(h[rows], weight, vocab_chunk, need)
            target_w = weight[targets[rows]]
            out[rows] = (h[rows] * target_w).sum(1, dtype=torch.float32) - lse
            if need:
                grad_dir[rows] = target_w.float() - expected
        ctx.save_for_backward(grad_dir if need else None)
        ctx.dtype = h.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_dir,) = ctx.saved_tensors
        return (grad.unsqueeze(1) * grad_dir).to(ctx.dtype), None, None, None, None


def _walk(h: torch.Tensor, weight: torch.Tensor, vocab_chunk: int,
          expect: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logsumexp of h W^T over the vocabulary [T], and (with `expect`) E_softmax[W] [T, H],
    chunk by chunk with a running max."""
    top = torch.full((h.shape[0],), -torch.inf, dtype=torch.float32, device=h.device)
    total = torch.zeros_like(top)
    acc = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if expect else None
    for v0 in range(0, weight.shape[0], vocab_chunk):
        w = weight[v0:v0 + vocab_chunk]
        logits = (h @ w.T).float()                                   # [T, chunk]
        new_top = torch.maximum(top, logits.amax(1))
        shrink = torch.exp(top - new_top)
        p = torch.exp(logits - new_top.unsqueeze(1))
        total = total * shrink + p.sum(1)
        if expect:
            acc = acc * shrink.unsqueeze(1) + (p.to(w.dtype) @ w).float()
        top = new_top
    lse = top + torch.log(total)
    return lse, (acc / total.unsqueeze(1) if expect else None)


def target_logps(head: nn.Module, h: torch.Tensor, targets: torch.Tensor,
                 token_chunk: int = TOKEN_CHUNK, vocab_chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """log p(targets | h) [T] in float32 for hidden states h [T, H] under `head`. Fused and
    chunked for a bias-free linear head whose weight is frozen (every LoRA model here); the
    plain computation otherwise."""
    weight = getattr(head, "weight", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or weight.requires_grad:
        logits = head(h).float()
        return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, -1)
    return _FusedTargetLogp.apply(h, weight, targets, token_chunk, vocab_chunk)
