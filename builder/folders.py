"""Who owns the output and work folders, and how a new build replaces the old one.

A build never deletes what it did not make. The rule, checked before anything is created and again
under the output lock right before the swap:
- the output OUT must name a folder of its own (not '', '.', '..' or '/') and lie apart from the work
  folder: neither may be inside the other (paths resolved: symlinks, '..'), since the swap replaces
  OUT whole and the request store must survive it;
- OUT is ours to replace only when it is absent, an empty folder, or a complete persona build with
  nothing else in it: it verifies against its manifest (builder.manifest.verify_folder), so a `.git/`,
  notes or an edited file make it the user's, and the build stops naming what is foreign.
The new build is written to OUT.partial-<pid>; the journal `.OUT.journal` beside OUT names that folder
from the moment it is made until the swap is over, so a kill at any instant leaves either OUT intact
or the journal that says which folder is ours. The swap writes the journal, moves OUT to OUT.old,
the new build to OUT, deletes OUT.old (verified once more: files added meanwhile keep it) and then the
journal. The next start reads a leftover journal: it puts OUT.old back when the kill came between the
two renames, and removes the folders the journal names. An OUT.old or OUT.partial-* that no journal
names is the user's: it is never deleted nor "restored", and each is named in one line. One process
owns a work folder and an output at a time (flock on a lock file: the kernel releases it when the
holder dies, even by kill -9).
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
from generation.log import log

from .durable import fsync_dir, write_atomic
from .manifest import MANIFEST, verify_folder

STAGING_MARK = ".persona-staging"  # marked the staging folders of builds before the journal: still ours
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED = {"eval"}  # `persona eval` keeps its answers in <work>/eval
SHOWN = 3  # problems named in one line


class FolderError(PersonaError):
    pass


def output_path(value: str | Path, flag: str = "--out") -> Path:
    """The output folder as given, refused (one line) when it does not name a folder of its own."""
    text = str(value)
    path = Path(text).expanduser()
    if not text.strip() or "\0" in text or path.name in ("", ".."):
        raise FolderError(f"{flag} {text!r} does not name a folder of its own: a build replaces its output "
                          "folder whole, so name one (e.g. --out persona)")
    return path


def work_folder(root: str | Path, recipe_name: str) -> Path:
    """Keyed by the recipe's name, not its text: request ids already address every answer by what
    determines it, so a comment or an unrelated edit of the recipe reuses the stored answers."""
    if not str(root).strip() or "\0" in str(root):
        raise FolderError(f"--work {str(root)!r} does not name a folder (e.g. --work .persona-work)")
    if not SAFE_NAME.fullmatch(recipe_name):
        raise FolderError(f"recipe name {recipe_name!r} must be letters, digits, '.', '_' or '-' "
                          "(it names the work folder)")
    if recipe_name in RESERVED:
        raise FolderError(f"recipe name {recipe_name!r} is reserved: `persona {recipe_name}` keeps its answers "
                          f"in <work>/{recipe_name}; rename the recipe")
    return Path(root).expanduser() / recipe_name


def check_apart(out: Path, work: Path) -> None:
    """Neither folder inside the other (nor the work folder inside OUT.old or OUT.partial-*): the swap
    replaces OUT whole and would take the request store with it."""
    o, w = Path(os.path.realpath(out)), Path(os.path.realpath(work))
    ours = w.relative_to(o.parent).parts[0] if w.is_relative_to(o.parent) and w != o.parent else None
    if ours is not None and (ours in (o.name, f"{o.name}.old") or ours.startswith(f"{o.name}.partial-")):
        raise FolderError(f"the work folder {work} is inside the output {out} (or its swap folders), which "
                          "a build replaces whole: put the work folder beside it (e.g. --work .persona-work)")
    if o.is_relative_to(w):
        raise FolderError(f"the output {out} is inside the work folder {work}: keep them apart "
                          "(e.g. --out persona --work .persona-work)")


def foreign(folder: Path) -> list[str]:
    """Why FOLDER is not ours to replace; [] when it is absent, empty or a complete persona build with
    nothing else in it (every file verified against its manifest)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return ["it is not a folder"]
    if not folder.exists():
        return []
    try:
        names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
        if not names:
            return []
        if MANIFEST not in names:
            return [f"no persona {MANIFEST}; it holds {', '.join(names[:SHOWN])}"
                    + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")]
        return verify_folder(folder)
    except OSError as e:
        return [f"cannot read it ({e.strerror or e})"]


def _summary(problems: list[str]) -> str:
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


def refuse_foreign(out: Path) -> None:
    """Refuse an OUT (or the OUT.old its swap needs) that is not ours. It changes nothing, so it runs
    before the lock file or the work folder is made: a refused --out leaves no trace."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FolderError(f"--out {out} exists and is not a folder; choose another output folder")
    problems = foreign(out)
    if problems:
        raise FolderError(f"--out {out} is not a persona build with nothing else in it, so it is not ours to "
                          f"replace ({_summary(problems)}); choose another output folder or move it away")
    old = _old(out)
    if out.exists() and (old.exists() or old.is_symlink()) and _read_journal(out) is None:
        raise FolderError(f"{old} exists and no interrupted swap of ours left it, so it is never deleted; the swap "
                          f"needs that name to keep the build in {out} until the new one is in place: move it away")


def check_output(out: Path) -> None:
    """Under the output lock, before any generation: finish what a killed build left (its journal),
    name the other leftovers, then refuse an OUT that is not ours."""
    _recover(out)
    for p in sorted(out.parent.glob(f"{glob_escape(out.name)}.partial-*")):
        if not p.is_symlink() and p.is_dir() and (p / STAGING_MARK).is_file():
            shutil.rmtree(p)
            log.info(f"removed {p}, the staging folder of an interrupted build")
        else:
            log.info(f"left {p} as it is: no journal of ours names it (move or delete it yourself)")
    refuse_foreign(out)


def new_staging(out: Path) -> Path:
    """OUT.partial-<pid> (or -<pid>-N when a folder not ours has that name: a pid is reused), made
    first and then named in the journal, so the journal never names a folder we did not make."""
    base = f"{out.name}.partial-{os.getpid()}"
    for n in range(1000):
        staging = out.with_name(base if n == 0 else f"{base}-{n}")
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise FolderError(f"cannot create the staging folder {staging} ({e.strerror or e})") from None
        _write_journal(out, {"staging": staging.name, "swap": False})
        return staging
    raise FolderError(f"{out.parent}: 1000 folders named {base}*; remove them")


def swap_in(staging: Path, out: Path) -> None:
    """OUT -> OUT.old, staging -> OUT, then delete OUT.old: at every instant one complete build is at
    OUT or at OUT.old, and the journal says which (check_output puts OUT.old back)."""
    old = _old(out)
    problems = foreign(out) or ([f"{old} exists"] if out.exists() and (old.exists() or old.is_symlink()) else [])
    if problems:  # made or changed during the build: it is the user's now
        _clear_journal(out)  # the finished build is theirs to move; no later start deletes it
        raise FolderError(f"--out {out} changed during the build and is not ours to replace ({_summary(problems)}); "
                          f"nothing was deleted: the finished, verified build is in {staging}")
    had_out = out.exists()
    _write_journal(out, {"staging": staging.name, "swap": True, "had_out": had_out})
    if had_out:
        os.replace(out, old)
    os.replace(staging, out)
    fsync_dir(out.parent)
    if had_out:
        late = foreign(old)  # a file written into the old build since (a shell whose cwd was inside it)
        if late:
            _clear_journal(out)  # before anything else: no later start may delete it
            log.warning(f"kept {old}, the previous build: it changed during the swap ({_summary(late)}); it is yours")
        else:
            shutil.rmtree(old)
            log.info(f"replaced the previous build in {out} (it verified with nothing else in it)")
    _clear_journal(out)


def absent_output(path: str | Path) -> None:
    """For `verify PATH`: a missing PATH whose build waits as PATH.old (a swap killed midway) says so."""
    out = Path(path)
    old = _old(out) if out.name not in ("", "..") else None
    if out.exists() or out.is_symlink() or old is None or not old.is_dir():
        return
    why = ("a build killed mid-swap put it there; the next `persona build` with this --out puts it back"
           if (_read_journal(out) or {}).get("swap") else "no interrupted swap of ours left it")
    raise FolderError(f"{path}: no such folder, but {old} is there ({why})")


# ------------------------------------------------------------------------------------------ journal

def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.journal")


def _read_journal(out: Path) -> dict | None:
    path = journal_path(out)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        data = None
    name = re.escape(out.name)
    if not (isinstance(data, dict) and isinstance(data.get("staging"), str)
            and re.fullmatch(rf"{name}\.partial-\d+(-\d+)?", data["staging"])
            and isinstance(data.get("swap"), bool) and isinstance(data.get("had_out", False), bool)):
        raise FolderError(f"{path} is not a journal this program wrote; move it away")
    return data


def _write_journal(out: Path, entry: dict) -> None:
    write_atomic(journal_path(out), json.dumps(entry) + "\n")
    fsync_dir(out.parent)


def _clear_journal(out: Path) -> None:
    journal_path(out).unlink(missing_ok=True)
    fsync_dir(out.parent)


def _recover(out: Path) -> None:
    """Undo what a killed build left, as its journal says: the renames first, then its staging folder."""
    journal = _read_journal(out)
    if journal is None:
        return
    old, staging = _old(out), out.with_name(journal["staging"])
    real_dir = lambda p: p.is_dir() and not p.is_symlink()  # noqa: E731
    if journal["swap"] and journal.get("had_out") and real_dir(old):
        if not out.exists() and not out.is_symlink():
            os.replace(old, out)
            log.info(f"restored {out} from {old}: a build was killed between the two renames of its swap")
        elif real_dir(out):
            shutil.rmtree(old)
            log.info(f"removed {old}, the previous build: a build was killed after swapping in the new one")
    if real_dir(staging):
        shutil.rmtree(staging)
        log.info(f"removed {staging}, the staging folder of an interrupted build")
    _clear_journal(out)


# ---------------------------------------------------------------------------------------------- locks

@contextmanager
def exclusive(lock_file: Path, what: str):
    """Hold an exclusive lock for the whole block, or refuse at once naming the holder's pid.

    The lock file is never deleted: unlinking a lock file lets a waiter and a newcomer hold two
    different inodes at once."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder, a file where a folder should be, ...
        raise FolderError(f"{what}: cannot create {lock_file} ({e.strerror or e})") from None
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


def _old(out: Path) -> Path:
    return out.with_name(f"{out.name}.old")


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
