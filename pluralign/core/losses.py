"""Preference losses on log-ratios s = log pi - log pi_ref (DESIGN §3, §4, §7): PL-DPO, IPO,
preference distillation, preference MLE (PMLE) and reverse KL (RKL).

Every loss takes `logratios[n, M]` (padding ignored), `Rankings`, `beta` and optional
per-annotation `weights`, and returns the weighted mean over annotations normalised by the sum of
the weights, so that a type's loss scale does not depend on its size. `LOSSES` maps names to them;
`ROW_LOSSES` to their values per annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from pluralign.core.rankings import Rankings

Loss = Callable[..., torch.Tensor]


def plackett_luce_logprob(scores: torch.Tensor, rankings: Rankings) -> torch.Tensor:
    """log P(ranking | scores) per annotation for (partial) rankings; [n, M] -> [n].

    At position j the denominator runs over every candidate not yet placed, so the unranked
    candidates of a top-L ranking stay in every denominator (DESIGN §3). With the candidates in
    ranking order (unranked after, padding last), all denominators are one reverse cumulative
    log-sum-exp.
    """
    # A large finite negative, not -inf, for padding: finite values keep gradients NaN-free.
    floor = torch.finfo(scores.dtype).min / 4
    ordered = scores.masked_fill(~rankings.mask, floor).gather(1, rankings.order())
    length = (rankings.ranking >= 0).sum(dim=1)
    return _OrderedPL.apply(ordered, length)


#: Lists longer than this take logcumsumexp instead of a loop over their places (measured: the
#: loop is 7x faster at 3 places, logcumsumexp from a few tens on).
LOOP_PLACES = 16


class _OrderedPL(torch.autograd.Function):
    """sum_{j<L} (a_j - log sum_{i>=j} exp a_i) for scores `a[n, M]` already in ranking order,
    with its closed-form gradient. Written out because autograd's logcumsumexp, flips and masks
    cost 5x more. Rows run down the columns ([M, n] layout), so every step is one contiguous
    vector operation."""

    @staticmethod
    def forward(ctx, ordered: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        a = ordered.T.contiguous()                                   # [M, n]
        tails = _tails(a)
        placed = torch.arange(a.shape[0], device=a.device).unsqueeze(1) < length.unsqueeze(0)
        ctx.save_for_backward(a, tails, placed)
        return (a - tails).masked_fill_(~placed, 0.0).sum(dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        a, tails, placed = ctx.saved_tensors
        return (_tail_grad(a, -tails, placed) * grad.unsqueeze(0)).T, None


def _tails(a: torch.Tensor) -> torch.Tensor:
    """T_j = log sum_{i>=j} exp a_i for a[M, n], a reverse cumulative log-sum-exp: a loop of
    whole-row operations for short lists, torch's logcumsumexp for long ones (a 3,000-response
    list would otherwise be 3,000 operations)."""
    if a.shape[0] > LOOP_PLACES:
        return torch.logcumsumexp(a.flip(0), 0).flip(0)
    tails = torch.empty_like(a)
    tails[-1] = a[-1]
    for j in range(a.shape[0] - 2, -1, -1):
        torch.logaddexp(a[j], tails[j + 1], out=tails[j])
    return tails


def _tail_grad(a: torch.Tensor, neg: torch.Tensor, placed: torch.Tensor | None) -> torch.Tensor:
    """d log P / d a_i = [i placed] - sum_{j<=i, j placed} exp(a_i - T_j), given neg = -T (its
    memory is reused): the sum is exp(a_i + c_i) with c_i = log sum_{j<=i placed} exp(-T_j), a
    forward cumulative log-sum-exp."""
    if placed is not None:
        neg.masked_fill_(~placed, -torch.inf)
    if a.shape[0] > LOOP_PLACES:
        c = torch.logcumsumexp(neg, 0)
    else:
        c = torch.empty_like(a)
        c[0] = neg[0]
        for j in range(1, a.shape[0]):
            torch.logaddexp(c[j - 1], neg[j], out=c[j])
    c.add_(a).exp_().neg_()
    return c.add_(1.0) if placed is None else c.add_(placed)


def ordered_pl(a: torch.Tensor, placed: torch.Tensor | None,
               grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """_OrderedPL without autograd, for code that sums its own gradients (the linear backend's
    M-step, the E-step): log P per column of a[M, n] in ranking order and, with `grad`, its
    gradient [M, n]. `placed` [M, n] marks the ranked places; None: every place (full
    rankings, no padding), which skips the masks."""
    tails = _tails(a)
    if placed is None:
        loglik = a.sum(0) - tails.sum(0)
    else:
        loglik = (a - tails).masked_fill_(~placed, 0.0).sum(0)
    return loglik, (_tail_grad(a, tails.neg_(), placed) if grad else None)


def rankings_loglik(scores: torch.Tensor, rankings: Rankings) -> torch.Tensor:
    """log P(ranking | scores[..., k]) of every row under every column k, without autograd:
    [n, M, K] -> [n, K] (the E-step's table). Padding may hold anything, NaN included."""
    n, m, k = scores.shape
    floor = torch.finfo(scores.dtype).min / 4
    ordered = scores.masked_fill(~rankings.mask.unsqueeze(-1), floor).gather(
        1, rankings.order().unsqueeze(-1).expand(-1, -1, k))            # ranked first
    placed = torch.arange(m).unsqueeze(1) < (rankings.ranking >= 0).sum(1).unsqueeze(0)
    a = ordered.permute(1, 0, 2).reshape(m, n * k)
    return ordered_pl(a, placed.repeat_interleave(k, 1), grad=False)[0].reshape(n, k)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w * v) / sum(w); the plain mean without weights; 0 when every weight is 0."""
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (weights * values).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _clean(logratios: torch.Tensor, rankings: Rankings) -> torch.Tensor:
    """Zero the padded slots (which may hold NaN) so they cannot leak into sums."""
    return logratios.masked_fill(~rankings.mask, 0.0)


def pl_dpo_rows(logratios: torch.Tensor, rankings: Rankings, beta: float,
                **_: object) -> torch.Tensor:
    """Plackett–Luce DPO per annotation: -log P(ranking | beta * s); for m = 2 it is DPO's
    sigmoid loss."""
    return -plackett_luce_logprob(beta * _clean(logratios, rankings), rankings)


def pl_dpo_loss(logratios: torch.Tensor, rankings: Rankings, beta: float,
                weights: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Plackett–Luce DPO, the weighted mean of pl_dpo_rows."""
    return weighted_mean(pl_dpo_rows(logratios, rankings, beta), weights)


