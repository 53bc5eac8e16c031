"""Whole responses from the LoRA backend's policies, as served: sampling them token by token,
and their exact log-probabilities under any policy (DESIGN §6, "candidates versus what is
served").

A policy spec names what decodes: an adapter index k (type k's policy, or a merged view's one
adapter), None (the base model, adapters disabled), or a weight vector q over the K adapters
(the token-level merge that `generate --policy fair` decodes: each token drawn from
softmax(sum_k q_k log_softmax(logits_k))). A response is a list of token ids ending with the
end-of-sequence token when one was drawn, else cut at the horizon (max_new_tokens); its
log-probability is the sum over its tokens, so sampling and scoring describe one distribution
over the responses of at most that many tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pluralign.backends.base import check_mixture, sample_row
from pluralign.core.data import Annotation, Annotations
from pluralign.core.progress import bar
from pluralign.lm.reference import prompt_ids
from pluralign.lm.trunk import MASK_CACHE_ARG, Batch, cache_keyword, full_forward, top_forward

if TYPE_CHECKING:
    from pluralign.backends.lora import LoRABackend

#: An adapter index or name, None (the base model), token-level merge weights over the K
#: adapters, or {pass: coefficient} over passes (None and adapter indices), any real numbers:
#: softmax(sum_a c_a log_softmax(logits_a)) (a user's own weights: user_spec).
Spec = Any


def user_spec(weights: np.ndarray) -> dict[Any, float]:
    """pi_ref * exp(sum_k w_k (log pi_k - log pi_ref)) token by token: coefficient 1 - sum_k
    w_k on the base model and w_k on adapter k (DESIGN §10: a user's weights served)."""
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"user weights must be finite, got {w.tolist()}")
    return {None: float(1 - w.sum()), **{k: float(v) for k, v in enumerate(w)}}


def _names() -> tuple[str, str]:
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    return cache_keyword(LlamaForCausalLM.forward), cache_keyword(LlamaDecoderLayer.forward)


#: The KV cache's keyword for a model's forward and for one decoder layer's.
CACHE_ARG, LAYER_CACHE_ARG = _names()


def _single(spec: Spec) -> bool:
    """Whether `spec` names one pass: an adapter index or name, or None (the base model)."""
    return spec is None or isinstance(spec, (int, np.integer, str))


def adapters_of(spec: Spec, k: int) -> list[Any]:
    """The adapter passes a spec needs: its adapter, the base model, or every adapter the
    merge weighs above zero."""
    if _single(spec):
        return [int(spec) if isinstance(spec, np.integer) else spec]
    if isinstance(spec, dict):
        return [a for a, c in spec.items() if c != 0]
    q = check_mixture(spec, k)
    return [j for j in range(k) if q[j] > 0]


@contextmanager
def active(backend: LoRABackend, adapter: Any) -> Iterator[None]:
    """Run the model as `adapter`: its index or name (None: the base model, adapters
    disabled)."""
    if adapter is None:
        with backend.model.disable_adapter():
            yield
    else:
        backend.model.set_adapter(adapter if isinstance(adapter, str) else
                                  backend.adapter(adapter))
        yield


def next_token_logps(spec: Spec, logps: dict[Any, torch.Tensor]) -> torch.Tensor:
    """log-probs of the next token under `spec`, from each needed adapter's log_softmax."""
    if _single(spec):
        return logps[int(spec) if isinstance(spec, np.integer) else spec]
    if isinstance(spec, dict):
        return torch.log_softmax(sum(float(c) * logps[a] for a, c in spec.items() if c != 0),
                                 dim=-1)
    q = np.asarray(spec, dtype=np.float64)
    mixed = sum(float(q[j]) * logps[j] for j in range(len(q)) if q[j] > 0)
    return torch.log_softmax(mixed, dim=-1)


def check_decoding(temperature: float, top_p: float) -> None:
    """Sampling settings a decoder can use, or a ValueError naming the bad one."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` [B, V] restricted to each row's smallest set of most likely tokens whose mass
    reaches top_p (nucleus sampling), renormalised; unchanged at top_p = 1."""
    if top_p >= 1:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


