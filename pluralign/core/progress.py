"""Progress bars for every long step (reference pass, scoring, fitting, sampling): tqdm with
its rate and ETA, on rank 0 only, and none under `pluralign --quiet` (PLURALIGN_QUIET=1)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from pluralign.core import distributed

QUIET_ENV = "PLURALIGN_QUIET"


def quiet() -> bool:
    """Whether the user asked for no progress output."""
    return os.environ.get(QUIET_ENV, "0") == "1"


def bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str, total: int | None = None,
        enabled: bool = True) -> tqdm:
    """A tqdm bar, shown unless `enabled` is False (a setting's `progress: false`), the run is
    quiet, or this is not rank 0."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                disable=not enabled or quiet() or not distributed.is_main())


def clock(seconds: float) -> str:
    """Seconds as a person reads them: 42.0 s, 3.5 min, 2.1 h."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
