"""The E-step of EM-DPO (DESIGN §4) and the posteriors it yields.

Under type k the likelihood of annotator h's annotations is L_hk = prod_a P_k(tau_a | x_a),
Plackett–Luce on rewards beta * s_k; log gamma_hk = log eta_k + log L_hk, normalised over k
(log-sum-exp). Also the k-means start on score statistics and the posteriors of new annotators
under fitted policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln, logsumexp

from pluralign.backends.base import PolicyBackend
from pluralign.core import distributed
from pluralign.core.data import Annotations, as_annotations

if TYPE_CHECKING:
    import torch

    from pluralign.core.rankings import Rankings


def rankings(data: Annotations) -> Rankings:
    """The rankings as tensors. torch is imported here and in the functions that compute, not
    at the top, so that `pluralign run` checks a config before paying for torch."""
    return as_annotations(data).rankings()


# -- the E-step -----------------------------------------------------------------------------
def annotation_loglik(logratios: np.ndarray, rankings: Rankings, beta: float,
                      ref_logps: np.ndarray | None = None, ref_weight: float = 0.0) -> np.ndarray:
    """log P_k(tau_a | x_a) for every annotation and type: [n, M, K] -> [n, K], on rewards
    beta * s (+ ref_weight * log pi_0 for PMLE and RKL types: losses.reward_coefficients).
    Padding may be NaN; a non-finite score on a real candidate is an error (never read as 0)."""
    import torch

    from pluralign.backends.base import check_finite
    from pluralign.core.losses import rankings_loglik
    check_finite(logratios, None, "log-ratio", rankings.mask.numpy())
    scores = beta * torch.as_tensor(logratios, dtype=torch.float64)
    if ref_weight and ref_logps is not None:
        scores += ref_weight * torch.as_tensor(ref_logps, dtype=torch.float64).unsqueeze(-1)
    return rankings_loglik(scores, rankings).numpy()


def type_loglik(backend: PolicyBackend, logratios: np.ndarray, data: Annotations) -> np.ndarray:
    """annotation_loglik of `logratios` (the backend's types' columns) on the rewards the
    backend's loss ranks by."""
    a, b = backend.reward_coefficients()
    ref = backend.reference_logps(data) if b else None
    return annotation_loglik(logratios, rankings(data), a, ref, b)


def reference_loglik(data: Annotations) -> float:
    """log-likelihood of the rankings under the reference scores (s = 0, every ordering of a
    prompt's candidates equally likely): sum over annotations of -sum_{j<L} log(m - j)."""
    rank = rankings(data)
    m = rank.mask.sum(1).numpy().astype(np.float64)
    length = (rank.ranking >= 0).sum(1).numpy()
    return -float((gammaln(m + 1) - gammaln(m - length + 1)).sum())  # log m!/(m - L)!


def annotator_loglik(per_annotation: np.ndarray, codes: np.ndarray,
                     n_annotators: int) -> np.ndarray:
    """log L_hk: the sum over each annotator's annotations, [n, K] -> [H, K]."""
    out = np.zeros((n_annotators, per_annotation.shape[1]))
    for k in range(per_annotation.shape[1]):  # bincount: np.add.at is 10x slower at 10^6
        out[:, k] = np.bincount(codes, weights=per_annotation[:, k], minlength=n_annotators)
    return out


