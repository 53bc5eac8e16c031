"""The installed console script: help, exit codes and printed reports."""

from __future__ import annotations

import subprocess
import sys

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


def test_bad_simulate_values_exit_2(tmp_path, cli):
    rc, _, err = cli("simulate", "--out", tmp_path, "--list-size", "three")
    assert rc == 2 and "--list-size expects N or MIN-MAX" in err
    rc, _, err = cli("simulate", "--out", tmp_path, "--misspecify", "lazy=0.2")
    assert rc == 2 and "unknown misspecification" in err
