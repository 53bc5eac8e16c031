"""The reference pass (DESIGN §4, §9): tokenise every distinct (prompt, response) once, compute
reference log-probs with all adapters disabled, and keep what later passes reuse.

Outputs are cached on disk, keyed by a fingerprint of the model, every token id (so tokenizer,
data and length settings) and the pass settings; a second run with the same inputs loads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pluralign.core import distributed
from pluralign.core.data import Annotation, Annotations
from pluralign.core.io import write_with
from pluralign.core.progress import bar
from pluralign.lm.models import cache_dir
from pluralign.lm.trunk import (
    Batch,
    can_pack,
    decoder_and_head,
    full_forward,
    pack_rows,
    response_logps,
    response_means,
)

log = logging.getLogger(__name__)


@dataclass
class TokenSettings:
    """Length limits: a prompt keeps its end, a response its start (EOS included)."""

    max_prompt_tokens: int = field(default=256, metadata={"help": "prompt tokens kept (end)"})
    max_response_tokens: int = field(default=128, metadata={"help": "response tokens kept "
                                                                    "(start), EOS included"})

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")


@dataclass
class Sequences:
    """Distinct (prompt, response) token sequences and where each annotation's candidates are."""

    prompts: list[list[int]]
    responses: list[list[int]]
    index: torch.Tensor            # [n_annotations, M_max] sequence id, -1 for padding
    truncated_prompts: int = 0
    truncated_responses: int = 0
    response_lengths: list[int] | None = None  # tokens of each response before truncation

    def __len__(self) -> int:
        return len(self.prompts)

    def token_ids(self) -> Iterator[list[int]]:
        for p, r in zip(self.prompts, self.responses, strict=True):
            yield p + [-1] + r

    def per_candidate(self, values: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
        """Per-sequence values laid out per annotation candidate: [n_seq, ...] -> [n, M, ...],
        `fill` where an annotation has fewer than M candidates."""
        out = torch.full((*self.index.shape, *values.shape[1:]), fill, dtype=values.dtype)
        valid = self.index >= 0
        out[valid] = values[self.index[valid]]
        return out

    def n_tokens(self, ids: list[int] | None = None) -> int:
        ids = range(len(self)) if ids is None else ids
        return sum(len(self.prompts[i]) + len(self.responses[i]) for i in ids)


def prompt_text(prompt: str | list[dict[str, str]], tokenizer) -> tuple[str, bool]:
    """The prompt as the model sees it, and whether the chat template made it."""
    if getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False), True
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: ", False
    return prompt, False


def prompt_ids(prompt: str | list[dict[str, str]], tokenizer,
               max_tokens: int | None) -> list[int]:
    """Token ids of the prompt as the model sees it, keeping the last `max_tokens`."""
    ids = _prompt_ids([prompt], tokenizer)[0]
    return ids if max_tokens is None else ids[-max_tokens:]


def tokenize(data: Annotations | list[Annotation], tokenizer,
             settings: TokenSettings) -> Sequences:
    """Token ids of each distinct (prompt, response), truncated per `settings`. Distinct prompts
    and responses go to the tokenizer in one batched call each: one call per text cost about
    0.5 ms apiece, 0.45 s for the demo's 848 texts and minutes at 10^5 annotations."""
    keys = [json.dumps(a.prompt, sort_keys=True) for a in data]  # a prompt's identity
    prompt_of: dict[str, Any] = {}  # distinct prompts in order of appearance
    said: dict[str, None] = {}      # distinct response texts, in order
    for key, a in zip(keys, data, strict=True):
        prompt_of.setdefault(key, a.prompt)
        said.update(dict.fromkeys(a.responses))
    prompt_ids_of = dict(zip(prompt_of, _prompt_ids(list(prompt_of.values()), tokenizer),
                             strict=True))
    words = _batch_ids(tokenizer, list(said), add_special_tokens=False)
    response_ids_of = {text: ids + [tokenizer.eos_token_id] for text, ids in zip(said, words,
                                                                                 strict=True)}
    cut_p = sum(len(ids) > settings.max_prompt_tokens for ids in prompt_ids_of.values())
    prompt_ids_of = {k: ids[-settings.max_prompt_tokens:] for k, ids in prompt_ids_of.items()}
    seq_of: dict[tuple[tuple[int, ...], str], int] = {}  # keyed on what the model sees
    prompts, responses, lengths = [], [], []
    m_max = max((a.m for a in data), default=2)
    index = torch.full((len(data), m_max), -1, dtype=torch.long)
    cut_r = 0
    for n, (key, a) in enumerate(zip(keys, data, strict=True)):
        prompt = prompt_ids_of[key]
        tokens = tuple(prompt)
        for j, response in enumerate(a.responses):
            if (tokens, response) not in seq_of:
                ids = list(response_ids_of[response])  # its own list, as before
                lengths.append(len(ids))
                if len(ids) > settings.max_response_tokens:
                    ids, cut_r = ids[: settings.max_response_tokens], cut_r + 1
                seq_of[tokens, response] = len(prompts)
                prompts.append(prompt)
                responses.append(ids)
            index[n, j] = seq_of[tokens, response]
    if cut_p or cut_r:
        log.warning("truncated %d prompt(s) to their last %d tokens and %d response(s) to their "
                    "first %d tokens", cut_p, settings.max_prompt_tokens, cut_r,
                    settings.max_response_tokens)
    return Sequences(prompts, responses, index, cut_p, cut_r, lengths)


