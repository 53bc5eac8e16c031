"""The linear backend's M-step objective (DESIGN §4, §5): the K types' weighted losses from one
phi @ theta^T per evaluation, and the rule that skips rows a type weighs negligibly.

Each type k minimises (sum_a w_ak loss_a(theta_k) + lambda/2 |theta_k|^2) / W_k over its kept
rows; `objective` returns every type's value and gradient at once for
pluralign.core.lbfgs.minimize_blocks. PL-DPO, the default, has its closed-form gradient in numpy
(no autograd graph: at 360 rows the graph's fixed cost was most of an evaluation, at 10^6 its
memory); other losses go through autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pluralign.core import distributed
from pluralign.core.losses import get_loss
from pluralign.core.plackett_luce import ordered_loglik
from pluralign.settings.backends import LinearConfig

if TYPE_CHECKING:
    from pluralign.backends.linear import Design

#: theta[A, D] -> (f[A], grad[A, D]).
Objective = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: The backend's theta . phi per candidate: (design, theta[A, D]) -> z[n, M, A].
Scores = Callable[[Any, torch.Tensor], torch.Tensor]

def kept_rows(weights: np.ndarray, skip_mass: float) -> np.ndarray:
    """Rows a type's fit uses: those of positive weight, less the lightest ones whose weights
    sum to at most `skip_mass` of the total. The rule bounds the error: the fit minimises the
    full objective minus the skipped rows' share, so its gradient differs from the full one by
    at most skip_mass * G, with G a bound on one row's loss gradient (for PL-DPO, 2 beta L
    max |phi|: L ranked places, each a feature minus an average of features)."""
    rows = np.flatnonzero(weights > 0)
    if skip_mass <= 0 or rows.size == 0:
        return rows
    order = np.argsort(weights[rows], kind="stable")
    light = np.cumsum(weights[rows][order])
    drop = int(np.searchsorted(light, skip_mass * light[-1], side="right"))
    return np.sort(rows[order[drop:]])


def objective(d: Design, rows: list[np.ndarray], weights: list[np.ndarray],
              config: LinearConfig, scores: Scores) -> Objective:
    """The blocks' objective for types with kept `rows` and full `weights` (one per type):
    f_k = sum_{a kept} w_ak loss_a / W_k + lambda/2 |theta_k|^2 / W_k. Under torchrun each rank
    sums its share of every type's rows and the sums are all-reduced: every rank then takes the
    same L-BFGS steps and ends with the same theta."""
    mine = [r[distributed.rank()::distributed.world()] for r in rows]
    totals = np.array([w.sum() for w in weights])
    prior = 0.5 * config.l2 / totals
    used, pos = np.unique(np.concatenate(mine), return_inverse=True)
    sub = d if used.size == len(d.rankings) else d.select(used)
    slot = np.concatenate([np.full(r.size, i) for i, r in enumerate(mine)])
    rank = d.rankings.select(np.concatenate(mine))
    wt = np.concatenate([w[r] / t for r, w, t in zip(mine, weights, totals, strict=True)])
    if config.loss == "pl_dpo":
        loss = _pl_loss(sub, pos, slot, rank, wt, len(rows), config.beta)
    else:
        loss = _autograd_loss(sub, pos, slot, rank, wt, len(rows), config, scores)

    def fun(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, g = loss(theta)
        if distributed.world() > 1:
            both = torch.from_numpy(np.concatenate([f[:, None], g], axis=1))
            f, g = (x.numpy() for x in distributed.all_sum_(both).split([1, g.shape[1]], 1))
            f = f[:, 0]
        return f + prior * (theta ** 2).sum(1), g + 2 * prior[:, None] * theta
    return fun


def _autograd_loss(sub: Design, pos: np.ndarray, slot: np.ndarray, rank: Any, wt: np.ndarray,
                   n_types: int, config: LinearConfig, scores: Scores) -> Objective:
    """Any registered loss, its gradient by autograd."""
    loss_rows = get_loss(config.loss, per_row=True)
    pos_t, slot_t, wt_t = torch.as_tensor(pos), torch.as_tensor(slot), torch.as_tensor(wt)

    def fun(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.tensor(theta, requires_grad=True)
        # PL, IPO and distillation are invariant to a per-annotation constant, so the
        # normaliser log Z of the logratios is not needed while fitting.
        z = scores(sub, t)[pos_t, :, slot_t]                        # [pairs, M]
        f = torch.zeros(n_types, dtype=t.dtype).index_add(0, slot_t,
                                                          wt_t * loss_rows(z, rank, config.beta))
        f.sum().backward()
        return f.detach().numpy(), t.grad.numpy()
    return fun


def _pl_loss(sub: Design, pos: np.ndarray, slot: np.ndarray, rank: Any, wt: np.ndarray,
             n_types: int, beta: float) -> Objective:
    """PL-DPO's blocks in closed form: every pair's scores in ranking order are one gather from
    theta (one-hot) or from phi @ theta^T (dense features), its gradient one bincount back."""
    order = rank.order().numpy()                                    # [pairs, M]
    real = np.take_along_axis(rank.mask.numpy(), order, axis=1)
    placed = (np.arange(order.shape[1]) < (rank.ranking >= 0).sum(1).numpy()[:, None]).T
    pad = ~real.T                                                   # [M, pairs]
    floor = np.finfo(np.float64).min / 4
    scale = (beta * wt)[None, :]                                    # d(-wt log P)/dz = -scale g
    if sub.col is not None:
        col = np.take_along_axis(sub.col.numpy()[pos], order, axis=1).clip(min=0).T
    else:
        phi = sub.phi.numpy()
        m = phi.shape[1]
        index = ((pos[:, None] * m + order) * n_types + slot[:, None]).T  # into z[n, M, A]

    def fun(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = theta.shape[1]
        if sub.col is not None:
            flat = slot[None, :] * width + col                      # into theta[A, D]
            z = theta.ravel()[flat]
        else:
            z = (phi @ theta.T).ravel()[index]                      # one phi @ theta^T
        loglik, g = ordered_loglik(np.where(pad, floor, beta * z), placed)
        f = -np.bincount(slot, weights=wt * loglik, minlength=n_types)
        gz = np.where(pad, 0.0, -scale * g).ravel()
        if sub.col is not None:
            grad = np.bincount(flat.ravel(), weights=gz, minlength=theta.size)
        else:
            gfull = np.bincount(index.ravel(), weights=gz, minlength=phi.shape[0] * m * n_types)
            grad = np.tensordot(gfull.reshape(-1, m, n_types), phi, axes=([0, 1], [0, 1]))
        return f, grad.reshape(theta.shape)
    return fun
