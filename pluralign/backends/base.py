"""What EM, aggregation and evaluation need from a family of K policies (DESIGN §5)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from pluralign.data import Annotation, Annotations


class PolicyBackend(ABC):
    """K type policies over one reference. `logratios` scores, `fit` trains one type."""

    n_types: int
    beta: float

    @abstractmethod
    def logratios(self, data: Annotations) -> np.ndarray:
        """s[n, M, K] = log pi_k(y|x) - log pi_ref(y|x) per candidate; NaN where a row has
        fewer than M candidates."""

    @abstractmethod
    def fit(self, k: int, data: Annotations, weights: np.ndarray) -> dict[str, Any]:
        """Weighted M-step for type k (weights per annotation; zero-weight rows cost nothing);
        returns training statistics."""

    @abstractmethod
    def reference_logps(self, data: Annotations) -> np.ndarray:
        """log pi_ref(y|x) of every candidate [n, M] (NaN past a row's m): with logratios, the
        policies' own log-probabilities, for aggregation and evaluation."""

    @abstractmethod
    def reset(self, k: int) -> None:
        """Return type k's policy to the reference (for EM without warm starts)."""

    def penalty(self) -> float:
        """Log-prior of the parameters that the M-step subtracts (0 without one)."""
        return 0.0

    def sample(self, data: Annotations, k: int | None, n: int, seed: int) -> list[Annotation]:
        """n responses drawn from policy k (None: the reference) for each row's prompt, one
        Annotation per row (the `sampled` regret estimator scores them with every type)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sample responses")

    def merge(self, weights: np.ndarray) -> PolicyBackend:
        """One policy (K=1) whose parameters are the weighted combination of the K policies'
        (e.g. peft add_weighted_adapter): a deployable stand-in for a mixture."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge its policies")

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the K policies' parameters under `path`."""

    @abstractmethod
    def load(self, path: str | os.PathLike) -> None:
        """Read parameters written by `save`."""


def sample_row(a: Annotation, responses: list[str],
               features: list[list[float]] | None = None) -> Annotation:
    """An annotation holding samples for `a`'s prompt (its ranking is a placeholder)."""
    return Annotation("samples", a.prompt, responses, [0], features=features, item_id=a.item_id)


def check_mixture(weights: np.ndarray, k: int) -> np.ndarray:
    """Mixture weights over k policies: non-negative, summing to one."""
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (k,) or (p < 0).any() or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise ValueError(f"mixture weights must be {k} non-negative numbers summing to 1, got "
                         f"{p.tolist()}")
    return p / p.sum()


def check_weights(weights: np.ndarray, n: int) -> np.ndarray:
    """Weights as a float array of length n, finite and non-negative."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w
