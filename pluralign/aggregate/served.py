"""Regret of every deployable policy as it is served (DESIGN §6, "candidates versus what is
served").

The `candidates` estimator restricts each policy to a prompt's candidate responses. A LoRA
policy is served by decoding, and what it decodes is not the candidate-restricted policy: the
token-level merge that `generate --policy fair` decodes is softmax(sum_i q_i log pi_i(.|prefix))
token by token, not prod_i pi_i^q_i normalised over responses. Every served policy has an
exactly computable response log-probability, so its KL-objective regret

    regret_i(pi) = beta E_x E_{y ~ pi} [log pi(y|x) - log pi_i(y|x)]

is estimated without bias by drawing responses from pi on held-out prompts and scoring them
exactly under pi and every type policy. A mixture (draw type policy j with probability p_j,
then decode) is scored from the type policies' own samples: its log-probability is
log sum_j p_j pi_j(y). Responses are cut at the decoding horizon (max_new_tokens), and every
policy is judged on the same horizon. The bootstrap resamples prompts (with their samples).

The linear backend's policies live on each prompt's candidates: there the candidates
estimator is what is served.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pluralign.backends.base import PolicyBackend
from pluralign.core.data import Annotations


@dataclass
class ServedSettings:
    """How served regrets are measured: responses per prompt, how many held-out prompts (a
    seeded random subset; None: all), the decoding horizon (None: the backend's
    max_response_tokens), the seed, and whether to tune the token-level merge's weights on
    the served objective (`tune_merge`)."""

    n_samples: int = 4
    max_prompts: int | None = 32
    max_new_tokens: int | None = None
    random_state: int = 0
    tune: bool = True

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"served n_samples must be >= 1, got {self.n_samples}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"served max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompts is not None and self.max_prompts < 2:
            raise ValueError(f"served max_prompts must be >= 2 (an interval needs two "
                             f"prompts), got {self.max_prompts}")


def served_settings(samples: int, prompts: int | None, tokens: int | None, seed: int,
                    tune: bool = True) -> ServedSettings | None:
    """Settings from the command line or a recipe: 0 samples turns the measure off, 0 (or
    None) prompts means all of them."""
    if samples == 0:
        return None
    return ServedSettings(samples, prompts or None, tokens, seed, tune)


@dataclass
class ServedPolicy:
    """One deployable policy: decoded by `owner` with `spec` (an adapter index, None for the
    base model, or token-level merge weights), or a sequence-level `mixture` of the K type
    policies (no spec: it is scored from their samples)."""

    name: str
    owner: PolicyBackend | None
    spec: Any = None
    mixture: np.ndarray | None = None


@dataclass
class ServedEstimate:
    """units[P, K, J]: type i's regret of policy j on prompt p (mean over its samples);
    `info`: how it was measured."""

    names: list[str]
    units: np.ndarray
    info: dict[str, Any]

    @property
    def matrix(self) -> np.ndarray:
        return self.units.mean(axis=0)


def served_policies(backend: PolicyBackend, pooled: PolicyBackend | None,
                    merged: PolicyBackend | None, fair: np.ndarray | None,
                    mixtures: dict[str, np.ndarray],
                    tuned: np.ndarray | None = None) -> list[ServedPolicy]:
    """The type policies, pooled, base, the token-level merge (and its tuned weights), each
    mixture and the weight-space merge, in the order the candidates table lists them."""
    out = [ServedPolicy(f"type_{k}", backend, k) for k in range(backend.n_types)]
    out += [ServedPolicy("pooled", pooled, 0)] if pooled is not None else []
    out += [ServedPolicy("base", backend, None)]
    out += [ServedPolicy("fair", backend, np.asarray(fair))] if fair is not None else []
    out += [ServedPolicy(TUNED, backend, np.asarray(tuned))] if tuned is not None else []
    out += [ServedPolicy(name, None, mixture=np.asarray(p)) for name, p in mixtures.items()]
    # the merged adapter lives in the type policies' model: decoded there by its name
    return out + ([ServedPolicy("merged", backend, merged.adapter(0))] if merged is not None
                  else [])


def served_regret(backend: PolicyBackend, data: Annotations, policies: list[ServedPolicy],
                  settings: ServedSettings) -> ServedEstimate:
    """Each policy's regret for each type as served, per held-out prompt (see the module)."""
    k, beta = backend.n_types, backend.beta
    prompts = _prompts(data, settings)
    ids = [backend.prompt_tokens(p) for p in prompts]
    n = settings.n_samples
    horizon = settings.max_new_tokens or backend.config.max_response_tokens
    drawn, own, types = {}, {}, {}
    sampled = [p for p in policies if p.mixture is None]
    for p in sampled:  # each policy's seed from its name: adding one changes no other's draws
        seed = settings.random_state + zlib.crc32(p.name.encode()) % 1_000_003
        if p.owner is backend:  # scored by every type in the decoding passes themselves
            out = backend.draw(ids, p.spec, n, seed, horizon, score=(*range(k), p.spec))
            rows, logps = out.ids, out.logps                               # [P, n, K + 1]
        else:  # another model (the pooled policy): decoded, then scored by the types
            rows = p.owner.draw(ids, p.spec, n, seed, horizon).ids
            flat = [(q, y) for q, samples in enumerate(rows) for y in samples]
            logps = np.concatenate([backend.continuation_logps(ids, flat, list(range(k))),
                                    p.owner.continuation_logps(ids, flat, [p.spec])],
                                   axis=1).reshape(len(ids), n, k + 1)
        types[p.name], own[p.name], drawn[p.name] = logps[..., :k], logps[..., k], rows
    units = np.stack([_units(p, own, types, beta, k) for p in policies], axis=2)
    lengths = [len(y) for rows in drawn.values() for samples in rows for y in samples]
    eos = backend.tokenizer.eos_token_id
    cut = np.mean([y[-1] != eos for rows in drawn.values() for samples in rows for y in samples])
    return ServedEstimate([p.name for p in policies], units, {
        "prompts": len(ids), "of_prompts": len(_distinct(data)), "n_samples": n,
        "max_new_tokens": horizon, "mean_tokens": float(np.mean(lengths)),
        "share_cut_at_horizon": float(cut), "random_state": settings.random_state})


