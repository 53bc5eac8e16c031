"""Model sharding with FSDP (torch's fully_shard, "FSDP2"; DESIGN §9): every decoder layer's
weights are split over the ranks and gathered for the moment a layer runs, so a model that one
device cannot hold still trains. The data is shared out over the ranks exactly as without
sharding (distributed.py), so a sharded run fits what one process fits.

What FSDP asks of its caller, and where pluralign does it:
- every rank runs the same number of forward and backward passes through every sharded
  module, since each pass gathers weights from all ranks (distributed.lockstep pads shares);
- passes that do not go through the model's own forward run inside `Root`, which owns the
  weights outside the layers (embeddings, final norm, head) and gathers them;
- gradients are reduce-scattered, and summed, not averaged (each rank's loss is its share);
- sharded parameters are read and written whole through `full` and `assign_`, and only
  once `settle` has put every module back to its slices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class Root(nn.Module):
    """The outermost sharded module: calling it runs `fn(*args)` as its forward, so that FSDP
    gathers the weights that belong to no layer around any pass (trunk-cached or full)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def shard(model: nn.Module, layers: nn.ModuleList, device: torch.device,
          reshard_after_forward: bool = True, offload: bool = False) -> Root:
    """Shard each of `layers` and then the rest of `model` over all ranks (one device mesh,
    gradients summed over ranks); returns the Root every pass must run in.
    `reshard_after_forward`: free each layer's gathered weights after its forward (less
    memory, one more gather in the backward); `offload`: keep the shards in CPU memory
    between uses (GPU runs only)."""
    from torch.distributed import get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
    mesh = init_device_mesh(device.type, (get_world_size(),))
    policy = CPUOffloadPolicy() if offload and device.type == "cuda" else OffloadPolicy()
    for layer in layers:
        _summing(fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward,
                             offload_policy=policy))
    return _summing(fully_shard(Root(model), mesh=mesh, offload_policy=policy))


def _summing(module: Any) -> Any:
    """Gradients summed over ranks, with a plain sum (no pre-multiplied sum, which gloo lacks)."""
    module.set_gradient_divide_factor(1.0)
    module.set_force_sum_reduction_for_comms(True)
    return module


def settle(root: nn.Module) -> None:
    """Put every sharded module of `root` back to its slices. A module left gathered after a
    pass without backward (reshard_after_forward false, or the root, which FSDP never reshards
    after a forward) would otherwise take writes that its slices never see, and keep the
    requires_grad it had before the active adapter changed."""
    from torch.distributed.fsdp import FSDPModule
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor (a sharded parameter or gradient)."""
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def local_share(model: nn.Module) -> tuple[int, int]:
    """(parameters this rank holds, parameters of the whole model)."""
    params = list(model.parameters())
    mine = sum((p.to_local() if is_sharded(p) else p).numel() for p in params)
    return mine, sum(p.numel() for p in params)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a possibly sharded tensor (a collective when sharded: every rank
    calls it, in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


@torch.no_grad()
def assign_(param: torch.Tensor, value: torch.Tensor) -> None:
    """Write the whole `value` into `param`; a sharded parameter keeps its own slice of it
    (no communication: every rank holds `value`)."""
    value = value.to(param.device, param.dtype)
    if is_sharded(param):
        from torch.distributed.tensor import distribute_tensor
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)


def whole_values() -> contextlib.AbstractContextManager:
    """Context in which whole (plain) tensors may be written into sharded parameters, each
    rank keeping its slice: for loading a state dict (nothing changes for plain parameters)."""
    from torch.distributed.tensor.experimental import implicit_replication
    return implicit_replication()


@contextlib.contextmanager
def whole(modules: list[tuple[nn.Module, str]]) -> Iterator[None]:
    """Within the context, each (module, name) holds a plain full-size copy of its parameter,
    for code written for unsharded tensors (an initialiser); on exit, what it
    wrote is assigned back into the sharded parameter, which is put back in place. Nothing to
    do when no parameter is sharded."""
    if not any(is_sharded(getattr(module, name)) for module, name in modules):
        yield
        return
    saved = []
    for module, name in modules:
        param = getattr(module, name)
        saved.append((module, name, param))
        setattr(module, name, nn.Parameter(full(param.detach()).clone(),
                                           requires_grad=param.requires_grad))
    try:
        yield
    finally:
        for module, name, param in saved:
            assign_(param, getattr(module, name).detach())
            setattr(module, name, param)
