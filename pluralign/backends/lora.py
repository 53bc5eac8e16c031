"""LoRA backend: one causal LM, K LoRA adapters (one per type), reference = adapters disabled.

Reference log-probs come from one cached pass (pluralign.lm.reference). With `top_layers: T`,
adapters sit in the top T layers only and every policy pass starts from the cached hidden
states entering layer N-T (pluralign.lm.trunk). Each adapter trains with its own optimizer over
its own parameters; scoring loops over adapters in eval mode. Under a launcher every rank runs
its share of each pass (pluralign.core.distributed), and with `sharding: fsdp` holds only its slice
of the model (pluralign.lm.sharding); either way the results are the one-process ones.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.backends.base import PolicyBackend, check_mixture
from pluralign.backends.generation import Decoding
from pluralign.backends.lora_training import AdapterTraining
from pluralign.core import distributed
from pluralign.core.data import Annotations, as_annotations
from pluralign.core.io import write_json
from pluralign.core.losses import get_loss
from pluralign.core.progress import bar
from pluralign.core.rankings import Rankings
from pluralign.lm import sharding
from pluralign.lm.models import load_model, model_id
from pluralign.lm.reference import (
    Reference,
    Sequences,
    TokenSettings,
    by_length,
    compute_reference,
    make_batch,
    rank_batches,
    snug,
    tokenize,
)
from pluralign.lm.sharded import Placement, local_device, resolve_dtype
from pluralign.lm.trunk import (
    Batch,
    can_pack,
    decoder_and_head,
    full_forward,
    response_logps,
    supports_trunk,
    top_forward,
)
from pluralign.settings.backends import LoRAConfig

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A dataset ready for scoring: its token sequences and reference outputs."""

    seqs: Sequences
    ref: Reference
    rankings: Rankings


