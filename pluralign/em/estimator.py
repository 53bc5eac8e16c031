"""EM-DPO (DESIGN §4): latent annotator types and one policy per type.

Each annotator h has a type z_h ~ eta. Under type k the likelihood of h's annotations is
L_hk = prod_a P_k(tau_a | x_a), Plackett–Luce on rewards beta * s_k.
- E-step: log gamma_hk = log eta_k + log L_hk, normalised over k (log-sum-exp).
- M-step: eta_k = mean_h gamma_hk; policy k = weighted PL-DPO fit with weights gamma_{h(a)k}.
The estimator here; its parts: pluralign.em.estep (E-step), em.iterations (one EM run, pruning),
em.checkpoint, em.selection (K), em.start (initialisation, the linear start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from pluralign.backends.base import PolicyBackend
from pluralign.core import checks, diagnostics, distributed, heap, identifiability
from pluralign.core.data import Annotations
from pluralign.em.estep import reference_loglik, type_posteriors
from pluralign.em.iterations import Iterations, Run
from pluralign.em.selection import KSelection
from pluralign.em.start import Initialisation
from pluralign.settings import INITS, SELECTIONS

if TYPE_CHECKING:

    pass

log = logging.getLogger(__name__)

#: A callable K -> backend, in place of a backend name.
BackendFactory = Callable[[int], PolicyBackend]


class IdentifiabilityError(ValueError):
    """The data cannot identify a mixture of types (DESIGN §2)."""




class EMDPO(Initialisation, KSelection, Iterations, BaseEstimator):
    """EM-DPO in scikit-learn style: parameters in __init__, `fit(data)` returns self.

    backend: "linear", "lora", or a callable K -> PolicyBackend; `backend_options` go to the
    backend's config. n_types: an int, or "auto" to choose among 1..max_types by held-out
    annotator log-likelihood (annotators split, not annotations): over round(1/heldout_fraction)
    folds that hold out every annotator once ("cv"), over one split ("heldout"), or by BIC.
    tol: EM stops when the objective's relative change |delta| / |objective| falls below tol,
    or after max_iter iterations. init_options: linear backend options for a LoRA run's linear
    start and K selection (features are LM embeddings there).

    Over-splitting is guarded three ways (pluralign.em.prune): a fitted type whose prior is below
    min_type_share or whose effective annotator count is below min_type_annotators is pruned,
    two types separated by less than merge_nats per annotator are merged, and EM is re-fitted
    with one type fewer each time (every action lands in `actions_`); K selection takes the
    smallest K within se_factor standard errors of the best held-out log-likelihood.

    max_time: a budget in seconds for the whole fit. Past it, each EM run stops after its
    current iteration (not converged, with a warning saying so) and no further restart begins;
    K selection and the K=1 baseline still get one iteration each. None: no budget.

    checkpoint_interval: with a checkpoint_dir, an EM run writes its state once this many
    seconds of its work are unsaved, so a kill loses at most that much and quick runs pay
    nothing for files (they are simply re-run); 0 writes after every iteration.
    """

    def __init__(self, backend: str | BackendFactory = "linear", n_types: int | str = 3,
                max_types: int = 4, backend_options: dict[str, Any] | None = None,
                init: str | np.ndarray = "auto", n_init: int = 3, max_iter: int = 100,
                tol: float = 1e-4, selection: str = "cv", heldout_fraction: float = 0.25,
                sparse_threshold: float = 0.0, warm_start: bool = True, force: bool = False,
                checkpoint_dir: str | Path | None = None, random_state: int = 0,
                callback: Callable[[int, int, float], None] | None = None,
                init_options: dict[str, Any] | None = None, min_type_share: float = 0.05,
                min_type_annotators: float = 3.0, merge_nats: float = 1.0,
                se_factor: float = 1.645, max_time: float | None = None,
                checkpoint_interval: float = 10.0) -> None:
        # the fields of settings.EMSection and their defaults (a test keeps them equal)
        self.backend = backend
        self.n_types = n_types
        self.max_types = max_types
        self.backend_options = backend_options
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.selection = selection
        self.heldout_fraction = heldout_fraction
        self.sparse_threshold = sparse_threshold
        self.warm_start = warm_start
        self.force = force
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.callback = callback
        self.init_options = init_options
        self.min_type_share = min_type_share
        self.min_type_annotators = min_type_annotators
        self.merge_nats = merge_nats
        self.se_factor = se_factor
        self.max_time = max_time
        self.checkpoint_interval = checkpoint_interval

    def fit(self, X: Any, y: None = None) -> EMDPO:
        """Discover types in the annotations `X` and fit one policy per type. `X`: anything
        `pluralign.ingest.to_annotations` reads (a dataset folder or file, an Annotations, a
        pandas DataFrame, a list of dicts); `y` is ignored (scikit-learn's convention: types are
        latent)."""
        from pluralign.ingest import to_annotations
        self._validate()
        data = to_annotations(X)
        try:
            with heap.frozen():  # the records are millions of objects a collection would walk
                return self._fit(data)
        finally:
            self._statistics = None  # the k-means start's per-fit cache (pluralign.em.start)

    def _fit(self, data: Annotations) -> EMDPO:
        if distributed.launched():  # a rank reading other data would hang a collective later
            settings = json.dumps([data.fingerprint(), repr(self.backend), self.backend_options,
                                   self.n_types, self.max_iter, self.random_state],
                                  sort_keys=True, default=str)
            distributed.check_same(hashlib.sha256(settings.encode()).hexdigest(),
                                   "the data or the EM settings")
        t0 = time.perf_counter()
        self._deadline = None if self.max_time is None else t0 + self.max_time
        self.identifiability_ = identifiability.assess(data)
        if self.identifiability_["verdict"] == identifiability.NOT_IDENTIFIABLE and not self.force:
            raise IdentifiabilityError(
                f"not-identifiable data: {self.identifiability_['explanation']} Types found "
                "from it would be arbitrary; pass force=True (CLI: --force) to fit anyway.")
        self.annotator_ids_ = data.annotator_ids
        self.selection_: list[dict[str, Any]] = []
        self.init_actions_: list[dict[str, Any]] = []
        n_annot = len(self.annotator_ids_)
        if self.n_types != "auto" and self.n_types > n_annot:
            raise ValueError(f"n_types={self.n_types} exceeds the {n_annot} annotator(s) in the "
                             "data: every type needs annotators of its own; lower n_types or "
                             "use n_types='auto'")
        self._linear = None  # a LoRA run's linear fit on embeddings, once it has run
        k = self._select(data) if self.n_types == "auto" else int(self.n_types)
        self.selected_k_ = k  # before pruning: the fitted n_types_ may be smaller
        t1 = time.perf_counter()
        best = self._fit_k(data, k, "final")
        t2 = time.perf_counter()
        baseline = best if k == 1 else self._fit_k(data, 1, "baseline")
        self._adopt(best, baseline, data)
        t3 = time.perf_counter()
        self.timings_ = {"fit_seconds": round(t3 - t0, 3), "selection_seconds": round(t1 - t0, 3),
                         "types_seconds": round(t2 - t1, 3), "baseline_seconds": round(t3 - t2, 3)}
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Type posteriors [H, K] of the annotators in `X` (any input `fit` takes), one row per
        annotator in order of first appearance (`pluralign.core.data.Annotations.annotator_ids`),
        under the fitted policies and priors; no training."""
        return self.assign(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """Each annotator's most probable type (0..K-1), rows as in predict_proba."""
        return self.predict_proba(X).argmax(axis=1)

    def assign(self, X: Any) -> tuple[np.ndarray, list[str]]:
        """predict_proba's posteriors with the annotator ids its rows follow."""
        from pluralign.ingest import to_annotations
        check_is_fitted(self, "posteriors_")
        return type_posteriors(self.backend_, self.priors_, to_annotations(X))

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON (for em.json)."""
        return {
            "n_types": self.n_types_, "priors": self.priors_.round(6).tolist(),
            "loglik_history": self.loglik_history_, "n_iter": self.n_iter_,
            "converged": self.converged_, "selection": self.selection_,
            "heterogeneity": self.heterogeneity_, "identifiability": self.identifiability_,
            "sparse_skipped_share": self.sparse_skipped_share_, "warnings": self.warnings_,
            "actions": self.actions_, "type_floor": {
                "min_type_share": self.min_type_share,
                "min_type_annotators": self.min_type_annotators,
                "merge_nats": self.merge_nats, "se_factor": self.se_factor},
            "effective_annotators": self.posteriors_.sum(axis=0).round(3).tolist(),
            "timings": self.timings_,
        }

    def _validate(self) -> None:
        if self.n_types != "auto" and (not isinstance(self.n_types, int) or self.n_types < 1):
            raise ValueError(f"n_types must be a positive int or 'auto', got {self.n_types!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if isinstance(self.init, str) and self.init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an array, got {self.init!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be a positive number of seconds or None, got "
                             f"{self.max_time!r}")
        if self.max_types < 1 or self.n_init < 1 or self.max_iter < 1:
            raise ValueError("max_types, n_init and max_iter must be >= 1")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError("heldout_fraction must be in (0, 1)")
        if self.checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0 seconds, got "
                             f"{self.checkpoint_interval!r}")
        if self.se_factor < 0:
            raise ValueError(f"se_factor must be >= 0, got {self.se_factor}")
        checks.seed(self.random_state, "random_state")
        self._floor()  # checks the floor's values

    def _adopt(self, best: Run, baseline: Run, data: Annotations) -> None:
        self.n_types_ = best.k
        self.posteriors_ = best.posteriors
        self.priors_ = best.priors
        self.loglik_history_ = best.history
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged
        self.backend_ = best.backend
        self.baseline_ = baseline
        self.sparse_skipped_share_ = best.skipped_share
        self.actions_ = [*self.init_actions_, *best.actions]
        gain = best.objective - baseline.objective
        self.heterogeneity_ = {
            "k1_loglik": baseline.objective, "chosen_loglik": best.objective,
            "gain": gain, "lr_statistic": 2 * gain,
            "gain_per_annotator": gain / max(1, len(self.annotator_ids_))}
        self.heterogeneity_["reference_loglik"] = reference = reference_loglik(data)
        held = self._heldout_gain(best.k)
        if held is not None:
            self.heterogeneity_.update(heldout_gain=held[0], heldout_annotators=held[1])
        self.warnings_ = [
            *[diagnostics.warning("max_time" if "max_time" in w else "monotonicity", w)
              for w in best.warnings],
            *diagnostics.pruning_notes(self.actions_),
            *diagnostics.signal_warnings(baseline.objective - reference, len(data)),
            *diagnostics.heterogeneity_warnings(gain, len(self.annotator_ids_), best.k,
                                                *(held or (None, None))),
            *diagnostics.confidence_warnings(best.posteriors),
            *diagnostics.size_warnings(best.posteriors)]
