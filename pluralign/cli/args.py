"""Command-line values read by the rules their YAML keys follow (pluralign.core.checks), and
the refusals that keep a command from writing over its inputs or a user's files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pluralign.cli.shell import UsageError


def path_arg(text: str) -> str:
    """A path flag, read by the rule every path follows (checks.user_path: `~` expanded, an
    empty path refused, as it would silently mean the working directory)."""
    from pluralign.core.checks import user_path
    try:
        return str(user_path(text, "the path"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_arg(rule: Callable[..., object], *bounds: int, name: str) -> Callable[[str], int]:
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


def seed_arg(p: argparse.ArgumentParser, help_text: str = "random_state",
              default: int | None = 0) -> None:
    from pluralign.core import checks
    p.add_argument("--seed", type=int_arg(checks.seed, name="--seed"), default=default,
                   metavar="S", help=help_text)


def at_least(low: int, name: str) -> Callable[[str], int]:
    from pluralign.core import checks
    return int_arg(checks.at_least, low, name=name)


OVERWRITE_HELP = {
    "dataset": "replace the dataset already in --out (refused without this flag)",
    "file": "replace a file already at --out (refused without this flag)",
    "run": "use a non-empty folder that pluralign did not make as the run folder (refused "
           "without this flag); pluralign writes its files beside yours and deletes none of "
           "them"}


def overwrite_arg(p: argparse.ArgumentParser, kind: str = "dataset") -> None:
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP[kind])


def refuse_overwrite(out: str, overwrite: bool) -> None:
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


def refuse_inputs(out: str, inputs: Sequence[str | Path], holding: bool = False) -> None:
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


def refuse_file_overwrite(out: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """A file is written over only with --overwrite, and never over (or into) an input."""
    path = Path(out)
    refuse_inputs(out, inputs)
    if path.is_dir():
        raise UsageError(f"{out} is a folder; --out names a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it, or choose "
                         "another --out")


def run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR", type=path_arg,
                   help="a run folder: what `pluralign em --out DIR` wrote")


def writes_run(p: argparse.ArgumentParser) -> None:
    """--run, and --overwrite to adopt a folder that pluralign did not mark as its own."""
    run_arg(p)
    overwrite_arg(p, "run")


def warn(warnings: list[dict[str, str]]) -> None:
    for w in warnings:
        print(f"WARNING [{w['code']}]: {w['message']}", file=sys.stderr)


def one_line(text: str, width: int) -> str:
    """Data text for one printed line: line breaks and other control characters shown
    escaped (a prompt cannot forge further output lines), cut to `width`."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                    for ch in text[: width * 2])
    return shown[:width]