def mixture_loglik(log_lik: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Each annotator's log-likelihood with the type summed out: log sum_k eta_k L_hk, [H]."""
    with np.errstate(divide="ignore"):
        return logsumexp(log_lik + np.log(priors), axis=1)


def e_step(log_lik: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, float]:
    """Posteriors gamma [H, K] and the observed log-likelihood sum_h log sum_k eta_k L_hk."""
    lse = mixture_loglik(log_lik, priors)
    with np.errstate(divide="ignore"):
        return np.exp(log_lik + np.log(priors) - lse[:, None]), float(lse.sum())


# -- initialisation -------------------------------------------------------------------------
def score_statistics(data: Annotations, phi: torch.Tensor | None = None,
                     col: torch.Tensor | None = None, width: int = 0) -> np.ndarray:
    """Per-annotator preference statistics: the gradient of each annotator's PL log-likelihood
    with respect to a linear reward's weights at zero, per choice made, averaged over their
    annotations.
    Annotators of one type share its expected direction, which k-means++ can find."""
    import torch

    from pluralign.core.losses import plackett_luce_logprob
    rank = rankings(data)
    z = torch.zeros(rank.mask.shape, dtype=torch.float64, requires_grad=True)
    plackett_luce_logprob(z, rank).sum().backward()
    # per choice, not per annotation: a 10,000-way ranking would otherwise outweigh everything
    choices = (rank.ranking >= 0).sum(dim=1, keepdim=True).clamp_min(1)
    g = z.grad.masked_fill(~rank.mask, 0.0) / choices
    codes, ids = as_annotations(data).annotator_codes()
    if phi is not None:
        per = torch.einsum("nm,nmd->nd", g, phi).numpy()
    else:
        per = np.zeros((len(data), width))
        rows = np.repeat(np.arange(len(data)), rank.mask.shape[1])
        flat_col, flat_g = col.reshape(-1).numpy(), g.reshape(-1).numpy()
        keep = flat_col >= 0
        np.add.at(per, (rows[keep], flat_col[keep]), flat_g[keep])
    out = np.zeros((len(ids), per.shape[1]))
    np.add.at(out, codes, per)
    out /= np.bincount(codes, minlength=len(ids))[:, None]
    return out if phi is not None else _standardised(out)


def _standardised(stats: np.ndarray) -> np.ndarray:
    """One-hot statistics, each column scaled to unit spread over annotators: the counterpart of
    the standardisation given and embedding features get. Raw, the options that vary most (a
    two-option question everyone answers) outweigh the rest and k-means splits their noise: on
    30 survey questions of two education groups it found nothing (ARI 0.00), scaled 0.81."""
    spread = stats.std(axis=0)
    return (stats - stats.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def kmeans_posteriors(features: np.ndarray, k: int, seed: int, smooth: float = 0.0) -> np.ndarray:
    """Posteriors from a k-means++ clustering: (1 - smooth) on the cluster, the rest spread.
    Hard by default, as scikit-learn's GaussianMixture starts: the first M-step then fits each
    type on its own cluster's rows only (a smoothed start weighed every row for every type, at
    10^6 rows and K = 8 half of the fit's L-BFGS work)."""
    if k == 1:
        return np.ones((features.shape[0], 1))
    from sklearn.cluster import KMeans
    labels = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit_predict(
        features)
    gamma = np.full((features.shape[0], k), smooth / k)
    gamma[np.arange(len(labels)), labels] += 1.0 - smooth
    return gamma


def loglik_table(backend: PolicyBackend, data: Annotations) -> tuple[np.ndarray, list[str]]:
    """log L_hk of every annotator of `data` under the backend's K policies, and the ids its
    rows follow. Under torchrun a backend that scores rows on their own (`row_sharded`: the
    linear one) scores this rank's share of the annotations and the per-annotator sums are
    all-reduced, so every rank holds the one-process table."""
    data = as_annotations(data)
    codes, ids = data.annotator_codes()
    if backend.row_sharded and distributed.world() > 1:
        rows = np.arange(distributed.rank(), len(data), distributed.world())
        data, codes = _share(data, rows), codes[rows]
    per = backend.ranking_loglik(data)
    if per is None or not np.isfinite(per).all():  # the log-ratios' check names the candidate
        per = type_loglik(backend, backend.logratios(data), data)
    table = annotator_loglik(per, codes, len(ids))
    if backend.row_sharded and distributed.world() > 1:
        import torch
        distributed.all_sum_(torch.from_numpy(table))
    return table, ids


#: This rank's share of the last dataset split (EM asks at every iteration; a new Annotations
#: would rebuild its rankings and designs each time).
_SHARE: dict[str, Annotations] = {}


def _share(data: Annotations, rows: np.ndarray) -> Annotations:
    key = f"{data.memo_key}:{distributed.rank()}/{distributed.world()}"
    if key not in _SHARE:
        _SHARE.clear()
        _SHARE[key] = data.subset(rows.tolist())
    return _SHARE[key]


def type_posteriors(backend: PolicyBackend, priors: np.ndarray,
                    data: Annotations) -> tuple[np.ndarray, list[str]]:
    """One E-step with fixed policies: each annotator's type posterior given all of their
    annotations in `data` (for annotators never seen in training too). Returns (gamma, ids)."""
    table, ids = loglik_table(backend, data)
    gamma, _ = e_step(table, np.asarray(priors))
    return gamma, ids