class LoRABackend(AdapterTraining, Decoding, PolicyBackend):
    """K LoRA adapters named type_0..type_{K-1} on one frozen base model."""

    decodes = True

    def __init__(self, config: LoRAConfig | None = None,
                 rank_device: torch.device | None = None, **overrides: Any):
        """`rank_device`: this rank's (pluralign.lm.sharded.join, which the backend factory calls
        under a launcher); None: this process's device for config.device."""
        from peft import LoraConfig, get_peft_model
        self.config = cfg = config or LoRAConfig(**overrides)
        self.n_types, self.beta = cfg.types, cfg.beta
        device = rank_device if rank_device is not None else local_device(cfg.device)
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
        self.pack = can_pack(self.decoder)  # responses to one prompt share a row (exact)
        self.place = Placement(self.model, self.decoder, device, cfg.sharding)
        self._keep_whole()
        self.loss_fn = get_loss(cfg.loss)
        self.history_: dict[int, list[dict[str, Any]]] = {k: [] for k in range(cfg.types)}
        self._prepared: dict[str, Prepared] = {}
        self._teacher: Any = None  # distill, rkl: the linear reward on embeddings (training)

    def _keep_whole(self, k: int | None = None) -> None:
        """Sharded model: adapter k's weights (every adapter's when None) gathered whole."""
        self.place.keep_whole([self.adapter(j) for j in
                               (range(self.n_types) if k is None else [k])])

    def _activate(self, k: int) -> None:
        """Make adapter k the active one (only its parameters require grad)."""
        self.place.settle()
        self.model.set_adapter(self.adapter(k))

    def adapter(self, k: int) -> str:
        """Name of policy k's adapter: type_k, or the merged adapter's name in a merged view."""
        names = getattr(self, "_names", None)
        return names[k] if names else f"type_{k}"

    def prepare(self, data: Annotations, embeddings: bool = False) -> Prepared:
        """Tokenise `data` and run (or load) its reference pass; memoised per dataset.
        `embeddings` also computes the mean response states that the linear backend's
        embedding features use, in the same pass (the cache then serves both)."""
        key = as_annotations(data).memo_key
        if key not in self._prepared or (embeddings and
                                         self._prepared[key].ref.embeddings is None):
            cfg = self.config
            seqs = tokenize(data, self.tokenizer, TokenSettings(cfg.max_prompt_tokens,
                                                                cfg.max_response_tokens))
            ref = compute_reference(
                self.model, self.model_id, seqs, self.tokenizer.pad_token_id,
                trunk_layer=self.start_layer if self.trunk else None,
                trunk_dtype=cfg.trunk_dtype, embeddings=embeddings, token_budget=cfg.token_budget,
                cache=cfg.cache, progress=cfg.progress, run=self.place.run)
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

    def _groups(self, prep: Prepared, ids: list[int]) -> list[list[int]]:
        """The length groups `ids` run in: snug groups, or `ids` as given when one suffices."""
        groups = list(snug(by_length(prep.seqs, ids, self.pack), prep.seqs, pack=self.pack))
        return groups if len(groups) > 1 else [ids]

    def _group_logps(self, prep: Prepared, ids: list[int]) -> torch.Tensor:
        device = self._device
        batch = make_batch(prep.seqs, ids, self.tokenizer.pad_token_id, self.pack)
        states = None
        if self.trunk:
            dtype = next(self.model.parameters()).dtype
            states = batch.pack_states([prep.ref.trunk_states(i) for i in ids]).to(device, dtype)
        batch = batch.to(device)
        return self.place.run(self._forward_logps, batch, states)

    def _forward_logps(self, batch: Batch, states: torch.Tensor | None) -> torch.Tensor:
        """log pi(response) of `batch`: from cached trunk `states` when given, else from the
        token embeddings through every layer (the Llama family: the last layer at response
        positions only), else the model's own forward."""
        start = self.start_layer
        if states is None:
            if not supports_trunk(self.decoder):
                return response_logps(self.head, full_forward(self.decoder, batch)[0], batch)
            states, start = self.decoder.embed_tokens(batch.input_ids), 0  # every layer
        at, slot = batch.read_positions()  # the last layer runs on those positions only
        hidden = top_forward(self.decoder, states, batch.attention_mask, start, at, batch)
        return response_logps(self.head, hidden, batch, slot)

    @torch.no_grad()
    def _logratios(self, data: Annotations) -> np.ndarray:
        prep = self.prepare(data)
        n_seq = len(prep.seqs)
        out = np.full((*prep.seqs.index.shape, self.n_types), np.nan)
        groups = rank_batches(prep.seqs, self.config.token_budget, self.pack)
        self.model.eval()
        shown = bar(total=len(groups) * self.n_types, desc="scoring", unit="batch",
                    enabled=self.config.progress)
        for k in range(self.n_types):
            self._activate(k)
            s = torch.zeros(n_seq, dtype=torch.float64)
            for ids, real in groups:  # one forward each: under FSDP every rank runs as many
                values = self._group_logps(prep, ids).double().cpu()
                if real:
                    s[ids] = values
                shown.update()
            distributed.all_sum_(s)  # every rank scored its batches; each gets all scores
            out[..., k] = prep.seqs.per_candidate(s - prep.ref.logps).numpy()
        shown.close()
        return out

    def _reference_logps(self, data: Annotations) -> np.ndarray:
        prep = self.prepare(data)
        return prep.seqs.per_candidate(prep.ref.logps).numpy()

    @property
    def device(self) -> torch.device:
        return self._device

    def merge(self, weights: np.ndarray, name: str = "merged") -> LoRABackend:
        """Add adapter `name` = sum_k p_k (B_k A_k) (peft add_weighted_adapter, "cat": exact
        for the weight deltas) and return a K=1 view of it sharing this model and its caches.
        The merged policy is not the mixture policy; measure its regret."""
        self.place.require_whole("merging adapters")
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
        self.place.settle()
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

    def save(self, path: str | os.PathLike) -> None:
        """Each adapter to path/type_k in the standard PEFT layout (PeftModel.from_pretrained)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k in range(self.n_types):
            name = self.adapter(k)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path))
            try:
                whole = {"state_dict": self.place.whole} if self.place.sharded else {}
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
        self.place.settle()
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

    def n_parameters(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n)
