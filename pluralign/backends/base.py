"""What EM, aggregation and evaluation need from a family of K policies (DESIGN §5)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from pluralign.core.data import Annotation, Annotations


class PolicyBackend(ABC):
    """K type policies over one reference. `logratios` scores, `fit` trains one type."""

    n_types: int
    beta: float
    #: Whether the policies generate text (and can be measured as served by sampling them:
    #: pluralign.aggregate.served); False when they live on given candidates.
    decodes: bool = False
    #: Whether each annotation's scores can be computed on their own, so that under torchrun
    #: the E-step may split annotations over ranks and all-reduce per-annotator sums
    #: (pluralign.em.estep.loglik_table); False when logratios shares work across ranks itself.
    row_sharded: bool = False

    def logratios(self, data: Annotations) -> np.ndarray:
        """s[n, M, K] = log pi_k(y|x) - log pi_ref(y|x) per candidate; NaN where a row has
        fewer than M candidates. A value that is not finite on a real candidate stops with
        NonFiniteScoreError naming the annotation: no stage may read it as a number."""
        return check_finite(self._logratios(data), data, "log-ratio")

    @abstractmethod
    def _logratios(self, data: Annotations) -> np.ndarray:
        """The backend's log-ratios (logratios checks them)."""

    @abstractmethod
    def fit(self, k: int, data: Annotations, weights: np.ndarray) -> dict[str, Any]:
        """Weighted M-step for type k (weights per annotation; zero-weight rows cost nothing);
        returns training statistics."""

    def reward_coefficients(self) -> tuple[float, float]:
        """(a, b): the types rank candidates by a * s + b * log pi_0, as their loss implies
        (pluralign.core.losses.reward_coefficients; beta * s for PL-DPO)."""
        from pluralign.core.losses import reward_coefficients
        return reward_coefficients(self.loss_name, self.beta,
                                   getattr(getattr(self, "config", None), "gamma", 1.0))

    @property
    def loss_name(self) -> str:
        """The M-step's loss (`config.loss`; PL-DPO for a backend without a config)."""
        return getattr(getattr(self, "config", None), "loss", "pl_dpo")

    @property
    def fits_likelihood(self) -> bool:
        """Whether the M-step maximises the E-step's likelihood (PL-DPO), so that EM's
        objective may not decrease; other losses (IPO, distill, PMLE, RKL) make EM a
        generalised one whose log-likelihood can dip."""
        return self.loss_name == "pl_dpo"

    def ranking_loglik(self, data: Annotations) -> np.ndarray | None:
        """log P_k(ranking | beta * s_k) [n, K] of every annotation under every type, computed
        the backend's own way; None (the default), or a value that is not finite, lets the
        E-step compute it from logratios (whose check names the bad candidate)."""
        return None

    def fit_types(self, types: Sequence[int], data: Annotations,
                  weights: np.ndarray) -> list[dict[str, Any]]:
        """The M-steps of several types, weights [n, len(types)]: one fit after another here;
        a backend that can fit them together (the linear one) overrides it."""
        return [self.fit(int(k), data, weights[:, j]) for j, k in enumerate(types)]

    def reference_logps(self, data: Annotations) -> np.ndarray:
        """log pi_ref(y|x) of every candidate [n, M] (NaN past a row's m): with logratios, the
        policies' own log-probabilities, for aggregation and evaluation; checked as logratios
        is."""
        return check_finite(self._reference_logps(data), data, "reference log-prob")

    @abstractmethod
    def _reference_logps(self, data: Annotations) -> np.ndarray:
        """The backend's reference log-probs (reference_logps checks them)."""

    @abstractmethod
    def reset(self, k: int) -> None:
        """Return type k's policy to the reference (for EM without warm starts)."""

    def penalty(self) -> float:
        """Log-prior of the parameters that the M-step subtracts (0 without one)."""
        return 0.0

    # -- optional capabilities: defaults for a backend without them ------------------------
    def prepare(self, data: Annotations, embeddings: bool = False) -> Any:
        """Compute what scoring `data` needs once, ahead of EM (a reference pass); nothing by
        default."""
        return None

    def iteration_seconds(self, data: Annotations) -> float | None:
        """An estimate of one EM iteration's time on `data`, announced before a long run;
        None for a backend too quick to be worth one."""
        return None

    def feature_design(self, data: Annotations) -> tuple[Any, Any, int] | None:
        """(features, one-hot columns, vocabulary size) of a backend linear in given features:
        the k-means start reads annotators' score statistics from it. None otherwise."""
        return None

    def n_parameters(self) -> int:
        """The number of trained parameters of the K policies (BIC counts them)."""
        return 0

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


class NonFiniteScoreError(ValueError):
    """A score (log-ratio, log-prob) that is NaN or infinite on a real candidate."""


def check_finite(values: np.ndarray, data: Annotations | None, what: str,
                 real: np.ndarray | None = None, column: str = "type_") -> np.ndarray:
    """`values` [n, M, ...] unchanged when finite on every real candidate (`real` [n, M];
    default: the first m of each row of `data`; padding may be NaN), else NonFiniteScoreError
    naming the first bad annotation (with its annotator and source row when `data` is given)
    and its `column` (a type, a policy)."""
    values = np.asarray(values)
    mask = real_candidates(data, values.shape[1]) if real is None else np.asarray(real)
    bad = ~np.isfinite(values) & mask.reshape(*mask.shape, *([1] * (values.ndim - 2)))
    if not bad.any():
        return values
    where = np.argwhere(bad)[0]
    row, cand = int(where[0]), int(where[1])
    which = f" for {column}{int(where[2])}" if values.ndim > 2 else ""
    name = describe_annotation(data, row) if data is not None else f"annotation {row}"
    raise NonFiniteScoreError(
        f"{what} {values[tuple(where)]}{which} on candidate {cand} of {name}: a score that "
        f"is not a finite number would be read as one by every later step; check that "
        f"response and the model (an empty or truncated response, an overflow in float16) "
        f"({int(bad.sum())} such value(s) in all)")


def real_candidates(data: Annotations, width: int) -> np.ndarray:
    """[n, width] True on each row's real candidates (from the dataset's cached rankings)."""
    mask = data.rankings().mask.numpy()
    if mask.shape[1] >= width:
        return mask[:, :width]
    return np.pad(mask, ((0, 0), (0, width - mask.shape[1])))


def describe_annotation(data: Annotations, row: int) -> str:
    """'annotation 17 (annotator "w3", item "q7", data.jsonl row 18)': which judgement, with
    its source file and row where ingestion recorded them."""
    a = data[row]
    parts = [f"annotator {a.annotator_id!r}"]
    if a.item_id is not None:
        parts.append(f"item {a.item_id!r}")
    if a.source is not None:
        parts.append(f"{a.source} row {a.source_row}" if a.source_row is not None else a.source)
    return f"annotation {row} ({', '.join(parts)})"


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
