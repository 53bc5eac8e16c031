"""Pruning and merging of discovered types (DESIGN §4, choosing K): EM with too many types
leaves some nearly empty or splits one taste in two. Both are found from the fitted posteriors
and per-annotator likelihoods, and removed by re-fitting EM with one type fewer, starting
from the posteriors with that type dropped (pruned) or two columns summed (merged).

- a type is *too small* when its prior eta_k < `min_share` or its effective number of
  annotators sum_h gamma_hk < `min_annotators`;
- two types j, k are *indistinguishable* when the evidence that separates them for their own
  annotators, sep_jk = 1/2 [E_{h~j}(log L_hj - log L_hk) + E_{h~k}(log L_hk - log L_hj)]
  (posterior-weighted means, in nats per annotator), is below `merge_nats`: a typical member
  of either type gives less than e^merge_nats : 1 odds between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TypeFloor:
    """The documented floor below which a type is not kept, and the merge threshold."""

    min_share: float = 0.05
    min_annotators: float = 3.0
    merge_nats: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_share < 1 or self.min_annotators < 0 or self.merge_nats < 0:
            raise ValueError("min_type_share must be in [0, 1), min_type_annotators and "
                             "merge_nats must be >= 0")


def separation(log_lik: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """sep[j, k]: the mean log-likelihood ratio, in nats per annotator, with which the annotators
    of types j and k favour their own type over the other (symmetric, 0 on the diagonal)."""
    mass = np.maximum(gamma.sum(axis=0), 1e-12)                       # [K]
    own = (gamma.T @ log_lik) / mass[:, None]                          # E_{h~j} log L_hk
    gain = np.diag(own)[:, None] - own                                  # E_{h~j}(L_hj - L_hk)
    return 0.5 * (gain + gain.T)


def next_action(gamma: np.ndarray, log_lik: np.ndarray, floor: TypeFloor) -> dict[str, Any] | None:
    """The one change to make before re-fitting: prune the smallest type under the floor, else
    merge the least separated pair under merge_nats; None when every type stays."""
    k = gamma.shape[1]
    if k < 2:
        return None
    share, count = gamma.mean(axis=0), gamma.sum(axis=0)
    small = [j for j in range(k) if share[j] < floor.min_share or count[j] < floor.min_annotators]
    if small:
        j = min(small, key=lambda t: share[t])
        why = (f"prior {share[j]:.3f} < min_type_share {floor.min_share}"
               if share[j] < floor.min_share else
               f"{count[j]:.1f} effective annotators < min_type_annotators "
               f"{floor.min_annotators}")
        return {"action": "pruned", "k": k, "types": [int(j)], "prior": round(float(share[j]), 6),
                "annotators": round(float(count[j]), 3), "reason": why}
    sep = separation(log_lik, gamma)
    sep[np.diag_indices(k)] = np.inf
    j, i = np.unravel_index(np.argmin(sep), sep.shape)
    if sep[j, i] >= floor.merge_nats:
        return None
    a, b = sorted((int(j), int(i)))
    return {"action": "merged", "k": k, "types": [a, b],
            "separation_nats": round(float(sep[a, b]), 4),
            "reason": f"separation {sep[a, b]:.3f} nats per annotator < merge_nats "
                      f"{floor.merge_nats}"}


def apply(gamma: np.ndarray, action: dict[str, Any]) -> np.ndarray:
    """Posteriors with one type fewer: the pruned type's mass spread over the others in
    proportion, or the merged pair's columns summed (into the first's place)."""
    if action["action"] == "pruned":
        out = np.delete(gamma, action["types"][0], axis=1)
        total = out.sum(axis=1, keepdims=True)
        flat = total[:, 0] <= 1e-12              # an annotator wholly in the pruned type
        out[flat] = 1.0 / out.shape[1]
        return out / np.where(flat[:, None], 1.0, total)
    a, b = action["types"]
    out = gamma.copy()
    out[:, a] += out[:, b]
    return np.delete(out, b, axis=1)
