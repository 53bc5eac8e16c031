"""Which run-folder files were made from which: every later step records the digests of the
files it read (made_from) and refuses to read a file made from other versions of them
(check_made_from); a new EM fit removes what later steps made from the old one (DOWNSTREAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pluralign.core.io import sha256_file

#: What later steps write into a run folder from its EM fit; a new fit removes them.
DOWNSTREAM = ("aggregate.json", "scores.npz", "merged", "fair", "evaluation.json", "report.json",
              "report.md", "report.html", "report_files")

#: Where the supervised ceiling's policies live in a run folder, and its cross-fitted
#: posteriors of the training annotators (pluralign.em.ceiling.SupervisedCeiling.cross_fit).
CEILING = "ceiling"
#: The min-max merge as a loadable policy: its weights over the run's type policies.
FAIR_POLICY = Path("fair") / "policy.json"
CROSSFIT_FILE = "crossfit.csv"


def made_from(run_dir: Path, *names: str) -> dict[str, str | None]:
    """{file: its digest (None when absent)} for the run-folder files a step reads."""
    return {n: sha256_file(run_dir / n) if (run_dir / n).is_file() else None for n in names}


def check_made_from(run_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Raise when the file `name` was made from other versions of the files it records (an
    EM fit or aggregation redone since): its numbers would belong to another run."""
    for source, want in (record.get("made_from") or {}).items():
        path = Path(run_dir) / source
        have = sha256_file(path) if path.is_file() else None
        if have != want:
            step = {"aggregate.json": "aggregate", "evaluation.json": "evaluate"}[name]
            raise ValueError(f"{Path(run_dir) / name} is stale: it was made from an earlier "
                             f"{source}; re-run `pluralign {step} --run {run_dir}`")
