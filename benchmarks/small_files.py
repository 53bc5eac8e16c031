"""Small files in seconds: `pluralign em --types auto` on a 360-row survey-sized file, timed as a
user waits for it (a fresh process: imports, start-up, K selection, the K=1 baseline, the
supervised ceiling when labels exist, the files written).

Usage: python benchmarks/small_files.py [--data data/demo] [--annotators 45] [--repeats 3]
                                        [--max-types 5] [--features onehot]

The file: the first `--annotators` annotators of `--data` (45 x 8 items = 360 rows of the
committed demo population), saved as a dataset folder. Each repeat runs the CLI into a fresh
folder; the median wall time is printed, with EM's own time split (em.json's timings).

The last line is `small_k_auto_seconds: X` (target < 10 on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pluralign.core.data import load, save

ROOT = Path(__file__).resolve().parents[1]


def small_file(source: Path, annotators: int, out: Path) -> int:
    """The first `annotators` annotators of `source` as a dataset folder; returns its rows."""
    data = load(source)
    keep = set(data.annotator_ids[:annotators])
    rows = [a for a in data if a.annotator_id in keep]
    save(rows, out)
    return len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    p.add_argument("--annotators", type=int, default=45)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-types", type=int, default=5)
    p.add_argument("--features", default="onehot")
    args = p.parse_args()
    cli = Path(sys.executable).with_name("pluralign")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "small"
        rows = small_file(args.data, args.annotators, data)
        print(f"{rows} rows ({args.annotators} annotators of {args.data})")
        times = []
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}"
            t0 = time.perf_counter()
            subprocess.run([str(cli), "em", "--data", str(data), "--out", str(out), "--types",
                            "auto", "--max-types", str(args.max_types), "--features",
                            args.features], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
            em = json.loads((out / "em.json").read_text())
            print(f"run {r}: {times[-1]:.2f} s wall, K = {em['n_types']}, EM {em['timings']}")
    print(f"small_k_auto_seconds: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
