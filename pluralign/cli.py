"""The `pluralign` command: one subcommand per step, each with a line below; `pluralign COMMAND
--help` for its options."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pluralign import __version__
from pluralign.core import distributed, progress

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A bad command-line value; printed and exit status 2."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's time limit, `kill`): unwinds like Ctrl-C, so temporary
    files are removed and every finished file stays whole."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        with warnings.catch_warnings():  # restored on return: main() may run in a program
            warnings.simplefilter("once", UserWarning)  # one line per distinct warning
            warnings.showwarning = _show_warning
            return _handle(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)


def _handle(args: argparse.Namespace) -> int:
    """Run the subcommand; user errors, a full disk, Ctrl-C and SIGTERM become one line."""
    resume = "; re-run the same command to resume" if args.command in ("run", "em") else ""
    try:
        if distributed.launched() and args.command not in SCALES_OUT:
            raise UsageError(f"`pluralign {args.command}` runs in one process; under a "
                             f"launcher use `pluralign {' or '.join(SCALES_OUT)}` (the stage "
                             "that trains), then the rest without it")
        with _output(args):
            return args.handler(args)
    except OSError as e:  # errno None: one of ours (FileNotFoundError with a message) or pyarrow's
        if e.errno is not None and e.errno not in DISK_ERRORS:
            raise
        print(f"pluralign {args.command}: error: {_os_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"pluralign {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pluralign {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"pluralign {args.command}: terminated (SIGTERM){resume}", file=sys.stderr)
        return 128 + signal.SIGTERM


#: Commands that run under `torchrun` / `accelerate launch` (ranks split the work).
SCALES_OUT = ("em",)


#: OS errors that are the machine's state, not a bug: reported in one line naming the path.
DISK_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                         errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                         errno.ENAMETOOLONG, errno.EFBIG})


def _os_message(e: OSError) -> str:
    """'PATH: cannot write (No space left on device)' and the like, from an OSError."""
    if e.errno is None:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    path = e.filename if e.filename is not None else "(unknown path)"
    hint = {errno.ENOSPC: " - free some space, then re-run",
            errno.EDQUOT: " - free some space, then re-run",
            errno.EROFS: " - choose a writable --out", errno.EACCES: " - check its permissions",
            errno.EPERM: " - check its permissions"}.get(e.errno, "")
    return f"{path}: {e.strerror or e}{hint}"


def _show_warning(message: Warning | str, category: type[Warning], *_: object,
                  **__: object) -> None:
    """A warning as one line on stderr, without the source line Python shows by default; rank
    0 alone speaks for a run of several processes (each rank meets the same warnings)."""
    if distributed.launched() and not distributed.is_main():
        return
    print(f"WARNING [{category.__name__}]: {message}", file=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug. ModelError counts only once its module
    was imported (it cannot be raised before), so an error needs no torch to be reported."""
    errors: list[type[BaseException]] = [UsageError, ValueError, FloatingPointError]
    for module, name in (("pluralign.ingest.errors", "IngestError"),
                         ("pluralign.core.io", "FolderLockedError"),
                         ("pluralign.core.distributed", "RankMismatchError"),
                         ("pluralign.core.distributed", "UnsupportedEngineError"),
                         ("pluralign.lm.models", "ModelError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="pluralign", description=__doc__)
    p.add_argument("--version", action="version", version=f"pluralign {__version__}")
    _verbosity_args(p, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add(sub, "ingest", cmd_ingest, _ingest_args,
         "read preference files into a canonical dataset folder, with a report")
    _add(sub, "simulate", cmd_simulate, _simulate_args,
         "simulate an annotator population with known types")
    _add(sub, "export", cmd_export, _export_args,
         "write a canonical dataset folder as JSON Lines (the `ranked` layout)")
    _add(sub, "em", cmd_em, _em_args,
         "discover annotator types with EM-DPO and fit one policy per type")
    _add(sub, "run", cmd_run, _run_args,
         "run the staged pipeline (ingest, reference, em, aggregate, evaluate, report) from "
         "one YAML file, skipping stages already done")
    _add(sub, "aggregate", cmd_aggregate, _aggregate_args,
         "turn a run's type policies into one fair policy (min-max regret mixture)")
    _add(sub, "evaluate", cmd_evaluate, _evaluate_args,
         "evaluate every policy of a run against every type")
    _add(sub, "report", cmd_report, _report_args,
         "write the fairness audit report (report.json, report.md, report.html)")
    _add(sub, "assign", cmd_assign, _assign_args,
         "type posteriors for new annotators from a run's policies (no training)")
    _add(sub, "generate", cmd_generate, _generate_args,
         "generate with a type's policy, an annotator's type, or the MMRA mixture")
    _add(sub, "suggest", cmd_suggest, _suggest_args,
         "rank candidate queries by how much an annotator's answer would tell about their type")
    return p


class _Repeats(logging.Filter):
    """Show a notice once: later ones that differ only in their numbers (the same truncation
    or pruning notice for every fold and restart) are counted, then summarised in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+(\.\d+)?", "#", record.getMessage())
        if key not in self.seen:
            self.seen[key] = [record.getMessage(), 0]
            return True
        self.seen[key][1] += 1
        return False

    def summarise(self) -> None:
        for first, more in self.seen.values():
            if more:
                print(f"({more} more like \"{first[:60]}...\" not shown; -v shows them)",
                      file=sys.stderr)


def _verbosity_args(p: argparse.ArgumentParser, default: object) -> None:
    """-q/-v, accepted before or after the command."""
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or progress lines: results, warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also debug notices, and the model libraries' own logs and bars")


@contextmanager
def _output(args: argparse.Namespace) -> Iterator[None]:
    """Progress and logging as asked: pluralign's notices at INFO (WARNING with --quiet, DEBUG
    with --verbose), model-loading bars and library chatter off unless --verbose. The
    environment is restored after, as main() may run inside a program."""
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other; pick one")
    before = dict(os.environ)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "transformers" in sys.modules:  # already imported: its switches, not the env
            sys.modules["transformers"].utils.logging.set_verbosity_error()
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    if quiet:
        os.environ[progress.QUIET_ENV] = "1"
    log = logging.getLogger("pluralign")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    repeats = _Repeats()
    if not verbose:
        handler.addFilter(repeats)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if distributed.launched() and not distributed.is_main():
        log.setLevel(logging.ERROR)  # rank 0 speaks for the run
    log.propagate = False
    try:
        yield
    finally:
        repeats.summarise()
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = True
        os.environ.clear()
        os.environ.update(before)


def _add(sub, name: str, run: Callable, configure: Callable, help_text: str) -> None:
    sp = sub.add_parser(name, help=help_text, description=help_text)
    configure(sp)
    _verbosity_args(sp, argparse.SUPPRESS)
    sp.set_defaults(handler=run)


def _path(text: str) -> str:
    """A path flag, read by the rule every path follows (checks.user_path: `~` expanded, an
    empty path refused, as it would silently mean the working directory)."""
    from pluralign.core.checks import user_path
    try:
        return str(user_path(text, "the path"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int(rule: Callable[..., object], *bounds: int, name: str) -> Callable[[str], int]:
    """An integer flag checked by `rule` from pluralign.core.checks, the rule its YAML key
    follows."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            rule(value, *bounds, name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    return convert


def _seed_arg(p: argparse.ArgumentParser, help_text: str = "random_state",
              default: int | None = 0) -> None:
    from pluralign.core import checks
    p.add_argument("--seed", type=_int(checks.seed, name="--seed"), default=default,
                   metavar="S", help=help_text)


def _at_least(low: int, name: str) -> Callable[[str], int]:
    from pluralign.core import checks
    return _int(checks.at_least, low, name=name)


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=_path,
                   help=".jsonl/.json/.csv/.tsv/.parquet (optionally .gz), a datasets folder, "
                        "or a dataset name")
    p.add_argument("--out", required=True, metavar="DIR", type=_path,
                   help="dataset folder to write")
    from pluralign.settings import IngestOptions
    from pluralign.settings import config as C
    C.add_flags(p, IngestOptions)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _overwrite_arg(p)


OVERWRITE_HELP = {
    "dataset": "replace the dataset already in --out (refused without this flag)",
    "file": "replace a file already at --out (refused without this flag)",
    "run": "use a non-empty folder that pluralign did not make as the run folder (refused "
           "without this flag); pluralign writes its files beside yours and deletes none of "
           "them"}


def _overwrite_arg(p: argparse.ArgumentParser, kind: str = "dataset") -> None:
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP[kind])


