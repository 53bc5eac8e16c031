"""Losses against independent oracles: enumeration of orderings, choix, TRL's DPO loss."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import choix
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pluralign.core.data import Annotation
from pluralign.core.losses import (
    distill_loss,
    get_loss,
    ipo_loss,
    pl_dpo_loss,
    plackett_luce_logprob,
)
from pluralign.core.rankings import Rankings


@pytest.fixture(autouse=True)
def _float64():
    """Oracle comparisons at 1e-10 need float64; restore the default for other modules."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _rankings(rows: list[tuple[int, list[int]]]) -> Rankings:
    """Rankings from (m, ranking) pairs."""
    return Rankings.from_annotations([Annotation("h", "p", [f"r{i}" for i in range(m)], r)
                                      for m, r in rows])


def _full_prob(scores: np.ndarray, order: tuple[int, ...]) -> float:
    """Probability of a full ordering as a product of successive softmax choices."""
    p, left = 1.0, list(range(len(scores)))
    for i in order:
        p *= math.exp(scores[i]) / sum(math.exp(scores[j]) for j in left)
        left.remove(i)
    return p


@pytest.mark.parametrize("m", [2, 3, 4])
def test_partial_and_full_rankings_match_enumeration(m):
    rng = np.random.default_rng(m)
    scores = rng.normal(size=m) * 2
    prefixes = [p for L in range(1, m + 1) for p in itertools.permutations(range(m), L)]
    got = plackett_luce_logprob(torch.tensor(scores).expand(len(prefixes), m).contiguous(),
                                _rankings([(m, list(p)) for p in prefixes])).exp().numpy()
    orders = list(itertools.permutations(range(m)))
    for prob, prefix in zip(got, prefixes, strict=True):
        # Marginal of a top-L ranking: the sum over every full ordering that begins with it.
        oracle = sum(_full_prob(scores, o) for o in orders if o[: len(prefix)] == prefix)
        assert prob == pytest.approx(oracle, rel=1e-10)


def test_padded_batch_with_mixed_m_and_L_equals_rows_alone():
    rows = [(2, [1, 0]), (4, [3]), (3, [2, 0, 1]), (4, [1, 2])]
    rng = np.random.default_rng(0)
    batch = _rankings(rows)
    scores = torch.tensor(rng.normal(size=batch.mask.shape))
    scores[~batch.mask] = float("nan")  # padding must not matter, even as NaN
    batch_lp = plackett_luce_logprob(scores.nan_to_num(0.0), batch)
    for i, (m, r) in enumerate(rows):
        alone = plackett_luce_logprob(scores[i:i + 1, :m], _rankings([(m, r)]))
        assert batch_lp[i].item() == pytest.approx(alone.item(), abs=1e-12)
    loss = pl_dpo_loss(scores, batch, beta=1.0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("scale", [1.0, 40.0, 700.0])
def test_closed_form_gradient_equals_finite_differences_and_stays_finite(scale):
    """The written-out backward against finite differences (gradcheck) on padded, partial and
    full rankings, and finite at scores whose exp overflows float64 (scale 700)."""
    rng = np.random.default_rng(int(scale))
    rows = []
    for _ in range(40):
        m = int(rng.integers(2, 7))
        rows.append((m, [int(i) for i in rng.permutation(m)[: int(rng.integers(1, m + 1))]]))
    rank = _rankings(rows)
    scores = torch.tensor(rng.normal(size=rank.mask.shape) * scale, requires_grad=True)
    weights = torch.tensor(rng.uniform(size=len(rows)))
    (plackett_luce_logprob(scores, rank) * weights).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[~rank.mask] == 0).all()
    # per row the gradient sums to zero (a shift of every score changes nothing)
    assert scores.grad.sum(dim=1).abs().max() < 1e-9 * max(scale, 1.0)
    if scale < 100:
        x = torch.tensor(rng.normal(size=rank.mask.shape) * scale, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: plackett_luce_logprob(s, rank), (x,))


def test_log_likelihood_equals_choix_on_synthetic_rankings():
    n_items = 8
    params = choix.generate_params(n_items, interval=4.0)
    data = choix.generate_rankings(params, 300, size=4)
    recs = [Annotation("h", "p", [str(i) for i in r], list(range(len(r)))) for r in data]
    scores = torch.tensor(np.array([params[list(r)] for r in data]))
    ours = plackett_luce_logprob(scores, Rankings.from_annotations(recs)).sum().item()
    assert ours == pytest.approx(choix.utils.log_likelihood_rankings(data, params), rel=1e-10)


