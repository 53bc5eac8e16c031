"""Shared test helpers: writing input files and running the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Everything runs offline: hub libraries read these once, at import, so set them first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (make test runs one worker per core) each worker's torch, and every
# process a test starts, gets its share of the cores: more threads than cores only contend.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

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


#: The slowest files (most of their time is processes that load a model), started first so
#: that `make test`'s workers finish together instead of one waiting on the last long file.
SLOW_FIRST = ("test_distributed.py", "test_pipeline.py", "test_models.py", "test_served.py",
              "test_robustness.py", "test_report.py", "test_personalize.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slowest files first (a stable sort: the order within a file is kept)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
