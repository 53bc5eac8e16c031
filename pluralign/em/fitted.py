"""A finished EM run folder loaded back: em.json (checked), the posteriors, the type policies
and the pooled K=1 policy, and the supervised ceiling when EM ran on labelled data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.backends import make_backend
from pluralign.backends.base import PolicyBackend
from pluralign.core.data import Annotations
from pluralign.runfolder.artifacts import EMInfo, em_info
from pluralign.runfolder.lineage import CEILING, CROSSFIT_FILE
from pluralign.runfolder.posteriors import read_posteriors


@dataclass
class FittedRun:
    """A finished `pluralign em` folder, loaded: em.json, the posteriors and both policies."""

    path: Path
    info: EMInfo
    backend: PolicyBackend
    baseline: PolicyBackend
    annotator_ids: list[str]
    posteriors: np.ndarray

    @property
    def priors(self) -> np.ndarray:
        return np.asarray(self.info.priors, dtype=np.float64)

    def data(self, override: str | Path | None = None) -> Annotations:
        """The dataset named by `override`, else the one EM was fitted on."""
        from pluralign.core.data import load
        if override:
            return load(override)
        path = self.info.data
        if not path:
            raise FileNotFoundError(f"{self.path / 'em.json'} names no dataset; pass --data DIR")
        return load(self.path / path)  # a relative path is inside the run folder


def load_run(path: str | Path) -> FittedRun:
    """Read what run_em wrote into `path` (the type policies and the pooled K=1 policy)."""
    path = Path(path)
    info_file = path / "em.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: not a run folder (no em.json; run `pluralign em` "
                                "first)")
    info = em_info(info_file)
    ids, gamma = read_posteriors(path / "posteriors.csv", info.n_types)
    options = dict(info.backend_options)
    backend = make_backend(info.backend, info.n_types, options)
    baseline = make_backend(info.backend, 1, options)
    backend.load(path / info.policies)
    baseline.load(path / "baseline")
    return FittedRun(path, info, backend, baseline, ids, gamma)


def crossfit_posteriors(run: FittedRun) -> tuple[list[str], np.ndarray] | None:
    """The ceiling's cross-fitted posteriors of the training annotators, when em wrote them."""
    path = run.path / CEILING / CROSSFIT_FILE
    return read_posteriors(path) if path.is_file() else None


def load_ceiling(run: FittedRun) -> Any:
    """The run's supervised ceiling (pluralign.em.ceiling.SupervisedCeiling), or None when EM
    ran on data without labels."""
    if not (run.path / CEILING / "ceiling.json").is_file():
        return None
    from pluralign.em.ceiling import SupervisedCeiling
    options = dict(run.info.backend_options)
    return SupervisedCeiling.load(run.path / CEILING,
                                  lambda k: make_backend(run.info.backend, k, options))
