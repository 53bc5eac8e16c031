"""EM-DPO (DESIGN §4): latent annotator types and one policy per type.

Each annotator h has a type z_h ~ eta. Under type k the likelihood of h's annotations is
L_hk = prod_a P_k(tau_a | x_a), Plackett–Luce on rewards beta * s_k.
- E-step: log gamma_hk = log eta_k + log L_hk, normalised over k (log-sum-exp).
- M-step: eta_k = mean_h gamma_hk; policy k = weighted PL-DPO fit with weights gamma_{h(a)k}.
- Monitor: the observed log-likelihood sum_h log sum_k eta_k L_hk, minus the backend's
  log-prior penalty; with exact M-steps (the linear backend) it never decreases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from pluralign import checks, diagnostics, distributed, em_params, identifiability, progress, prune
from pluralign.backends.base import PolicyBackend
from pluralign.data import Annotations, as_annotations
from pluralign.io import write_json
from pluralign.settings import INITS, SELECTIONS

if TYPE_CHECKING:
    import torch

    from pluralign.rankings import Rankings

log = logging.getLogger(__name__)

BackendFactory = em_params.BackendFactory


class IdentifiabilityError(ValueError):
    """The data cannot identify a mixture of types (DESIGN §2)."""


class MonotonicityWarning(UserWarning):
    """The EM objective decreased: an under-trained M-step or a bug."""


def _rankings(data: Annotations) -> Rankings:
    """The rankings as tensors. torch is imported here and in the functions that compute, not
    at the top, so that `pluralign run` checks a config before paying for torch."""
    return as_annotations(data).rankings()


# -- the E-step -----------------------------------------------------------------------------
def annotation_loglik(logratios: np.ndarray, rankings: Rankings, beta: float) -> np.ndarray:
    """log P_k(tau_a | x_a) for every annotation and type: [n, M, K] -> [n, K]. Padding may
    be NaN; a non-finite score on a real candidate is an error (never read as 0)."""
    import torch

    from pluralign.backends.base import check_finite
    from pluralign.losses import plackett_luce_logprob
    real = rankings.mask.numpy()
    check_finite(logratios, None, "log-ratio", real)
    s = torch.as_tensor(np.where(real[..., None], logratios, 0.0), dtype=torch.float64)
    return np.stack([plackett_luce_logprob(beta * s[..., k], rankings).numpy()
                     for k in range(s.shape[-1])], axis=1)


def reference_loglik(data: Annotations) -> float:
    """log-likelihood of the rankings under the reference scores (s = 0, every ordering of a
    prompt's candidates equally likely): sum over annotations of -sum_{j<L} log(m - j)."""
    return -float(sum(np.log(np.arange(a.m - a.L + 1, a.m + 1)).sum() for a in data))


def annotator_loglik(per_annotation: np.ndarray, codes: np.ndarray,
                     n_annotators: int) -> np.ndarray:
    """log L_hk: the sum over each annotator's annotations, [n, K] -> [H, K]."""
    out = np.zeros((n_annotators, per_annotation.shape[1]))
    np.add.at(out, codes, per_annotation)
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

    from pluralign.losses import plackett_luce_logprob
    rank = _rankings(data)
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
    return out / np.bincount(codes, minlength=len(ids))[:, None]


def kmeans_posteriors(features: np.ndarray, k: int, seed: int, smooth: float = 0.1) -> np.ndarray:
    """Soft posteriors from a k-means++ clustering: (1 - smooth) on the cluster, the rest spread."""
    if k == 1:
        return np.ones((features.shape[0], 1))
    from sklearn.cluster import KMeans
    labels = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit_predict(
        features)
    gamma = np.full((features.shape[0], k), smooth / k)
    gamma[np.arange(len(labels)), labels] += 1.0 - smooth
    return gamma


def type_posteriors(backend: PolicyBackend, priors: np.ndarray,
                    data: Annotations) -> tuple[np.ndarray, list[str]]:
    """One E-step with fixed policies: each annotator's type posterior given all of their
    annotations in `data` (for annotators never seen in training too). Returns (gamma, ids)."""
    data = as_annotations(data)
    codes, ids = data.annotator_codes()
    per = annotation_loglik(backend.logratios(data), _rankings(data),
                            backend.beta)
    gamma, _ = e_step(annotator_loglik(per, codes, len(ids)), np.asarray(priors))
    return gamma, ids


def make_backend(name: str, k: int, options: dict[str, Any] | None = None) -> PolicyBackend:
    """A fresh backend by name ("linear" or "lora") with K = k policies and config options."""
    opts = dict(options or {})
    if name == "linear":
        from pluralign.backends.linear import LinearBackend, LinearConfig
        return LinearBackend(LinearConfig(types=k, **opts))
    if name == "lora":
        from pluralign.backends.lora import LoRABackend, LoRAConfig
        return LoRABackend(LoRAConfig(types=k, **opts))
    raise ValueError(f"backend must be 'linear', 'lora' or a callable, got {name!r}")


# -- one EM run -----------------------------------------------------------------------------
@dataclass
class Run:
    """The outcome of EM for one K from one initialisation."""

    k: int
    posteriors: np.ndarray
    priors: np.ndarray
    history: list[float]
    backend: PolicyBackend
    n_iter: int
    converged: bool
    warnings: list[str] = field(default_factory=list)
    skipped_share: float = 0.0
    log_lik: np.ndarray | None = None   # log L_hk at the last E-step
    actions: list[dict[str, Any]] = field(default_factory=list)  # types pruned or merged

    @property
    def objective(self) -> float:
        return self.history[-1] if self.history else -np.inf


class EMDPO(BaseEstimator):
    """EM-DPO in scikit-learn style: parameters in __init__, `fit(data)` returns self.

    backend: "linear", "lora", or a callable K -> PolicyBackend; `backend_options` go to the
    backend's config. n_types: an int, or "auto" to choose among 1..max_types by held-out
    annotator log-likelihood (annotators split, not annotations): over round(1/heldout_fraction)
    folds that hold out every annotator once ("cv"), over one split ("heldout"), or by BIC.
    tol: EM stops when the objective's relative change |delta| / |objective| falls below tol,
    or after max_iter iterations. init_options: linear backend options for a LoRA run's linear
    start and K selection (features are LM embeddings there).

    Over-splitting is guarded three ways (pluralign.prune): a fitted type whose prior is below
    min_type_share or whose effective annotator count is below min_type_annotators is pruned,
    two types separated by less than merge_nats per annotator are merged, and EM is re-fitted
    with one type fewer each time (every action lands in `actions_`); K selection takes the
    smallest K within se_factor standard errors of the best held-out log-likelihood.

    max_time: a budget in seconds for the whole fit. Past it, each EM run stops after its
    current iteration (not converged, with a warning saying so) and no further restart begins;
    K selection and the K=1 baseline still get one iteration each. None: no budget.
    """

    __init__ = em_params.em_init  # parameters in em_params: a config is checked without sklearn

    # -- public API -------------------------------------------------------------------------
    def fit(self, X: Any, y: None = None) -> EMDPO:
        """Discover types in the annotations `X` and fit one policy per type. `X`: anything
        `pluralign.ingest.to_annotations` reads (a dataset folder or file, an Annotations, a
        pandas DataFrame, a list of dicts); `y` is ignored (scikit-learn's convention: types are
        latent)."""
        from pluralign.ingest import to_annotations
        self._validate()
        data = to_annotations(X)
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
        k = self._select(data) if self.n_types == "auto" else int(self.n_types)
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
        annotator in order of first appearance (`pluralign.data.Annotations.annotator_ids`),
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

    # -- internals --------------------------------------------------------------------------
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
        if self.se_factor < 0:
            raise ValueError(f"se_factor must be >= 0, got {self.se_factor}")
        checks.seed(self.random_state, "random_state")
        self._floor()  # checks the floor's values

    def _announce(self, backend: PolicyBackend, data: Annotations, k: int, left: int) -> None:
        """Before a long (LoRA) EM run: its estimated time per iteration and at most."""
        each = backend.iteration_seconds(data)
        most = each * left
        budget = ""
        if self.max_time is not None:
            budget = f"; max_time {progress.clock(self.max_time)}"
        log.info("K=%d: about %s per EM iteration (a timed probe), at most %d iteration(s): up "
                 "to %s%s", k, progress.clock(each), left, progress.clock(most), budget)

    def _take_backend(self, k: int) -> PolicyBackend:
        """A fresh K-type backend: the one the linear start prepared when it has K types."""
        spare, self._spare = getattr(self, "_spare", None), None
        return spare if spare is not None and spare.n_types == k else self._make_backend(k)

    def _out_of_time(self) -> bool:
        deadline = getattr(self, "_deadline", None)
        return deadline is not None and time.perf_counter() > deadline

    def _floor(self) -> prune.TypeFloor:
        return prune.TypeFloor(self.min_type_share, self.min_type_annotators, self.merge_nats)

    def _make_backend(self, k: int) -> PolicyBackend:
        if callable(self.backend):
            return self.backend(k)
        return make_backend(self.backend, k, self.backend_options)

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

    def _heldout_gain(self, k: int) -> tuple[float, int] | None:
        """Held-out log-likelihood of K = k over K = 1 from the selection table (if any)."""
        if any("backend" in r for r in self.selection_):
            return None  # chosen with another backend: its gain is not this model's
        rows = {r["k"]: r for r in self.selection_ if "heldout_loglik" in r}
        if k not in rows or 1 not in rows:
            return None
        return rows[k]["heldout_loglik"] - rows[1]["heldout_loglik"], rows[k]["heldout_annotators"]

    def _initial_posteriors(self, data: Annotations, k: int, restart: int) -> np.ndarray:
        n_annot = len(data.annotator_ids)
        seed = self.random_state + 1000 * restart + k
        if k == 1:  # also the K=1 baseline of a run given initial posteriors
            return np.ones((n_annot, 1))
        if isinstance(self.init, np.ndarray):
            if self.init.shape != (n_annot, k):
                raise ValueError(f"init posteriors must have shape ({n_annot}, {k}), got "
                                 f"{self.init.shape}")
            return self.init / self.init.sum(axis=1, keepdims=True)
        mode = self._init_mode()
        if mode == "random":
            return np.random.default_rng(seed).dirichlet(np.ones(k), size=n_annot)
        if mode == "linear":
            return self._linear_posteriors(data, k)
        return kmeans_posteriors(self._init_features(data), k, seed)

    def _init_mode(self) -> str:
        """The initialisation in use: "given" for an array, "auto" resolved per backend."""
        if not isinstance(self.init, str):
            return "given"
        if self.init == "auto":
            return "linear" if self.backend == "lora" else "kmeans"
        return self.init

    def _init_features(self, data: Annotations) -> np.ndarray:
        backend = self._make_backend(1)
        design = getattr(backend, "design", None)
        if design is None:
            raise ValueError("init='kmeans' needs a backend with linear features; use "
                             "init='linear' with the LoRA backend")
        d = design(data)
        return score_statistics(data, d.phi, d.col, len(getattr(backend, "vocab_", {})))

    def _linear_em(self, k: int | str) -> EMDPO:
        """The linear backend on LM embeddings, with this run's LM and token settings and the
        linear options of `init_options` (l2, beta, loss...)."""
        opts = dict(self.backend_options or {})
        keep = ("model", "max_prompt_tokens", "max_response_tokens", "token_budget", "cache",
                "progress")
        return EMDPO("linear", n_types=k, max_types=self.max_types, backend_options={
            **{o: opts[o] for o in keep if o in opts}, **(self.init_options or {}),
            "features": "embedding"},
            n_init=self.n_init, tol=self.tol, selection=self.selection,  # own max_iter: cheap
            heldout_fraction=self.heldout_fraction, random_state=self.random_state,
            min_type_share=self.min_type_share, min_type_annotators=self.min_type_annotators,
            merge_nats=self.merge_nats, se_factor=self.se_factor)

    def _linear_posteriors(self, data: Annotations, k: int) -> np.ndarray:
        """Discovery with the linear backend on LM embeddings, handed to the LoRA run."""
        backend = self._make_backend(k)
        if hasattr(backend, "prepare"):  # one reference pass computing embeddings and trunk
            backend.prepare(data, embeddings=True)  # states serves the linear start and the
            self._spare = backend  # LoRA run, which takes this backend (model loaded once)
        run = self._linear_em(k)._fit_k(data, k, "linear-init")  # no K=1 baseline
        self.init_actions_ = [{**a, "stage": "linear start"} for a in run.actions]
        return run.posteriors

    def _fit_k(self, data: Annotations, k: int, tag: str) -> Run:
        """Best of n_init EM runs for K = k (one run when the init is given or linear)."""
        single = k == 1 or self._init_mode() in ("given", "linear")
        best: Run | None = None
        for restart in range(1 if single else self.n_init):
            if best is not None and self._out_of_time():
                break  # the budget is spent: keep the best restart so far
            ckpt = None if self.checkpoint_dir is None else \
                Path(self.checkpoint_dir) / f"{tag}-K{k}" / f"init{restart}"
            run = self._run(data, k, restart, ckpt)
            if best is None or run.objective > best.objective:
                best = run
        assert best is not None
        return self._shrink(data, best, tag, k)

    def _shrink(self, data: Annotations, run: Run, tag: str, k: int) -> Run:
        """Prune or merge one type at a time (pluralign.prune), re-fitting EM from the reduced
        posteriors, until every type is above the floor and distinguishable."""
        actions = list(run.actions)
        while run.log_lik is not None:
            action = prune.next_action(run.posteriors, run.log_lik, self._floor())
            if action is None:
                break
            actions.append(action)
            log.info("K=%d: %s", action["k"], action["reason"])
            ckpt = None if self.checkpoint_dir is None else \
                Path(self.checkpoint_dir) / f"{tag}-K{k}" / f"refit{len(actions)}"
            run = self._run(data, action["k"] - 1, 0, ckpt,
                            start=prune.apply(run.posteriors, action))
        run.actions = actions
        return run

    def _run(self, data: Annotations, k: int, restart: int, ckpt: Path | None,
             start: np.ndarray | None = None) -> Run:
        """EM iterations from one initialisation (or the posteriors `start`), checkpointed after
        every iteration. K is the starting posteriors' width: a linear start may have pruned."""
        codes, ids = data.annotator_codes()
        rank = _rankings(data)
        gamma = self._initial_posteriors(data, k, restart) if start is None else start
        k = gamma.shape[1]
        backend = self._take_backend(k)
        key = self._run_key(data, k, restart, gamma)  # the start is part of the key: a changed
        state = _load_checkpoint(ckpt, backend, key)  # one (say, linear options) never resumes
        log_lik = None
        if state is None:
            history, warns, first, skipped = [], [], 0, []
        else:
            gamma, history, warns = state["gamma"], state["history"], state["warnings"]
            first, skipped = state["iteration"] + 1, state["skipped"]
            log_lik = state["log_lik"]
            if state["done"]:
                return Run(k, gamma, gamma.mean(0), history, backend, first, state["converged"],
                           warns, float(np.mean(skipped)) if skipped else 0.0, log_lik)
        converged = False
        it = first - 1
        if first < self.max_iter and hasattr(backend, "iteration_seconds"):
            self._announce(backend, data, k, self.max_iter - first)
        for it in range(first, self.max_iter):
            priors = gamma.mean(axis=0)
            weights = gamma[codes]
            skipped.append(float((weights < self.sparse_threshold).mean())
                           if self.sparse_threshold > 0 else 0.0)
            for j in range(k):
                w = np.where(weights[:, j] < self.sparse_threshold, 0.0, weights[:, j])
                if not self.warm_start:
                    backend.reset(j)
                backend.fit(j, data, w)
            per = annotation_loglik(backend.logratios(data), rank, backend.beta)
            log_lik = annotator_loglik(per, codes, len(ids))
            gamma, loglik = e_step(log_lik, priors)
            objective = loglik - backend.penalty()
            if history and objective < history[-1] - 1e-6 * abs(history[-1]):
                msg = (f"K={k}: the EM objective decreased at iteration {it + 1} "
                       f"({history[-1]:.6f} -> {objective:.6f})")
                warns.append(msg)
                warnings.warn(msg, MonotonicityWarning, stacklevel=2)
            converged = bool(history) and abs(objective - history[-1]) <= self.tol * max(
                abs(history[-1]), 1e-12)
            history.append(objective)
            done = converged or it + 1 == self.max_iter
            _save_checkpoint(ckpt, backend, key, it, gamma, history, warns, skipped, done,
                             converged, log_lik)
            if self.callback is not None:
                self.callback(k, it, objective)
            if converged:
                break
            if self._out_of_time() and not done:
                msg = (f"K={k}: stopped after iteration {it + 1} of at most {self.max_iter}: "
                       f"max_time ({self.max_time:g} s) is spent; the fit has not converged")
                warns.append(msg)
                warnings.warn(msg, stacklevel=2)
                break
        return Run(k, gamma, gamma.mean(0), history, backend, it + 1, converged, warns,
                   float(np.mean(skipped)) if skipped else 0.0, log_lik)

    def _run_key(self, data: Annotations, k: int, restart: int, start: np.ndarray) -> str:
        """What a checkpoint must match to be resumed: the data, the starting posteriors and
        every setting that shapes the run (a checkpoint of other data, start or settings is
        discarded, never resumed)."""
        init = hashlib.sha256(np.ascontiguousarray(start, dtype=np.float64).tobytes()).hexdigest()
        backend = self.backend if isinstance(self.backend, str) else repr(self.backend)
        parts = [data.fingerprint(), k, restart, backend, self.backend_options or {}, init,
                 self.max_iter, self.tol, self.sparse_threshold, self.warm_start,
                 self.random_state, 2]  # 2: checkpoints hold log L_hk (pruning needs it)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                              ).hexdigest()

    def _folds(self, ids: list[str]) -> list[set[str]]:
        """Held-out annotator sets: one random split ("heldout"), or round(1/heldout_fraction)
        folds that hold out every annotator exactly once ("cv")."""
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(np.asarray(ids, dtype=object)).tolist()
        if self.selection == "heldout":
            return [set(order[: max(1, int(round(self.heldout_fraction * len(ids))))])]
        n_folds = min(len(ids), max(2, int(round(1 / self.heldout_fraction))))
        return [set(order[f::n_folds]) for f in range(n_folds)]

    def _select(self, data: Annotations) -> int:
        """Choose K in 1..max_types (the table lands in selection_). A LoRA run initialised
        from the linear backend chooses K with it too: one LoRA fit per candidate K would cost
        max_types times the run, and the linear fits are exact."""
        if self.backend == "lora" and self._init_mode() == "linear":
            linear = self._linear_em("auto")
            linear.selection_ = []
            k = linear._select(data)
            self.selection_ = [{**row, "backend": "linear (embedding)"}
                               for row in linear.selection_]
            return k
        ids = data.annotator_ids
        if len(ids) < 2:
            self.selection_.append({"k": 1, "note": f"{len(ids)} annotator(s): K = 1 is the "
                                                    "only feasible choice"})
            return 1
        if self.selection == "bic":
            for k in range(1, min(self.max_types, len(ids)) + 1):
                run = self._fit_k(data, k, "select")
                n_params = _n_params(run.backend) + k - 1
                bic = -2 * run.objective + n_params * np.log(len(ids))
                self.selection_.append({"k": k, "loglik": run.objective, "params": n_params,
                                        "bic": bic})
            return min(self.selection_, key=lambda r: r["bic"])["k"]
        splits = [(data.subset(i for i, a in enumerate(data) if a.annotator_id not in held),
                   data.subset(i for i, a in enumerate(data) if a.annotator_id in held))
                  for held in self._folds(ids)]  # made once: each memoises its fingerprint
        per_annotator: dict[int, np.ndarray] = {}
        feasible = min(self.max_types, *(len(train.annotator_ids) for train, _ in splits))
        for k in range(1, feasible + 1):  # a fold cannot fit more types than annotators
            scores, train_ll, fitted_k = [], [], set()
            for f, (train, test) in enumerate(splits):
                run = self._fit_k(train, k, "select" if len(splits) == 1 else f"select{f}")
                scores.append(_heldout_loglik(run, test))
                train_ll.append(run.objective)
                fitted_k.add(run.k)
            per_annotator[k] = np.concatenate(scores)
            self.selection_.append({"k": k, "fitted_k": sorted(fitted_k),
                                    "train_loglik": float(np.mean(train_ll)),
                                    "heldout_loglik": float(per_annotator[k].sum()),
                                    "heldout_annotators": len(per_annotator[k])})
        return _within_se(per_annotator, self.selection_, self.se_factor)


def _heldout_loglik(run: Run, test: Annotations) -> np.ndarray:
    """log p(annotations of each test annotator) under the fitted mixture (types summed out)."""
    codes, ids = test.annotator_codes()
    per = annotation_loglik(run.backend.logratios(test), _rankings(test),
                            run.backend.beta)
    return mixture_loglik(annotator_loglik(per, codes, len(ids)), run.priors)


def _within_se(per_annotator: dict[int, np.ndarray], table: list[dict],
               factor: float = 1.645) -> int:
    """The smallest K whose held-out log-likelihood is within `factor` standard errors (of the
    paired per-annotator differences) of the best K's: more types must earn their keep, and a
    gap of about one standard error is noise, not evidence (factor 1.645: the larger K must pass
    a one-sided test at 5%)."""
    best = max(per_annotator, key=lambda k: per_annotator[k].sum())
    for row in table:
        diff = per_annotator[best] - per_annotator[row["k"]]
        row["se_of_gap"] = float(diff.std(ddof=1) * np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        row["gap_to_best"] = float(diff.sum())
    return min(r["k"] for r in table if r["gap_to_best"] <= factor * r["se_of_gap"])


def _n_params(backend: PolicyBackend) -> int:
    theta = getattr(backend, "theta_", None)
    if theta is not None:
        return int(theta.size)
    model = getattr(backend, "model", None)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) if model else 0


# -- checkpoints ----------------------------------------------------------------------------
def _save_checkpoint(ckpt: Path | None, backend: PolicyBackend, key: str, it: int,
                     gamma: np.ndarray, history: list[float], warns: list[str],
                     skipped: list[float], done: bool, converged: bool,
                     log_lik: np.ndarray | None = None) -> None:
    """Write the policies to backend-<it>/, then state.json naming it (the commit point), then
    remove older policy folders: a kill at any moment leaves a consistent last iteration."""
    if ckpt is None:
        return
    if distributed.is_main():  # every rank holds the same state; one writes it
        _write_checkpoint(ckpt, backend, key, it, gamma, history, warns, skipped, done,
                          converged, log_lik)
    distributed.barrier()


def _write_checkpoint(ckpt: Path, backend: PolicyBackend, key: str, it: int,
                      gamma: np.ndarray, history: list[float], warns: list[str],
                      skipped: list[float], done: bool, converged: bool,
                      log_lik: np.ndarray | None) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    folder = ckpt / f"backend-{it}"
    if folder.exists():
        shutil.rmtree(folder)
    backend.save(folder)
    write_json(ckpt / "state.json", {
        "key": key, "iteration": it, "backend": folder.name, "posteriors": gamma.tolist(),
        "history": history, "warnings": warns, "skipped": skipped, "done": done,
        "converged": converged, "log_lik": None if log_lik is None else log_lik.tolist()})
    for old in ckpt.glob("backend-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path | None, backend: PolicyBackend,
                     key: str) -> dict[str, Any] | None:
    if ckpt is None:
        return None
    state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() \
        else None
    distributed.barrier()  # every rank has read it before rank 0 may remove it
    if state is None:
        return None
    if state.get("key") != key:
        if distributed.is_main():
            log.warning("%s holds a run of other data or settings; starting afresh", ckpt)
            shutil.rmtree(ckpt)
        return None
    backend.load(ckpt / state["backend"])
    log.info("resuming %s after iteration %d", ckpt, state["iteration"] + 1)
    return {**state, "gamma": np.asarray(state["posteriors"]),
            "log_lik": None if state.get("log_lik") is None else np.asarray(state["log_lik"])}
