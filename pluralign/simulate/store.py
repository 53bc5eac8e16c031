"""Write a simulated population as a canonical dataset folder plus its ground truth."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pluralign import __version__
from pluralign.core.data import Annotation, save
from pluralign.core.io import write_json
from pluralign.ingest.report import describe

TRUTH_FILE = "truth.json"
CEILINGS_FILE = "ceilings.json"


@dataclass
class Population:
    """A simulated dataset and its ground truth (a group population: and its ceilings)."""

    records: list[Annotation]
    truth: dict[str, Any]
    ceilings: dict[str, Any] | None = None


def config_json(config: Any) -> dict[str, Any]:
    """A simulation config as truth.json holds it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def write_population(pop: Population, out_dir: str | os.PathLike) -> dict[str, Any]:
    """annotations.parquet, manifest.json, truth.json, report.json and (a group population)
    ceilings.json; returns the report."""
    out = Path(out_dir)
    save(pop.records, out, {"created_by": f"pluralign {__version__} simulate",
                            "sources": [{"path": "simulate", "config": pop.truth["config"]}]})
    write_json(out / TRUTH_FILE, pop.truth)
    if pop.ceilings is not None:
        write_json(out / CEILINGS_FILE, pop.ceilings)
    n = len(pop.records)
    report = {"read": n, "accepted": n, "rejected": {"total": 0, "by_reason": {}},
              "duplicates": 0, **describe(pop.records), "warnings": []}
    write_json(out / "report.json", report)
    return report
