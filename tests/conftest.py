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
