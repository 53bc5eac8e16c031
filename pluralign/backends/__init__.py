"""Policy backends: the LoRA causal-LM backend and the linear backend (DESIGN §5)."""

from pluralign.backends.base import PolicyBackend

__all__ = ["PolicyBackend"]