@pytest.mark.slow
def test_minimising_pl_loss_recovers_choix_mle():
    n_items = 6
    rng = np.random.default_rng(1)
    data = choix.generate_rankings(rng.normal(size=n_items), 400, size=3)
    alpha = 0.01
    items = torch.tensor(np.array(data))
    rank = Rankings(torch.arange(3).expand(len(data), 3).clone(),
                    torch.ones(len(data), 3, dtype=torch.bool))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, requires_grad=True)
        nll = -plackett_luce_logprob(t[items], rank).sum() + alpha * (t ** 2).sum()  # choix
        nll.backward()
        return nll.item(), t.grad.numpy()

    ours = minimize(objective, np.zeros(n_items), jac=True, method="L-BFGS-B",
                    options={"gtol": 1e-10}).x
    theirs = choix.opt_rankings(n_items, data, alpha=alpha, tol=1e-10)
    assert np.allclose(ours - ours.mean(), theirs - theirs.mean(), atol=1e-4)


def _trl_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type):
    """TRL's DPOTrainer loss on given sequence log-probs, driven through its own code path."""
    from trl import DPOTrainer
    b = chosen.shape[0]
    logps = torch.cat([chosen, rejected]).unsqueeze(1)  # one completion token per sequence
    outputs = SimpleNamespace(log_probs=logps, entropy=torch.zeros_like(logps),
                              mean_logits=torch.zeros_like(logps),
                              is_top1=torch.zeros_like(logps, dtype=torch.bool))
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x,
                                    gather=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(2 * b, 2, dtype=torch.long),
              "attention_mask": torch.ones(2 * b, 2, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1]] * (2 * b)),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False)


@pytest.mark.parametrize("loss_type, ours", [("sigmoid", pl_dpo_loss), ("ipo", ipo_loss)])
def test_pairwise_value_and_gradient_equal_trl(loss_type, ours):
    rng = np.random.default_rng(2)
    b, beta = 16, 0.1
    pol = torch.tensor(rng.normal(-40, 5, size=(2, b)), requires_grad=True)
    ref = torch.tensor(rng.normal(-40, 5, size=(2, b)))
    theirs = _trl_loss(pol[0], pol[1], ref[0], ref[1], beta, loss_type)
    (g_theirs,) = torch.autograd.grad(theirs, pol)
    mine = ours((pol - ref).T, _rankings([(2, [0, 1])] * b), beta)
    (g_mine,) = torch.autograd.grad(mine, pol)
    assert mine.item() == pytest.approx(theirs.item(), abs=1e-6)
    assert torch.allclose(g_mine, g_theirs, atol=1e-6)


def test_ipo_averages_the_pairs_a_ranking_implies():
    s = torch.tensor([[0.3, -0.2, 0.5]])
    beta = 0.5
    loss = ipo_loss(s, _rankings([(3, [2])]), beta)  # 2 beat 0 and 1
    expected = ((0.5 - 0.3 - 1) ** 2 + (0.5 + 0.2 - 1) ** 2) / 2
    assert loss.item() == pytest.approx(expected)


def test_distill_is_bernoulli_kl_for_pairs_and_zero_at_the_target():
    beta = 0.5
    s = torch.tensor([[0.4, -1.0]], requires_grad=True)
    r_hat = torch.tensor([[1.0, 0.2]])
    p, q = torch.sigmoid(torch.tensor(0.8)), torch.sigmoid(beta * torch.tensor(1.4))
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    got = distill_loss(s, _rankings([(2, [0, 1])]), beta, targets=r_hat)
    assert got.item() == pytest.approx(kl.item(), abs=1e-12)
    at_target = torch.tensor([[2.0, 0.4, -1.0]], requires_grad=True)
    loss = distill_loss(at_target, _rankings([(3, [0])]), beta, targets=beta * at_target.detach())
    (g,) = torch.autograd.grad(loss, at_target)
    assert loss.item() == pytest.approx(0, abs=1e-12) and g.abs().max() < 1e-12


