"""Atomic writes (a crash never leaves a half-written file behind) and checked reads (a bad
input file gives one line: the file, the problem, the fix)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gm.errors import GmError


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class InputError(GmError):
    """A file a stage reads is missing, unreadable or malformed.

    The message is the one line the user sees: ``<file>: <problem> (<fix>)``."""

    def __init__(self, path, problem: str, fix: str):
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(describe(path, problem, fix))


def describe(path, problem: str, fix: str) -> str:
    """The one-line form of every bad-input message: ``<file>: <problem> (<fix>)``."""
    return f"{path}: {problem} ({fix})"


def cause(err: BaseException, limit: int = 160) -> str:
    """``Type: first sentence`` of a caught exception's message, on one line, at most ``limit``
    characters (torch's unpickling errors run to a paragraph)."""
    text = " ".join(str(err).split()).split(". ")[0]
    return f"{type(err).__name__}: {text[:limit]}"


def read_json(path: Path, fix: str, missing: str | None = None) -> Any:
    """The parsed JSON of ``path``; a missing, unreadable or invalid file raises
    :class:`InputError` naming the file, the problem and ``fix`` (e.g. "delete it and rerun
    the train stage"; ``missing``: the fix when there is no file, default ``fix``).
    ``NaN``/``Infinity`` are read as floats (the record readers decide where a number must
    be finite)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "missing", missing or fix) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable ({cause(err)})", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problem = "empty" if not text.strip() else f"not valid JSON ({err})"
        raise InputError(path, problem, fix) from None


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove it writable (a probe file is created and
    removed: permission bits alone do not tell, e.g. on a read-only mount); else raise
    :class:`InputError` naming the directory that refuses, before any work starts."""
    directory = Path(directory)
    blocked = directory
    while not blocked.exists() and blocked.parent != blocked:
        blocked = blocked.parent          # the deepest existing folder: where mkdir must write
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        problem = f"not writable ({err.strerror or err})"
        if blocked != directory:
            problem = f"cannot be created: {blocked} is {problem}"
        raise InputError(directory, problem, f"chmod u+w {blocked}, or run in a writable "
                         "copy of the project") from None