def _prompt_ids(prompts: list[Any], tokenizer) -> list[list[int]]:
    """Token ids of each prompt as the model sees it (prompt_ids, batched)."""
    rendered = [prompt_text(p, tokenizer) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for templated in (True, False):
        at = [i for i, (_, t) in enumerate(rendered) if t == templated]
        ids = _batch_ids(tokenizer, [rendered[i][0] for i in at],
                         add_special_tokens=not templated)
        for i, row in zip(at, ids, strict=True):
            out[i] = row
    return out


def _batch_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text, in one tokenizer call."""
    return tokenizer(texts, add_special_tokens=add_special_tokens).input_ids if texts else []


@dataclass
class Reference:
    """Reference outputs per sequence: log-probs, and optionally embeddings and trunk states."""

    logps: torch.Tensor                      # [n_seq] float64
    embeddings: torch.Tensor | None = None   # [n_seq, H] mean response hidden state
    trunk: torch.Tensor | None = None        # [total_tokens, H] states entering trunk_layer
    trunk_offsets: torch.Tensor | None = None  # [n_seq + 1] row offsets into `trunk`
    trunk_layer: int | None = None
    from_cache: bool = False

    def trunk_states(self, seq: int) -> torch.Tensor:
        """Cached hidden states [len, H] of sequence `seq`."""
        assert self.trunk is not None and self.trunk_offsets is not None
        return self.trunk[self.trunk_offsets[seq]: self.trunk_offsets[seq + 1]]


def base_model_only(model: nn.Module):
    """Context in which a PEFT model runs with every adapter disabled (the reference)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) and hasattr(model, "peft_config") \
        else contextlib.nullcontext()


def units(order: list[int], seqs: Sequences, pack: bool = False) -> list[tuple[list[int], int]]:
    """The rows Batch.build makes of `order` (trunk.pack_rows), with their tokens."""
    rows = pack_rows([seqs.prompts[i] for i in order], [seqs.responses[i] for i in order], pack)
    return [([order[j] for j in row], len(seqs.prompts[order[row[0]]])
             + sum(len(seqs.responses[order[j]]) for j in row)) for row in rows]


def batches(order: list[int], seqs: Sequences, token_budget: int,
            pack: bool = False) -> Iterator[list[int]]:
    """Consecutive groups of sequence ids whose padded size stays within `token_budget` (rows
    as `units` makes them, never split)."""
    group: list[int] = []
    longest = rows = 0
    for unit, n in units(order, seqs, pack):
        if group and max(longest, n) * (rows + 1) > token_budget:
            yield group
            group, longest, rows = [], 0, 0
        group += unit
        longest, rows = max(longest, n), rows + 1
    if group:
        yield group


#: A training micro-batch is split where padding would exceed this share of its real tokens.
PAD_SLACK = 1.25


