"""Forward passes that compute response log-probs with as little work as possible (DESIGN §5).

- The LM head runs on response positions only (not on the prompt, not on padding).
- Trunk caching: when adapters sit only in the top T of N layers, the hidden states entering
  layer N-T depend on neither the type nor the EM iteration. The reference pass captures them
  once; every later pass runs only the top T layers, the final norm and the head. Supported
  for the Llama family (Llama, Mistral, Qwen2, SmolLM2); others use the plain forward.
- Shared prompts: the responses to one prompt share a row, the prompt's tokens computed once
  (Batch, pack=True), each response at its own positions and seeing only the prompt and
  itself, so the values are those of one sequence per row. On HH pairs a step's tokens drop
  by a third.
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


#: A packed row (one prompt and several of its responses) grows to at most this many tokens,
#: or one sequence when that is longer: attention's cost grows with the row's square, the rest
#: with its tokens, and on SmolLM2's shapes they meet near 3,500 tokens.
PACK_TOKENS = 1024


@dataclass
class Batch:
    """Right-padded token rows of prompt+response sequences, with where the responses are.

    Unpacked, each row is one sequence. Packed (shared prompts), a row holds one
    prompt once and then several of its responses, each at the positions it would have alone
    (position ids restart after the prompt) and attending to the prompt and to itself only
    (`segments`): the values are those of the sequences run one per row, and the prompt's
    tokens are computed once per row instead of once per response."""

    input_ids: torch.Tensor       # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    rows: torch.Tensor            # [T] row of each response token
    positions: torch.Tensor       # [T] index in its row of the state that predicts that token
    targets: torch.Tensor         # [T] the response token ids
    lengths: torch.Tensor         # [B] tokens per row
    owner: torch.Tensor           # [T] the sequence (order given to build) of each token
    tokens_at: torch.Tensor       # [T] index of each response token in its row
    position_ids: torch.Tensor | None = None  # [B, S]; None: 0..S-1 (one sequence per row)
    segments: torch.Tensor | None = None      # [B, S] 0 prompt, j response j, -1 padding
    layout: list[tuple[int, int, int, bool]] | None = None  # per sequence: row, prompt
    # length, offset of its response in the row, whether its prompt is the row's copy

    @property
    def n_seqs(self) -> int:
        return len(self.layout) if self.layout is not None else len(self.lengths)

    @classmethod
    def build(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
              pack: bool = False) -> Batch:
        """Concatenate prompt and response ids per row and pad on the right. With `pack`,
        sequences with the same prompt share a row (up to PACK_TOKENS tokens)."""
        rows_of = pack_rows(prompts, responses, pack)
        lengths = [len(prompts[r[0]]) + sum(len(responses[i]) for i in r) for r in rows_of]
        ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        pos_ids = torch.zeros_like(ids)
        segs = torch.full_like(ids, -1)
        layout: list[tuple[int, int, int, bool]] = [(0, 0, 0, False)] * len(prompts)
        cols: dict[str, list[int]] = {k: [] for k in ("rows", "positions", "targets", "owner",
                                                     "tokens_at")}
        for b, row in enumerate(rows_of):
            p = prompts[row[0]]
            ids[b, : len(p)] = torch.tensor(p)
            pos_ids[b, : len(p)] = torch.arange(len(p))
            segs[b, : len(p)] = 0
            off = len(p)
            for j, i in enumerate(row):
                r = responses[i]
                ids[b, off: off + len(r)] = torch.tensor(r, dtype=torch.long)
                pos_ids[b, off: off + len(r)] = torch.arange(len(p), len(p) + len(r))
                segs[b, off: off + len(r)] = j + 1
                layout[i] = (b, len(p), off, j == 0)
                cols["rows"] += [b] * len(r)
                cols["positions"] += [len(p) - 1, *range(off, off + len(r) - 1)][: len(r)]
                cols["targets"] += r
                cols["owner"] += [i] * len(r)
                cols["tokens_at"] += range(off, off + len(r))
                off += len(r)
            mask[b, :off] = 1
        packed = any(len(r) > 1 for r in rows_of)
        return cls(ids, mask, *(torch.tensor(cols[k], dtype=torch.long)
                                for k in ("rows", "positions", "targets")),
                   torch.tensor(lengths), torch.tensor(cols["owner"], dtype=torch.long),
                   torch.tensor(cols["tokens_at"], dtype=torch.long),
                   pos_ids if packed else None, segs if packed else None,
                   layout if packed else None)

    def read_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions whose states predict response tokens, per row: `at` [B, R] (R the
        most any row reads; a row's spare slots repeat its last position) and each response
        token's slot in its row [T], so that hidden[rows, positions] == hidden_at[rows, slot]
        for hidden_at = hidden.gather(1, at)."""
        n, width = len(self.lengths), self.input_ids.shape[1]
        keys, inverse = torch.unique(self.rows * width + self.positions, return_inverse=True)
        row, pos = keys // width, keys % width
        counts = torch.bincount(row, minlength=n)
        rank = torch.arange(len(keys), device=keys.device) - (counts.cumsum(0) - counts)[row]
        at = (self.lengths - 1)[:, None].repeat(1, max(int(counts.max()) if n else 1, 1))
        at[row, rank] = pos
        return at, rank[inverse]

    def pack_states(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Per-sequence states [len_i, H] (prompt then response) laid out as this batch's rows
        [B, S, H], zero at padding; a shared prompt's states come from the row's first
        sequence."""
        if self.layout is None:
            return torch.nn.utils.rnn.pad_sequence(states, batch_first=True,
                                                   padding_side="right")
        out = states[0].new_zeros(*self.input_ids.shape, states[0].shape[-1])
        for st, (b, p, off, first) in zip(states, self.layout, strict=True):
            if first:
                out[b, :p] = st[:p]
            out[b, off: off + st.shape[0] - p] = st[p:]
        return out

    def unpack_states(self, states: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of pack_states: each sequence's states [len_i, H], prompt then
        response."""
        if self.layout is None:
            return [states[b, : int(n)] for b, n in enumerate(self.lengths)]
        n_resp = torch.bincount(self.owner, minlength=self.n_seqs).tolist()
        return [torch.cat([states[b, :p], states[b, off: off + r]])
                for (b, p, off, _), r in zip(self.layout, n_resp, strict=True)]

    def to(self, device: torch.device | str) -> Batch:
        moved = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return Batch(**{f: v.to(device) if isinstance(v, torch.Tensor) else v
                        for f, v in moved.items()})


def pack_rows(prompts: list[list[int]], responses: list[list[int]],
              pack: bool = True) -> list[list[int]]:
    """Sequence indices per row, rows in order of their first sequence: one each, or with
    `pack` those with the same prompt, in their order, until a row would pass PACK_TOKENS
    (a longer single sequence gets a row of its own)."""
    if not pack:
        return [[i] for i in range(len(prompts))]
    open_rows: dict[tuple[int, ...], int] = {}
    rows: list[list[int]] = []
    sizes: list[int] = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        key = tuple(p)
        b = open_rows.get(key)
        if b is None or sizes[b] + len(r) > PACK_TOKENS:
            open_rows[key] = b = len(rows)
            rows.append([])
            sizes.append(len(p))
        rows[b].append(i)
        sizes[b] += len(r)
    return rows


def can_pack(decoder: nn.Module) -> bool:
    """Whether rows of `decoder` may hold a prompt with several responses (top_forward builds
    their mask): the Llama family with SDPA or eager attention and no sliding window."""
    return supports_trunk(decoder) and getattr(
        decoder.config, "_attn_implementation", None) in ("sdpa", "eager") and getattr(
        decoder.config, "sliding_window", None) is None


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns normed last hidden states) and the LM head."""
    return model.get_decoder(), model.get_output_embeddings()


def supports_trunk(decoder: nn.Module) -> bool:
    """Whether the top layers of `decoder` can be run on their own from cached states."""
    return type(decoder).__name__ in TRUNK_ARCHITECTURES and all(
        hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb"))


def full_forward(decoder: nn.Module, batch: Batch,
                 capture_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normed last hidden states [B, S, H], and the states entering `capture_layer`. A packed
    batch runs every layer through top_forward (transformers' forward knows no segments)."""
    captured: list[torch.Tensor] = []
    handle = None
    if capture_layer is not None:
        layer = decoder.layers[capture_layer]
        handle = layer.register_forward_pre_hook(
            lambda _m, args, kwargs: captured.append((args[0] if args else
                                                      kwargs["hidden_states"]).detach()),
            with_kwargs=True)
    try:
        if batch.segments is not None:
            out = top_forward(decoder, decoder.embed_tokens(batch.input_ids),
                              batch.attention_mask, 0, batch=batch)
        else:
            out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    return out, (captured[0] if captured else None)


