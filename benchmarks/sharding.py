"""Memory and time of a launched LoRA fit with the model whole on every rank (sharding: none)
and split over the ranks (sharding: fsdp).

Usage: python benchmarks/sharding.py [--model builtin:smollm2-135m] [--processes 2]
                                     [--pairs 8] [--tokens 64]

Each setting runs under torchrun (gloo on CPU, NCCL on GPUs): every rank builds a LoRA backend
(adapters in every layer, K = 2), runs the reference pass and one fit of type 0 over the pairs
(micro-batches of 4), and reports the parameter bytes it holds, its memory (CPU: resident set
after the fit, freed pages returned; GPU: peak allocated) and the fit's seconds. Loading reads
the whole model into each rank's CPU memory before sharding, so on CPU the resident figure
after the fit is the one that shows the sharding.

The last line is `fsdp_param_share: X fsdp_memory_over_none: Y`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    """One rank: build, reference pass, one fit; print one JSON line."""
    import torch
    from common import Clock, preference_pairs, release_freed, rss_bytes

    from pluralign.backends import make_backend
    from pluralign.core import distributed
    from pluralign.lm import sharding
    b = make_backend("lora", 2, dict(model=args.model, sharding=args.sharding,
                                     max_prompt_tokens=args.tokens,
                                     max_response_tokens=args.tokens, batch_size=4,
                                     progress=False, cache=""))  # joins the launcher's group
    data = preference_pairs(args.pairs, b.tokenizer, args.tokens, args.tokens)
    b.prepare(data)
    with Clock() as clock:
        b.fit(0, data, np.ones(len(data)))
    mine, _ = sharding.local_share(b.model)
    per_param = next(b.model.parameters()).element_size()
    release_freed()
    gpu = b._device.type == "cuda"
    print(json.dumps({"rank": distributed.rank(), "param_mib": mine * per_param / 2**20,
                      "memory_mib": (torch.cuda.max_memory_allocated() if gpu else rss_bytes())
                      / 2**20, "memory": "GPU peak allocated" if gpu else "CPU resident",
                      "fit_s": clock.seconds}), flush=True)


def launch(args: argparse.Namespace, mode: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.processes}", str(HERE), "--worker", "--sharding", mode,
           "--model", args.model, "--pairs", str(args.pairs), "--tokens", str(args.tokens)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sharding", default="none")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    runs = {mode: launch(args, mode) for mode in ("none", "fsdp")}
    print(f"{'sharding':>8} {'rank':>4} {'params MiB':>10} {'memory MiB':>10} {'fit s':>6}")
    for mode, rows in runs.items():
        for r in sorted(rows, key=lambda r: r["rank"]):
            print(f"{mode:>8} {r['rank']:>4} {r['param_mib']:>10.1f} {r['memory_mib']:>10.1f} "
                  f"{r['fit_s']:>6.1f}")
    print(f"memory: {runs['none'][0]['memory']}; {args.processes} processes, {args.model}")

    def worst(mode: str, key: str) -> float:
        return max(r[key] for r in runs[mode])
    print(f"fsdp_param_share: {worst('fsdp', 'param_mib') / worst('none', 'param_mib'):.2f} "
          f"fsdp_memory_over_none: {worst('fsdp', 'memory_mib') / worst('none', 'memory_mib'):.2f}")


if __name__ == "__main__":
    main()