def _refuse_overwrite(out: str, overwrite: bool) -> None:
    """A dataset folder is not replaced silently: runs and reports may point at it; nor is a
    folder that can never be a dataset folder (the root, home, a project checkout)."""
    from pluralign.runfolder.folder import forbidden
    path = Path(out)
    why = forbidden(path)
    if why:
        raise UsageError(f"{out} is {why}: never a dataset folder; choose a new folder")
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    what = "a dataset" if (path / "manifest.json").is_file() else "files"
    raise UsageError(f"{out} already holds {what}; pass --overwrite to replace it, or choose "
                     "another --out")


def _refuse_inputs(out: str, inputs: Sequence[str | Path], holding: bool = False) -> None:
    """--out is never an input, nor inside an input folder; with `holding`, nor a folder that
    holds an input (ingest would write its files beside the files it reads)."""
    target = Path(out).resolve()
    for source in inputs:
        src = Path(source).resolve()
        if not Path(source).exists():
            continue
        inside = src.is_dir() and target.is_relative_to(src)
        if target == src or inside or (holding and src.is_relative_to(target)):
            where = "is" if target == src else "is inside" if inside else "holds"
            raise UsageError(f"{out} {where} this command's input {source}; choose another "
                             "--out")


def _refuse_file_overwrite(out: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """A file is written over only with --overwrite, and never over (or into) an input."""
    path = Path(out)
    _refuse_inputs(out, inputs)
    if path.is_dir():
        raise UsageError(f"{out} is a folder; --out names a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it, or choose "
                         "another --out")


def cmd_ingest(args: argparse.Namespace) -> int:
    from pluralign.settings import IngestOptions
    from pluralign.settings import config as C
    opts = C.from_flags(IngestOptions, args)
    _refuse_inputs(args.out, args.inputs, holding=True)
    _refuse_overwrite(args.out, args.overwrite)
    from pluralign.ingest import format_report, ingest_with, write
    result = ingest_with(args.inputs, opts)
    write(result, args.out, with_rejects=opts.on_error == "skip")
    if args.json:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
    else:
        print(format_report(result.report))
        extra = ", rejects.jsonl" if opts.on_error == "skip" else ""
        print(f"wrote {Path(args.out) / 'annotations.parquet'} (+ manifest.json, report.json"
              f"{extra})")
    return 0


def _simulate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import SimulationConfig
    from pluralign.settings import config as C
    p.add_argument("--out", required=True, metavar="DIR", type=_path,
                   help="dataset folder to write")
    C.add_flags(p, SimulationConfig)
    _overwrite_arg(p)


def cmd_simulate(args: argparse.Namespace) -> int:
    from pluralign.settings import SimulationConfig
    from pluralign.settings import config as C
    config = C.from_flags(SimulationConfig, args)
    _refuse_overwrite(args.out, args.overwrite)
    from pluralign.ingest import format_report
    from pluralign.simulate import simulate, write_population
    report = write_population(simulate(config), args.out)
    print(format_report(report))
    print(f"wrote {Path(args.out) / 'annotations.parquet'} (+ manifest.json, truth.json, "
          "report.json)")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DIR", type=_path, help="a canonical dataset folder")
    p.add_argument("--out", required=True, metavar="FILE", type=_path,
                   help="JSON Lines file to write (never inside DIR)")
    _overwrite_arg(p, "file")


def cmd_export(args: argparse.Namespace) -> int:
    from pluralign.core.data import load
    _refuse_file_overwrite(args.out, args.overwrite, [args.data])
    data = load(args.data)
    data.to_jsonl(args.out)
    print(f"wrote {len(data)} annotations to {args.out}")
    return 0


def _em_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", type=_path,
                   help="a canonical dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", type=_path,
                   help="where posteriors.csv, em.json and the policies go; re-running with the "
                        "same DIR resumes an interrupted run from its checkpoints")
    from pluralign.settings import FEATURES, EMSection
    from pluralign.settings import config as C
    C.add_flags(p, EMSection)
    p.add_argument("--features", choices=FEATURES, default=None,
                   help="linear backend features (default given)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="LM for the lora backend or embedding features "
                        "(default builtin:smollm2-135m)")
    _overwrite_arg(p, "run")
    p.add_argument("--config", default=None, metavar="FILE", type=_path,
                   help="YAML with sections em (EMDPO parameters), linear and lora "
                        "(backend settings); flags override it")


