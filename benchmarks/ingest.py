"""Ingestion throughput: simulate a large feature population, export it, time `ingest`.

Usage: python benchmarks/ingest.py [--annotations N]
Prints annotations per second for reading + validating, and for writing the dataset folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pluralign.core.data import Annotations
from pluralign.ingest import ingest, write
from pluralign.simulate import SimulationConfig, simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--annotations", type=int, default=100_000)
    args = p.parse_args()
    per = 10
    pop = simulate(SimulationConfig(annotators=args.annotations // per, per_annotator=per,
                                    list_size=(2, 5), seed=0))
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        Annotations(pop.records).to_jsonl(src)
        t0 = time.perf_counter()
        result = ingest([str(src)])
        t1 = time.perf_counter()
        write(result, Path(d) / "out", with_rejects=False)
        t2 = time.perf_counter()
    n = result.report["accepted"]
    print(f"annotations: {n}  input: {src.name} ({per} per annotator, m in 2..5, 8 features)")
    print(f"read+validate: {t1 - t0:.2f} s  ({n / (t1 - t0):,.0f} annotations/s)")
    print(f"write folder: {t2 - t1:.2f} s  ({n / (t2 - t1):,.0f} annotations/s)")
    print(f"ingest_annotations_per_s: {n / (t2 - t0):.0f}")


if __name__ == "__main__":
    main()
