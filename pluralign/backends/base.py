"""What EM, aggregation and evaluation need from a family of K policies (DESIGN §5)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from pluralign.data import Annotations


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

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the K policies' parameters under `path`."""

    @abstractmethod
    def load(self, path: str | os.PathLike) -> None:
        """Read parameters written by `save`."""


def check_weights(weights: np.ndarray, n: int) -> np.ndarray:
    """Weights as a float array of length n, finite and non-negative."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w
