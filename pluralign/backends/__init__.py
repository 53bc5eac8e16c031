"""Policy backends (DESIGN §5): the LoRA causal-LM backend and the linear backend behind one
interface (PolicyBackend), and the one factory that builds either by name."""

from __future__ import annotations

from typing import Any

from pluralign.backends.base import PolicyBackend

__all__ = ["PolicyBackend", "make_backend"]


def make_backend(name: str, k: int, options: dict[str, Any] | None = None) -> PolicyBackend:
    """A fresh backend by name ("linear" or "lora") with K = k policies and config options."""
    opts = dict(options or {})
    if name == "linear":
        from pluralign.backends.linear import LinearBackend, LinearConfig
        return LinearBackend(LinearConfig(types=k, **opts))
    if name == "lora":
        from pluralign.backends.lora import LoRABackend, LoRAConfig
        from pluralign.lm.sharded import join
        config = LoRAConfig(types=k, **opts)
        # under a launcher: join the process group here, never inside a constructor
        return LoRABackend(config, rank_device=join(config.device))
    raise ValueError(f"backend must be 'linear', 'lora' or a callable, got {name!r}")
