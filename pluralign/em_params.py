"""The parameters of `pluralign.em.EMDPO`, apart from it: `pluralign run` and `pluralign em` check
a config's `em:` section against this signature before importing scikit-learn, scipy or
torch, so that a mistyped key is reported in well under two seconds. EMDPO uses this function
as its __init__ (its docstring describes the parameters)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.backends.base import PolicyBackend

#: A callable K -> backend, in place of a backend name.
BackendFactory = Callable[[int], PolicyBackend]


def em_init(self: Any, backend: str | BackendFactory = "linear", n_types: int | str = 3,
            max_types: int = 4, backend_options: dict[str, Any] | None = None,
            init: str | np.ndarray = "auto", n_init: int = 3, max_iter: int = 100,
            tol: float = 1e-4, selection: str = "cv", heldout_fraction: float = 0.25,
            sparse_threshold: float = 0.0, warm_start: bool = True, force: bool = False,
            checkpoint_dir: str | Path | None = None, random_state: int = 0,
            callback: Callable[[int, int, float], None] | None = None,
            init_options: dict[str, Any] | None = None, min_type_share: float = 0.05,
            min_type_annotators: float = 3.0, merge_nats: float = 1.0,
            se_factor: float = 1.645, max_time: float | None = None) -> None:
    """Store the parameters (scikit-learn convention: no validation or work here)."""
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
