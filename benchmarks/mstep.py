"""M-step and scoring throughput of the LoRA backend, with and without trunk caching.

Usage: python benchmarks/mstep.py [--model builtin:smollm2-135m] [--annotations 16]
                                  [--top-layers 4] [--data data/demo]
For T = all layers and T = --top-layers, prints the one-time reference pass, then tokens per
second of `fit` (forward + backward + step for one type) and of `logratios` (every type), and the
ratios; with `--losses pl_dpo,pmle,rkl` also each loss's seconds per step at T =
--top-layers, measured one after the other the same way (distill and rkl: their teacher's
one-time set-up, the embedding pass and first linear fit, apart). Tokens are prompt +
response tokens of each distinct sequence a pass touches. The last line is
`trunk_speedup_fit: X`.
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


def measure(model: str, data, top_layers: int | None, cache: str, types: int,
            loss: str = "pl_dpo") -> dict:
    backend = LoRABackend(model=model, types=types, top_layers=top_layers, cache=cache,
                          batch_size=8, epochs=1, max_prompt_tokens=128,
                          max_response_tokens=128, progress=False, loss=loss)
    t0 = time.perf_counter()
    prep = backend.prepare(data)
    t_ref = time.perf_counter() - t0
    warm = data[:4]  # untimed: thread pools and allocator warm up, so order does not matter
    backend.fit(1, warm, np.ones(len(warm)))
    t0 = time.perf_counter()
    if loss in ("distill", "rkl"):  # the teacher's one-time set-up: embeddings, its first fit
        backend.teacher_rewards(0, data, np.ones(len(data)))
    t_teacher = time.perf_counter() - t0
    backend.logratios(warm)
    t0 = time.perf_counter()
    stats = backend.fit(0, data, np.ones(len(data)))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.logratios(data)
    t_score = time.perf_counter() - t0
    scored = prep.seqs.n_tokens() * types
    return {"ref_s": t_ref, "ref_cached": prep.ref.from_cache, "fit_s": t_fit,
            "teacher_s": t_teacher,
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
    p.add_argument("--losses", default="pl_dpo",
                   help="comma-separated: after the trunk comparison, each loss's fit time "
                        "per step at T = --top-layers (distill and rkl include their teacher's "
                        "linear fit on embeddings)")
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
        for loss in args.losses.split(",") if "," in args.losses else []:
            r = measure(args.model, data, args.top_layers, cache, args.types, loss)
            print(f"loss {loss:8s} T={args.top_layers}: {r['fit_s'] / r['steps']:.2f} s/step "
                  f"({r['steps']} steps, {r['fit_tps']:.1f} tokens/s; a teacher's one-time "
                  f"set-up {r['teacher_s']:.1f} s, not in the steps)")
    base, top = results["T=all"], results[f"T={args.top_layers}"]
    print(f"trunk_speedup_logratios: {top['score_tps'] / base['score_tps']:.2f}")
    print(f"trunk_speedup_fit: {top['fit_tps'] / base['fit_tps']:.2f}")


if __name__ == "__main__":
    main()
