"""Hardware utilisation of the M-step: the FLOPs a training step does against the rate of plain
matmuls of the same shapes, measured in the same run.

Usage: python benchmarks/utilisation.py [--model builtin:smollm2-135m] [--steps 3] [--batch 8]
                                        [--top-layers 4] [--random-init CONFIG_DIR]

pluralign's `fit` (LoRA, trunk caching, the LM head on response tokens only) runs `steps`
optimizer steps on the preference pairs of benchmarks/vs_trl.py, timed after one warm-up step.
The same steps are then replayed under torch.utils.flop_counter.FlopCounterMode (matmuls,
attention; forward and backward) while a dispatch mode records the shape of every matmul. Each
recorded shape is then timed as a plain torch matmul (repeated until 50 ms): the matmul FLOP
rate this machine reaches on exactly this work. Utilisation = (FLOPs / step time) / that rate.
Shown for adapters on the top layers and on all layers.

The last line is `matmul_utilisation_pct: X` (top layers, the default benchmark setting).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections import Counter

import numpy as np
import torch
from common import only, preference_pairs, random_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from pluralign.backends.lora import LoRABackend
from pluralign.core.data import Annotations
from pluralign.lm.models import load_model
from pluralign.settings.backends import LoRAConfig

MAX_TOKENS = 128
MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class MatmulShapes(TorchDispatchMode):
    """Counts (op, shapes) of every matmul dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            mats = args[1:3] if func is torch.ops.aten.addmm.default else args[:2]
            self.seen[(func is torch.ops.aten.bmm.default,
                       tuple(tuple(m.shape) for m in mats))] += 1
        return func(*args, **(kwargs or {}))


def matmul_seconds(shapes: Counter) -> tuple[float, float]:
    """(seconds, FLOPs) that plain matmuls of these shapes and counts take on this machine."""
    seconds = flops = 0.0
    for (batched, (a, b)), count in shapes.items():
        x, y = torch.randn(a), torch.randn(b)
        op = torch.bmm if batched else torch.mm
        op(x, y)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.05:
            op(x, y)
            reps += 1
        seconds += count * (time.perf_counter() - t0) / reps
        flops += count * 2 * np.prod(a) * b[-1]
    return seconds, flops


def measure(model: str, pairs: Annotations, top: int | None, steps: int, batch: int,
            cache: str) -> dict:
    cfg = LoRAConfig(model=model, types=2, top_layers=top, cache=cache, batch_size=batch,
                     max_prompt_tokens=MAX_TOKENS, max_response_tokens=MAX_TOKENS,
                     progress=False)
    backend = LoRABackend(cfg)
    backend.prepare(pairs)
    backend.fit(1, pairs, only(len(pairs), slice(0, batch)))  # warm-up
    # the timed steps on the prepared pairs: a subset as a new dataset would put a reference
    # pass inside the timing but not inside the counted step's FLOPs
    timed = only(len(pairs), slice(batch, batch * (steps + 1)))
    t0 = time.perf_counter()
    backend.fit(0, pairs, timed)
    seconds = time.perf_counter() - t0
    shapes = MatmulShapes()
    with FlopCounterMode(display=False) as counter, shapes:
        backend.fit(0, pairs, timed)
    flops = counter.get_total_flops()
    mm_seconds, mm_flops = matmul_seconds(shapes.seen)
    return {"seconds": seconds, "flops": flops, "rate": flops / seconds,
            "mm_rate": mm_flops / mm_seconds, "mm_share": mm_flops / flops}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--top-layers", type=int, default=4)
    p.add_argument("--data", default=None)
    p.add_argument("--random-init", metavar="DIR", default=None)
    args = p.parse_args()
    logging.getLogger("pluralign").setLevel(logging.ERROR)
    model = random_model(args.random_init) if args.random_init else args.model
    pairs = preference_pairs(args.batch * (args.steps + 1), load_model(model)[1], MAX_TOKENS,
                             MAX_TOKENS, args.data)
    print(f"model {model}, {args.steps} timed steps of {args.batch} pairs, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'layers':>7} {'s/step':>7} {'GFLOP/step':>11} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s':>15} {'matmul share':>13} {'utilisation':>12}")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, top in ((f"top{args.top_layers}", args.top_layers), ("all", None)):
            r = out[label] = measure(model, pairs, top, args.steps, args.batch, cache)
            print(f"{label:>7} {r['seconds'] / args.steps:>7.2f} "
                  f"{r['flops'] / args.steps / 1e9:>11.1f} {r['rate'] / 1e9:>8.1f} "
                  f"{r['mm_rate'] / 1e9:>15.1f} {100 * r['mm_share']:>12.1f}% "
                  f"{100 * r['rate'] / r['mm_rate']:>11.1f}%")
    top = out[f"top{args.top_layers}"]
    print(f"matmul_utilisation_pct: {100 * top['rate'] / top['mm_rate']:.1f}")


if __name__ == "__main__":
    main()
