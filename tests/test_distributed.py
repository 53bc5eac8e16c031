"""Two CPU processes (torchrun or accelerate launch, gloo) against one: the same posteriors and
adapters with the data shared out (every rank holding the model) and with the model sharded
too (FSDP, through the shipped accelerate config), a killed two-process run resumed to the same
end, and ranks given different data stopped with a clear error instead of a hang. Selected by
`pytest -k distributed`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pluralign.core.io import LOCK_FILE

pytestmark = pytest.mark.slow  # every test here starts processes that load a model

# "trunk": adapters in the top 2 layers, passes from cached trunk states; "full": adapters in
# every layer, whole forwards, adapters re-initialised each iteration, two micro-batches a step,
# base weights in bfloat16 beside float32 adapters (as on a GPU: FSDP gathers mixed dtypes)
CONFIGS = {"trunk": """\
em: {backend: lora, n_types: 2, max_iter: 3, init: linear, n_init: 1, min_type_share: 0,
     min_type_annotators: 0, merge_nats: 0}
lora: {model: "builtin:tiny", top_layers: 2, max_prompt_tokens: 16, max_response_tokens: 16,
       batch_size: 4, learning_rate: 0.01, progress: false, cache: "", sharding: SHARDING}
linear: {l2: 0.5}
""", "full": """\
em: {backend: lora, n_types: 2, max_iter: 2, init: linear, n_init: 1, min_type_share: 0,
     min_type_annotators: 0, merge_nats: 0, warm_start: false}
lora: {model: "builtin:tiny", max_prompt_tokens: 16, max_response_tokens: 16, batch_size: 3,
       grad_accum: 2, learning_rate: 0.01, progress: false, cache: "", sharding: SHARDING,
       dtype: bfloat16}
