"""How every `pluralign` command meets its user: bad input, a full disk, Ctrl-C and SIGTERM
as one line and an exit status; warnings as one line; progress and logging as -q/-v ask."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pluralign.core import distributed, progress

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A bad command-line value; printed and exit status 2."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's time limit, `kill`): unwinds like Ctrl-C, so temporary
    files are removed and every finished file stays whole."""


def on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def handle(args: argparse.Namespace) -> int:
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


def show_warning(message: Warning | str, category: type[Warning], *_: object,
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


class Repeats(logging.Filter):
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


def verbosity_args(p: argparse.ArgumentParser, default: object) -> None:
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
    repeats = Repeats()
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
