"""The linear backend's M-step objective (DESIGN §4, §5): the K types' weighted losses from one
phi @ theta^T per evaluation, and the rule that skips rows a type weighs negligibly.

Each type k minimises (sum_a w_ak loss_a(theta_k) + lambda/2 |theta_k|^2) / W_k over its kept
rows; `objective` returns every type's value and gradient at once for
pluralign.core.lbfgs.minimize_blocks. PL-DPO, the default, has its closed-form gradient
(losses.ordered_pl, no autograd graph: at 360 rows the graph's fixed cost was most of an
evaluation, at 10^6 its memory); other losses go through autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pluralign.core import distributed
from pluralign.core.losses import get_loss, ordered_pl, rankings_loglik
from pluralign.settings.backends import LinearConfig

if TYPE_CHECKING:
    from pluralign.backends.linear import Design

#: Pairs (row, type) per chunk of a PL-DPO evaluation: [M, 65536] float64 temporaries.
PAIR_CHUNK = 1 << 16
#: Bytes of dense features an M-step keeps gathered in ranking order (the rest are gathered
#: at each evaluation): every type keeping all of 10^7 rows of 3 x 8 features would be 15 GB.
FEATURE_BUDGET = 4 << 30
#: (row, type) pairs per chunk of the E-step's table: [rows, M, K] float64 scores.
E_STEP_CHUNK = 1 << 18

#: (theta[A, D], active[A]) -> (f[A], grad[A, D]), exact for the active types (others: any).
Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
#: The backend's theta . phi per candidate: (design, theta[A, D]) -> z[n, M, A].
Scores = Callable[[Any, torch.Tensor], torch.Tensor]


def kept_rows(weights: np.ndarray, skip_mass: float) -> np.ndarray:
    """Rows a type's fit uses: those of positive weight, less the lightest ones, taken by binary
    order of magnitude (all rows in [2^(e-1), 2^e) at once, lightest first, no sort), while
    their weights sum to at most `skip_mass` of the total. The rule bounds the error: the fit
    minimises the full objective minus the skipped rows' share, so its gradient differs from
    the full one by at most skip_mass * G, with G a bound on one row's loss gradient (for
    PL-DPO, 2 beta L max |phi|: L ranked places, each a feature minus an average of
    features)."""
    rows = np.flatnonzero(weights > 0)
    if skip_mass <= 0 or rows.size == 0:
        return rows
    w = weights[rows]
    exponent = np.frexp(w)[1]
    low = int(exponent.min())
    mass = np.cumsum(np.bincount(exponent - low, weights=w))     # by binary magnitude
    light = int(np.searchsorted(mass, skip_mass * mass[-1], side="right"))  # whole bins
    return rows[exponent - low >= light]


def objective(d: Design, rows: list[np.ndarray], weights: list[np.ndarray],
              config: LinearConfig, scores: Scores,
              teacher: np.ndarray | None = None) -> Objective:
    """The blocks' objective for types with kept `rows` and full `weights` (one per type):
    f_k = sum_{a kept} w_ak loss_a / W_k + lambda/2 |theta_k|^2 / W_k; `teacher` [A, D]: each
    type's reward weights, whose scores are the targets of distill and rkl. Under torchrun each
    rank sums its share of every type's rows and the sums are all-reduced: every rank then
    takes the same L-BFGS steps and ends with the same theta."""
    width = d.rankings.mask.sum(1).numpy()
    # this rank's share of each type's rows, narrowest lists first (chunks of one width)
    mine = [r[distributed.rank()::distributed.world()] for r in rows]
    mine = [r[np.argsort(width[r], kind="stable")] for r in mine]
    d.rankings.order()  # computed once per dataset; the selections below inherit it
    totals = np.array([w.sum() for w in weights])
    prior = 0.5 * config.l2 / totals
    used = np.zeros(len(d.rankings), dtype=bool)
    for r in mine:
        used[r] = True
    pos = (np.cumsum(used) - 1)[np.concatenate(mine)]             # row -> its place in `sub`
    sub = d if used.all() else d.select(np.flatnonzero(used))
    slot = np.concatenate([np.full(r.size, i) for i, r in enumerate(mine)])
    rank = d.rankings.select(np.concatenate(mine))
    wt = np.concatenate([w[r] / t for r, w, t in zip(mine, weights, totals, strict=True)])
    if config.loss == "pl_dpo":
        loss = _pl_loss(sub, pos, slot, rank, wt, len(rows), config.beta)
    else:
        loss = _autograd_loss(sub, pos, slot, rank, wt, len(rows), config, scores, teacher)

    def fun(theta: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, g = loss(theta, active)
        if distributed.world() > 1:
            both = torch.from_numpy(np.concatenate([f[:, None], g], axis=1))
            f, g = (x.numpy() for x in distributed.all_sum_(both).split([1, g.shape[1]], 1))
            f = f[:, 0]
        return f + prior * (theta ** 2).sum(1), g + 2 * prior[:, None] * theta
    return fun


def _autograd_loss(sub: Design, pos: np.ndarray, slot: np.ndarray, rank: Any, wt: np.ndarray,
                   n_types: int, config: LinearConfig, scores: Scores,
                   teacher: np.ndarray | None = None) -> Objective:
    """Any registered loss, its gradient by autograd; the candidates' reference log-probs and
    (distill, rkl) the teacher's rewards go with the scores."""
    loss_rows = get_loss(config.loss, per_row=True)
    pos_t, slot_t, wt_t = torch.as_tensor(pos), torch.as_tensor(slot), torch.as_tensor(wt)
    extra = {"gamma": config.gamma, "ref_logps": sub.log_ref[pos_t]}
    if teacher is not None:
        extra["targets"] = scores(sub, torch.as_tensor(teacher))[pos_t, :, slot_t]

    def fun(theta: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.tensor(theta, requires_grad=True)
        # Every loss here is invariant to a per-annotation constant in the log-ratios (PMLE
        # and RKL renormalise over the candidates), so log Z is not needed while fitting.
        z = scores(sub, t)[pos_t, :, slot_t]                        # [pairs, M]
        f = torch.zeros(n_types, dtype=t.dtype).index_add(
            0, slot_t, wt_t * loss_rows(z, rank, config.beta, **extra))
        f.sum().backward()
        return f.detach().numpy(), t.grad.numpy()
    return fun


def _pl_loss(sub: Design, pos: np.ndarray, slot: np.ndarray, rank: Any, wt: np.ndarray,
             n_types: int, beta: float) -> Objective:
    """PL-DPO's blocks in closed form (no autograd graph). Pairs go PAIR_CHUNK at a time
    through torch's kernels (two threads here; numpy's logaddexp was 10x slower), so
    temporaries stay bounded. One-hot: a chunk's scores are one gather from theta, its
    gradient one scatter back. Dense features: each chunk's features are gathered once per
    fit in ranking order ([places, pairs, D]: pairs x M x D x 8 bytes, 1.5 GB for K = 8 types
    each keeping all of 10^6 rows of 3 candidates x 8 features; past FEATURE_BUDGET gathered
    at each evaluation), so an evaluation reads them twice, for active types only, in order;
    scoring all K types over all rows with one theta @ phi^T and scattering gradients back
    took twice as long at 10^6 rows."""
    order = rank.order()                                            # [pairs, M]
    real = rank.mask.gather(1, order)
    # [M, pairs] layouts, contiguous: each place's row is then one contiguous vector
    placed = (torch.arange(order.shape[1]) < (rank.ranking >= 0).sum(1)[:, None]).T.contiguous()
    pad = (~real).T.contiguous()
    padded, full = bool(pad.any()), bool(placed.all())
    floor = torch.finfo(torch.float64).min / 4
    wt_t = torch.as_tensor(wt)
    scale = -beta * wt_t                                           # d(wt * -log P)/dz = scale g
    chunks = _chunks(slot, rank.mask.sum(1).numpy(), n_types)
    if sub.col is not None:
        col = sub.col[torch.as_tensor(pos)].gather(1, order).clamp(min=0).T.contiguous()
    else:
        n, m, width = sub.phi.shape
        flat = sub.phi.reshape(n * m, width)
        at = (torch.as_tensor(pos)[:, None] * m + order).T.contiguous()  # [M, pairs]: flat rows
        feats = _kept_features(flat, at, chunks)

    def fun(theta: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.from_numpy(theta)
        f = np.zeros(n_types)
        grad = torch.zeros(t.shape, dtype=torch.float64)
        for i, (k, c0, c1, w) in enumerate(chunks):
            if not active[k]:  # only the types L-BFGS still moves
                continue
            part = (slice(0, w), slice(c0, c1))                     # places past w: padding
            if sub.col is None:
                x = feats[i] if feats[i] is not None else flat[at[part[0], c0:c1]]
                a = (x @ t[k]).mul_(beta)
            else:
                where = k * t.shape[1] + col[part]
                a = t.reshape(-1)[where].mul_(beta)
            if padded:
                a.masked_fill_(pad[part], floor)
            loglik, g = ordered_pl(a, None if full else placed[part])
            f[k] -= float(wt_t[c0:c1] @ loglik)
            g.mul_(scale[c0:c1])
            if padded:
                g.masked_fill_(pad[part], 0.0)
            if sub.col is None:
                grad[k] += _long_vecmat(g.reshape(-1), x.reshape(-1, t.shape[1]))
            else:
                grad.view(-1).index_add_(0, where.reshape(-1), g.reshape(-1))
        return f, grad.numpy()
    return fun


def _kept_features(flat: torch.Tensor, at: torch.Tensor,
                   chunks: list[tuple[int, int, int, int]]) -> list[torch.Tensor | None]:
    """Each chunk's features gathered in ranking order ([w, c, D]), while they fit in
    FEATURE_BUDGET bytes; None for the chunks past it, gathered again at each evaluation."""
    out: list[torch.Tensor | None] = []
    held = 0
    for _, c0, c1, w in chunks:
        size = w * (c1 - c0) * flat.shape[1] * flat.element_size()
        held += size
        out.append(flat[at[:w, c0:c1]].contiguous() if held <= FEATURE_BUDGET else None)
    return out


def _long_vecmat(v: torch.Tensor, x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """v[N] @ x[N, D] for a small D and a long N, as a batch of N / block products summed:
    BLAS's one product ran at half the speed."""
    n_blocks = x.shape[0] // block
    cut = n_blocks * block
    out = torch.bmm(v[:cut].view(n_blocks, 1, block), x[:cut].view(n_blocks, block, x.shape[1]))
    return out.sum((0, 1)) + v[cut:] @ x[cut:]


def _chunks(slot: np.ndarray, width: np.ndarray,
            n_types: int) -> list[tuple[int, int, int, int]]:
    """(type, start, stop, list width) of the pairs' chunks: one type and one width each (pairs
    come sorted by type, then width), at most PAIR_CHUNK pairs. A chunk's arrays span only its
    own width, so one 3,000-response list does not pad every other row to 3,000 places."""
    if len(slot) == 0:  # this rank's share of a tiny dataset can be empty
        return []
    cut = np.flatnonzero((np.diff(slot) != 0) | (np.diff(width) != 0)) + 1
    out = []
    for a, b in zip(np.r_[0, cut], np.r_[cut, len(slot)], strict=True):
        for c0 in range(int(a), int(b), PAIR_CHUNK):
            out.append((int(slot[a]), c0, min(c0 + PAIR_CHUNK, int(b)), int(width[a])))
    return out


def ranking_loglik(d: Design, theta: np.ndarray, beta: float,
                   ref_weight: float = 0.0) -> np.ndarray:
    """log P_k(ranking | beta * s_k + ref_weight * log pi_0) [n, K] for every row and type, a
    chunk of rows at a time. Plackett–Luce ignores a per-row constant, so theta . phi stands
    in for the log-ratios s_k = theta_k . phi - log Z_k: the E-step needs neither the
    normaliser nor the [n, M, K] log-ratio array."""
    t = torch.from_numpy(theta)
    n, k = len(d.rankings), t.shape[0]
    out = torch.empty(n, k, dtype=torch.float64)
    step = max(1, E_STEP_CHUNK // k)
    for r0 in range(0, n, step):
        rows = slice(r0, min(r0 + step, n))
        z = t.T[d.col[rows].clamp(min=0)] if d.col is not None else d.phi[rows] @ t.T
        z = beta * z
        if ref_weight:
            z += ref_weight * d.log_ref[rows].unsqueeze(-1)
        out[rows] = rankings_loglik(z, d.rankings.select(torch.arange(rows.start, rows.stop)))
    return out.numpy()
