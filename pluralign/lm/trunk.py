"""Forward passes that compute response log-probs with as little work as possible (DESIGN §5).

- The LM head runs on response positions only (not on the prompt, not on padding).
- Trunk caching: when adapters sit only in the top T of N layers, the hidden states entering
  layer N-T depend on neither the type nor the EM iteration. The reference pass captures them
  once; every later pass runs only the top T layers, the final norm and the head. Supported
  for the Llama family (Llama, Mistral, Qwen2, SmolLM2); others use the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pluralign.lm.head import target_logps

TRUNK_ARCHITECTURES = ("LlamaModel", "MistralModel", "Qwen2Model")


def cache_keyword(fn: Callable[..., Any]) -> str:
    """`fn`'s name for the KV cache: `cache` in recent transformers (5.2x), an older name
    before (the old name now warns)."""
    import inspect
    names = inspect.signature(fn).parameters
    return next((n for n in ("cache", "past_key_values", "past_key_value") if n in names),
                "past_key_values")


def _mask_cache_arg() -> str:
    from transformers.masking_utils import create_causal_mask
    return cache_keyword(create_causal_mask)


#: create_causal_mask's keyword for the KV cache.
MASK_CACHE_ARG = _mask_cache_arg()


@dataclass
class Batch:
    """Right-padded token batch of prompt+response sequences, with where the responses are."""

    input_ids: torch.Tensor       # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    rows: torch.Tensor            # [T] sequence of each response token
    positions: torch.Tensor       # [T] position whose hidden state predicts that token
    targets: torch.Tensor         # [T] the response token ids
    lengths: torch.Tensor         # [B] full sequence lengths

    @classmethod
    def build(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
        """Concatenate prompt and response ids per sequence and pad on the right."""
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
        ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        rows, positions, targets = [], [], []
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids[b, : lengths[b]] = torch.tensor(p + r)
            mask[b, : lengths[b]] = 1
            rows += [b] * len(r)
            positions += range(len(p) - 1, len(p) + len(r) - 1)
            targets += r
        return cls(ids, mask, torch.tensor(rows), torch.tensor(positions),
                   torch.tensor(targets), torch.tensor(lengths))

    def read_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions whose states predict response tokens, per sequence: `at` [B, R] (R
        the longest response; a shorter one's slots repeat a valid position) and each response
        token's slot in its row [T], so that hidden[rows, positions] == hidden_at[rows, slot]
        for hidden_at = hidden.gather(1, at)."""
        n = len(self.lengths)
        counts = torch.bincount(self.rows, minlength=n)
        first = torch.zeros(n, dtype=torch.long, device=self.rows.device).scatter_reduce(
            0, self.rows, self.positions, "amin", include_self=False)
        slot = self.positions - first[self.rows]
        width = int(counts.max()) if len(self.rows) else 1
        at = first[:, None] + torch.arange(width, device=first.device)
        return torch.minimum(at, (self.lengths - 1)[:, None]), slot

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.rows,
                                               self.positions, self.targets, self.lengths)))


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns normed last hidden states) and the LM head."""
    return model.get_decoder(), model.get_output_embeddings()


def supports_trunk(decoder: nn.Module) -> bool:
    """Whether the top layers of `decoder` can be run on their own from cached states."""
    return type(decoder).__name__ in TRUNK_ARCHITECTURES and all(
        hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb"))


def full_forward(decoder: nn.Module, batch: Batch,
                 capture_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normed last hidden states [B, S, H], and the states entering `capture_layer`."""
    captured: list[torch.Tensor] = []
    handle = None
    if capture_layer is not None:
        layer = decoder.layers[capture_layer]
        handle = layer.register_forward_pre_hook(
            lambda _m, args, kwargs: captured.append((args[0] if args else
                                                      kwargs["hidden_states"]).detach()),
            with_kwargs=True)
    try:
        out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    return out.last_hidden_state, (captured[0] if captured else None)