def cmd_em(args: argparse.Namespace) -> int:
    from pluralign.core.data import load
    from pluralign.stages.em import EMSettings, run_em
    settings = EMSettings.from_sources(args.config, args)
    _refuse_inputs(args.out, [args.data])
    data = load(args.data)
    summary = run_em(data, settings, Path(args.out), data_path=args.data,
                     overwrite=args.overwrite)
    if distributed.is_main():
        print(summary)
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.yaml", type=_path,
                   help="sections run, ingest, em, linear, lora, aggregate, evaluate "
                        "(see pipelines/)")
    p.add_argument("--out", default=None, metavar="RUN_DIR", type=_path,
                   help="run folder (default: run.out in the YAML)")
    _overwrite_arg(p, "run")
    p.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                   help="redo this stage and every later one: ingest, reference, em, "
                        "aggregate, evaluate or report")


def cmd_run(args: argparse.Namespace) -> int:
    from pluralign.stages.pipeline import main_run
    return main_run(args)


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR", type=_path,
                   help="a run folder: what `pluralign em --out DIR` wrote")


def _writes_run(p: argparse.ArgumentParser) -> None:
    """--run, and --overwrite to adopt a folder that pluralign did not mark as its own."""
    _run_arg(p)
    _overwrite_arg(p, "run")


