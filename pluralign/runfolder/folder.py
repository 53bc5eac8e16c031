"""Run folders are folders pluralign made. A marker file records that, and the SHA-256 of every
file each command wrote there; commands refuse other non-empty folders (unless told to adopt
them), never use the filesystem root, the home folder or a project checkout, write through no
symbolic link that leads out of the folder, and remove only files the marker records unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pluralign import __version__
from pluralign.core import distributed
from pluralign.core.checks import user_path
from pluralign.core.io import LOCK_FILE, folder_lock, guard_root, sha256_file, write_json

MARKER = ".pluralign-run.json"
#: Files and folders whose presence makes a folder a project checkout, never a run folder.
CHECKOUT_SIGNS = (".git", "pyproject.toml", "setup.py", "setup.cfg", ".hg")
#: Bookkeeping a command may find in a folder it creates; not the user's files.
BOOKKEEPING = (MARKER, LOCK_FILE)


class UnsafeFolderError(ValueError):
    """A folder pluralign must not write into, or a link that would lead a write outside."""


def forbidden(folder: Path) -> str | None:
    """Why `folder` can never be a run or dataset folder, or None."""
    real = folder.resolve()
    if real == Path(real.anchor):
        return "the filesystem root"
    if real == Path.home().resolve():
        return "your home folder"
    signs = [s for s in CHECKOUT_SIGNS if (real / s).exists()]
    if signs:
        return f"a project checkout (it holds {signs[0]})"
    return None


def check_target(folder: Path, what: str, overwrite: bool = False) -> bool:
    """Raise UnsafeFolderError unless pluralign may write into `folder`: it does not exist, is
    empty, or carries the marker; otherwise only with `overwrite`, and never the root, home or
    a checkout; the working directory only when it is already a run folder. Returns whether
    the folder is already a run folder."""
    why = forbidden(folder)
    if why:
        raise UnsafeFolderError(f"{folder} is {why}: never a {what}; choose a new folder "
                                "such as runs/NAME")
    if (folder / MARKER).is_file():
        return True
    if folder.exists() and not folder.is_dir():
        raise UnsafeFolderError(f"{folder} is a file, not a folder")
    foreign = folder.is_dir() and any(p.name not in BOOKKEEPING for p in folder.iterdir())
    if folder.exists() and folder.resolve() == Path.cwd().resolve() and foreign:
        raise UnsafeFolderError(f"{folder} is the working directory and holds files pluralign "
                                "did not make; choose a new folder such as runs/NAME")
    if foreign and not overwrite:
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        raise UnsafeFolderError(
            f"{folder} is not a run folder pluralign made (no {MARKER}) and is not empty "
            f"({shown}); choose a new folder, or pass --overwrite to use it anyway (pluralign "
            f"then writes its files beside yours and deletes none of them)")
    return False


def outward_links(folder: Path) -> list[tuple[Path, Path]]:
    """Symbolic links inside `folder` (not followed) whose targets lie outside it."""
    root = folder.resolve()
    found = []
    for here, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(here) / name
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(root):
                    found.append((p, target))
    return found


def refuse_outward_links(folder: Path) -> None:
    """Raise naming the first link that would lead a write out of `folder`."""
    links = outward_links(folder) if folder.is_dir() else []
    if links:
        shown = "; ".join(f"{link} is a symbolic link to {target}" for link, target in links[:3])
        more = f" (and {len(links) - 3} more)" if len(links) > 3 else ""
        raise UnsafeFolderError(f"{shown}{more}, outside the run folder; pluralign writes "
                                "nothing through a link out of a run folder: remove the link")


_ACTIVE: dict[str, dict[str, tuple[int, int]]] = {}  # folder -> snapshot when it was entered


@contextmanager
def run_folder(folder: str | os.PathLike, what: str, overwrite: bool = False,
               create: bool = True) -> Iterator[Path]:
    """Check, lock and mark `folder` for the command `what`; on the way out record the SHA-256
    of every file it wrote there. With `create` False the folder must exist already (aggregate,
    evaluate, report). A folder this call created is removed again if the command fails before
    writing anything."""
    folder = user_path(folder, "the run folder")
    key = str(folder.resolve())
    if key in _ACTIVE or not distributed.is_main():
        yield folder  # nested (run -> em), or a rank working under rank 0's checks
        return
    if not create and not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    marked = check_target(folder, "run folder", overwrite)
    refuse_outward_links(folder)
    existed = folder.exists()
    with folder_lock(folder, what), guard_root(folder):
        if not marked:
            _write_marker(folder, {})
        _ACTIVE[key] = snapshot(folder)
        ok = False
        try:
            yield folder
            ok = True
        finally:
            before = _ACTIVE.pop(key)
            _record(folder, before)
            if not ok and not existed:
                _remove_if_bare(folder)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every regular file under `folder` but hidden ones (links not followed)."""
    files = {}
    for here, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            p = Path(here) / name
            if name.startswith(".") or p.is_symlink():
                continue
            st = p.stat()
            files[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return files


def recorded(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of the files pluralign wrote in `folder`, from its marker."""
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = info.get("files") if isinstance(info, dict) else None
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(files, dict) else {}


def changed_files(folder: Path, before: dict[str, tuple[int, int]],
                  after: dict[str, tuple[int, int]]) -> dict[str, str]:
    """{relative path: SHA-256} of the files of snapshot `after` that are new or changed
    since snapshot `before`."""
    return {rel: sha256_file(folder / rel) for rel in sorted(after)
            if before.get(rel) != after[rel]}


def _record(folder: Path, before: dict[str, tuple[int, int]]) -> None:
    """Add what changed since `before` to the marker; forget files that are gone."""
    after = snapshot(folder)
    files = {rel: h for rel, h in recorded(folder).items() if rel in after}
    _write_marker(folder, {**files, **changed_files(folder, before, after)})


def _write_marker(folder: Path, files: dict[str, str]) -> None:
    write_json(folder / MARKER, {
        "made_by": f"pluralign {__version__}",
        "note": "this folder is a pluralign run folder; files lists what pluralign wrote here "
                "(SHA-256), the only files it will ever remove",
        "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": dict(sorted(files.items()))})


def _remove_if_bare(folder: Path) -> None:
    """Remove a folder that holds nothing but pluralign's bookkeeping."""
    with contextlib.suppress(OSError):
        if all(p.name in BOOKKEEPING for p in folder.iterdir()):
            shutil.rmtree(folder)


def remove_made(folder: Path, names: Iterable[str], why: str) -> None:
    """Remove the files under `names` (files or folders in `folder`) that the marker records
    with their current content; keep anything else, saying so. Emptied folders go too."""
    made = recorded(folder)
    removed, kept = [], []
    for name in names:
        path = folder / name
        if path.is_symlink() or path.is_file():
            (removed if _remove_file(folder, path, made) else kept).append(name)
        elif path.is_dir():
            left = [p for p in sorted(path.rglob("*"), reverse=True)
                    if (p.is_file() or p.is_symlink()) and not _remove_file(folder, p, made)]
            for d in sorted((p for p in path.rglob("*") if p.is_dir() and not p.is_symlink()),
                            reverse=True):
                _rmdir(d)
            _rmdir(path)
            if left:
                kept += [p.relative_to(folder).as_posix() for p in left]
            else:
                removed.append(name)
    if removed:
        print(f"removed {', '.join(removed)}: {why}", file=sys.stderr)
    if kept:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        print(f"kept {shown}: not made by pluralign here, or changed since (pluralign removes "
              f"only its own unchanged files); they may be stale", file=sys.stderr)


def _remove_file(folder: Path, path: Path, made: dict[str, str]) -> bool:
    rel = path.relative_to(folder).as_posix()
    if path.is_symlink() or rel not in made or sha256_file(path) != made[rel]:
        return False
    path.unlink()
    return True


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: it holds something kept
        path.rmdir()
