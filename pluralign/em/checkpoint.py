"""EM checkpoints: the policies, then state.json naming them (the commit point), so that a
killed run resumes from its last saved iteration (saved once EMDPO.checkpoint_interval seconds
of work are unsaved, or after every iteration); a checkpoint of other data, start
or settings is discarded, never resumed (its key differs)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.backends.base import PolicyBackend
from pluralign.core import distributed
from pluralign.core.data import Annotations
from pluralign.core.io import write_json

log = logging.getLogger(__name__)

#: EMDPO parameters that do not shape one EM run from a given start (they choose K, bound the
#: time, report progress, or act between runs): every other parameter is in a run's key, so a
#: new parameter invalidates old checkpoints until it is listed here.
NOT_IN_KEY = ("n_types", "max_types", "init", "n_init", "selection", "heldout_fraction",
              "force", "checkpoint_dir", "callback", "init_options", "min_type_share",
              "min_type_annotators", "merge_nats", "se_factor", "max_time",
              "checkpoint_interval")


def run_key(params: dict[str, Any], data: Annotations, k: int, restart: int,
            start: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the data, the starting posteriors and every
    parameter that shapes the run (`params`: the estimator's get_params())."""
    init = hashlib.sha256(np.ascontiguousarray(start, dtype=np.float64).tobytes()).hexdigest()
    shaping = {n: (v if isinstance(v, str | int | float | bool | dict | type(None)) else repr(v))
               for n, v in params.items() if n not in NOT_IN_KEY}
    parts = [data.fingerprint(), k, restart, shaping, init, 3]  # 3: the key's own format
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save(ckpt: Path | None, backend: PolicyBackend, key: str, it: int,
                     gamma: np.ndarray, history: list[float], warns: list[str],
                     skipped: list[float], done: bool, converged: bool,
                     log_lik: np.ndarray | None = None) -> None:
    """Write the policies to backend-<it>/, then state.json naming it (the commit point), then
    remove older policy folders: a kill at any moment leaves a consistent last iteration."""
    if ckpt is None:
        return
    if distributed.is_main():  # every rank holds the same state; one writes it
        _write(ckpt, backend, key, it, gamma, history, warns, skipped, done,
                          converged, log_lik)
    distributed.barrier()


def _write(ckpt: Path, backend: PolicyBackend, key: str, it: int,
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


def load(ckpt: Path | None, backend: PolicyBackend,
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
