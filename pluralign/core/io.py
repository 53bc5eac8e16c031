"""Atomic file writes: every artifact is written to a temporary file, then renamed into place."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pluralign.core import distributed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it."""
    path = Path(path)
    _refuse_linked_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise _naming(e, path) from e  # the file the user asked for, not our temporary
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _naming(e: OSError, path: Path) -> OSError:
    """The same error (class and errno) naming `path`."""
    return type(e)(e.errno, e.strerror, str(path))


_ROOTS: list[Path] = []  # folders whose insides no write may leave through a link


@contextmanager
def guard_root(folder: Path) -> Iterator[None]:
    """While inside, a write below `folder` refuses a linked folder on its way (a link named
    `fair` or `report_files` would lead the write out)."""
    _ROOTS.append(Path(os.path.abspath(folder)))
    try:
        yield
    finally:
        _ROOTS.pop()


def _refuse_linked_parents(path: Path) -> None:
    """Raise when a folder between a guarded root and `path` is a symbolic link."""
    full = Path(os.path.abspath(path))
    for root in _ROOTS:
        if not full.is_relative_to(root):
            continue
        here = root
        for part in full.relative_to(root).parts[:-1]:
            here = here / part
            if here.is_symlink():
                raise LinkedPathError(f"{here} is a symbolic link to {here.resolve()}; "
                                      "pluralign writes nothing through a link inside a run "
                                      "folder: remove the link")


class LinkedPathError(ValueError):
    """A write would pass through a symbolic link inside a run folder."""


LOCK_FILE = ".pluralign.lock"
_HELD: set[str] = set()  # folders this process holds: nested calls (run -> em) pass through


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock; the message names its pid."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str, create: bool = True) -> Iterator[None]:
    """Hold an advisory lock on `folder` while writing into it, so that a second pluralign
    process aimed at the same folder stops at once, naming the holder, instead of mixing two
    runs' files. The lock dies with its process (kill -9 included): nothing stale to clean.
    With `create` False a missing folder is not made (the caller's own error names it)."""
    folder = Path(folder)
    if (not create and not folder.is_dir()) or not distributed.is_main():
        yield  # the other ranks of a launched run work under rank 0's lock
        return
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        yield
        return
    f = _open_lock(folder / LOCK_FILE)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process that has not written its pid yet"
        f.close()
        raise FolderLockedError(f"{folder}: in use by another pluralign process ({holder}); "
                                "wait for it to finish or choose another folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, pluralign {what}")
    f.flush()
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        f.close()  # closing releases the lock


def _open_lock(path: Path):  # noqa: ANN202 - a text file object
    """Open the lock file for reading and writing without following a link: a link in its
    place (pointing anywhere) is replaced by a plain file, its target never touched."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if not path.is_symlink():
            raise
        path.unlink()  # the name is pluralign's own; the link is not followed
        fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, "r+", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, strict JSON atomically (a NaN or infinity becomes null: a bare
    NaN token is not JSON, and other readers refuse the file)."""
    write_text(path, json.dumps(strict(obj), indent=2, ensure_ascii=False, allow_nan=False)
               + "\n")


#: Characters that str.splitlines (and JavaScript, for U+2028/9) take for line ends and JSON
#: leaves unescaped: inside a JSONL line they would split one record in two for such readers.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one strict JSON object per line atomically; line-breaking characters inside
    strings are written as escapes, so every reader sees one record per line."""
    write_text(path, "".join(json.dumps(strict(r), ensure_ascii=False, allow_nan=False)
                             .translate(_LINE_BREAKS) + "\n" for r in rows))


def strict(obj: Any) -> Any:
    """`obj` with numpy values made plain and every non-finite float made None."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()  # numpy arrays and scalars
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and rename the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


#: A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...)); a leading
#: ' is the guard itself, so a cell that starts with one gets another (the guard round-trips).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def guard_cell(text: str) -> str:
    """A data string as a spreadsheet-safe cell: prefixed with ' when it would run as a
    formula (OWASP's CSV-injection advice); unguard_cell undoes it."""
    return "'" + text if text.startswith(FORMULA_START) else text


def unguard_cell(text: str) -> str:
    """The inverse of guard_cell."""
    return text[1:] if text.startswith("'") else text


def csv_text(header: list[str], rows: list[list[Any]], digits: int = 6) -> str:
    """The one table writer for CSV, saved or printed: the csv module's quoting (a comma,
    quote or line break in an id stays inside its cell), data strings guarded against
    formulas, numbers with `digits` decimals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([guard_cell(c) if isinstance(c, str) else f"{c:.{digits}f}"
                         for c in row])
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
