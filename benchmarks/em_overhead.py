"""EM overhead: EM-DPO with K = 3 against one pooled DPO fit over the same data and epochs.

Usage: python benchmarks/em_overhead.py [--model builtin:smollm2-135m] [--data data/demo]
                                        [--types 3]

Settings are the demo's (pipelines/demo.yaml: top 2 layers, 16 prompt + 20 response tokens,
one LoRA iteration from the linear start, sparse_threshold 0.05). EM: EMDPO(backend="lora",
n_types=K, init="linear", max_iter=1) from a cold reference cache, timed without its pooled
baseline (reference pass with embeddings, linear EM start, K weighted LoRA fits that skip rows
of weight < 0.05, scoring every adapter, E-step, checkpoint). Pooled: a K = 1 LoRA backend
from its own cold cache, its reference pass and one fit over all rows at weight 1 (one epoch,
as each EM fit). All run in this process: the pooled fit once before EM and once after, and
its time is the mean of the two, so that a machine whose speed drifts over the run (this
2-core machine's reference pass took 42.6 s, 51.0 s and 59.6 s in three runs of one hour)
biases the ratio neither way.

With --flops both runs also execute under torch's FlopCounterMode (matmuls and attention,
forward and backward), which prints `em_over_pooled_flops: X`: the ratio of the work each does,
free of this machine's speed. It counts EM's types only (its pooled baseline is counted apart
and left out), and it slows both runs, so their seconds are not comparable to a plain run's.

The last line is `em_over_pooled: X`.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from pluralign.backends.lora import LoRABackend
from pluralign.core.data import load
from pluralign.em.estimator import EMDPO
from pluralign.lm import reference
from pluralign.settings.backends import LoRAConfig

DEMO = dict(top_layers=2, rank=8, learning_rate=0.005, batch_size=8, max_prompt_tokens=16,
            max_response_tokens=20, progress=False)


class Work:
    """Matmul FLOPs done so far (torch's FlopCounterMode), with EM's pooled baseline set apart."""

    def __init__(self, on: bool):
        self.on = on
        self.mode = None  # the counter in use (FlopCounterMode clears its counts on entry)
        self.done = 0     # FLOPs of counters already left
        self.baseline = 0

    def total(self) -> int:
        return self.done + (self.mode.get_total_flops() if self.mode else 0)

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        if not self.on:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode
        self.mode = FlopCounterMode(display=False)
        try:
            with self.mode:
                yield
        finally:
            self.done, self.mode = self.total(), None

    def split_baseline(self) -> None:
        """Count EMDPO's K = 1 baseline fit apart from its types."""
        fit_k = EMDPO._fit_k
        work = self

        def counted(em, data, k, tag):
            before = work.total()
            try:
                return fit_k(em, data, k, tag)
            finally:
                if tag == "baseline":
                    work.baseline += work.total() - before

        EMDPO._fit_k = counted


class Pooled(NamedTuple):
    seconds: float
    flops: float
    detail: str


def pooled_run(data, model: str, work: Work) -> Pooled:
    """One pooled DPO fit from a cold cache: model load, reference pass, one epoch at weight 1."""
    reference.forget()  # it pays for its own reference pass
    with tempfile.TemporaryDirectory() as cache:
        before = work.total()
        with work.counting():
            t0 = time.perf_counter()
            pooled = LoRABackend(LoRAConfig(**DEMO, model=model, cache=cache, types=1))
            t1 = time.perf_counter()
            pooled.prepare(data)
            t2 = time.perf_counter()
            stats = pooled.fit(0, data, np.ones(len(data)))
            t3 = time.perf_counter()
    return Pooled(t3 - t0, work.total() - before,
                  f"model load {t1 - t0:.1f} s, reference pass {t2 - t1:.1f} s, fit "
                  f"{t3 - t2:.1f} s over {stats['annotations']} rows, {stats['steps']} steps")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--types", type=int, default=3)
    p.add_argument("--flops", action="store_true",
                   help="also count each run's matmul FLOPs (slower; prints em_over_pooled_flops)")
    args = p.parse_args()
    work = Work(args.flops)
    if args.flops:
        work.split_baseline()
    data = load(args.data)
    print(f"{len(data)} annotations, {len(data.annotator_ids)} annotators, model {args.model}, "
          f"K = {args.types}, demo settings {DEMO}")
    with tempfile.TemporaryDirectory() as cache:  # untimed: no timed run pays the process's
        LoRABackend(LoRAConfig(**DEMO, model=args.model, cache=cache))  # first load (disk, imports)
    first = pooled_run(data, args.model, work)
    reference.forget()  # EM pays for its own reference pass, as each pooled fit does
    with tempfile.TemporaryDirectory() as cache:
        opts = dict(DEMO, model=args.model, cache=cache)
        before = work.total()
        with work.counting():
            em = EMDPO("lora", n_types=args.types, backend_options=opts, init="linear",
                       max_iter=1, sparse_threshold=0.05, random_state=0).fit(data)
    em_flops = work.total() - before - work.baseline
    t = em.timings_
    em_s = t["fit_seconds"] - t["baseline_seconds"]
    second = pooled_run(data, args.model, work)
    pooled_s = (first.seconds + second.seconds) / 2
    pooled_flops = (first.flops + second.flops) / 2
    print(f"EM K={args.types} (one LoRA iteration from the linear start): {em_s:.1f} s "
          f"(fitted K {em.n_types_}; timings {t})")
    for when, run in (("before EM", first), ("after EM", second)):
        print(f"pooled DPO {when}: {run.seconds:.1f} s ({run.detail})")
    print(f"pooled DPO, the mean of both: {pooled_s:.1f} s")
    print(f"EM's own pooled baseline (reference shared): {t['baseline_seconds']:.1f} s")
    if args.flops:
        print(f"matmul work: EM {em_flops / 1e12:.2f} TFLOP (its pooled baseline "
              f"{work.baseline / 1e12:.2f} apart), pooled {pooled_flops / 1e12:.2f} TFLOP")
        print(f"em_over_pooled_flops: {em_flops / pooled_flops:.2f}")
    print(f"em_over_pooled: {em_s / pooled_s:.2f}")


if __name__ == "__main__":
    main()