def snug(order: list[int], seqs: Sequences, slack: float = PAD_SLACK,
         pack: bool = False) -> Iterator[list[int]]:
    """Consecutive groups of length-sorted sequence ids (rows as `units` makes them), each
    padded to at most `slack` times its real tokens: one micro-batch of mixed lengths costs
    its real tokens, not count x longest (on HH pairs, padding was half of a batch)."""
    group: list[int] = []
    longest = real = rows = 0
    for unit, n in units(order, seqs, pack):
        if group and max(longest, n) * (rows + 1) > slack * (real + n):
            yield group
            group, longest, real, rows = [], 0, 0, 0
        group += unit
        longest, real, rows = max(longest, n), real + n, rows + 1
    if group:
        yield group


def by_length(seqs: Sequences, ids: list[int] | None = None, pack: bool = False) -> list[int]:
    """Sequence ids sorted by the length of their rows, longest first (less padding per
    batch); with `pack`, the sequences sharing a row together."""
    ids = list(range(len(seqs))) if ids is None else ids
    return [i for row, _ in sorted(units(ids, seqs, pack), key=lambda row: -row[1]) for i in row]


def make_batch(seqs: Sequences, ids: list[int], pad_id: int, pack: bool = False) -> Batch:
    return Batch.build([seqs.prompts[i] for i in ids], [seqs.responses[i] for i in ids], pad_id,
                       pack)


def fingerprint(model_id: str, seqs: Sequences, trunk_dtype: str) -> str:
    """Key of a reference pass: model and every token id. Which parts a cached pass holds
    (embeddings, trunk states at which layer) is stored inside it, so one pass that computed
    everything serves every later request for a part of it."""
    h = hashlib.sha256(json.dumps([model_id, trunk_dtype]).encode())
    for ids in seqs.token_ids():
        h.update(json.dumps(ids).encode())
    return h.hexdigest()


def _covers(state: dict, trunk_layer: int | None, embeddings: bool) -> bool:
    """Whether a cached pass holds every part asked for."""
    return (not embeddings or state.get("embeddings") is not None) and (
        trunk_layer is None or state.get("trunk_layer") == trunk_layer)