linear: {l2: 0.5}
"""}
ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "pipelines" / "accelerate" / "fsdp.yaml"
SHARDED = "FSDP: each of the 2 ranks holds 50% of the model's"
ENV = {**os.environ, "PYTHONHASHSEED": "0"}
TIMEOUT = 240  # a hang must fail the test, not CI


#: Checkpoints after every iteration: these runs are quicker than the default interval.
EVERY = ("--checkpoint-interval", "0")


def _em(tmp: Path, data: Path, out: str, processes: int, config: str = "trunk",
        sharding: str = "none", launcher: str = "torchrun",
        launcher_args: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> list[str]:
    cfg = tmp / f"{config}-{sharding}.yaml"
    cfg.write_text(CONFIGS[config].replace("SHARDING", sharding))
    args = ["-m", "pluralign.cli", "em", "--data", str(data), "--out", str(tmp / out),
            "--config", str(cfg), *flags]
    if processes == 1:
        return [sys.executable, *args]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
                "--config_file", str(FSDP_CONFIG), "--num_processes", str(processes),
                *launcher_args, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *args]


def _in_process(command: list[str]) -> None:
    """Run a one-process `python -m pluralign.cli ...` command in this process: the same fit
    (it depends on no hash seed nor process state), without a second start-up that imports
    transformers (about 10 s here)."""
    from pluralign.cli import main
    assert command[1:3] == ["-m", "pluralign.cli"]
    assert main(["-q", *command[3:]]) == 0


def _gone(pid: int, within: float) -> bool:
    """Whether process `pid` has exited (a zombie counts) within `within` seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


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
    for key in want:  # to rounding: a micro-batch's length groups (rows of 2 or 3 responses
        # to a prompt) are summed per rank, then over ranks; measured 1.0e-5 at most
        assert np.abs(want[key] - got[key]).max() <= 5e-5, key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Data, and the one-process fit every two-process run must reproduce."""
    from pluralign.cli import main
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    assert main(["simulate", "--out", str(data), "--flavour", "text", "--types", "2",
                 "--annotators", "12", "--per-annotator", "3", "--seed", "4"]) == 0
    for config in CONFIGS:
        _in_process(_em(tmp, data, f"one-{config}", 1, config))
    return tmp, data


def test_fsdp_two_processes_fit_what_one_does_distributed(one_process):
    """The shipped FSDP accelerate config (sharding: auto follows it) on two CPU processes:
    the model is split over the ranks, and the fit is the one-process fit. The "full" config
    (adapters in every layer, re-initialised each iteration, accumulated gradients), with
    layers kept gathered after their forward (fsdp_reshard_after_forward false: a reset or an
    adapter switch must still reach the slices); the killed FSDP run below checks the
    trunk-cached config with the default, resumed."""
    tmp, data = one_process
    done = subprocess.run(_em(tmp, data, "fsdp-full", 2, "full", "auto", "accelerate",
                              ("--fsdp_reshard_after_forward", "false")),
                          env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert sum(line.startswith(SHARDED) for line in lines) == 1  # sharded; said by rank 0
    _same_fit(tmp / "one-full", tmp / "fsdp-full")
    assert "Warning]" not in done.stderr or all(  # a live warning is shown by rank 0 alone
        done.stderr.count(line) == 1 for line in done.stderr.splitlines() if "Warning]" in line)


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_killed_two_process_run_resumes_to_the_same_end_distributed(one_process, sharding):
    """Two processes fit what one does, killed mid-EM and resumed: data parallel (every rank
    holding the model) and FSDP (the model split over the ranks)."""
    tmp, data = one_process
    out = f"killed-{sharding}"
    kills = 0
    for delay in (0.0,):  # at a checkpoint just written, mid-EM
        start = time.time()
        proc = subprocess.Popen(_em(tmp, data, out, 2, sharding=sharding, flags=EVERY), env=ENV,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and time.time() - start < TIMEOUT and not any(
                f.stat().st_mtime > start
                for f in (tmp / out / "checkpoints").glob("*/*/state.json")):
            time.sleep(0.05)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher (the ranks have own sessions)
            proc.wait()
            kills += 1
            # the ranks die with their launcher instead of running on or hanging: rank 0
            # (named in its lock on the run folder) is gone at once
            holder = int((tmp / out / LOCK_FILE).read_text().split()[1].rstrip(","))
            assert _gone(holder, within=1.0)
    assert kills >= 1
    done = subprocess.run(_em(tmp, data, out, 2, sharding=sharding, flags=EVERY), env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr  # it did pick up a checkpoint
    assert (SHARDED in done.stderr) == (sharding == "fsdp")  # none: the whole model per rank
    _same_fit(tmp / "one-trunk", tmp / out)
    # rank 0 alone reports and writes: one summary, each EM iteration's line once
    assert done.stdout.count("wrote ") == 1
    said = [line for line in done.stderr.splitlines() if " iteration " in line]
    assert said and len(said) == len(set(said))


LINEAR = """\
em: {backend: linear, n_types: auto, max_types: 3, selection: heldout, n_init: 2}
linear: {l2: 0.5, skip_mass: 0.001}
"""


def test_linear_em_on_two_processes_equals_one_distributed(tmp_path):
    """The linear backend shards annotations by rank: each rank sums its share of every type's
    loss and gradient and of every annotator's log-likelihood, the sums all-reduced. K auto,
    restarts, the K = 1 baseline and the saved policies all equal the one-process run."""
    from pluralign.cli import main
    data = tmp_path / "data"
    assert main(["simulate", "--out", str(data), "--types", "3", "--annotators", "90",
                 "--per-annotator", "7", "--list-size", "2-4", "--seed", "8"]) == 0
    cfg = tmp_path / "linear.yaml"
    cfg.write_text(LINEAR)
    runs = {}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "pluralign.cli", "em", "--data", str(data), "--out",
               str(tmp_path / f"p{n}"), "--config", str(cfg)]
        runs[n] = tmp_path / f"p{n}"
        if n == 1:
            _in_process(cmd)
            continue
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *cmd[1:]]
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((runs[n] / "em.json").read_text()) for n in (1, 2))
    assert one["n_types"] == two["n_types"] == 3
    assert np.abs(_posteriors(runs[1]) - _posteriors(runs[2])).max() <= 1e-6
    assert two["loglik_history"] == pytest.approx(one["loglik_history"], rel=1e-9)
    assert [r["heldout_loglik"] for r in two["selection"]] == pytest.approx(
        [r["heldout_loglik"] for r in one["selection"]], rel=1e-9)
    for name in ("linear", "baseline"):
        want, got = (np.load(runs[n] / name / "linear.npz")["theta"] for n in (1, 2))
        assert np.abs(want - got).max() <= 1e-6


WORKER = """\
import sys
from pluralign.core.data import load
from pluralign.core.distributed import RankMismatchError, rank
from pluralign.em.estimator import EMDPO
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


def test_deepspeed_and_one_process_commands_are_refused_distributed(
        monkeypatch, tmp_path, capsys):
    from pluralign.cli import main
    from pluralign.core import distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(distributed.UnsupportedEngineError,
                       match="with DeepSpeed.*ZeRO-3.*fsdp.yaml.*ZeRO-2.*multi_gpu.yaml"):
        distributed.setup()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run: {out: x}\n")
    assert main(["run", str(cfg)]) == 2
    assert "`pluralign run` runs in one process; under a launcher use `pluralign em`" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()
