"""Shared test helpers: writing input files and running the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Everything runs offline: hub libraries read these once, at import, so set them first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from pluralign.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
HH_FILE = SHARED / "data" / "hh_relabeled_dev.jsonl.gz"


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows that are dicts become JSON lines; strings and bytes are written verbatim."""
    with path.open("wb") as f:
        for r in rows:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(json.dumps(r).encode() + b"\n")
    return path


def ranked_row(annotator: str = "w1", **over) -> dict:
    """A valid `ranked` row; keyword arguments override fields (None removes one)."""
    row = {"annotator_id": annotator, "prompt": "Which greeting is best?",
           "responses": ["Hello there.", "Hi!", "Greetings."], "ranking": [1, 0, 2]}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


@pytest.fixture
def cli(capsys):
    """Run `pluralign ARGS...` in-process; returns (exit status, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return run


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """A small simulated population and a finished run on it (em, aggregate, evaluate,
    report), shared by the tests that probe run folders: copy the run before changing it."""
    from pluralign.cli import main
    root = tmp_path_factory.mktemp("made")
    pop, run = root / "pop", root / "run"
    assert main(["-q", "simulate", "--out", str(pop), "--types", "2", "--annotators", "12",
                 "--per-annotator", "6", "--seed", "0"]) == 0
    for args in (["em", "--data", pop, "--out", run, "--types", "2"],
                 ["aggregate", "--run", run, "--n-boot", "0"],
                 ["evaluate", "--run", run, "--n-boot", "0"], ["report", "--run", run]):
        assert main(["-q", *map(str, args)]) == 0
    return pop, run