def rank_batches(seqs: Sequences, token_budget: int,
                 pack: bool = False) -> list[tuple[list[int], bool]]:
    """This rank's share of the length-sorted batches of `seqs` (all of them with one
    process), padded to equal counts over ranks (distributed.lockstep: True marks a real
    batch, False a one-sequence padding pass); `pack`: prompts shared within rows."""
    every = list(batches(by_length(seqs, pack=pack), seqs, token_budget, pack))
    return distributed.lockstep(every, every[0][:1] if every else [])


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _forward(decoder: nn.Module, head: nn.Module, batch: Batch, trunk_layer: int | None,
             embeddings: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One batch's reference forward: trunk states, log-probs, embeddings."""
    hidden, captured = full_forward(decoder, batch, trunk_layer)
    return (captured, response_logps(head, hidden, batch),
            response_means(hidden, batch) if embeddings else None)


@torch.no_grad()
def compute_reference(model: nn.Module, model_id: str, seqs: Sequences, pad_id: int,
                      trunk_layer: int | None = None, trunk_dtype: str = "float32",
                      embeddings: bool = False, token_budget: int = 8192,
                      cache: str | Path | None = None, progress: bool = True,
                      run: Callable[..., Any] = _call) -> Reference:
    """Reference log-probs (and trunk states / embeddings) of `seqs`, from cache when possible.

    `model_id` must identify the weights (see models.model_fingerprint). `cache`: a folder,
    None for the default cache, or "" to disable caching. `run(fn, *args)` runs each forward
    (a sharded model's root: LoRABackend._run).
    """
    key = fingerprint(model_id, seqs, trunk_dtype)
    last = _LAST.get(key)
    if last is not None and _covers(vars(last), trunk_layer, embeddings):
        return replace(last, from_cache=True)
    path = None if cache == "" else Path(cache or cache_dir() / "reference") / f"{key}.pt"
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        if _covers(state, trunk_layer, embeddings):
            ref = Reference(**state, from_cache=True)
            _remember(model_id, seqs, ref, key)
            return ref
        # compute the union, so the new file still serves what the old one did
        embeddings = embeddings or state.get("embeddings") is not None
        trunk_layer = trunk_layer if trunk_layer is not None else state.get("trunk_layer")
    if trunk_layer is None:  # log-probs (and embeddings) may all be known from other sets
        known = _recall(model_id, seqs, embeddings)
        if known is not None:
            return known
    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    n = len(seqs)
    logps = torch.zeros(n, dtype=torch.float64)
    embs = torch.zeros(n, model.config.hidden_size) if embeddings else None
    trunk_parts: dict[int, torch.Tensor] = {}
    dtype = getattr(torch, trunk_dtype)
    pack = can_pack(decoder)
    mine = rank_batches(seqs, token_budget, pack)
    with base_model_only(model):
        for ids, real in bar(mine, desc="reference pass", unit="batch", enabled=progress):
            batch = make_batch(seqs, ids, pad_id, pack).to(device)
            captured, lp, means = run(_forward, decoder, head, batch, trunk_layer,
                                      embs is not None)
            if not real:  # a padding pass (distributed.lockstep)
                continue
            logps[ids] = lp.double().cpu()
            if means is not None:
                embs[ids] = means.cpu()
            if captured is not None:
                for i, states in zip(ids, batch.unpack_states(captured), strict=True):
                    trunk_parts[i] = states.to(dtype).cpu()
    if distributed.world() > 1:  # each rank computed its batches: every rank gets all
        trunk_parts = _gather_pass(logps, embs, trunk_parts)
    ref = Reference(logps, embs)
    if trunk_layer is not None:
        sizes = torch.tensor([trunk_parts[i].shape[0] for i in range(n)])
        ref.trunk = torch.cat([trunk_parts[i] for i in range(n)])
        ref.trunk_offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        ref.trunk_layer = trunk_layer
    if path is not None and distributed.is_main():
        state = {"logps": ref.logps, "embeddings": ref.embeddings, "trunk": ref.trunk,
                 "trunk_offsets": ref.trunk_offsets, "trunk_layer": ref.trunk_layer}
        write_with(path, lambda p: torch.save(state, p))
    distributed.barrier()  # the file is whole before any rank looks for it again
    _remember(model_id, seqs, ref, key)
    return ref


def _gather_pass(logps: torch.Tensor, embs: torch.Tensor | None,
                 trunk_parts: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Merge the ranks' shares of a reference pass: log-probs and embeddings summed in place
    (zeros where another rank computed), trunk states gathered from every rank."""
    distributed.all_sum_(logps)
    if embs is not None:
        distributed.all_sum_(embs)
    merged: dict[int, torch.Tensor] = {}
    for part in distributed.gather_objects(trunk_parts):
        merged.update(part)
    return merged


#: The last passes computed or loaded in this process, whole (trunk states included), by
#: their cache key: EM's linear start and its LoRA backend ask for the same data one after the
#: other, and one pass computing the union serves both, with or without the disk cache. The
#: two newest are kept (the linear start's LM and the LoRA model may differ in device or
#: precision), so memory stays bounded.
_LAST: dict[str, Reference] = {}
LAST_KEPT = 2


#: Per-sequence log-probs and embeddings seen in this process, by model: a subset of a known
#: set (an annotator split for K selection, a held-out part) then needs no forward pass.
_MEMO: dict[str, dict[tuple[int, ...], tuple[float, torch.Tensor | None]]] = {}


def forget() -> None:
    """Drop what this process remembers of earlier passes (memory; a benchmark that must pay
    for a cold pass)."""
    _LAST.clear()
    _MEMO.clear()


def _remember(model_id: str, seqs: Sequences, ref: Reference, key: str) -> None:
    _LAST.pop(key, None)
    _LAST[key] = ref
    while len(_LAST) > LAST_KEPT:
        _LAST.pop(next(iter(_LAST)))
    memo = _MEMO.setdefault(model_id, {})
    for i, ids in enumerate(seqs.token_ids()):
        memo[tuple(ids)] = (float(ref.logps[i]),
                            None if ref.embeddings is None else ref.embeddings[i])


def _recall(model_id: str, seqs: Sequences, embeddings: bool) -> Reference | None:
    memo = _MEMO.get(model_id, {})
    rows = [memo.get(tuple(ids)) for ids in seqs.token_ids()]
    if not rows or any(r is None or (embeddings and r[1] is None) for r in rows):
        return None
    logps = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    embs = torch.stack([r[1] for r in rows]) if embeddings else None
    return Reference(logps, embs, from_cache=True)