def _aggregate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import AggregateSection
    from pluralign.settings import config as C
    _writes_run(p)
    p.add_argument("--data", default=None, metavar="DIR", type=_path,
                   help="prompts to estimate regret on (default: the run's own data); "
                        "held-out prompts are better")
    C.add_flags(p, AggregateSection)
    _seed_arg(p, "seed of the sampled estimator, the served regrets and the bootstrap")


def cmd_aggregate(args: argparse.Namespace) -> int:
    from pluralign.settings import AggregateSection
    from pluralign.settings import config as C
    a = C.from_flags(AggregateSection, args)
    from pluralign.aggregate.served import served_settings
    from pluralign.stages.aggregate import format_aggregate, run_aggregate
    served = served_settings(a.served_samples, a.served_prompts, a.served_tokens, args.seed,
                             tune=a.served_tuning)
    out = run_aggregate(Path(args.run), args.data, estimator=a.estimator,
                        type_weights=a.type_weights, n_samples=a.n_samples,
                        random_state=args.seed, merge=a.merge, base_measure=a.base_measure,
                        n_boot=a.n_boot, objective=a.objective, served=served,
                        overwrite=args.overwrite)
    print(format_aggregate(out))
    print(f"wrote {Path(args.run) / 'aggregate.json'}" + (
        f", {Path(args.run) / 'merged'}/" if out.get("merged_path") else ""))
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import EvaluateSection
    from pluralign.settings import config as C
    _writes_run(p)
    C.add_flags(p, EvaluateSection)
    _seed_arg(p, "bootstrap seed")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pluralign.settings import EvaluateSection
    from pluralign.settings import config as C
    e = C.from_flags(EvaluateSection, args)
    from pluralign.stages.evaluate import format_evaluation, run_evaluate
    out = run_evaluate(Path(args.run), e.data, e.n_boot, args.seed,
                       args.overwrite)
    print(format_evaluation(out))
    print(f"wrote {Path(args.run) / 'evaluation.json'}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    _writes_run(p)


def cmd_report(args: argparse.Namespace) -> int:
    from pluralign.stages.report import write_report
    paths = write_report(Path(args.run), args.overwrite)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _assign_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--data", required=True, metavar="NEW_DATA", type=_path,
                   help="the new annotators' annotations: a dataset folder or any input "
                        "`pluralign ingest` reads (a file in any of its formats, a datasets "
                        "folder), validated as ingest does")
    p.add_argument("--preset", default="auto", help="input format of a file (as ingest)")
    p.add_argument("--out", default=None, metavar="FILE", type=_path,
                   help="write the posteriors as CSV here (default: print them); never into "
                        "the run folder, whose posteriors.csv is the run's own")
    _overwrite_arg(p, "file")