def top_forward(decoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                start_layer: int, at: torch.Tensor | None = None) -> torch.Tensor:
    """Run layers[start_layer:] and the final norm on cached hidden states, as the decoder's
    own forward would (same causal mask, positions and rotary embeddings). With `at` [B, R]
    (Batch.read_positions) only those positions' states are returned, [B, R, H], and the
    last layer computes nothing else: its queries, attention output, MLP and norm run on
    them alone (keys and values on every position)."""
    from transformers.masking_utils import create_causal_mask
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                              attention_mask=attention_mask, position_ids=position_ids,
                              **{MASK_CACHE_ARG: None})
    rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
    layers = list(decoder.layers[start_layer:])
    last = layers.pop() if at is not None and _reads_all_keys(decoder, hidden.shape[1]) else None
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary,
                       position_ids=position_ids)
    if last is not None:  # called as the layer, so hooks around it (FSDP's gathering) run
        with _forward_as(last, lambda h: _layer_at(last, h, attention_mask, rotary, at)):
            hidden = last(hidden)
    elif at is not None:
        hidden = hidden.gather(1, at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return decoder.norm(hidden)


def _reads_all_keys(decoder: nn.Module, length: int) -> bool:
    """Whether every query attends to every earlier position (no sliding window shorter
    than the batch): then _layer_at's plain causal mask is the layer's own."""
    window = getattr(decoder.config, "sliding_window", None)
    return window is None or window >= length


@contextmanager
def _forward_as(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """`module` computes `forward` instead of its own while the block runs. Calling it then
    still runs the hooks around its forward: FSDP gathers a layer's weights only there, so its
    parts cannot be called one by one from outside."""
    own = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def _layer_at(layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
              rotary: tuple[torch.Tensor, torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    """A Llama-family decoder layer's output at positions `at` [B, R] only: keys and values
    from every position, everything else (query, attention, o_proj, MLP) at `at` alone."""
    attn = layer.self_attn
    b, s, width = hidden.shape
    pick = at.unsqueeze(-1).expand(-1, -1, width)
    x = layer.input_layernorm(hidden)
    cos, sin = rotary                                                 # [1, S, head_dim]
    q = attn.q_proj(x.gather(1, pick)).view(b, at.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
    q = _rotate(q, cos[0][at].unsqueeze(1), sin[0][at].unsqueeze(1))
    k = _rotate(k, cos.unsqueeze(1), sin.unsqueeze(1))
    keys = torch.arange(s, device=at.device)
    allowed = (keys <= at.unsqueeze(-1)) & attention_mask.bool().unsqueeze(1)   # [B, R, S]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed.unsqueeze(1), scale=attn.scaling,
        dropout_p=attn.attention_dropout if attn.training else 0.0,
        enable_gqa=k.shape[1] != q.shape[1])
    h = hidden.gather(1, pick) + attn.o_proj(out.transpose(1, 2).reshape(b, at.shape[1], -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of queries or keys alone (transformers' apply_rotary_pos_emb
    takes both at one set of positions; the queries here sit at other positions)."""
    from transformers.models.llama.modeling_llama import rotate_half
    return x * cos + rotate_half(x) * sin


def response_logps(head: nn.Module, hidden: torch.Tensor, batch: Batch,
                   slot: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of log p(response token) per sequence [B], with the head on response positions
    only. `hidden`: every position's states [B, S, H], or with `slot` (Batch.read_positions)
    only the read positions' [B, R, H]."""
    states = hidden[batch.rows, batch.positions if slot is None else slot]
    # fused and chunked (pluralign.lm.head): no [tokens, vocabulary] tensor, forward or back
    token = target_logps(head, states, batch.targets)
    return torch.zeros(hidden.shape[0], dtype=token.dtype, device=token.device).index_add(
        0, batch.rows, token)


def response_means(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean hidden state over each sequence's response tokens [B, H] (an embedding)."""
    h = hidden[batch.rows, batch.positions + 1].float()
    sums = torch.zeros(hidden.shape[0], h.shape[1], device=h.device).index_add(0, batch.rows, h)
    counts = torch.bincount(batch.rows, minlength=hidden.shape[0]).clamp_min(1)
    return sums / counts.unsqueeze(1)
