"""The demo's time, per stage, measured and written into pipelines/README.md (never typed).

Usage: python benchmarks/demo_times.py [--config pipelines/demo.yaml] [--out DIR] [--write]

Runs `pluralign run CONFIG --out DIR` (default: a fresh temporary folder, so every stage runs;
the model cache is whatever this machine has), timing the whole command, then reads each
stage's manifest (wall seconds, peak memory) and prints a markdown table. `--write` puts the
table between the `demo-times` markers in pipelines/README.md. The last line is
`demo_seconds: X`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "pipelines" / "README.md"
MARKERS = ("<!-- demo-times -->", "<!-- /demo-times -->")
STAGES = ("ingest", "reference", "em", "aggregate", "evaluate", "report")


def table(run: Path, total: float, config: str) -> str:
    """Markdown: one row per stage from its manifest, and the whole command's time."""
    rows = ["| stage | seconds | peak memory (MiB) |", "|---|---|---|"]
    for stage in STAGES:
        path = run / "manifests" / f"{stage}.json"
        if path.is_file():
            m = json.loads(path.read_text())
            rows.append(f"| {stage} | {m['wall_seconds']:.1f} | {m['peak_rss_mib']:.0f} |")
    rows.append(f"| **`pluralign run {config}`, whole command** | **{total:.1f}** | |")
    day = datetime.date.today().isoformat()
    return (f"Measured {day} by `python benchmarks/demo_times.py --write` on this machine "
            f"({len(os.sched_getaffinity(0))} CPU cores):\n\n" + "\n".join(rows))


def write(text: str) -> None:
    """Replace what lies between the markers in pipelines/README.md."""
    readme = README.read_text()
    pattern = re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1])
    if not re.search(pattern, readme, re.S):
        raise SystemExit(f"{README}: no {MARKERS[0]} ... {MARKERS[1]} markers")
    README.write_text(re.sub(pattern, lambda _: f"{MARKERS[0]}\n{text}\n{MARKERS[1]}", readme,
                             flags=re.S))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="pipelines/demo.yaml")
    p.add_argument("--out", default=None, help="run folder (default: a fresh temporary one)")
    p.add_argument("--write", action="store_true", help="update pipelines/README.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or Path(tmp) / "demo")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pluralign.cli", "run", args.config, "--out",
                        str(run)], check=True, cwd=ROOT)
        total = time.perf_counter() - t0
        text = table(run, total, args.config)
    print(text)
    if args.write:
        write(text)
        print(f"wrote the table into {README}")
    print(f"demo_seconds: {total:.1f}")


if __name__ == "__main__":
    main()
