"""One rule per kind of setting, shared by YAML keys and command-line flags, so that a value
refused in one place is refused in the other with the same words (only the name differs:
`aggregate.n_boot` there, `--n-boot` here)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

#: The largest seed every generator takes (torch.manual_seed wants a 64-bit integer).
MAX_SEED = 2**63 - 1


def at_least(value: int | float, low: int | float, name: str) -> int | float:
    """`value`, or ValueError when below `low`."""
    if not value >= low:  # also refuses NaN
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def seed(value: int, name: str) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {value}")
    return value


def weights(values: Sequence[float], name: str) -> list[float]:
    """Importance weights: finite, >= 0, not all 0."""
    values = [float(v) for v in values]
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"{name} must be finite numbers >= 0, got {bad[0]}")
    if values and sum(values) <= 0:
        raise ValueError(f"{name} must not all be 0")
    return values


def served_prompts(value: int, name: str) -> int:
    """Held-out prompts for the served regrets: 0 (all) or at least 2 (a subset of one has no
    spread to report)."""
    at_least(value, 0, name)
    if value == 1:
        raise ValueError(f"{name} must be 0 (all) or >= 2, got 1")
    return value


def user_path(text: str | os.PathLike, what: str) -> Path:
    """A path the user gave, with `~` expanded (the same everywhere); "" is refused, as it
    would silently mean the working directory."""
    if str(text).strip() == "":
        raise ValueError(f"{what} is empty; name a folder, e.g. runs/NAME")
    return Path(os.path.expanduser(str(text)))