#: Most elements in one block of pair comparisons (rows x i-candidates x j-candidates): bounds
#: the memory of pairwise terms whatever the list size (a 10,000-response row would need 10^8).
PAIR_BLOCK = 1 << 22


def pair_blocks(rankings: Rankings,
                block: int | None = None) -> Iterator[tuple[torch.Tensor, slice, torch.Tensor]]:
    """The pairs a ranking implies (i placed above j; a ranked i beats every unranked j), in
    blocks: yields (rows, i-slice, wins[r, b, w]) with w the widest list among `rows`. Rows are
    grouped by list size, so short lists are never padded to a long one's width, and a single
    wide row is split over its i-candidates: no block exceeds `block` elements (or one row x
    one candidate)."""
    block = block or PAIR_BLOCK
    pos = rankings.positions()
    ranked = (pos < rankings.ranking.shape[1]) & rankings.mask
    sizes = rankings.mask.sum(dim=1)
    order = torch.argsort(sizes, stable=True)
    start = 0
    while start < len(order):
        stop = start + 1  # grow the group while the widest list's square still fits
        while stop < len(order) and (stop + 1 - start) * int(sizes[order[stop]]) ** 2 <= block:
            stop += 1
        rows = order[start:stop]
        w = int(sizes[rows].max())
        step = w if len(rows) * w * w <= block else max(1, block // w)
        p, mask = pos[rows, :w], rankings.mask[rows, :w]
        for i0 in range(0, w, step):
            cols = slice(i0, min(w, i0 + step))
            wins = (p[:, cols].unsqueeze(2) < p.unsqueeze(1)) & \
                ranked[rows, cols].unsqueeze(2) & mask.unsqueeze(1)
            yield rows, cols, wins
        start = stop


def beats(rankings: Rankings) -> torch.Tensor:
    """beats[n, i, j]: the ranking places i above j, as one dense tensor (small data and tests
    only: pair_blocks bounds the memory)."""
    n, m = rankings.mask.shape
    out = torch.zeros(n, m, m, dtype=torch.bool, device=rankings.mask.device)
    for rows, cols, wins in pair_blocks(rankings):
        w = wins.shape[2]
        out[rows.unsqueeze(1), torch.arange(m)[cols].unsqueeze(0), :w] = wins
    return out


def ipo_loss(logratios: torch.Tensor, rankings: Rankings, beta: float,
             weights: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """IPO, the weighted mean of ipo_rows."""
    return weighted_mean(ipo_rows(logratios, rankings, beta), weights)


def ipo_rows(logratios: torch.Tensor, rankings: Rankings, beta: float,
             **_: object) -> torch.Tensor:
    """IPO (Azar et al.) per annotation: (s_w - s_l - 1/(2 beta))^2, averaged over the pairs
    its ranking implies.

    Sequence-level log-ratios as in the paper; TRL additionally divides by token counts.
    """
    s = _clean(logratios, rankings)
    total = torch.zeros(len(rankings), dtype=s.dtype, device=s.device)
    count = torch.zeros_like(total)
    for rows, cols, wins in pair_blocks(rankings):
        sr = s[rows, : wins.shape[2]]
        diff = sr[:, cols].unsqueeze(2) - sr.unsqueeze(1)
        total = total.index_add(0, rows, (((diff - 1.0 / (2.0 * beta)) ** 2) * wins).sum((1, 2)))
        count = count.index_add(0, rows, wins.sum((1, 2)).to(s.dtype))
    return total / count.clamp_min(1)


def distill_loss(logratios: torch.Tensor, rankings: Rankings, beta: float,
                 weights: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                 **_: object) -> torch.Tensor:
    """Preference distillation, the weighted mean of distill_rows."""
    return weighted_mean(distill_rows(logratios, rankings, beta, targets=targets), weights)


def distill_rows(logratios: torch.Tensor, rankings: Rankings, beta: float,
                 targets: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Preference distillation (DESIGN §7) per annotation: KL(softmax(R_hat) ||
    softmax(beta * s)) over the annotation's candidates, with `targets` = R_hat, a teacher
    reward. The first-choice distribution of Plackett–Luce; for m = 2 it is
    KL(Bern(sigmoid(R_hat+ - R_hat-)) || Bern(sigmoid(beta (s+ - s-)))), the soft-label loss of
    Yun et al."""
    if targets is None:
        raise ValueError("the distill loss needs `targets`: a teacher reward per candidate")
    floor = torch.finfo(logratios.dtype).min / 4
    mask = rankings.mask
    log_q = torch.log_softmax((beta * _clean(logratios, rankings)).masked_fill(~mask, floor), 1)
    log_p = torch.log_softmax(targets.to(logratios.dtype).masked_fill(~mask, floor), 1)
    return (log_p.exp() * (log_p - log_q)).masked_fill(~mask, 0.0).sum(dim=1)


def candidate_policies(logratios: torch.Tensor, rankings: Rankings,
                       ref_logps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi and log pi_0 restricted to each annotation's candidates (log-softmax of
    log pi_0 + s and of log pi_0 over the real candidates; padding at a large negative).
    `ref_logps` None: pi_0 uniform over the candidates."""
    floor = torch.finfo(logratios.dtype).min / 4
    mask = rankings.mask
    ref = torch.zeros_like(logratios) if ref_logps is None else \
        ref_logps.to(logratios.dtype).masked_fill(~mask, 0.0)
    log_pi = torch.log_softmax((ref + _clean(logratios, rankings)).masked_fill(~mask, floor), 1)
    return log_pi, torch.log_softmax(ref.masked_fill(~mask, floor), 1)


def _expect(log_p: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_a p(a) values(a) over the real candidates, per row."""
    return (log_p.exp() * values).masked_fill(~mask, 0.0).sum(dim=1)


def pmle_rows(logratios: torch.Tensor, rankings: Rankings, beta: float, gamma: float = 1.0,
              ref_logps: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Preference MLE (Yun et al.; DESIGN §7) per annotation: -log PL(ranking | gamma log pi)
    + beta KL(pi || pi_0), pi and pi_0 restricted to the annotation's candidates (exact there;
    no samples). For m = 2: -log sigmoid(gamma log pi(a+)/pi(a-)) + beta KL. `beta` weighs the
    KL; `gamma` is the preference temperature."""
    log_pi, log_ref = candidate_policies(logratios, rankings, ref_logps)
    fit = -plackett_luce_logprob(gamma * log_pi, rankings)
    return fit + beta * _expect(log_pi, log_pi - log_ref, rankings.mask)


def pmle_loss(logratios: torch.Tensor, rankings: Rankings, beta: float,
              weights: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
    """Preference MLE, the weighted mean of pmle_rows."""
    return weighted_mean(pmle_rows(logratios, rankings, beta, **kw), weights)


def rkl_rows(logratios: torch.Tensor, rankings: Rankings, beta: float, gamma: float = 1.0,
             ref_logps: torch.Tensor | None = None, targets: torch.Tensor | None = None,
             **_: object) -> torch.Tensor:
    """Reverse KL (Yun et al.; DESIGN §7) per annotation, exact over its candidates:
    -E_pi[R_hat] - gamma H(pi) + beta KL(pi || pi_0), with `targets` = R_hat per candidate.
    Its minimiser is pi proportional to pi_0^(beta/(beta+gamma)) exp(R_hat/(beta+gamma))."""
    if targets is None:
        raise ValueError("the rkl loss needs `targets`: a reward R_hat per candidate")
    log_pi, log_ref = candidate_policies(logratios, rankings, ref_logps)
    r_hat = targets.to(logratios.dtype).masked_fill(~rankings.mask, 0.0)
    return _expect(log_pi, -r_hat + gamma * log_pi + beta * (log_pi - log_ref), rankings.mask)


def rkl_loss(logratios: torch.Tensor, rankings: Rankings, beta: float,
             weights: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
    """Reverse KL, the weighted mean of rkl_rows."""
    return weighted_mean(rkl_rows(logratios, rankings, beta, **kw), weights)


LOSSES: dict[str, Loss] = {"pl_dpo": pl_dpo_loss, "ipo": ipo_loss, "distill": distill_loss,
                           "pmle": pmle_loss, "rkl": rkl_loss}
#: The same losses per annotation, unweighted ([n]): for fits that sum them their own way.
ROW_LOSSES: dict[str, Loss] = {"pl_dpo": pl_dpo_rows, "ipo": ipo_rows, "distill": distill_rows,
                               "pmle": pmle_rows, "rkl": rkl_rows}
#: Losses fitted to a teacher reward R_hat (`targets`) rather than to the rankings directly.
TEACHER_LOSSES = ("distill", "rkl")


def reward_coefficients(name: str, beta: float, gamma: float) -> tuple[float, float]:
    """(a, b): a policy fitted with loss `name` ranks by the reward a * s + b * log pi_0 (the
    E-step's Plackett–Luce scores). DPO-like losses: beta * s. PMLE: gamma * log pi. RKL: the
    R_hat its optimum implies, (beta + gamma) log pi - beta log pi_0."""
    if name == "pmle":
        return gamma, gamma
    if name == "rkl":
        return beta + gamma, gamma
    return beta, 0.0


def get_loss(name: str, per_row: bool = False) -> Loss:
    """The loss registered as `name` (per annotation with `per_row`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(LOSSES)}")
    return (ROW_LOSSES if per_row else LOSSES)[name]
