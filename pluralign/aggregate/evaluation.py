"""Every policy against every type (DESIGN §7): ranking metrics per annotation and per group,
the policy-by-type tables with their intervals, discovery against known labels, the spread of
the implied rewards, and the personalization curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pluralign.backends.base import check_finite
from pluralign.core import bootstrap
from pluralign.core.labels import adjusted_rand, normalized_mutual_info
from pluralign.core.losses import pair_blocks, plackett_luce_logprob
from pluralign.core.rankings import Rankings
from pluralign.em.estep import annotator_loglik, e_step


def ranking_metrics(scores: np.ndarray, rankings: Rankings) -> dict[str, np.ndarray]:
    """Per-annotation agreement of `scores[n, M]` (higher = preferred) with the observed rankings:
    top-1 accuracy (a tie at the top shares the credit, so a constant score gets chance level),
    pairwise accuracy over the pairs a ranking implies (ties count one half), and
    Kendall's tau over those pairs ((concordant - discordant) / pairs)."""
    real = rankings.mask.numpy()
    s = torch.as_tensor(np.where(real, scores, -np.inf), dtype=torch.float64)
    n = len(rankings)
    n_pairs, concordant, discordant, ties = (torch.zeros(n, dtype=torch.float64)
                                             for _ in range(4))
    for rows, cols, wins in pair_blocks(rankings):  # bounded memory for any list size
        sr = s[rows, : wins.shape[2]]
        diff = sr[:, cols].unsqueeze(2) - sr.unsqueeze(1)
        for total, hit in ((n_pairs, wins), (concordant, (diff > 0) & wins),
                           (discordant, (diff < 0) & wins), (ties, (diff == 0) & wins)):
            total.index_add_(0, rows, hit.sum(dim=(1, 2)).double())
    n_pairs = n_pairs.clamp_min(1)
    at_max = s == s.max(dim=1, keepdim=True).values      # ties at the top share the credit
    chosen = at_max.gather(1, rankings.ranking[:, :1]).squeeze(1)
    return {"top1": (chosen / at_max.sum(dim=1)).double().numpy(),
            "pairwise": ((concordant + 0.5 * ties) / n_pairs).numpy(),
            "kendall_tau": ((concordant - discordant) / n_pairs).numpy()}


def annotation_metrics(rewards: np.ndarray, rankings: Rankings) -> dict[str, np.ndarray]:
    """metric -> [n, J]: each policy's agreement with each annotation (ranking_metrics) and its
    Plackett–Luce log-likelihood. rewards[n, M, J]: implied rewards (NaN padding; a
    non-finite reward on a real candidate is an error)."""
    real = rankings.mask.numpy()
    check_finite(rewards, None, "implied reward", real, column="policy ")
    out: dict[str, list[np.ndarray]] = {}
    for j in range(rewards.shape[2]):
        r = rewards[..., j]
        per = ranking_metrics(r, rankings)
        per["loglik"] = plackett_luce_logprob(
            torch.as_tensor(np.where(real, r, 0.0), dtype=torch.float64), rankings).numpy()
        for metric, values in per.items():
            out.setdefault(metric, []).append(values)
    return {m: np.stack(v, axis=1) for m, v in out.items()}