def cmd_assign(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.em.personalize import assign, blind_warnings
    from pluralign.ingest import to_annotations
    from pluralign.runfolder.posteriors import posteriors_table, write_posteriors
    if args.out:
        _refuse_file_overwrite(args.out, args.overwrite, [args.run, args.data])
    run = load_run(args.run)
    data = to_annotations(args.data, args.preset)
    gamma, ids = assign(run, data)
    _warn(blind_warnings(run, data, "annotations"))
    if args.out:
        write_posteriors(Path(args.out), ids, gamma)
        print(f"wrote {len(ids)} annotators' type posteriors to {args.out}")
    else:
        print(posteriors_table(ids, gamma, summary=True, digits=4), end="")
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--prompt", required=True, metavar="TEXT")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--type", type=_at_least(0, "--type"), dest="type_k", metavar="K",
                     help="type K's policy")
    who.add_argument("--annotator", metavar="ID", help="the annotator's most likely type")
    who.add_argument("--policy", choices=["mmra", "fair"],
                     help="mmra: draw a type policy by the mixture weights; fair: decode with "
                          "the min-max merge of every type policy (aggregate's deploy choice "
                          "under the kl objective)")
    p.add_argument("--samples", type=_at_least(1, "--samples"), default=1, metavar="N")
    _seed_arg(p, "sampling seed")
    p.add_argument("--max-new-tokens", type=_at_least(1, "--max-new-tokens"), default=None,
                   metavar="N",
                   help="longest answer in tokens (default: the run's max_response_tokens)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="> 0; below 1 sharper, above 1 more varied (default 1: the policy)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: draw from the most likely tokens holding mass P "
                        "(default 1: all)")


def cmd_generate(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.em.personalize import choose_policy, generate
    run = load_run(args.run)
    k, why = choose_policy(run, args.type_k, args.annotator, args.policy, args.seed)
    print(f"policy: {why}", file=sys.stderr)
    for text in generate(run, args.prompt, k, args.samples, args.seed,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p):
        print(text)
    return 0


def _suggest_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--annotator", required=True, metavar="ID")
    p.add_argument("--candidates", required=True, metavar="FILE", type=_path,
                   help="candidate queries (a prompt with 3+ responses each): a dataset folder "
                        "or any input `pluralign ingest` reads (rankings may be placeholders)")
    p.add_argument("--answers", default=None, metavar="DATA", type=_path,
                   help="the annotator's annotations so far, in any form --candidates takes "
                        "(default: the run's posterior)")
    p.add_argument("--preset", default="auto", help="input format of the files (as ingest)")
    p.add_argument("--ranking-length", type=_at_least(1, "--ranking-length"), default=None,
                   metavar="L", help="how many places the annotator will rank (default: all; "
                                     "at most the shortest candidate list)")
    p.add_argument("--top", type=_at_least(1, "--top"), default=10, metavar="N",
                   help="queries to show")


def cmd_suggest(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.em.personalize import annotator_posterior, blind_warnings, rank_queries
    from pluralign.ingest import to_annotations
    run = load_run(args.run)
    queries = to_annotations(args.candidates, args.preset)
    answers = to_annotations(args.answers, args.preset) if args.answers else None
    _warn(blind_warnings(run, queries, "candidate queries"))
    if answers is not None:
        _warn(blind_warnings(run, answers, "answers"))
    post, source = annotator_posterior(run, args.annotator, answers)
    print(f"current posterior ({source}): "
          + ", ".join(f"type_{k} {p:.3f}" for k, p in enumerate(post)))
    for r in rank_queries(run, queries, post, args.ranking_length)[: args.top]:
        prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
        print(f"{r['information_gain']:.4f} nats  #{r['index']}  {_one_line(prompt, 70)}")
    return 0


def _warn(warnings: list[dict[str, str]]) -> None:
    for w in warnings:
        print(f"WARNING [{w['code']}]: {w['message']}", file=sys.stderr)


def _one_line(text: str, width: int) -> str:
    """Data text for one printed line: line breaks and other control characters shown
    escaped (a prompt cannot forge further output lines), cut to `width`."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                    for ch in text[: width * 2])
    return shown[:width]


if __name__ == "__main__":
    sys.exit(main())
