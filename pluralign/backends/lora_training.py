"""Training the LoRA backend's adapters (DESIGN §5): the weighted M-step of one type, each
adapter with its own optimizer over its own parameters, micro-batches scaled to the weighted
mean, and under a launcher each rank's share of the same length groups one process runs (so
the gradient is the one-process gradient)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pluralign.backends.base import check_weights
from pluralign.core import distributed
from pluralign.core.data import Annotations
from pluralign.core.losses import TEACHER_LOSSES
from pluralign.core.progress import bar
from pluralign.lm.reference import batches, by_length
from pluralign.lm.sharded import sum_grads


class AdapterTraining:
    """LoRABackend's training (a mixin: the model, its placement and the prepared data are the
    backend's)."""

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
        targets = self.teacher_rewards(k, data, w) if cfg.loss in TEACHER_LOSSES else None
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
                    loss, n_tok, rest = self._micro_loss(prep, mb, w, w_mean, targets)
                    if not torch.isfinite(loss):  # every rank holds the whole loss: one verdict
                        raise FloatingPointError(
                            f"{name}: loss is {loss.item()} at step {stats['steps'] + 1}; lower "
                            "the learning_rate or beta, or check the data")
                    self._backward(loss / cfg.grad_accum, rest)
                    stats["tokens"] += n_tok
                    stats["loss"].append(round(loss.item(), 6))
                    if (j + 1) % cfg.grad_accum == 0 or j + 1 == len(micro):
                        if not self.place.sharded:  # FSDP sums them itself
                            sum_grads(params)
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

    def _micro_loss(self, prep: Any, mb: np.ndarray, w: np.ndarray, w_mean: float,
                    targets: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, int, Callable[[], None]]:
        """Weighted loss of annotations `mb`, scaled so that micro-batches average to the
        weighted mean over all rows (an unbiased estimate, whatever the batch's weights); and
        what completes its backward pass on this rank (see _shared_logps). PMLE and RKL also
        read the candidates' reference log-probs, distill and RKL the teacher's `targets`
        [n, M] (rows as the data's)."""
        index = prep.seqs.index[torch.as_tensor(mb)]
        ids = torch.unique(index[index >= 0]).tolist()
        logps, rest = self._shared_logps(prep, ids)
        s_seq = logps - prep.ref.logps[ids].to(self._device, torch.float32)
        local = torch.zeros(len(prep.seqs), dtype=torch.long)
        local[ids] = torch.arange(len(ids))
        device = s_seq.device
        valid = (index >= 0).to(device)
        gathered = s_seq[local[index.clamp(min=0)].to(device)]  # [B, M]; padding masked next
        zero = torch.zeros((), dtype=s_seq.dtype, device=device)
        s = torch.where(valid, gathered, zero)
        ref = prep.ref.logps[index.clamp(min=0)].to(device, s.dtype)  # [B, M]: per sequence
        extra: dict[str, Any] = {"gamma": self.config.gamma,
                                 "ref_logps": torch.where(valid, ref, zero)}
        if targets is not None:
            extra["targets"] = targets[torch.as_tensor(mb)].to(device, s.dtype)
        wt = torch.as_tensor(w[mb], dtype=s.dtype, device=device)
        loss = self.loss_fn(s, prep.rankings.select(mb).to(s.device), self.beta, weights=wt,
                            **extra)
        return loss * (wt.sum() / (len(mb) * w_mean)), prep.seqs.n_tokens(ids), rest

    def _shared_logps(self, prep: Any,
                      ids: list[int]) -> tuple[torch.Tensor, Callable[[], None]]:
        """log pi of sequences `ids` with gradient, and a function to call after the loss's
        backward. One process: policy_logps, nothing after. Several: each rank runs its share
        of the same length groups one process would run (so every value is bit for bit the
        one-process value), the values are summed over ranks into a leaf that every rank's
        loss uses whole, and the function carries the leaf's gradient into this rank's
        groups; summing parameter gradients over ranks then gives the one-process gradient
        (bit for bit with one group per micro-batch; with several, to rounding: the groups'
        gradients are summed in another order)."""
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
        """Type k's weighted loss on `data` (no training; distill and rkl against the teacher
        of type k's last fit)."""
        s = torch.as_tensor(self.logratios(data)[..., k])
        w = torch.as_tensor(check_weights(weights, len(data)))
        extra: dict[str, Any] = {"gamma": self.config.gamma,
                                 "ref_logps": torch.as_tensor(self.reference_logps(data))}
        if self.config.loss in TEACHER_LOSSES:
            extra["targets"] = torch.as_tensor(self.teacher_rewards(k, data, None))
        return float(self.loss_fn(s, self.prepare(data).rankings, self.beta, weights=w,
                                  **extra))

    def teacher_rewards(self, k: int, data: Annotations,
                        weights: np.ndarray | None) -> torch.Tensor:
        """R_hat_k per candidate [n, M] for distill and rkl: the linear backend's type-k reward
        on this LM's embeddings (DESIGN §7), fitted by weighted Plackett–Luce on `weights`
        (None: as last fitted). The embeddings come from the reference pass (with the linear
        start, the same cached pass)."""
        from pluralign.backends.linear import LinearBackend
        cfg = self.config
        if self._teacher is None:
            self._teacher = LinearBackend(
                types=self.n_types, features="embedding", model=cfg.model,
                max_prompt_tokens=cfg.max_prompt_tokens,
                max_response_tokens=cfg.max_response_tokens, token_budget=cfg.token_budget,
                cache=cfg.cache, progress=cfg.progress)
        if weights is not None:
            self._teacher.fit(k, data, weights)
        elif self._teacher.theta_ is None:
            raise ValueError(f"loss {cfg.loss}: type {k} has no teacher reward yet; fit it first")
        r_hat = self._teacher.beta * self._teacher.logratios(data)[..., k]
        return torch.as_tensor(np.nan_to_num(r_hat))

    def iteration_seconds(self, data: Annotations) -> float | None:
        """Estimated seconds of one EM iteration on `data` (K fits over every row, K scoring
        passes), from a timed probe: one micro-batch's forward and backward and one scoring
        batch, scaled by their counts. Adapters are left as they were."""
        cfg = self.config
        prep = self.prepare(data)
        mb = np.arange(min(cfg.batch_size, len(data)))
        self._activate(0)
        self.model.train()
        t0 = time.perf_counter()
        targets = torch.zeros(prep.seqs.index.shape) if cfg.loss in TEACHER_LOSSES else None
        loss, _, rest = self._micro_loss(prep, mb, np.ones(len(data)), 1.0, targets)
        self._backward(loss, rest)
        step = time.perf_counter() - t0
        self.model.zero_grad(set_to_none=True)
        self.model.eval()
        groups = list(batches(by_length(prep.seqs, pack=self.pack), prep.seqs, cfg.token_budget,
                              self.pack))
        t0 = time.perf_counter()
        with torch.no_grad():
            self.policy_logps(prep, groups[0])
        score = time.perf_counter() - t0
        steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
        return self.n_types * (steps * step + len(groups) * score)