#: The column of the token-level merge at weights tuned on the served objective.
TUNED = "fair_tuned"


def tune_merge(backend: PolicyBackend, data: Annotations, candidates: dict[str, np.ndarray],
               settings: ServedSettings, type_weights: np.ndarray | None = None
               ) -> tuple[str, dict[str, Any]]:
    """Which weights of the token-level merge serve best: each candidate (the program's q on
    the candidates, uniform, the MMRA weights...) decoded and scored on tuning prompts
    disjoint from those `served_regret` measures on (so the choice does not flatter the
    figure reported), the lowest (weighted) worst-type regret chosen. The decoded merge is not
    the candidate program's pi_q, so its best weights need not be the program's. Returns the
    chosen name ("" when fewer than 2 other prompts are left to tune on) and what was seen."""
    measured = {json.dumps(p, sort_keys=True) for p in _prompts(data, settings)}
    rest = Annotations([a for a in data if json.dumps(a.prompt, sort_keys=True) not in measured])
    if len(_distinct(rest)) < 2:
        return "", {"skipped": "fewer than 2 held-out prompts besides the measured ones"}
    tuning = ServedSettings(settings.n_samples, settings.max_prompts, settings.max_new_tokens,
                            settings.random_state + 1, tune=False)
    est = served_regret(backend, rest, [ServedPolicy(n, backend, q)
                                        for n, q in candidates.items()], tuning)
    c = np.ones(backend.n_types) if type_weights is None else np.asarray(type_weights)
    worst = (c[:, None] * est.matrix).max(axis=0)
    chosen = est.names[int(np.argmin(worst))]
    return chosen, {"prompts": est.info["prompts"], "n_samples": est.info["n_samples"],
                    "chosen": chosen, "candidates": {
                        n: {"weights": np.asarray(candidates[n]).tolist(),
                            "max_regret": float(w)} for n, w in zip(est.names, worst,
                                                                    strict=True)}}


def _units(p: ServedPolicy, own: dict[str, np.ndarray], types: dict[str, np.ndarray],
           beta: float, k: int) -> np.ndarray:
    """[P, K] regret of policy p per prompt: beta mean_s (log p(y_s) - log pi_i(y_s))."""
    if p.mixture is None:
        return beta * (own[p.name][..., None] - types[p.name]).mean(axis=1)
    out = 0.0
    with np.errstate(divide="ignore"):
        log_p = np.log(p.mixture)
    for j in np.flatnonzero(p.mixture > 0):
        t = types[f"type_{j}"]                                         # samples of type j
        log_mix = logsumexp(t + log_p, axis=2)                         # [P, n]
        out = out + p.mixture[j] * beta * (log_mix[..., None] - t).mean(axis=1)
    return np.broadcast_to(out, (len(next(iter(types.values()))), k)).copy()


def _distinct(data: Annotations) -> dict[str, Any]:
    """Each distinct prompt of `data` once, in order of first appearance."""
    return {json.dumps(a.prompt, sort_keys=True): a.prompt for a in data}


def _prompts(data: Annotations, settings: ServedSettings) -> list[Any]:
    """The prompts served: all distinct ones, or a seeded random subset of max_prompts."""
    prompts = list(_distinct(data).values())
    if len(prompts) < 2:
        raise ValueError("a served regret needs at least 2 distinct prompts in the data")
    if settings.max_prompts is None or len(prompts) <= settings.max_prompts:
        return prompts
    pick = np.random.default_rng(settings.random_state).choice(
        len(prompts), settings.max_prompts, replace=False)
    return [prompts[i] for i in sorted(pick)]
