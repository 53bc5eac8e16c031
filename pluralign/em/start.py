"""Where EM starts (DESIGN §4): given posteriors, random Dirichlet draws, k-means on score
statistics (linear features), or for a LoRA run a linear fit on LM embeddings whose
posteriors the LoRA run continues from (one reference pass serves both)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from sklearn.base import clone

from pluralign.backends import make_backend
from pluralign.backends.base import PolicyBackend
from pluralign.core.data import Annotations
from pluralign.em.estep import kmeans_posteriors, score_statistics


class Initialisation:
    """EMDPO's starting posteriors and backends (a mixin: reads the estimator's parameters)."""

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
        """Per-annotator score statistics for k-means, computed once per dataset: restarts and
        every K of a selection cluster the same ones."""
        cached = getattr(self, "_statistics", None)
        if cached is not None and cached[0] == data.memo_key:
            return cached[1]
        design = self._make_backend(1).feature_design(data)
        if design is None:
            raise ValueError("init='kmeans' needs a backend with linear features; use "
                             "init='linear' with the LoRA backend")
        self._statistics = (data.memo_key, score_statistics(data, *design))
        return self._statistics[1]

    def _linear_start(self, n_types: int | str) -> Any:
        """This estimator with the linear backend on LM embeddings (clone + set_params): this
        run's LM and token settings, the linear options of `init_options` (l2, beta, loss...;
        `features` too: onehot for questions that repeat, as a survey's do),
        its own defaults for what shapes a LoRA run only (iterations, budget, checkpoints)."""
        opts = dict(self.backend_options or {})
        keep = ("model", "max_prompt_tokens", "max_response_tokens", "token_budget", "cache",
                "progress")
        fresh = ("init", "max_iter", "sparse_threshold", "warm_start", "checkpoint_dir",
                 "callback", "init_options", "max_time")
        defaults = {n: p.default for n, p in inspect.signature(type(self)).parameters.items()}
        return clone(self).set_params(
            **{n: defaults[n] for n in fresh}, backend="linear", n_types=n_types,
            backend_options={**{o: opts[o] for o in keep if o in opts},
                             "features": "embedding", **(self.init_options or {})})

    def _linear_posteriors(self, data: Annotations, k: int) -> np.ndarray:
        """Discovery with the linear backend on LM embeddings, handed to the LoRA run."""
        backend = self._make_backend(k)
        backend.prepare(data, embeddings=True)  # one reference pass computing embeddings and
        self._spare = backend  # trunk states serves the linear start and the LoRA run, which
        # takes this backend (model loaded once)
        linear = getattr(self, "_linear", None)  # K selection's linear fit, when it chose k
        if linear is None or linear.selected_k_ != k:
            linear = self._linear_start(k).fit(data)
        self.init_actions_ = [{**a, "stage": "linear start"} for a in linear.actions_]
        return linear.posteriors_

    def _take_backend(self, k: int) -> PolicyBackend:
        """A fresh K-type backend: the one the linear start prepared when it has K types."""
        spare, self._spare = getattr(self, "_spare", None), None
        return spare if spare is not None and spare.n_types == k else self._make_backend(k)

    def _make_backend(self, k: int) -> PolicyBackend:
        if callable(self.backend):
            return self.backend(k)
        return make_backend(self.backend, k, self.backend_options)
