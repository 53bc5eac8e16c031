"""Several processes (`torchrun`, `accelerate launch`): this process's rank and the few
collective operations the LoRA backend and EM need (DESIGN §9). With one process every function
is the identity, and torch is not imported here unless the caller already did: `pluralign run`
checks a config before paying for torch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class UnsupportedEngineError(RuntimeError):
    """A launcher asked for an engine pluralign does not drive (DeepSpeed)."""


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
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise UnsupportedEngineError(
            "accelerate launched this run with DeepSpeed, which pluralign does not drive (its "
            "engine takes one model and one optimizer; pluralign trains K adapters, each with "
            "its own optimizer). For ZeRO-3's parameter sharding launch with "
            "pipelines/accelerate/fsdp.yaml (FSDP shards the same way); for ZeRO-2 use "
            "multi_gpu.yaml (ZeRO-2 shards gradients and optimizer states, which for LoRA "
            "adapters are megabytes)")
    _die_with_launcher()
    import torch
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        from accelerate import PartialState
        PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


_TIED = False


def _die_with_launcher() -> None:
    """Have Linux kill this rank when its launcher dies. torchrun starts each rank in a session
    of its own, so `kill -9` of the launcher (or of its process group) would leave the ranks
    running on, holding the run folder, or waiting forever in a collective whose peers are
    gone. The parent dying counts as this rank being killed: its checkpoint resumes."""
    global _TIED
    if _TIED or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        _TIED = True
    if _TIED and os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def fsdp_launched() -> bool:
    """Whether accelerate launched this run with FSDP (pipelines/accelerate/fsdp.yaml)."""
    return launched() and _env_flag("ACCELERATE_USE_FSDP")


def fsdp_options() -> dict[str, bool]:
    """The FSDP settings of an accelerate config that pluralign follows (fsdp_reshard_after_
    forward, fsdp_offload_params); it shards every decoder layer whatever the wrap policy."""
    def flag(name: str, default: bool) -> bool:
        value = os.environ.get(name)
        return default if value is None else _env_flag(name)
    return {"reshard_after_forward": flag("FSDP_RESHARD_AFTER_FORWARD", True),
            "offload": flag("FSDP_OFFLOAD_PARAMS", False)}


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


def lockstep(items: Sequence[T], dummy: T) -> list[tuple[T, bool]]:
    """This rank's share of `items` (as `shard`), each marked True, padded with `dummy` marked
    False to the largest share's size: with a sharded model every forward pass gathers weights
    from every rank, so all ranks must run the same number of them (a dummy's result is
    dropped)."""
    mine = shard(items)
    size = -(-len(items) // world())
    return [(item, True) for item in mine] + [(dummy, False)] * (size - len(mine))


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
