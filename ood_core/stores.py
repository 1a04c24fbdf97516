"""Files the workbench writes itself: atomic writes, cross-process file locks, small JSON stores.

docs/architecture.md, "Saved state": a reader never sees half a file (temp file, fsync, rename), a
damaged JSON store is kept aside and never overwritten, and a disk that cannot take a write is one
:class:`StorageError` line. Below :mod:`ood_core.cache`, which keeps its arrays with these pieces.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import filelock
import numpy as np

from .errors import UserError, first_line

log = logging.getLogger(__name__)


class StorageError(UserError):
    """A file the workbench must write could not be written (disk full, read-only folder)."""


# errno values that mean "this disk cannot take the write", not "this is a bug".
_NO_ROOM = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk cannot take a write (full, read-only, no permission)."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_ROOM
    if isinstance(exc, sqlite3.OperationalError):
        msg = str(exc).lower()
        return "readonly" in msg or "read-only" in msg or "disk is full" in msg or "unable to open" in msg
    return False


def storage_message(exc: BaseException, what: str) -> str:
    """One line for a failed write: what could not be written, and why."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "disk is full" in str(exc).lower():
        why = "the disk is full"
    elif isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in str(exc):
        why = "the folder is read-only"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return f"could not write {what}: {why}; free some space or set OOD_CACHE_DIR to a writable folder"


def ensure_dir(d: Path) -> Path:
    """``d``, created with its parents when missing; a disk that cannot take it is a StorageError."""
    # An existing folder is used as is: mkdir on a read-only file system can fail even with exist_ok.
    if not d.is_dir():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if storage_failure(exc):
                raise StorageError(storage_message(exc, f"the folder {d}")) from None
            raise
    return d


def standard_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes standard JSON: NaN and infinities become ``null`` (never ``NaN``)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """An exclusive lock across threads and processes on ``path`` (``PATH.lock`` beside it).

    filelock (torch depends on it) takes ``fcntl.flock`` on the lock file; the lock is reentrant
    within a thread, so a store may call another locked helper on the same file.
    """
    path = Path(path)
    ensure_dir(path.parent)
    lock = filelock.FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout)
    try:
        with lock:
            yield
    except filelock.Timeout:
        raise StorageError(f"{path} is locked by another process for over {timeout:.0f}s; try again") from None


def aside_name(path: Path) -> Path:
    """A free ``NAME.damaged-TIMESTAMP[-n]`` beside ``path``: where a damaged file is kept."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    return aside


def _keep_aside(path: Path, why: str) -> Path:
    aside = aside_name(path)
    os.replace(path, aside)
    log.warning("%s was unreadable (%s); kept as %s and starting a new one", path, why, aside.name)
    return aside


def _parse_dict(path: Path) -> dict | str:
    """The dict in ``path`` ({} when missing), or why it is unreadable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {first_line(exc)}"
    return data if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"


def read_json_dict(path: Path) -> dict:
    """A small JSON store as a dict ({} when missing). One that cannot be parsed is kept aside
    (renamed ``NAME.damaged-TIMESTAMP``, said in one log line) and reads as empty, so the next write
    starts a new file and never overwrites the damaged one."""
    path = Path(path)
    got = _parse_dict(path)
    if isinstance(got, dict):
        return got
    with file_lock(path):
        got = _parse_dict(path)  # another process may have kept it aside (or rewritten it) meanwhile
        if isinstance(got, dict):
            return got
        _keep_aside(path, got)
        return {}


def write_json_dict(path: Path, data: dict) -> None:
    """Write a small JSON store atomically, under its lock (readers never see half a file)."""
    path = Path(path)
    with file_lock(path):
        atomic_write_bytes(path, standard_json(data, indent=2, sort_keys=True, default=str).encode())


def update_json_dict(path: Path, change: Callable[[dict], Any]) -> Any:
    """Read-modify-write a small JSON store under its cross-process lock; returns ``change(data)``.

    Two processes updating the same store at once both land (docs/architecture.md, "Saved state").
    """
    path = Path(path)
    with file_lock(path):
        data = read_json_dict(path)
        out = change(data)
        atomic_write_bytes(path, standard_json(data, indent=2, sort_keys=True, default=str).encode())
        return out


def atomic_write_bytes(path: Path, data: bytes, what: str | None = None) -> None:
    """Write a file so readers never see it half-written (temp file, fsync, rename).

    A full disk or a read-only folder raises :class:`StorageError` with one line and leaves
    neither a temporary file nor a half-written target.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        ensure_dir(path.parent)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if storage_failure(exc):
            raise StorageError(storage_message(exc, what or str(path))) from None
        raise
