"""A folder of outputs written as a unit: built aside, then swapped in.

    with building(Path("reports")) as out:   # out = reports.building/, empty
        ...write every file into out...
    # reports/ is now exactly what was built; a kill at any moment leaves either the previous
    # folder or the new one, whole, never a mix

The swap is one ``renameat2(RENAME_EXCHANGE)`` system call (Linux >= 3.15, glibc >= 2.28): the
two folders trade names atomically.  Where it is unavailable, two renames are used, and a
kill between them leaves the previous folder whole under ``<name>.previous``, which the next
build puts back first (:func:`recover`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names of existing paths a and b; False where unsupported."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):        # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel
        return False
    raise OSError(err, os.strerror(err), str(a))


def _aside(target: Path, what: str) -> Path:
    return target.with_name(f"{target.name}.{what}")


def recover(target: Path) -> None:
    """Undo what a kill left: a previous folder set aside but not replaced goes back; build
    and previous folders of finished or abandoned builds are removed."""
    previous = _aside(target, "previous")
    if previous.exists() and not target.exists():
        previous.rename(target)
    for leftover in (previous, _aside(target, "building")):
        if leftover.exists():
            shutil.rmtree(leftover)


@contextlib.contextmanager
def building(target: Path):
    """Yield an empty folder beside ``target``; on success it replaces ``target`` whole (the
    previous contents are dropped); on an exception ``target`` is left untouched."""
    target = Path(target)
    recover(target)
    build = _aside(target, "building")
    build.mkdir(parents=True)
    try:
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    if target.exists() and _exchange(build, target):
        shutil.rmtree(build)            # now holds the previous contents
        return
    previous = _aside(target, "previous")
    if target.exists():
        target.rename(previous)
    build.rename(target)
    if previous.exists():
        shutil.rmtree(previous)