def top_forward(decoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                start_layer: int, at: torch.Tensor | None = None,
                batch: Batch | None = None) -> torch.Tensor:
    """Run layers[start_layer:] and the final norm on cached hidden states, as the decoder's
    own forward would (same causal mask, positions and rotary embeddings). With `at` [B, R]
    (Batch.read_positions) only those positions' states are returned, [B, R, H], and the
    last layer computes nothing else: its queries, attention output, MLP and norm run on
    them alone (keys and values on every position). A packed `batch` gives the rows' position
    ids and segments (each response sees its prompt and itself)."""
    from transformers.masking_utils import create_causal_mask
    segments = None if batch is None else batch.segments
    if segments is None:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                                  attention_mask=attention_mask, position_ids=position_ids,
                                  **{MASK_CACHE_ARG: None})
    else:
        position_ids = batch.position_ids
        keys = torch.arange(hidden.shape[1], device=hidden.device)
        mask = _segment_mask(keys[:, None], segments, segments, attention_mask)
        if decoder.config._attn_implementation == "eager":  # additive (can_pack allows no other)
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(hidden.dtype).min)
    rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
    layers = list(decoder.layers[start_layer:])
    last = layers.pop() if at is not None and _reads_all_keys(decoder, hidden.shape[1]) else None
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary,
                       position_ids=position_ids)
    if last is not None:  # called as the layer, so hooks around it (FSDP's gathering) run
        with _forward_as(last, lambda h: _layer_at(last, h, attention_mask, rotary, at,
                                                   segments)):
            hidden = last(hidden)
    elif at is not None:
        hidden = hidden.gather(1, at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return decoder.norm(hidden)


def _segment_mask(queries: torch.Tensor, query_segments: torch.Tensor, segments: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, Q, S] boolean attention mask of packed rows: a query at index q (`queries`
    [Q, 1] or [B, Q, 1]) of segment g sees the real keys at indices <= q in the prompt
    (segment 0) or in g."""
    keys = torch.arange(segments.shape[1], device=segments.device)
    seg_k = segments.unsqueeze(1)                                         # [B, 1, S]
    return ((keys <= queries) & attention_mask.bool().unsqueeze(1)
            & ((seg_k == 0) | (seg_k == query_segments.unsqueeze(-1)))).unsqueeze(1)


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
              rotary: tuple[torch.Tensor, torch.Tensor], at: torch.Tensor,
              segments: torch.Tensor | None = None) -> torch.Tensor:
    """A Llama-family decoder layer's output at positions `at` [B, R] only: keys and values
    from every position, everything else (query, attention, o_proj, MLP) at `at` alone."""
    attn = layer.self_attn
    b, s, width = hidden.shape
    pick = at.unsqueeze(-1).expand(-1, -1, width)
    x = layer.input_layernorm(hidden)
    cos, sin = (t.expand(b, -1, -1) for t in rotary)                  # [B, S, head_dim]
    q = attn.q_proj(x.gather(1, pick)).view(b, at.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
    read = at.unsqueeze(-1).expand(-1, -1, cos.shape[-1])
    q = _rotate(q, cos.gather(1, read).unsqueeze(1), sin.gather(1, read).unsqueeze(1))
    k = _rotate(k, cos.unsqueeze(1), sin.unsqueeze(1))
    if segments is None:
        keys = torch.arange(s, device=at.device)
        allowed = ((keys <= at.unsqueeze(-1)) & attention_mask.bool().unsqueeze(1)).unsqueeze(1)
    else:
        allowed = _segment_mask(at.unsqueeze(-1), segments.gather(1, at), segments,
                                attention_mask)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=attn.scaling,
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
    """Sum of log p(response token) per sequence [n_seqs], with the head on response positions
    only. `hidden`: every position's states [B, S, H], or with `slot` (Batch.read_positions)
    only the read positions' [B, R, H]."""
    states = hidden[batch.rows, batch.positions if slot is None else slot]
    # fused and chunked (pluralign.lm.head): no [tokens, vocabulary] tensor, forward or back
    token = target_logps(head, states, batch.targets)
    return torch.zeros(batch.n_seqs, dtype=token.dtype, device=token.device).index_add(
        0, batch.owner, token)


def response_means(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean hidden state over each sequence's response tokens [n_seqs, H] (an embedding)."""
    h = hidden[batch.rows, batch.tokens_at].float()
    sums = torch.zeros(batch.n_seqs, h.shape[1], device=h.device).index_add(0, batch.owner, h)
    counts = torch.bincount(batch.owner, minlength=batch.n_seqs).clamp_min(1)
    return sums / counts.unsqueeze(1)
