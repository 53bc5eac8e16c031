"""Two CPU processes (torchrun, gloo) against one: the same posteriors and adapters, a killed
two-process run resumed to the same end, and ranks given different data stopped with a clear
error instead of a hang. Selected by `pytest -k distributed`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

CONFIG = """\
em: {backend: lora, n_types: 2, max_iter: 3, init: linear, n_init: 1, min_type_share: 0,
     min_type_annotators: 0, merge_nats: 0}
lora: {model: "builtin:tiny", top_layers: 2, max_prompt_tokens: 16, max_response_tokens: 16,
       batch_size: 4, learning_rate: 0.01, progress: false, cache: ""}
linear: {l2: 0.5}
"""
ENV = {**os.environ, "PYTHONHASHSEED": "0"}
TIMEOUT = 240  # a hang must fail the test, not CI


def _em(tmp: Path, data: Path, out: str, processes: int) -> list[str]:
    cfg = tmp / "em.yaml"
    cfg.write_text(CONFIG)
    args = ["-m", "pluralign.cli", "em", "--data", str(data), "--out", str(tmp / out),
            "--config", str(cfg)]
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *args]


def _posteriors(run: Path) -> np.ndarray:
    rows = [line.split(",")[1:] for line in (run / "posteriors.csv").read_text().splitlines()[1:]]
    return np.array(rows, dtype=float)


def _adapters(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ("adapters", "baseline"):
        for f in sorted((run / name).rglob("*.safetensors")):
            for key, value in load_file(f).items():
                out[f"{f.relative_to(run)}:{key}"] = value
    return out


def _same_fit(a: Path, b: Path) -> None:
    assert (a / "posteriors.csv").read_text().splitlines()[0] == \
        (b / "posteriors.csv").read_text().splitlines()[0]  # the same annotators, same order
    assert np.abs(_posteriors(a) - _posteriors(b)).max() <= 1e-5
    want, got = _adapters(a), _adapters(b)
    assert want.keys() == got.keys() and len(want) >= 6  # 2 types + baseline, A and B each
    for key in want:
        assert np.abs(want[key] - got[key]).max() <= 1e-5, key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Data, and the one-process fit every two-process run must reproduce."""
    from pluralign.cli import main
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    assert main(["simulate", "--out", str(data), "--flavour", "text", "--types", "2",
                 "--annotators", "12", "--per-annotator", "3", "--seed", "4"]) == 0
    subprocess.run(_em(tmp, data, "one", 1), check=True, env=ENV, capture_output=True,
                   timeout=TIMEOUT)
    return tmp, data


def test_two_processes_fit_what_one_does_distributed(one_process):
    tmp, data = one_process
    done = subprocess.run(_em(tmp, data, "two", 2), env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_fit(tmp / "one", tmp / "two")
    # rank 0 alone reports and writes: one summary, one line per EM iteration
    assert done.stdout.count("wrote ") == 1
    assert done.stderr.count("K=2 iteration 1/3:") == 1


def test_killed_two_process_run_resumes_to_the_same_end_distributed(one_process):
    tmp, data = one_process
    kills = 0
    for delay in (0.0, 1.5):  # at a checkpoint just written, then a little into the resumed run
        start = time.time()
        proc = subprocess.Popen(_em(tmp, data, "killed", 2), env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and time.time() - start < TIMEOUT and not any(
                f.stat().st_mtime > start
                for f in (tmp / "killed" / "checkpoints").glob("*/*/state.json")):
            time.sleep(0.05)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-EM
            proc.wait()
            kills += 1
    assert kills >= 1
    done = subprocess.run(_em(tmp, data, "killed", 2), env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr  # it did pick up a checkpoint
    _same_fit(tmp / "one", tmp / "killed")


WORKER = """\
import sys
from pluralign.data import load
from pluralign.distributed import RankMismatchError, rank
from pluralign.em import EMDPO
data = load(sys.argv[1])
if rank() == 1:
    data = data[1:]  # this rank read one annotation fewer
try:
    EMDPO("lora", n_types=2, max_iter=1, init="linear", n_init=1,
          backend_options={"model": "builtin:tiny", "progress": False, "cache": ""}).fit(data)
except RankMismatchError as e:
    print(f"rank {rank()}: {e}")
    sys.exit(3)
"""


def test_ranks_with_different_data_stop_with_a_clear_error_distributed(one_process, tmp_path):
    _, data = one_process
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(worker), str(data)], env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0
    for r in (0, 1):
        assert f"rank {r}: the 2 processes disagree on the data or the EM settings" in \
            done.stdout, done.stdout + done.stderr[-2000:]
    assert time.perf_counter() - t0 < TIMEOUT


def test_model_sharding_engines_and_one_process_commands_are_refused_distributed(
        monkeypatch, tmp_path, capsys):
    from pluralign import distributed
    from pluralign.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    for engine in ("FSDP", "DEEPSPEED"):
        monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
        with pytest.raises(distributed.UnsupportedEngineError, match=f"with {engine}.*multi_gpu"):
            distributed.setup()
        monkeypatch.delenv(f"ACCELERATE_USE_{engine}")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run: {out: x}\n")
    assert main(["run", str(cfg)]) == 2
    assert "`pluralign run` runs in one process; under a launcher use `pluralign em`" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()
