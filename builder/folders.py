"""Who owns the output and work folders, and how a new build replaces the old one.

A build never deletes what it did not make. It replaces OUT only when OUT is a persona build (its
manifest.json says so) or an empty folder; it writes into OUT.partial-<pid>, marked as ours; it keeps
the previous build as OUT.old until the new one is in place, and the next start puts a valid OUT.old
back when a kill came between the two renames. One process owns a work folder and an output at a
time (flock on a lock file: the kernel releases it when the holder dies, even by kill -9).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from generation.errors import PersonaError

from .durable import fsync_dir
from .manifest import FORMAT, MANIFEST

STAGING_MARK = ".persona-staging"  # inside OUT.partial-<pid> while its shards are written
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class FolderError(PersonaError):
    pass


def is_build(folder: Path) -> bool:
    """A folder this program wrote: a real directory whose manifest.json has our format."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def work_folder(root: str | Path, recipe_name: str) -> Path:
    """Keyed by the recipe's name, not its text: request ids already address every answer by what
    determines it, so a comment or an unrelated edit of the recipe reuses the stored answers."""
    if not SAFE_NAME.fullmatch(recipe_name):
        raise FolderError(f"recipe name {recipe_name!r} must be letters, digits, '.', '_' or '-' "
                          "(it names the work folder)")
    return Path(root).expanduser() / recipe_name


@contextmanager
def exclusive(lock_file: Path, what: str):
    """Hold an exclusive lock for the whole block, or refuse at once naming the holder's pid.

    The lock file is never deleted: unlinking a lock file lets a waiter and a newcomer hold two
    different inodes at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderError(f"{what} is in use by another persona process (pid {holder}; lock {lock_file})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def output_lock(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def check_output(out: Path) -> None:
    """Before any generation: restore OUT.old if a kill came mid-swap, and refuse an OUT (or an
    OUT.old) that is not ours to replace. Call it holding the output lock; `refuse_foreign` alone may
    run before (it changes nothing), so a refused --out leaves no lock file behind either."""
    old = _old(out)
    if not out.exists() and not out.is_symlink() and is_build(old):
        os.replace(old, out)  # the previous build, put aside by a swap that was killed halfway
    refuse_foreign(out)


def refuse_foreign(out: Path) -> None:
    old = _old(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FolderError(f"--out {out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not is_build(out):
        raise FolderError(f"--out {out} holds files that are not a persona build (no persona {MANIFEST}); "
                          "choose another output folder or move it away")
    if (old.exists() or old.is_symlink()) and not is_build(old):
        raise FolderError(f"{old} exists and is not a persona build: the swap needs that name; move it away")


def remove_stale_staging(out: Path) -> list[Path]:
    """Staging folders of earlier, dead builds (we hold the output lock, so none is live): only the
    ones we marked, or that already hold a persona manifest."""
    removed = []
    for p in sorted(out.parent.glob(f"{glob_escape(out.name)}.partial-*")):
        if not p.is_symlink() and p.is_dir() and ((p / STAGING_MARK).is_file() or is_build(p)):
            shutil.rmtree(p)
            removed.append(p)
    return removed


def new_staging(out: Path) -> Path:
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)
    (staging / STAGING_MARK).write_text(f"{os.getpid()}\n")
    return staging


def unmark(staging: Path) -> None:
    """Called when the shards are written, before the manifest lists the folder's files. A kill after
    this leaves a folder that is ours by its manifest, or (for the second it takes to write the card
    and manifest) an unmarked one that is left for the user rather than deleted on a guess."""
    (staging / STAGING_MARK).unlink()


def swap_in(staging: Path, out: Path) -> None:
    """OUT -> OUT.old, staging -> OUT, then delete OUT.old: at every instant one complete build is
    at OUT or at OUT.old (check_output restores the latter)."""
    old = _old(out)
    if is_build(old) and out.exists():
        shutil.rmtree(old)  # a previous run finished its swap but was killed before deleting it
    had_out = out.exists()  # check_output made sure it is a persona build or an empty folder
    if had_out:
        os.replace(out, old)
    os.replace(staging, out)
    fsync_dir(out.parent)
    if had_out:
        shutil.rmtree(old)


def _old(out: Path) -> Path:
    return out.with_name(f"{out.name}.old")


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
