"""Where the time of a LoRA EM run goes: a per-phase breakdown from torch.profiler.

Usage: python benchmarks/profile_em.py [--model builtin:smollm2-135m] [--data data/demo]
                                       [--annotations 240] [--types 3] [--trace FILE.json]

One EM-DPO fit with the demo's settings (K types, init linear, one LoRA iteration, sparse M-step,
top 2 layers, 16 + 20 tokens) from a cold reference cache, under torch.profiler. Each phase is
marked with torch.profiler.record_function (wrappers installed by this script, nothing changed
in the library): model loading, the reference pass (which also stores trunk states and, for the
linear start, embeddings), the linear start's own EM, trunk states read back for a policy pass,
scoring (logratios), the fit's forward, backward and optimizer step, the E-step, checkpoint I/O.
A phase's time is its own (exclusive: a phase nested in another is subtracted from its parent),
as a share of the fit's wall time; "other" is what no phase covers. Then the ten costliest
operators. --trace writes a Chrome trace.

The last line is `top_phase: NAME PCT`.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import pluralign.backends.linear as linear
import pluralign.backends.lora as lora
import pluralign.em.checkpoint as checkpoint
import pluralign.em.estep as estep
import pluralign.em.estimator as em
import pluralign.em.iterations as iterations
import pluralign.lm.models as models
import pluralign.lm.reference as reference
from pluralign.core.data import load

PREFIX = "phase::"


def mark(owner: object, attr: str, phase: str) -> None:
    """Replace owner.attr by a wrapper that runs it inside record_function(phase)."""
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with record_function(PREFIX + phase):
            return fn(*args, **kwargs)

    setattr(owner, attr, wrapped)


def install() -> None:
    mark(models, "load_model", "model load")
    mark(lora, "load_model", "model load")
    mark(reference, "compute_reference", "reference pass")  # linear imports it late
    mark(lora, "compute_reference", "reference pass")
    mark(linear.LinearBackend, "fit", "linear start (EM on embeddings)")
    mark(reference.Reference, "trunk_states", "trunk states")
    mark(lora.LoRABackend, "logratios", "scoring")
    mark(lora.LoRABackend, "_micro_loss", "fit forward")
    mark(lora.LoRABackend, "_backward", "fit backward")
    mark(torch.optim.AdamW, "step", "fit optimizer")
    mark(estep, "annotation_loglik", "E-step")
    mark(iterations, "e_step", "E-step")
    mark(checkpoint, "save", "checkpoint I/O")


def exclusive_times(events) -> dict[str, float]:
    """Seconds of each phase not spent in a phase nested inside it (per thread)."""
    marks = sorted((e for e in events if e.name.startswith(PREFIX)),
                   key=lambda e: (e.thread, e.time_range.start, -e.time_range.end))
    own: dict[str, float] = defaultdict(float)
    stack: list = []
    for e in marks:
        while stack and (stack[-1].thread != e.thread
                         or stack[-1].time_range.end <= e.time_range.start):
            stack.pop()
        dur = (e.time_range.end - e.time_range.start) / 1e6
        own[e.name[len(PREFIX):]] += dur
        if stack:
            own[stack[-1].name[len(PREFIX):]] -= dur
        stack.append(e)
    return dict(own)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--annotations", type=int, default=240)
    p.add_argument("--types", type=int, default=3)
    p.add_argument("--trace", default=None)
    args = p.parse_args()
    data = load(args.data)[: args.annotations]
    install()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as ckpt:
        opts = dict(model=args.model, top_layers=2, rank=8, learning_rate=0.005, batch_size=8,
                    max_prompt_tokens=16, max_response_tokens=20, progress=False, cache=cache)
        fit = em.EMDPO("lora", n_types=args.types, backend_options=opts, init="linear",
                       max_iter=1, sparse_threshold=0.05, random_state=0, checkpoint_dir=ckpt)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fit.fit(data)
            wall = time.perf_counter() - t0
    if args.trace:
        prof.export_chrome_trace(args.trace)
    phases = exclusive_times(prof.events())
    phases["other"] = wall - sum(phases.values())
    print(f"{len(data)} annotations, K = {args.types}, model {args.model}: EM fit (one LoRA "
          f"iteration from the linear start, with its pooled baseline) {wall:.1f} s wall")
    print(f"{'phase':<34} {'seconds':>8} {'share':>7}")
    for name, sec in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{name:<34} {sec:>8.2f} {100 * sec / wall:>6.1f}%")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    top = max(phases, key=phases.get)
    print(f"top_phase: {top.replace(' ', '_')} {100 * phases[top] / wall:.1f}")


if __name__ == "__main__":
    main()
