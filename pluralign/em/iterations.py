"""One EM run of EM-DPO (DESIGN §4) from one initialisation, and the best of several for one K
with over-split types pruned or merged (pluralign.em.prune).

- M-step: eta_k = mean_h gamma_hk; policy k = weighted PL-DPO fit with weights gamma_{h(a)k}.
- Monitor: the observed log-likelihood sum_h log sum_k eta_k L_hk, minus the backend's
  log-prior penalty; with exact PL-DPO M-steps (the linear backend) it never decreases, and a
  decrease warns. Other losses do not maximise that likelihood: a dip is logged, not warned.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.backends.base import PolicyBackend
from pluralign.core import distributed, progress
from pluralign.core.data import Annotations
from pluralign.em import checkpoint, prune
from pluralign.em.estep import e_step, loglik_table

log = logging.getLogger(__name__)


class MonotonicityWarning(UserWarning):
    """The EM objective decreased: an under-trained M-step or a bug."""


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



class Iterations:
    """EMDPO's EM runs (a mixin: reads the estimator's parameters)."""

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
        """Prune or merge one type at a time (pluralign.em.prune), re-fitting EM from the reduced
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
        """EM iterations from one initialisation (or the posteriors `start`), checkpointed once
        checkpoint_interval seconds of work are unsaved. K is the starting posteriors' width: a
        linear start may have pruned."""
        codes, ids = data.annotator_codes()
        gamma = self._initial_posteriors(data, k, restart) if start is None else start
        k = gamma.shape[1]
        backend = self._take_backend(k)
        # the start is part of the key: a changed one (say, linear options) never resumes;
        # no key without a checkpoint folder (hashing 10^6 records takes seconds)
        key = "" if ckpt is None else checkpoint.run_key(self.get_params(), data, k, restart,
                                                         gamma)
        state = checkpoint.load(ckpt, backend, key)
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
        saved_at = time.perf_counter()
        if first < self.max_iter:
            self._announce(backend, data, k, self.max_iter - first)
        for it in range(first, self.max_iter):
            priors = gamma.mean(axis=0)
            weights = gamma[codes]
            skipped.append(float((weights < self.sparse_threshold).mean())
                           if self.sparse_threshold > 0 else 0.0)
            if not self.warm_start:
                for j in range(k):
                    backend.reset(j)
            backend.fit_types(range(k), data,
                              np.where(weights < self.sparse_threshold, 0.0, weights))
            log_lik = loglik_table(backend, data)[0]
            gamma, loglik = e_step(log_lik, priors)
            objective = loglik - backend.penalty()
            if history and objective < history[-1] - 1e-6 * abs(history[-1]):
                msg = (f"K={k}: the EM objective decreased at iteration {it + 1} "
                       f"({history[-1]:.6f} -> {objective:.6f})")
                if backend.fits_likelihood:
                    warns.append(msg)
                    warnings.warn(msg, MonotonicityWarning, stacklevel=2)
                else:  # the loss is not the likelihood: a dip is expected, not a bug
                    log.info("%s; expected with loss %s", msg, backend.loss_name)
            converged = bool(history) and abs(objective - history[-1]) <= self.tol * max(
                abs(history[-1]), 1e-12)
            history.append(objective)
            done = converged or it + 1 == self.max_iter
            if time.perf_counter() - saved_at >= self.checkpoint_interval:
                checkpoint.save(ckpt, backend, key, it, gamma, history, warns, skipped, done,
                                converged, log_lik)
                saved_at = time.perf_counter()
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

    def _announce(self, backend: PolicyBackend, data: Annotations, k: int, left: int) -> None:
        """Before a long (LoRA) EM run: its estimated time per iteration and at most. The
        estimate costs a timed micro-batch and scoring batch: skipped when nobody listens in
        one process (with several, every rank probes: the probe's passes are collective, and
        only rank 0 logs)."""
        if distributed.world() == 1 and not log.isEnabledFor(logging.INFO):
            return
        each = backend.iteration_seconds(data)
        if each is None:  # a backend too quick to be worth announcing
            return
        most = each * left
        budget = ""
        if self.max_time is not None:
            budget = f"; max_time {progress.clock(self.max_time)}"
        log.info("K=%d: about %s per EM iteration (a timed probe), at most %d iteration(s): up "
                 "to %s%s", k, progress.clock(each), left, progress.clock(most), budget)

    def _out_of_time(self) -> bool:
        deadline = getattr(self, "_deadline", None)
        return deadline is not None and time.perf_counter() > deadline

    def _floor(self) -> prune.TypeFloor:
        return prune.TypeFloor(self.min_type_share, self.min_type_annotators, self.merge_nats)
