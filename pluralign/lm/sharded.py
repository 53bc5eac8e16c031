"""Where a causal LM lives when pluralign trains and scores it: this rank's device, the
launcher's process group (joined by the backend factory, never by a constructor), and with
`sharding: fsdp` each rank's slice of the model (pluralign.lm.sharding) with the root that runs
it and the whole adapter weights gathered for saving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from pluralign.core import distributed
from pluralign.lm import sharding

log = logging.getLogger(__name__)


def resolve_device(spec: str, default: torch.device) -> torch.device:
    """The device `spec` names (auto: the accelerator's, which is this rank's GPU when there
    is one), with a clear error when it asks for a GPU that is not there."""
    if spec == "auto":  # accelerate names the CPU "cpu:0" with several processes, which
        default = torch.device(default)  # safetensors refuses: the CPU has no index
        return torch.device("cpu") if default.type == "cpu" else default
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r}: no CUDA GPU is visible to torch here; use "
                           "device: auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: auto is bfloat16 on a GPU that supports it, float16 on one that
    does not, float32 on cpu."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16



def join(spec: str) -> torch.device:
    """Join the launcher's process group when a launcher started this run (gloo on CPU, NCCL on
    GPUs), and return this rank's device for the device setting `spec`."""
    from accelerate import PartialState
    cpu = spec == "cpu" or not torch.cuda.is_available()
    distributed.setup(cpu)
    return resolve_device(spec, PartialState(cpu=cpu).device)


def local_device(spec: str) -> torch.device:
    """This process's device for `spec` without a launcher (a launched run joins first)."""
    if distributed.launched() and not (torch.distributed.is_available()
                                       and torch.distributed.is_initialized()):
        raise RuntimeError("a launcher started this run: build the backend with "
                           "pluralign.backends.make_backend, which joins the process group")
    if distributed.launched():
        return join(spec)
    default = torch.device("cuda" if torch.cuda.is_available() and spec != "cpu" else "cpu")
    return resolve_device(spec, default)


def sum_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the adapter's gradients over ranks, in one collective (each rank's loss is its share
    of the micro-batch's, so the sum is the one-process gradient); nothing with one process."""
    if distributed.world() == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    distributed.all_sum_(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()



class Placement:
    """A model on this rank: whole on `device`, or sharded over the ranks (FSDP) when `mode`
    asks for it (see LoRAConfig.sharding), each slice moved to `device` (the whole model never
    is). Sharded, `whole` holds adapter weights gathered whole for rank 0 to save."""

    def __init__(self, model: torch.nn.Module, decoder: torch.nn.Module, device: torch.device,
                 mode: str):
        self.model, self.device = model, device
        self.root = _shard(model, decoder, mode, device)
        if self.root is None:  # sharded: fully_shard moved each layer's slice, one at a time
            model.to(device)
        self.whole: dict[str, torch.Tensor] = {}

    @property
    def sharded(self) -> bool:
        return self.root is not None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), inside the sharded model's root when the model is sharded (FSDP then
        gathers the weights that belong to no layer)."""
        return self.root(fn, *args) if self.root is not None else fn(*args)

    def keep_whole(self, names: list[str]) -> None:
        """Sharded model: gather the weights of adapters `names` whole onto every rank, now,
        while all ranks run the same code; rank 0 alone saves them later."""
        if self.root is None:
            return
        self.settle()
        for n, param in self.model.named_parameters():
            if any(f".{name}." in n for name in names):
                self.whole[n] = sharding.full(param.detach()).cpu()

    def settle(self) -> None:
        """A sharded model back to its slices (sharding.settle), before adapters are read,
        written or switched: each is then done to the slices, which FSDP keeps."""
        if self.root is not None:
            sharding.settle(self.root)

    def require_whole(self, what: str) -> None:
        if self.root is not None:
            raise RuntimeError(f"{what} needs the whole model in one process; the model is "
                               "sharded over ranks (sharding: fsdp); run it without a launcher")


def _shard(model: torch.nn.Module, decoder: torch.nn.Module, mode: str,
       device: torch.device) -> sharding.Root | None:
    """Shard the model over the ranks (FSDP) when `mode` asks for it (see
    LoRAConfig.sharding), moving each slice to `device` (the whole model never is);
    None: every rank holds the whole model."""
    wanted = mode == "fsdp" or (mode == "auto" and distributed.fsdp_launched())
    if mode == "none" and distributed.fsdp_launched():
        log.warning("accelerate launched this run with FSDP, and lora.sharding is none: "
                    "every rank holds the whole model (sharding: auto follows the launcher)")
    if not wanted or distributed.world() == 1:
        return None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        kind = type(decoder).__name__
        raise ValueError(f"sharding: fsdp shards decoder layers, and {kind} has no "
                         "`layers` list; use sharding: none")
    root = sharding.shard(model, layers, device, **distributed.fsdp_options())
    mine, total = sharding.local_share(model)
    log.info("FSDP: each of the %d ranks holds %.0f%% of the model's %s parameters (its "
             "slice of every layer's and of the rest)", distributed.world(),
             100 * mine / total, f"{total:,}")
    return root