@dataclass
class Decoded:
    """Responses drawn from a policy: `ids[prompt][sample]` (token ids), and `logps`
    [prompts, samples, specs]: each response's log-probability under each scored spec."""

    ids: list[list[list[int]]]
    logps: np.ndarray


@torch.no_grad()
def draw(backend: LoRABackend, prompts: list[list[int]], spec: Spec, n: int, seed: int,
         max_new_tokens: int, prompts_per_batch: int = 32, temperature: float = 1.0,
         top_p: float = 1.0, score: Sequence[Spec] = ()) -> Decoded:
    """n responses (token ids) per prompt from `spec`, prompts left-padded in batches of
    prompts_per_batch, seeded, with each response's log-probability under every spec of
    `score`. At temperature 1 and top_p 1 (the defaults) this samples the policy itself, which
    regret estimates need. With trunk caching the layers below the adapters run once per step
    for every adapter a step needs, and the scores come from the same passes; without, each
    adapter runs the whole model with its own KV cache and the scores are computed after."""
    if max_new_tokens < 1 or n < 1:
        raise ValueError("draw needs n >= 1 and max_new_tokens >= 1")
    check_decoding(temperature, top_p)
    k = backend.n_types
    shared = backend.trunk
    scored = [a for s in score for a in adapters_of(s, k)] if shared else []
    passes = list(dict.fromkeys([*adapters_of(spec, k), *scored]))
    gen = torch.Generator().manual_seed(seed)
    backend.model.eval()
    ids: list[list[list[int]]] = []
    scores: list[np.ndarray] = []
    shown = bar(range(0, len(prompts), prompts_per_batch), desc="decoding", unit="batch",
                enabled=backend.config.progress)
    for b in shown:
        chunk = [p for p in prompts[b: b + prompts_per_batch] for _ in range(n)]
        stepper = _SharedTrunk(backend, chunk) if shared else _WholeModel(backend, chunk)
        rows, per = _decode_batch(stepper, spec, passes, score if shared else (), gen,
                                  max_new_tokens, (temperature, top_p))
        ids += [rows[i * n: (i + 1) * n] for i in range(len(chunk) // n)]
        scores.append(per.reshape(len(chunk) // n, n, per.shape[1]))
    logps = np.concatenate(scores, axis=0) if scores else np.zeros((0, n, 0))
    if score and not shared:  # scored after: whole-sequence passes batch better than steps
        flat = [(q, y) for q, rows in enumerate(ids) for y in rows]
        logps = continuation_logps(backend, prompts, flat, list(score),
                                   backend.config.token_budget).reshape(len(ids), n, -1)
    return Decoded(ids, logps)


class _WholeModel:
    """One decoding step = the whole model per adapter, each with its own KV cache."""

    def __init__(self, backend: LoRABackend, prompts: list[list[int]]):
        self.backend, self.caches = backend, {}
        self.ids, self.mask, self.position = _left_padded(backend, prompts)

    def step(self, passes: list[Any]) -> dict[Any, torch.Tensor]:
        """log_softmax of the next token under each adapter pass: {adapter: [B, V]}."""
        out = {}
        for a in passes:
            with active(self.backend, a):
                res = self.backend.model(input_ids=self.ids, attention_mask=self.mask,
                                         position_ids=self.position, use_cache=True,
                                         **{CACHE_ARG: self.caches.get(a)})
            self.caches[a] = res.cache if CACHE_ARG == "cache" else res.past_key_values
            out[a] = torch.log_softmax(res.logits[:, -1].double().cpu(), dim=-1)
        return out

    def feed(self, token: torch.Tensor) -> None:
        """The drawn tokens become the next step's input."""
        self.ids = token[:, None].to(self.backend.device)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.position = self.position[:, -1:] + 1


class _SharedTrunk(_WholeModel):
    """One decoding step = the layers below the adapters once (one KV cache), then the top
    layers, the final norm and the head per adapter pass (a KV cache each): the adapters sit
    in the top layers only, so the layers below compute the same for all of them."""

    def step(self, passes: list[Any]) -> dict[Any, torch.Tensor]:
        from transformers.cache_utils import DynamicCache
        from transformers.masking_utils import create_causal_mask
        b = self.backend
        decoder, start = b.decoder, b.start_layer
        for key in ("trunk", *passes):
            if key not in self.caches:
                self.caches[key] = DynamicCache(config=decoder.config)
        hidden = decoder.embed_tokens(self.ids)
        rotary = decoder.rotary_emb(hidden, position_ids=self.position)
        mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                                  attention_mask=self.mask, position_ids=self.position,
                                  **{MASK_CACHE_ARG: self.caches["trunk"]})
        common = {"attention_mask": mask, "position_embeddings": rotary,
                  "position_ids": self.position, "use_cache": True}
        for layer in decoder.layers[:start]:
            hidden = layer(hidden, **common, **{LAYER_CACHE_ARG: self.caches["trunk"]})
        out = {}
        for a in passes:
            with active(b, a):
                h = hidden
                for layer in decoder.layers[start:]:
                    h = layer(h, **common, **{LAYER_CACHE_ARG: self.caches[a]})
                logits = b.head(decoder.norm(h[:, -1:]))[:, -1]
            out[a] = torch.log_softmax(logits.double().cpu(), dim=-1)
        return out


def _left_padded(backend: LoRABackend,
                 prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids, attention mask and positions of left-padded prompts."""
    pad, device = backend.tokenizer.pad_token_id, backend.device
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                        device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _decode_batch(stepper: _WholeModel, spec: Spec, passes: list[Any], score: Sequence[Spec],
                  gen: torch.Generator, horizon: int,
                  decoding: tuple[float, float]) -> tuple[list[list[int]], np.ndarray]:
    """Sample one response per prompt row, token by token; with each response's summed
    log-probability under the `score` specs (from the same passes): (ids, [B, len(score)])."""
    eos = stepper.backend.tokenizer.eos_token_id
    rows = len(stepper.ids)
    drawn: list[list[int]] = [[] for _ in range(rows)]
    scored = torch.zeros(rows, len(score), dtype=torch.float64)
    done = torch.zeros(rows, dtype=torch.bool)
    temperature, top_p = decoding
    for _ in range(horizon):
        logps = stepper.step(passes)
        probs = next_token_logps(spec, logps)
        probs = nucleus(torch.softmax(probs / temperature, -1), top_p) if decoding != (1, 1) \
            else probs.exp()
        token = torch.multinomial(probs, 1, generator=gen)[:, 0]
        live = ~done
        for j, s in enumerate(score):
            got = next_token_logps(s, logps).gather(1, token[:, None])[:, 0]
            scored[live, j] += got[live]
        for i in np.flatnonzero(live.numpy()):
            drawn[i].append(int(token[i]))
        done |= token == eos
        if done.all():
            break
        stepper.feed(token)
    return drawn, scored.numpy()


@torch.no_grad()
def continuation_logps(backend: LoRABackend, prompts: list[list[int]],
                       responses: list[tuple[int, list[int]]], specs: list[Spec],
                       token_budget: int = 1024) -> np.ndarray:
    """log pi(response | prompt) under each spec: [len(responses), len(specs)]. `responses`
    holds (prompt index, token ids) pairs. With trunk caching the layers below the adapters
    run once per batch and only the top layers per adapter."""
    out = np.zeros((len(responses), len(specs)))
    order = sorted(range(len(responses)), key=lambda i: len(responses[i][1]))
    pad = backend.tokenizer.pad_token_id
    batch_ids: list[int] = []
    tokens = 0
    shown = bar(total=len(responses), desc="scoring responses", unit="response",
                enabled=backend.config.progress)
    for i in [*order, None]:
        if i is not None and (not batch_ids or tokens + len(responses[i][1]) <= token_budget):
            batch_ids.append(i)
            tokens += len(responses[i][1])
            continue
        batch = Batch.build([prompts[responses[j][0]] for j in batch_ids],
                            [responses[j][1] for j in batch_ids], pad).to(backend.device)
        out[batch_ids] = _score_batch(backend, batch, specs)
        shown.update(len(batch_ids))
        batch_ids, tokens = ([i], len(responses[i][1])) if i is not None else ([], 0)
    shown.close()
    return out


def _score_batch(backend: LoRABackend, batch: Batch, specs: list[Spec],
                 chunk: int = 256) -> np.ndarray:
    """[B, len(specs)] sequence log-probs of one right-padded batch. The head runs on
    response positions only, `chunk` tokens at a time (a merge needs every adapter's whole
    log_softmax over the vocabulary at once)."""
    k = backend.n_types
    needed = list(dict.fromkeys(a for s in specs for a in adapters_of(s, k)))
    states = None
    if backend.trunk:
        with active(backend, None):
            states = full_forward(backend.decoder, batch, backend.start_layer)[1]
    hidden = {}
    for a in needed:
        with active(backend, a):
            if states is not None:
                h = top_forward(backend.decoder, states, batch.attention_mask,
                                backend.start_layer)
            else:
                h = full_forward(backend.decoder, batch)[0]
        hidden[a] = h[batch.rows, batch.positions]
    per_token = torch.zeros(len(batch.targets), len(specs), dtype=torch.float64)
    for lo in range(0, len(batch.targets), chunk):
        rows = slice(lo, lo + chunk)
        target = batch.targets[rows, None]
        logps = {a: torch.log_softmax(backend.head(h[rows]).double(), -1).cpu()
                 for a, h in hidden.items()}
        for j, s in enumerate(specs):
            per_token[rows, j] = next_token_logps(s, logps).gather(1, target.cpu())[:, 0]
    out = torch.zeros(len(batch.lengths), len(specs), dtype=torch.float64)
    return out.index_add(0, batch.rows.cpu(), per_token).numpy()


def decode_text(tokens: torch.Tensor, tokenizer) -> str:
    """Generated ids up to the first end-of-sequence, as text."""
    ids = tokens.tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode([t for t in ids if t != tokenizer.pad_token_id],
                            skip_special_tokens=True)


class Decoding:
    """LoRABackend's generation: responses drawn from its policies, as text or token ids, and
    their exact log-probabilities (a mixin: the model and tokenizer are the backend's)."""

    def prompt_tokens(self, prompt: Any) -> list[int]:
        """The prompt's token ids as every pass sees them (the last max_prompt_tokens)."""
        return prompt_ids(prompt, self.tokenizer, self.config.max_prompt_tokens)

    def draw(self, prompts: list[list[int]], spec: Any, n: int, seed: int,
             max_new_tokens: int | None = None, temperature: float = 1.0,
             top_p: float = 1.0, score: tuple[Any, ...] = ()) -> Decoded:
        """n responses (token ids, ending with end-of-sequence when drawn) per prompt from
        `spec`: adapter k (or an adapter's name), None (the base model) or weights q over the
        K adapters (the token-level min-max merge), with their exact log-probabilities under
        every spec of `score`; see pluralign.backends.generation."""
        self.place.require_whole("sampling")
        return draw(self, prompts, spec, n, seed,
                              max_new_tokens or self.config.max_response_tokens,
                              temperature=temperature, top_p=top_p, score=score)

    def continuation_logps(self, prompts: list[list[int]], responses: list[tuple[int, list[int]]],
                           specs: list[Any]) -> np.ndarray:
        """Exact log pi(response | prompt) under each spec: [len(responses), len(specs)]."""
        self.place.require_whole("scoring sampled responses")
        return continuation_logps(self, prompts, responses, specs,
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
        whole responses; its regret is measured as served, pluralign.aggregate.served.)"""
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
        texts = {key: [decode_text(torch.tensor(r), self.tokenizer) for r in rows]
                 for key, rows in zip(unique, ids, strict=True)}
        return [sample_row(a, texts[key]) for key, a in zip(keys, data, strict=True)]
