"""M-step and scoring throughput of the LoRA backend, with and without trunk caching.

Usage: python benchmarks/mstep.py [--model builtin:smollm2-135m] [--annotations 16]
                                  [--top-layers 4] [--data data/demo]
For T = all layers and T = --top-layers, prints the one-time reference pass, then tokens per
second of `fit` (forward + backward + step for one type) and of `logratios` (every type), and the
ratios. Tokens are prompt + response tokens of each distinct sequence a pass touches. The last
line is `trunk_speedup_fit: X`.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
import torch
from common import random_model

from pluralign.backends.lora import LoRABackend
from pluralign.core.data import load


def measure(model: str, data, top_layers: int | None, cache: str, types: int) -> dict:
    backend = LoRABackend(model=model, types=types, top_layers=top_layers, cache=cache,
                          batch_size=8, epochs=1, max_prompt_tokens=128,
                          max_response_tokens=128, progress=False)
    t0 = time.perf_counter()
    prep = backend.prepare(data)
    t_ref = time.perf_counter() - t0
    warm = data[:4]  # untimed: thread pools and allocator warm up, so order does not matter
    backend.fit(1, warm, np.ones(len(warm)))
    backend.logratios(warm)
    t0 = time.perf_counter()
    stats = backend.fit(0, data, np.ones(len(data)))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.logratios(data)
    t_score = time.perf_counter() - t0
    scored = prep.seqs.n_tokens() * types
    return {"ref_s": t_ref, "ref_cached": prep.ref.from_cache, "fit_s": t_fit,
            "fit_tps": stats["tokens"] / t_fit, "steps": stats["steps"],
            "score_s": t_score, "score_tps": scored / t_score, "tokens": prep.seqs.n_tokens(),
            "layers_run": backend.model.config.num_hidden_layers - backend.start_layer
            if backend.trunk else backend.model.config.num_hidden_layers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--annotations", type=int, default=16)
    p.add_argument("--top-layers", type=int, default=4)
    p.add_argument("--types", type=int, default=2)
    p.add_argument("--random-init", metavar="DIR", default=None,
                   help="a folder with a config.json and tokenizer files: benchmark that "
                        "architecture with random weights (speed depends on shapes only; for "
                        "machines the weights cannot reach)")
    args = p.parse_args()
    if args.random_init:
        args.model = random_model(args.random_init)
    data = load(args.data)[: args.annotations]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {args.model}, {len(data)} annotations, {args.types} types, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        # Trunk-cached first: peak memory only grows, so each line's peak is its own.
        for label, top in ((f"T={args.top_layers}", args.top_layers), ("T=all", None)):
            r = measure(args.model, data, top, cache, args.types)
            results[label] = r
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{label:6s} reference pass {r['ref_s']:6.1f} s ({r['tokens']} tokens)  "
                  f"fit {r['fit_tps']:8.1f} tokens/s ({r['steps']} steps, {r['fit_s']:.1f} s)  "
                  f"logratios {r['score_tps']:8.1f} tokens/s ({r['score_s']:.1f} s)  "
                  f"layers run {r['layers_run']}  peak memory {peak:.0f} MiB")
    base, top = results["T=all"], results[f"T={args.top_layers}"]
    print(f"trunk_speedup_logratios: {top['score_tps'] / base['score_tps']:.2f}")
    print(f"trunk_speedup_fit: {top['fit_tps'] / base['fit_tps']:.2f}")


if __name__ == "__main__":
    main()