def policy_table(rewards: np.ndarray, rankings: Rankings, groups: Sequence[Any],
                 policy_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> group -> policy -> mean over that group's annotations.

    rewards[n, M, J]: each policy's implied reward beta * s_j (NaN padding); groups: the type of
    each annotation's annotator (true types where known, else discovered ones)."""
    return group_means(annotation_metrics(rewards, rankings), groups, policy_names)


def group_means(per: dict[str, np.ndarray], groups: Sequence[Any],
                policy_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, values in per.items():
        for g in sorted(set(groups.tolist()), key=str):
            means = values[groups == g].mean(axis=0)
            out.setdefault(metric, {})[str(g)] = dict(zip(policy_names, means.tolist(),
                                                          strict=True))
    return out


def group_intervals(per: dict[str, np.ndarray], groups: Sequence[Any], codes: np.ndarray,
                    policy_names: Sequence[str], n_boot: int, seed: int
                    ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """metric -> group -> policy -> [low, high]: annotators resampled within each group (an
    annotator's annotations stay together)."""
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for metric, values in per.items():
        for g in sorted(set(groups.tolist()), key=str):
            rows = groups == g
            reps = bootstrap.mean_replicates(values[rows], codes[rows], n_boot, seed)
            out.setdefault(metric, {})[str(g)] = bootstrap.pairs(
                policy_names, bootstrap.interval(reps))
    return out


def discovery(truth: Sequence[Any], posteriors: np.ndarray, n_boot: int = 0,
              seed: int = 0) -> dict[str, Any]:
    """Discovery quality against known labels: ARI, NMI (with bootstrap intervals over
    annotators when n_boot > 0), the confusion matrix (true label x discovered type), and each
    annotator's posterior confidence (max posterior)."""
    from sklearn.metrics import confusion_matrix
    pred = posteriors.argmax(axis=1)
    labels = sorted(set(truth), key=str)
    index = {label: i for i, label in enumerate(labels)}
    t = np.asarray([index[x] for x in truth], dtype=np.int64)
    k = posteriors.shape[1]
    matrix = confusion_matrix(t, pred, labels=range(max(len(labels), k)))[: len(labels), :k]
    confidence = posteriors.max(axis=1)
    # sklearn's scores without their per-call validation (equal to 1e-12; the bootstrap calls
    # them thousands of times)
    out = {"ari": adjusted_rand(t, pred), "nmi": normalized_mutual_info(t, pred),
           "annotators": len(truth),
           "labels": [str(x) for x in labels], "confusion": matrix.tolist(),
           "confidence_mean": float(confidence.mean()),
           "confidence_histogram": np.histogram(confidence, bins=10, range=(0, 1))[0].tolist()}
    if n_boot > 0 and len(truth) > 1:
        for name, score in (("ari", adjusted_rand), ("nmi", normalized_mutual_info)):
            reps = bootstrap.replicates(len(t), lambda i, f=score: f(t[i], pred[i]), n_boot, seed)
            out[f"{name}_interval"] = bootstrap.interval(reps).tolist()
    return out


def implied_rewards(logps: np.ndarray, log_ref: np.ndarray | None, beta: float) -> np.ndarray:
    """beta * (log q_j - log q_ref) with both restricted to each row's candidates: the reward a
    policy (or a mixture) implies; [n, M, P]. The base model implies zero."""
    def restricted(x: np.ndarray) -> np.ndarray:
        top = np.nanmax(x, axis=1, keepdims=True)
        return x - top - np.log(np.nansum(np.exp(x - top), axis=1, keepdims=True))
    if log_ref is None:  # uniform base measure
        log_ref = np.where(np.isnan(logps[..., 0]), np.nan, 0.0)
    return beta * (restricted(logps) - restricted(log_ref)[..., None])


def spread(table: dict[str, dict[str, dict[str, float]]],
           lower_is_better: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """metric -> policy -> the worst-served group, its value, the best value and the gap
    between best- and worst-served groups."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, by_group in table.items():
        sign = -1.0 if metric in lower_is_better else 1.0
        policies = next(iter(by_group.values())).keys()
        for p in policies:
            values = {g: row[p] for g, row in by_group.items()}
            worst = min(values, key=lambda g: sign * values[g])
            best = max(values, key=lambda g: sign * values[g])
            out.setdefault(metric, {})[p] = {
                "worst_group": worst, "worst": values[worst], "best_group": best,
                "best": values[best], "gap": abs(values[best] - values[worst])}
    return out


def doubling(n: int) -> list[int]:
    """1, 2, 4, ... up to n, then n itself."""
    sizes = [2 ** i for i in range(max(1, n).bit_length()) if 2 ** i < n]
    return sizes + [max(1, n)]


def personalization_curve(per_annotation: np.ndarray, codes: np.ndarray, priors: np.ndarray,
                          target: np.ndarray, sizes: Sequence[int] | None = None,
                          n_boot: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Type-assignment accuracy after each annotator's first n annotations (data order), from
    fixed policies: per_annotation[a, k] is log P_k of annotation a, target[h] the type each
    annotator should get (-1: none). Only annotators with at least n annotations count at n;
    with n_boot > 0, a bootstrap interval over those annotators."""
    n_annot = len(target)
    order = np.zeros(len(codes), dtype=int)
    seen = np.zeros(n_annot, dtype=int)
    for a, h in enumerate(codes):
        order[a], seen[h] = seen[h], seen[h] + 1
    out = []
    for n in sizes or doubling(int(seen.max(initial=1))):
        use = order < n
        lik = annotator_loglik(per_annotation[use], codes[use], n_annot)
        gamma, _ = e_step(lik, priors)
        who = (seen >= n) & (target >= 0)
        if who.any():
            hit = (gamma[who].argmax(1) == target[who]).astype(np.float64)
            point = {"annotations": int(n), "annotators": int(who.sum()),
                     "accuracy": float(hit.mean()), "confidence": float(gamma[who].max(1).mean())}
            if n_boot > 0:
                reps = bootstrap.mean_replicates(hit, np.arange(len(hit)), n_boot, seed)
                point["interval"] = bootstrap.interval(reps).tolist()
            out.append(point)
    return out
