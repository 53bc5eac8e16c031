"""The `pluralign` command: one subcommand per step, each with a line below; `pluralign COMMAND
--help` for its options."""

from __future__ import annotations

import argparse
import signal
import threading
import warnings
from collections.abc import Callable, Sequence

from pluralign import __version__
from pluralign.cli.commands import (
    aggregate_args,
    assign_args,
    cmd_aggregate,
    cmd_assign,
    cmd_em,
    cmd_evaluate,
    cmd_export,
    cmd_generate,
    cmd_ingest,
    cmd_report,
    cmd_run,
    cmd_simulate,
    cmd_suggest,
    em_args,
    evaluate_args,
    export_args,
    generate_args,
    ingest_args,
    report_args,
    run_args,
    simulate_args,
    suggest_args,
)
from pluralign.cli.shell import (
    EXIT_BAD_INPUT,
    handle,
    on_sigterm,
    show_warning,
    verbosity_args,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        with warnings.catch_warnings():  # restored on return: main() may run in a program
            warnings.simplefilter("once", UserWarning)  # one line per distinct warning
            warnings.showwarning = show_warning
            return handle(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)














#: Each subcommand: its name, what it runs, what configures its flags, its one-line help.
COMMANDS = (
    ("ingest", cmd_ingest, ingest_args,
     "read preference files into a canonical dataset folder, with a report"),
    ("simulate", cmd_simulate, simulate_args,
     "simulate an annotator population with known types"),
    ("export", cmd_export, export_args,
     "write a canonical dataset folder as JSON Lines (the `ranked` layout)"),
    ("em", cmd_em, em_args,
     "discover annotator types with EM-DPO and fit one policy per type"),
    ("run", cmd_run, run_args,
     "run the staged pipeline (ingest, reference, em, aggregate, evaluate, report) from "
     "one YAML file, skipping stages already done"),
    ("aggregate", cmd_aggregate, aggregate_args,
     "turn a run's type policies into one fair policy (min-max regret mixture)"),
    ("evaluate", cmd_evaluate, evaluate_args,
     "evaluate every policy of a run against every type"),
    ("report", cmd_report, report_args,
     "write the fairness audit report (report.json, report.md, report.html)"),
    ("assign", cmd_assign, assign_args,
     "type posteriors for new annotators from a run's policies (no training)"),
    ("generate", cmd_generate, generate_args,
     "generate with a type's policy, an annotator's type, or the MMRA mixture"),
    ("suggest", cmd_suggest, suggest_args,
     "rank candidate queries by how much an annotator's answer would tell about their type"),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="pluralign", description=__doc__)
    p.add_argument("--version", action="version", version=f"pluralign {__version__}")
    verbosity_args(p, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, run, configure, help_text in COMMANDS:
        _add(sub, name, run, configure, help_text)
    return p








def _add(sub, name: str, run: Callable, configure: Callable, help_text: str) -> None:
    sp = sub.add_parser(name, help=help_text, description=help_text)
    configure(sp)
    verbosity_args(sp, argparse.SUPPRESS)
    sp.set_defaults(handler=run)
