"""What several benchmarks share: a peak-memory meter, benchmark data, random-init models."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import gzip
import json
import tempfile
import threading
import time
from pathlib import Path

from pluralign.core.data import Annotation, Annotations, load

#: Real preference pairs (Anthropic HH, relabelled) when ../shared sits beside the clone.
HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_relabeled_dev.jsonl.gz"


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def release_freed() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc malloc_trim), so
    that a run's peak above its start is its own even after earlier runs in this process."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: figures may then be flattered
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak resident memory while the block runs, sampled every 5 ms by a thread; `.peak` and
    `.start` in bytes. Sequential runs in one process each get their own peak (unlike
    ru_maxrss, which only grows)."""

    def __enter__(self) -> PeakRSS:
        release_freed()
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def preference_pairs(n: int, tokenizer, max_prompt: int, max_response: int,
                     data: str | None = None) -> Annotations:
    """n pairwise annotations whose prompt fits in max_prompt tokens and each response in
    max_response - 1 (+ EOS), so no tool truncates and every tool sees the same tokens: HH when
    available, else data/demo (best vs worst of each ranking)."""
    from pluralign.lm.reference import prompt_ids
    rows = _hh_rows() if data is None and HH.is_file() else _ranked_rows(data or "data/demo")
    out = []
    for a in rows:
        if (len(prompt_ids(a.prompt, tokenizer, None)) <= max_prompt and all(
                len(tokenizer(r, add_special_tokens=False).input_ids) < max_response
                for r in a.responses)):
            out.append(a)
        if len(out) == n:
            return Annotations(out)
    raise SystemExit(f"only {len(out)} pairs fit {max_prompt}+{max_response} tokens; ask fewer")


def _hh_rows() -> list[Annotation]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [Annotation(r["annotator_id"], r["prompt"], [r["chosen"], r["rejected"]], [0, 1])
            for r in rows]


def _ranked_rows(folder: str) -> list[Annotation]:
    return [Annotation(a.annotator_id, a.prompt, [a.responses[a.ranking[0]],
                                                  a.responses[a.ranking[-1]]], [0, 1])
            for a in load(folder)]


def random_model(config_dir: str) -> str:
    """Save a randomly initialised model of `config_dir`'s architecture; returns its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    out = tempfile.mkdtemp(prefix="random-model-")
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


class Clock:
    """Wall-clock seconds of a block: `with Clock() as c: ...; c.seconds`."""

    def __enter__(self) -> Clock:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def only(n: int, rows: slice):
    """Weights [n] that select `rows`: a fit on the prepared dataset with them trains on those
    rows alone, as an EM M-step does. (A subset taken as a new Annotations is a new dataset to
    a backend, with a reference pass of its own, which a timed fit would then include.)"""
    import numpy as np
    w = np.zeros(n)
    w[rows] = 1.0
    return w
