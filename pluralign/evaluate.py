"""Evaluate every policy against every type (DESIGN §1, §6): how well each policy's implied
preferences predict each type's held-out rankings, and how well types were discovered.

A policy j enters as log pi_j(y|x) of every candidate (restricted to the candidates, as in the
`candidates` regret estimator); as a preference model it ranks by those log-probabilities, and
its Plackett–Luce likelihood uses the implied reward beta * (log pi_j - log pi_ref).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pluralign.losses import beats, plackett_luce_logprob
from pluralign.rankings import Rankings


def ranking_metrics(scores: np.ndarray, rankings: Rankings) -> dict[str, np.ndarray]:
    """Per-annotation agreement of `scores[n, M]` (higher = preferred) with the observed rankings:
    top-1 accuracy, pairwise accuracy over the pairs a ranking implies (ties count one half), and
    Kendall's tau over those pairs ((concordant - discordant) / pairs)."""
    s = torch.as_tensor(np.nan_to_num(scores, nan=-np.inf), dtype=torch.float64)
    pairs = beats(rankings)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    n_pairs = pairs.sum(dim=(1, 2)).clamp_min(1)
    concordant = ((diff > 0) & pairs).sum(dim=(1, 2))
    discordant = ((diff < 0) & pairs).sum(dim=(1, 2))
    ties = ((diff == 0) & pairs).sum(dim=(1, 2))
    best = s.argmax(dim=1)
    return {"top1": (best == rankings.ranking[:, 0]).double().numpy(),
            "pairwise": ((concordant + 0.5 * ties) / n_pairs).numpy(),
            "kendall_tau": ((concordant - discordant) / n_pairs).numpy()}


def policy_table(rewards: np.ndarray, rankings: Rankings, groups: Sequence[Any],
                 policy_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> group -> policy -> mean over that group's annotations.

    rewards[n, M, J]: each policy's implied reward beta * s_j (NaN padding); groups: the type of
    each annotation's annotator (true types where known, else discovered ones)."""
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for j, name in enumerate(policy_names):
        r = rewards[..., j]
        per = ranking_metrics(r, rankings)
        per["loglik"] = plackett_luce_logprob(
            torch.as_tensor(np.nan_to_num(r, nan=0.0), dtype=torch.float64), rankings).numpy()
        for metric, values in per.items():
            for g in sorted(set(groups.tolist()), key=str):
                out.setdefault(metric, {}).setdefault(str(g), {})[name] = float(
                    values[groups == g].mean())
    return out


def discovery(truth: Sequence[Any], posteriors: np.ndarray) -> dict[str, Any]:
    """Discovery quality against known labels: ARI, NMI, the confusion matrix (true label x
    discovered type), and each annotator's posterior confidence (max posterior)."""
    from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score
    pred = posteriors.argmax(axis=1)
    labels = sorted(set(truth), key=str)
    index = {label: i for i, label in enumerate(labels)}
    k = posteriors.shape[1]
    matrix = confusion_matrix([index[t] for t in truth], pred,
                              labels=range(max(len(labels), k)))[: len(labels), :k]
    confidence = posteriors.max(axis=1)
    return {"ari": float(adjusted_rand_score(truth, pred)),
            "nmi": float(normalized_mutual_info_score(truth, pred)),
            "labels": [str(x) for x in labels], "confusion": matrix.tolist(),
            "confidence_mean": float(confidence.mean()),
            "confidence_histogram": np.histogram(confidence, bins=10, range=(0, 1))[0].tolist()}
