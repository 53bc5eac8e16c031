"""The installed console script: help, exit codes and printed reports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ranked_row, write_jsonl


def _run(*args: str) -> subprocess.CompletedProcess:
    exe = [sys.executable, "-m", "pluralign.cli"]
    return subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_console_script_reports_and_exits_2_on_bad_input(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [ranked_row(), ranked_row("w2", ranking=[0, 9])])
    p = _run("ingest", bad, "--out", tmp_path / "o")
    assert p.returncode == 2
    assert p.stderr.strip() == (f"pluralign ingest: error: {bad}, line 2: field 'ranking': "
                                "index 9 is out of range for 3 responses")
    good = write_jsonl(tmp_path / "good.jsonl", [ranked_row()])
    p = _run("ingest", good, "--out", tmp_path / "o")
    assert p.returncode == 0 and "read 1  accepted 1" in p.stdout
    assert "identifiability: rankings" in p.stdout


def test_help_lists_every_command():
    import argparse

    from pluralign.cli import build_parser
    p = _run("--help")
    assert p.returncode == 0
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == 11
    listed = {line.split()[0] for line in p.stdout.splitlines()
              if line.startswith("    ") and line.split()}
    assert set(sub.choices) <= listed  # every command, each on a line with its help
    for choice in sub._choices_actions:
        assert choice.help and choice.help.split()[0] in p.stdout


def test_bad_simulate_values_exit_2(tmp_path, cli, capsys):
    with pytest.raises(SystemExit) as e:  # refused by the parser, before anything runs
        cli("simulate", "--out", tmp_path, "--list-size", "three")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--list-size: cannot read 'three' (expects N or MIN-MAX)" in err
    rc, _, err = cli("simulate", "--out", tmp_path, "--misspecify", "lazy=0.2")
    assert rc == 2 and "unknown misspecification" in err


def _timed(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    import time
    t0 = time.perf_counter()
    p = _run(*args)
    return p, time.perf_counter() - t0


def test_a_bad_path_or_config_fails_fast_without_a_hub_lookup(tmp_path):
    """Mistyped paths are not tried on the hub (that waited ~55 s offline), and a config is
    checked before torch is imported. 10 s is a generous bound for a loaded machine."""
    cases = [
        (("ingest", tmp_path / "nope" / "prefs.jsonl", "--out", tmp_path / "o"),
         "not a file or folder"),
        (("ingest", "./prefs.csv", "--out", tmp_path / "o"), "not a file or folder"),
        (("em", "--data", tmp_path / "missing", "--out", tmp_path / "r"), "missing"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {out: " + str(tmp_path / "run") + "}\ningest: {inputs: [x]}\n"
                   "em: {n_typez: 2}\n")
    cases.append((("run", bad), "unknown key 'n_typez'"))
    for args, message in cases:
        p, seconds = _timed(*args)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
        assert seconds < 10, (args, seconds)
    assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()


def test_hub_names_and_paths_are_told_apart():
    from pluralign.core.hub import only_local
    for spec in ("Anthropic/hh-rlhf", "imdb", "org/name@train", "HuggingFaceTB/SmolLM2-135M"):
        assert not only_local(spec), spec
    for spec in ("/data/x", "./x", "~/x", "data/demo/extra", "prefs.jsonl", "a/b.csv.gz",
                 "my file", "x/y/z"):
        assert only_local(spec), spec


def test_repeated_notices_are_summarised_not_repeated(capsys):
    import logging

    from pluralign.cli.shell import Repeats
    repeats, shown = Repeats(), []
    for message in ["truncated 185 prompt(s) to their last 16 tokens", "K=4: prior 0.000 < 0.05",
                    "truncated 95 prompt(s) to their last 16 tokens", "K=4: prior 0.000 < 0.05",
                    "truncated 7 prompt(s) to their last 16 tokens"]:
        record = logging.LogRecord("pluralign", logging.INFO, __file__, 1, message, None, None)
        if repeats.filter(record):
            shown.append(message)
    repeats.summarise()
    assert shown == ["truncated 185 prompt(s) to their last 16 tokens", "K=4: prior 0.000 < 0.05"]
    err = capsys.readouterr().err.splitlines()
    assert err == ['(2 more like "truncated 185 prompt(s) to their last 16 tokens..." not shown; '
                   '-v shows them)',
                   '(1 more like "K=4: prior 0.000 < 0.05..." not shown; -v shows them)']
