"""Several processes (`torchrun`, `accelerate launch`): this process's rank and the few
collective operations the LoRA backend and EM need (DESIGN §9). With one process every function
is the identity, and torch is not imported here unless the caller already did: `pluralign run`
checks a config before paying for torch."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class UnsupportedEngineError(RuntimeError):
    """A launcher asked for model sharding (FSDP, DeepSpeed ZeRO) that pluralign does not do."""


class RankMismatchError(RuntimeError):
    """The processes of one run were given different data or settings."""


def launched() -> bool:
    """Whether a launcher started several processes (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(cpu: bool | None = None) -> None:
    """Join the launcher's process group through accelerate's shared state (gloo on CPU, NCCL on
    GPUs); nothing when one process runs. `cpu`: None decides by whether CUDA is present.
    (accelerate without cpu=True on a machine without GPUs half-joins: every rank calls itself
    0 of 1, and the runs silently repeat each other's work.)"""
    if not launched():
        return
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() in ("1", "true"):
            raise UnsupportedEngineError(
                f"accelerate launched this run with {engine}: pluralign splits the data over "
                "ranks (each holds the base model and the adapters, gradients summed), it does "
                "not shard the model, and would silently ignore the setting; launch with "
                "pipelines/accelerate/multi_gpu.yaml instead")
    import torch
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        from accelerate import PartialState
        PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


def _group() -> Any:
    """torch.distributed once the process group is up (set up on first use), else None."""
    if not launched():
        return None
    setup()
    return sys.modules["torch"].distributed


def world() -> int:
    """Number of processes in the run (1 without a process group)."""
    dist = _group()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    """This process's index, 0 without a process group."""
    dist = _group()
    return dist.get_rank() if dist is not None else 0


def is_main() -> bool:
    """Whether this process writes files and shows progress bars (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (after rank 0 wrote what the others read)."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every world()-th from its rank, so all ranks together hold
    each item exactly once and shares differ in size by at most one."""
    return list(items[rank()::world()])


def all_sum_(tensor: Any) -> Any:
    """Sum `tensor` over ranks in place (each rank filled its own entries, zeros elsewhere)."""
    dist = _group()
    if dist is None:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type == "cpu":  # NCCL reduces on GPU
        tensor.copy_(all_sum_(tensor.cuda()).cpu())
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (picklable objects; one process: [obj])."""
    dist = _group()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same(value: str, what: str) -> None:
    """Raise RankMismatchError on every rank unless all ranks hold the same `value`: a run whose
    ranks disagree would otherwise hang in a collective or train on mixed data."""
    values = gather_objects(value)
    if len(set(values)) > 1:
        shown = ", ".join(f"rank {i}: {v[:16]}" for i, v in enumerate(values))
        raise RankMismatchError(f"the {len(values)} processes disagree on {what} ({shown}); "
                                "every rank must read the same data and config")
