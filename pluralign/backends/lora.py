"""LoRA backend: one causal LM, K LoRA adapters (one per type), reference = adapters disabled.

Reference log-probs come from one cached pass (pluralign.reference). With `top_layers: T`,
adapters sit in the top T layers only and every policy pass starts from the cached hidden
states entering layer N-T (pluralign.trunk). Each adapter trains with its own optimizer over
its own parameters; scoring loops over adapters in eval mode. Under a launcher every rank runs
its share of each pass (pluralign.distributed), and with `sharding: fsdp` holds only its slice
of the model (pluralign.sharding); either way the results are the one-process ones.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch.nn.utils.rnn import pad_sequence

from pluralign import distributed, sharding
from pluralign.backends import sequences
from pluralign.backends.base import PolicyBackend, check_mixture, check_weights, sample_row
from pluralign.backends.sequences import check_decoding, nucleus  # noqa: F401 (re-exported)
from pluralign.backends.settings import LoRAConfig
from pluralign.data import Annotation, Annotations, as_annotations
from pluralign.io import write_json
from pluralign.losses import get_loss
from pluralign.models import load_model, model_id
from pluralign.progress import bar
from pluralign.rankings import Rankings
from pluralign.reference import (
    Reference,
    Sequences,
    TokenSettings,
    batches,
    by_length,
    compute_reference,
    make_batch,
    prompt_ids,
    rank_batches,
    snug,
    tokenize,
)
from pluralign.trunk import (
    Batch,
    decoder_and_head,
    full_forward,
    response_logps,
    supports_trunk,
    top_forward,
)

log = logging.getLogger(__name__)


def resolve_device(spec: str, default: torch.device) -> torch.device:
    """The device `spec` names (auto: the accelerator's, which is this rank's GPU when there
    is one), with a clear error when it asks for a GPU that is not there."""
    if spec == "auto":  # accelerate names the CPU "cpu:0" with several processes, which
        default = torch.device(default)  # safetensors refuses: the CPU has no index
        return torch.device("cpu") if default.type == "cpu" else default
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r}: no CUDA GPU is visible to torch here; use "
                           "device: auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: auto is bfloat16 on a GPU that supports it, float16 on one that
    does not, float32 on cpu."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _sum_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the adapter's gradients over ranks, in one collective (each rank's loss is its share
    of the micro-batch's, so the sum is the one-process gradient); nothing with one process."""
    if distributed.world() == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    distributed.all_sum_(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def _decode(tokens: torch.Tensor, tokenizer) -> str:
    """Generated ids up to the first end-of-sequence, as text."""
    ids = tokens.tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode([t for t in ids if t != tokenizer.pad_token_id],
                            skip_special_tokens=True)

@dataclass
class Prepared:
    """A dataset ready for scoring: its token sequences and reference outputs."""

    seqs: Sequences
    ref: Reference
    rankings: Rankings


class LoRABackend(PolicyBackend):
    """K LoRA adapters named type_0..type_{K-1} on one frozen base model."""

    decodes = True

    def __init__(self, config: LoRAConfig | None = None, **overrides: Any):
        from peft import LoraConfig, get_peft_model
        self.config = cfg = config or LoRAConfig(**overrides)
        self.n_types, self.beta = cfg.types, cfg.beta
        cpu = cfg.device == "cpu" or not torch.cuda.is_available()
        distributed.setup(cpu)  # several processes: join their group before anything else
        device = resolve_device(cfg.device, PartialState(cpu=cpu).device)
        self.dtype = resolve_dtype(cfg.dtype, device)
        base, self.tokenizer = load_model(cfg.model, cfg.trust_remote_code, self.dtype)
        # the reference cache is keyed by where and how the pass ran: bf16 or GPU log-probs
        # are not the fp32 CPU ones
        self.model_id = model_id(base, cfg.model, device)
        if cfg.gradient_checkpointing:
            enable = getattr(base, "activation_checkpointing_enable", None)  # transformers 5
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
        n_layers = base.config.num_hidden_layers
        top = min(cfg.top_layers or n_layers, n_layers)
        self.start_layer = n_layers - top
        decoder = base.get_decoder()
        self.trunk = cfg.trunk_cache and self.start_layer > 0 and supports_trunk(decoder)
        if cfg.trunk_cache and self.start_layer > 0 and not self.trunk:
            log.warning("trunk caching is not supported for %s; using the plain forward",
                        type(decoder).__name__)
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none",
                          layers_to_transform=list(range(self.start_layer, n_layers))
                          if self.start_layer else None)
        # adapters' initial A matrices come from a seeded generator, not the global one, so a
        # resumed run builds the same adapters as an uninterrupted one
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing`")
            torch.manual_seed(cfg.seed)
            self.model = get_peft_model(base, lora, adapter_name=self.adapter(0))
            for k in range(1, cfg.types):
                self.model.add_adapter(self.adapter(k), lora)
        self._device = device
        self.model.eval()
        self.decoder, self.head = decoder_and_head(self.model)
        self._root = self._shard(cfg.sharding, device)
        if self._root is None:  # sharded: fully_shard moved each layer's slice, one at a time
            self.model.to(device)
        self._whole: dict[str, torch.Tensor] = {}  # sharded: whole adapters, for rank 0 to save
        self._keep_whole()
        self.loss_fn = get_loss(cfg.loss)
        self.history_: dict[int, list[dict[str, Any]]] = {k: [] for k in range(cfg.types)}
        self._prepared: dict[str, Prepared] = {}

    def _shard(self, mode: str, device: torch.device) -> sharding.Root | None:
        """Shard the model over the ranks (FSDP) when `mode` asks for it (see
        LoRAConfig.sharding), moving each slice to `device` (the whole model never is);
        None: every rank holds the whole model."""
        wanted = mode == "fsdp" or (mode == "auto" and distributed.fsdp_launched())
        if mode == "none" and distributed.fsdp_launched():
            log.warning("accelerate launched this run with FSDP, and lora.sharding is none: "
                        "every rank holds the whole model (sharding: auto follows the launcher)")
        if not wanted or distributed.world() == 1:
            return None
        layers = getattr(self.decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            kind = type(self.decoder).__name__
            raise ValueError(f"sharding: fsdp shards decoder layers, and {kind} has no "
                             "`layers` list; use sharding: none")
        root = sharding.shard(self.model, layers, device, **distributed.fsdp_options())
        mine, total = sharding.local_share(self.model)
        log.info("FSDP: each of the %d ranks holds %.0f%% of the model's %s parameters (its "
                 "slice of every layer's and of the rest)", distributed.world(),
                 100 * mine / total, f"{total:,}")
        return root

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), inside the sharded model's root when the model is sharded (FSDP then
        gathers the weights that belong to no layer)."""
        return self._root(fn, *args) if self._root is not None else fn(*args)

    def _keep_whole(self, k: int | None = None) -> None:
        """Sharded model: gather adapter k's weights (every adapter's when None) whole onto
        every rank, now, while all ranks run the same code; rank 0 alone saves them later."""
        if self._root is None:
            return
        self._settle()
        names = [self.adapter(j) for j in (range(self.n_types) if k is None else [k])]
        for n, param in self.model.named_parameters():
            if any(f".{name}." in n for name in names):
                self._whole[n] = sharding.full(param.detach()).cpu()

    def _settle(self) -> None:
        """A sharded model back to its slices (sharding.settle), before adapters are read,
        written or switched: each is then done to the slices, which FSDP keeps."""
        if self._root is not None:
            sharding.settle(self._root)

    def _activate(self, k: int) -> None:
        """Make adapter k the active one (only its parameters require grad)."""
        self._settle()
        self.model.set_adapter(self.adapter(k))

    def _unsharded(self, what: str) -> None:
        if self._root is not None:
            raise RuntimeError(f"{what} needs the whole model in one process; the model is "
                               "sharded over ranks (sharding: fsdp); run it without a launcher")

    def adapter(self, k: int) -> str:
        """Name of policy k's adapter: type_k, or the merged adapter's name in a merged view."""
        names = getattr(self, "_names", None)
        return names[k] if names else f"type_{k}"

    # -- data -------------------------------------------------------------------------------
    def prepare(self, data: Annotations, embeddings: bool = False) -> Prepared:
        """Tokenise `data` and run (or load) its reference pass; memoised per dataset.
        `embeddings` also computes the mean response states that the linear backend's
        embedding features use, in the same pass (the cache then serves both)."""
        key = as_annotations(data).fingerprint()
        if key not in self._prepared or (embeddings and
                                         self._prepared[key].ref.embeddings is None):
            cfg = self.config
            seqs = tokenize(data, self.tokenizer, TokenSettings(cfg.max_prompt_tokens,
                                                                cfg.max_response_tokens))
            ref = compute_reference(
                self.model, self.model_id, seqs, self.tokenizer.pad_token_id,
                trunk_layer=self.start_layer if self.trunk else None,
                trunk_dtype=cfg.trunk_dtype, embeddings=embeddings, token_budget=cfg.token_budget,
                cache=cfg.cache, progress=cfg.progress, run=self._run)
            self._prepared[key] = Prepared(seqs, ref, as_annotations(data).rankings())
        return self._prepared[key]

    def policy_logps(self, prep: Prepared, ids: list[int]) -> torch.Tensor:
        """log pi(response) of sequences `ids` under the active adapter (grad if enabled), in
        the order of `ids`; computed in length groups so that padding stays small (snug)."""
        groups = self._groups(prep, ids)
        if len(groups) == 1:
            return self._group_logps(prep, ids)
        out = torch.cat([self._group_logps(prep, g) for g in groups])
        where = {seq: j for j, seq in enumerate(i for g in groups for i in g)}
        return out[torch.tensor([where[i] for i in ids], device=out.device)]

    @staticmethod
    def _groups(prep: Prepared, ids: list[int]) -> list[list[int]]:
        """The length groups `ids` run in: snug groups, or `ids` as given when one suffices."""
        groups = list(snug(by_length(prep.seqs, ids), prep.seqs))
        return groups if len(groups) > 1 else [ids]

    def _group_logps(self, prep: Prepared, ids: list[int]) -> torch.Tensor:
        device = self._device
        batch = make_batch(prep.seqs, ids, self.tokenizer.pad_token_id).to(device)
        states = None
        if self.trunk:
            dtype = next(self.model.parameters()).dtype
            states = pad_sequence([prep.ref.trunk_states(i) for i in ids],
                                  batch_first=True).to(device, dtype)
        return self._run(self._forward_logps, batch, states)

    def _forward_logps(self, batch: Batch, states: torch.Tensor | None) -> torch.Tensor:
        """log pi(response) of `batch`: from cached trunk `states` when given, else the whole
        forward."""
        if states is not None:
            hidden = top_forward(self.decoder, states, batch.attention_mask, self.start_layer)
        else:
            hidden = full_forward(self.decoder, batch)[0]
        return response_logps(self.head, hidden, batch)

    # -- scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def _logratios(self, data: Annotations) -> np.ndarray:
        prep = self.prepare(data)
        n_seq = len(prep.seqs)
        out = np.full((*prep.seqs.index.shape, self.n_types), np.nan)
        groups = rank_batches(prep.seqs, self.config.token_budget)
        self.model.eval()
        shown = bar(total=len(groups) * self.n_types, desc="scoring", unit="batch",
                    enabled=self.config.progress)
        for k in range(self.n_types):
            self._activate(k)
            s = torch.zeros(n_seq, dtype=torch.float64)
            for ids, real in groups:
                values = self.policy_logps(prep, ids).double().cpu()
                if real:
                    s[ids] = values
                shown.update()
            distributed.all_sum_(s)  # every rank scored its batches; each gets all scores
            out[..., k] = prep.seqs.per_candidate(s - prep.ref.logps).numpy()
        shown.close()
        return out

    def iteration_seconds(self, data: Annotations) -> float:
        """Estimated seconds of one EM iteration on `data` (K fits over every row, K scoring
        passes), from a timed probe: one micro-batch's forward and backward and one scoring
        batch, scaled by their counts. Adapters are left as they were."""
        cfg = self.config
        prep = self.prepare(data)
        mb = np.arange(min(cfg.batch_size, len(data)))
        self._activate(0)
        self.model.train()
        t0 = time.perf_counter()
        loss, _, rest = self._micro_loss(prep, mb, np.ones(len(data)), 1.0)
        self._backward(loss, rest)
        step = time.perf_counter() - t0
        self.model.zero_grad(set_to_none=True)
        self.model.eval()
        groups = list(batches(by_length(prep.seqs), prep.seqs, cfg.token_budget))
        t0 = time.perf_counter()
        with torch.no_grad():
            self.policy_logps(prep, groups[0])
        score = time.perf_counter() - t0
        steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
        return self.n_types * (steps * step + len(groups) * score)

    def _reference_logps(self, data: Annotations) -> np.ndarray:
        prep = self.prepare(data)
        return prep.seqs.per_candidate(prep.ref.logps).numpy()

    # -- training ---------------------------------------------------------------------------
    def fit(self, k: int, data: Annotations, weights: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        w = check_weights(weights, len(data))
        rows = np.flatnonzero(w > 0)
        prep = self.prepare(data)
        stats: dict[str, Any] = {"type": k, "annotations": int(rows.size), "steps": 0,
                                 "tokens": 0, "loss": []}
        if rows.size == 0:
            return stats
        name = self.adapter(k)
        self._activate(k)  # only this adapter's parameters require grad
        params = [p for n, p in self.model.named_parameters() if f".{name}." in n]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        per_step = cfg.batch_size * cfg.grad_accum
        total = cfg.epochs * math.ceil(rows.size / per_step)
        from transformers import get_scheduler
        sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
        gen = torch.Generator().manual_seed(cfg.seed + 7919 * k + len(self.history_[k]))
        w_mean = float(w[rows].mean())
        t0 = time.perf_counter()
        self.model.train()
        shown = bar(total=total, desc=f"fit {name}", unit="step", enabled=cfg.progress)
        try:
            for _ in range(cfg.epochs):
                order = rows[torch.randperm(rows.size, generator=gen).numpy()]
                micro = [order[i: i + cfg.batch_size] for i in range(0, order.size,
                                                                      cfg.batch_size)]
                for j, mb in enumerate(micro):
                    loss, n_tok, rest = self._micro_loss(prep, mb, w, w_mean)
                    if not torch.isfinite(loss):  # every rank holds the whole loss: one verdict
                        raise FloatingPointError(
                            f"{name}: loss is {loss.item()} at step {stats['steps'] + 1}; lower "
                            "the learning_rate or beta, or check the data")
                    self._backward(loss / cfg.grad_accum, rest)
                    stats["tokens"] += n_tok
                    stats["loss"].append(round(loss.item(), 6))
                    if (j + 1) % cfg.grad_accum == 0 or j + 1 == len(micro):
                        if self._root is None:  # FSDP sums them itself
                            _sum_grads(params)
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)
                        stats["steps"] += 1
                        shown.update()
                        shown.set_postfix(loss=f"{loss.item():.4f}")
        finally:
            shown.close()
            opt.zero_grad(set_to_none=True)
            self.model.eval()
        self._keep_whole(k)
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        self.history_[k].append({key: v for key, v in stats.items() if key != "loss"}
                                | {"final_loss": stats["loss"][-1]})
        return stats

    def _backward(self, loss: torch.Tensor, rest: Callable[[], None]) -> None:
        """The loss's backward pass, then its completion on this rank (see _shared_logps)."""
        loss.backward()
        rest()

    def _micro_loss(self, prep: Prepared, mb: np.ndarray, w: np.ndarray,
                    w_mean: float) -> tuple[torch.Tensor, int, Callable[[], None]]:
        """Weighted loss of annotations `mb`, scaled so that micro-batches average to the
        weighted mean over all rows (an unbiased estimate, whatever the batch's weights); and
        what completes its backward pass on this rank (see _shared_logps)."""
        index = prep.seqs.index[torch.as_tensor(mb)]
        ids = torch.unique(index[index >= 0]).tolist()
        logps, rest = self._shared_logps(prep, ids)
        s_seq = logps - prep.ref.logps[ids].to(self._device, torch.float32)
        local = torch.zeros(len(prep.seqs), dtype=torch.long)
        local[ids] = torch.arange(len(ids))
        device = s_seq.device
        valid = (index >= 0).to(device)
        gathered = s_seq[local[index.clamp(min=0)].to(device)]  # [B, M]; padding masked next
        s = torch.where(valid, gathered, torch.zeros((), dtype=s_seq.dtype, device=device))
        wt = torch.as_tensor(w[mb], dtype=s.dtype, device=device)
        loss = self.loss_fn(s, prep.rankings.select(mb).to(s.device), self.beta, weights=wt)
        return loss * (wt.sum() / (len(mb) * w_mean)), prep.seqs.n_tokens(ids), rest

    def _shared_logps(self, prep: Prepared,
                      ids: list[int]) -> tuple[torch.Tensor, Callable[[], None]]:
        """log pi of sequences `ids` with gradient, and a function to call after the loss's
        backward. One process: policy_logps, nothing after. Several: each rank runs its share
        of the same length groups one process would run (so every value is bit for bit the
        one-process value), the values are summed over ranks into a leaf that every rank's
        loss uses whole, and the function carries the leaf's gradient into this rank's
        groups; summing parameter gradients over ranks then gives the one-process gradient."""
        if distributed.world() == 1:
            return self.policy_logps(prep, ids), lambda: None
        where = {i: j for j, i in enumerate(ids)}
        parts = [(torch.tensor([where[i] for i in g]) if real else None,
                  self._group_logps(prep, g))
                 for g, real in distributed.lockstep(self._groups(prep, ids), ids[:1])]
        full = torch.zeros(len(ids), device=self._device)
        for pos, values in parts:
            if pos is not None:
                full[pos.to(full.device)] = values.detach().float()
        leaf = distributed.all_sum_(full).requires_grad_()

        def rest() -> None:  # a padding pass gets a zero gradient: every rank runs as many
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            if parts:
                torch.autograd.backward(
                    [v for _, v in parts],
                    [torch.zeros_like(v) if p is None else grad[p.to(grad.device)].to(v.dtype)
                     for p, v in parts])
        return leaf, rest

    def loss(self, k: int, data: Annotations, weights: np.ndarray) -> float:
        """Type k's weighted loss on `data` (no training)."""
        s = torch.as_tensor(self.logratios(data)[..., k])
        w = torch.as_tensor(check_weights(weights, len(data)))
        return float(self.loss_fn(s, self.prepare(data).rankings, self.beta, weights=w))

    # -- sampling and merging ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def prompt_tokens(self, prompt: Any) -> list[int]:
        """The prompt's token ids as every pass sees them (the last max_prompt_tokens)."""
        return prompt_ids(prompt, self.tokenizer, self.config.max_prompt_tokens)

    def draw(self, prompts: list[list[int]], spec: Any, n: int, seed: int,
             max_new_tokens: int | None = None, temperature: float = 1.0,
             top_p: float = 1.0, score: tuple[Any, ...] = ()) -> sequences.Decoded:
        """n responses (token ids, ending with end-of-sequence when drawn) per prompt from
        `spec`: adapter k (or an adapter's name), None (the base model) or weights q over the
        K adapters (the token-level min-max merge), with their exact log-probabilities under
        every spec of `score`; see pluralign.backends.sequences."""
        self._unsharded("sampling")
        return sequences.draw(self, prompts, spec, n, seed,
                              max_new_tokens or self.config.max_response_tokens,
                              temperature=temperature, top_p=top_p, score=score)

    def continuation_logps(self, prompts: list[list[int]], responses: list[tuple[int, list[int]]],
                           specs: list[Any]) -> np.ndarray:
        """Exact log pi(response | prompt) under each spec: [len(responses), len(specs)]."""
        self._unsharded("scoring sampled responses")
        return sequences.continuation_logps(self, prompts, responses, specs,
                                            self.config.token_budget)

    def sample(self, data: Annotations, k: int | None, n: int, seed: int,
               max_new_tokens: int | None = None, temperature: float = 1.0,
               top_p: float = 1.0) -> list[Annotation]:
        """Generate n responses per row from policy k (None: the base model), at most
        max_new_tokens (default max_response_tokens) new tokens; seeded. Temperature 1 and
        top_p 1 (the defaults) sample the policy itself, which the regret estimators need;
        other values are for reading its text."""
        return self._sample_text(data, k, n, seed, max_new_tokens, temperature, top_p)

    def sample_combined(self, data: Annotations, weights: np.ndarray, n: int, seed: int,
                        max_new_tokens: int | None = None, temperature: float = 1.0,
                        top_p: float = 1.0) -> list[Annotation]:
        """n responses per row from the min-max merge as decoded: each token drawn from
        softmax(sum_k q_k log_softmax(logits_k)), one pass per adapter with q_k > 0. (Token
        by token this is a product of experts, not pi_q = prod_k pi_k^q_k normalised over
        whole responses; its regret is measured as served, pluralign.served.)"""
        q = check_mixture(weights, self.n_types)
        return self._sample_text(data, q, n, seed, max_new_tokens, temperature, top_p)

    def _sample_text(self, data: Annotations, spec: Any, n: int, seed: int,
                     max_new_tokens: int | None, temperature: float,
                     top_p: float) -> list[Annotation]:
        """Samples of `spec` for each row's prompt, decoded to text (one draw per prompt)."""
        keys = [json.dumps(a.prompt, sort_keys=True) for a in data]
        unique = {key: a for key, a in zip(keys, data, strict=True)}
        ids = self.draw([self.prompt_tokens(a.prompt) for a in unique.values()], spec, n,
                        seed, max_new_tokens, temperature, top_p).ids
        texts = {key: [_decode(torch.tensor(r), self.tokenizer) for r in rows]
                 for key, rows in zip(unique, ids, strict=True)}
        return [sample_row(a, texts[key]) for key, a in zip(keys, data, strict=True)]

    def merge(self, weights: np.ndarray, name: str = "merged") -> LoRABackend:
        """Add adapter `name` = sum_k p_k (B_k A_k) (peft add_weighted_adapter, "cat": exact
        for the weight deltas) and return a K=1 view of it sharing this model and its caches.
        The merged policy is not the mixture policy; measure its regret."""
        self._unsharded("merging adapters")
        p = check_mixture(weights, self.n_types)
        if name in self.model.peft_config:
            self.model.delete_adapter(name)
        self.model.add_weighted_adapter([self.adapter(k) for k in range(self.n_types)],
                                        p.tolist(), name, combination_type="cat")
        view = copy.copy(self)
        view.n_types, view._names = 1, [name]
        view.history_ = {0: []}
        return view

    def reset(self, k: int) -> None:
        """Re-initialise adapter k as peft does (B = 0: the policy equals the reference), from
        a generator seeded by `seed`, k and the number of earlier fits, so that runs (resumed,
        or over several processes) repeat each other."""
        name = self.adapter(k)
        self._settle()
        gpus = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(self.config.seed + 7919 * k + 104_729 * len(self.history_[k]) + 1)
            for module in self._lora_layers(name):
                with sharding.whole([(module.lora_A[name], "weight"),
                                     (module.lora_B[name], "weight")]):
                    module.reset_lora_parameters(name, init_lora_weights=True)
        self._keep_whole(k)

    def _lora_layers(self, name: str) -> list[Any]:
        """The LoRA layers that hold adapter `name`."""
        from peft.tuners.lora import LoraLayer
        return [m for m in self.model.modules() if isinstance(m, LoraLayer) and name in m.lora_A]

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Each adapter to path/type_k in the standard PEFT layout (PeftModel.from_pretrained)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k in range(self.n_types):
            name = self.adapter(k)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path))
            try:
                whole = {"state_dict": self._whole} if self._root is not None else {}
                self.model.save_pretrained(tmp, selected_adapters=[name], **whole)
                saved = tmp / name if (tmp / name).is_dir() else tmp
                target = path / name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(saved, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        # Shuffles are seeded by the number of earlier fits: keep it, so a resumed run repeats.
        write_json(path / "history.json", {str(k): v for k, v in self.history_.items()})

    def load(self, path: str | os.PathLike) -> None:
        """Load adapters written by `save`, replacing the current ones."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        self._settle()
        for k in range(self.n_types):
            folder = Path(path) / self.adapter(k)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: no saved adapter for type {k}")
            state = load_peft_weights(str(folder), device=str(self._device))
            with sharding.whole_values():  # (FSDP's state-dict hooks want DTensors in place)
                set_peft_model_state_dict(self.model, state, adapter_name=self.adapter(k))
        self._keep_whole()
        history = Path(path) / "history.json"
        if history.is_file():
            saved = json.loads(history.read_text())
            self.history_ = {k: saved.get(str(k), []) for k in range(self.n_types)}