@pytest.mark.parametrize("name", ["pl_dpo", "ipo"])
def test_weights_normalise_and_zero_weight_rows_cost_nothing(name):
    loss = get_loss(name)
    rng = np.random.default_rng(3)
    rank = _rankings([(3, [0, 1]), (2, [1, 0]), (3, [2])])
    s = torch.tensor(rng.normal(size=rank.mask.shape), requires_grad=True)
    w = torch.tensor([0.5, 0.0, 2.0])
    a = loss(s, rank, 0.7, weights=w)
    assert a.item() == pytest.approx(loss(s, rank, 0.7, weights=3 * w).item())
    (g,) = torch.autograd.grad(a, s)
    assert g[1].abs().max() == 0
    kept = loss(s[[0, 2]], rank.select([0, 2]), 0.7, weights=w[[0, 2]])
    assert a.item() == pytest.approx(kept.item())


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown loss 'kto'.*pl_dpo"):
        get_loss("kto")


def test_settings_know_every_registered_loss():
    from pluralign.core.losses import LOSSES
    from pluralign.settings.backends import LOSS_NAMES
    assert tuple(LOSSES) == LOSS_NAMES


def _random_rankings(rng, n: int = 30, widths=(2, 3, 7, 40)):
    from pluralign.core.data import Annotation
    records = []
    for i in range(n):
        m = int(rng.choice(widths))
        length = int(rng.integers(1, m + 1))
        records.append(Annotation(f"h{i}", "p", [f"r{j}" for j in range(m)],
                                  rng.permutation(m)[:length].tolist()))
    return records


@pytest.mark.parametrize("block", [1, 50, 1 << 22])
def test_pair_blocks_enumerate_exactly_the_implied_pairs(block):
    from pluralign.core.losses import pair_blocks
    from pluralign.core.rankings import Rankings
    rng = np.random.default_rng(0)
    records = _random_rankings(rng)
    rank = Rankings.from_annotations(records)
    got = set()
    for rows, cols, wins in pair_blocks(rank, block):
        assert wins.numel() <= max(block, wins.shape[2])  # one row x one candidate at least
        for r, i, j in torch.nonzero(wins).tolist():
            got.add((int(rows[r]), cols.start + i, j))
    want = set()  # brute force: i ranked above j, or i ranked and j unranked
    for n, a in enumerate(records):
        place = {c: p for p, c in enumerate(a.ranking)}
        for i in a.ranking:
            for j in range(a.m):
                if j != i and place.get(j, a.m) > place[i]:
                    want.add((n, i, j))
    assert got == want


def test_ipo_and_pairwise_metrics_do_not_depend_on_the_block_size(monkeypatch):
    from pluralign.aggregate.evaluation import ranking_metrics
    from pluralign.core import losses
    from pluralign.core.rankings import Rankings
    rng = np.random.default_rng(1)
    rank = Rankings.from_annotations(_random_rankings(rng))
    s = torch.as_tensor(rng.normal(size=rank.mask.shape)).masked_fill(~rank.mask, float("nan"))
    s[:, 0] = s[:, 1]  # some ties
    whole = losses.ipo_loss(s, rank, 0.5), ranking_metrics(s.numpy(), rank)
    monkeypatch.setattr(losses, "PAIR_BLOCK", 3)
    tiny = losses.ipo_loss(s, rank, 0.5), ranking_metrics(s.numpy(), rank)
    assert float(tiny[0]) == pytest.approx(float(whole[0]), rel=1e-12)
    for k in whole[1]:
        np.testing.assert_allclose(tiny[1][k], whole[1][k], rtol=1e-12)


def test_padded_rankings_of_ragged_records():
    """Lists of 2..5 candidates ranked fully, partly or top-1: each row holds its ranking then
    PAD, and the mask marks exactly its candidates."""
    from pluralign.core.rankings import PAD
    rows = [(2, [1, 0]), (5, [3]), (4, [2, 0, 1]), (3, [0, 2, 1]), (5, [4, 3, 2, 1, 0])]
    rank = _rankings(rows)
    assert rank.ranking.shape == (5, 5) and rank.mask.shape == (5, 5)
    for i, (m, r) in enumerate(rows):
        assert rank.ranking[i].tolist() == r + [PAD] * (5 - len(r))
        assert rank.mask[i].tolist() == [j < m for j in range(5)]
    empty = Rankings.from_annotations([])
    assert empty.ranking.shape[0] == 0 and empty.mask.shape[0] == 0
