"""The disk cache: content-hash keys, checksummed entries, recovery from corruption.

Every expensive result (extractions, per-sample gradients, model-time scores, maps)
is stored as a dict of numpy arrays under a key that hashes *all* of its inputs
(docs/architecture.md, "Cache keys"), so a changed input can never hit a stale entry. Each entry
carries a SHA-256 of its payload; an entry that fails the check (a half-written or
truncated file) is dropped and recomputed instead of crashing the caller.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import diskcache
import filelock
import numpy as np

from . import distributed
from .jobs import checkpoint
from .errors import UserError, first_line
from .stores import StorageError, aside_name, ensure_dir, file_lock, storage_failure, storage_message

log = logging.getLogger(__name__)

_DEFAULT_DIR = Path(__file__).resolve().parent.parent / "cache"
_lock = threading.Lock()
_caches: dict[str, diskcache.Cache] = {}


class CacheCorrupt(UserError):
    """A cache entry failed its integrity check."""


_warned: set[str] = set()


def warn_once(topic: str, message: str) -> None:
    """Log ``message`` the first time ``topic`` comes up in this process (docs/architecture.md, "Errors")."""
    if topic not in _warned:
        _warned.add(topic)
        log.warning("%s", message)


def cache_dir() -> Path:
    """The cache root: ``$OOD_CACHE_DIR`` or ``cache/`` beside the package. A blank value counts as
    unset (an empty path would put the cache in whatever folder the command runs from); a path that
    is a file, or lies under one, is refused naming the variable."""
    given = os.environ.get("OOD_CACHE_DIR", "").strip()
    d = Path(given) if given else Path(_DEFAULT_DIR)
    for up in (d, *d.parents):
        if up.exists():
            if not up.is_dir():
                what = f"OOD_CACHE_DIR={d}" if given else f"the cache folder {d}"
                where = "is a file" if up == d else f"lies under {up}, which is a file"
                raise StorageError(f"{what} {where}, not a folder; set OOD_CACHE_DIR to a folder")
            break
    return ensure_dir(d)


def subdir(*parts: str) -> Path:
    """A folder under the cache root (created): ``subdir("uploads", "models")``."""
    return ensure_dir(cache_dir().joinpath(*parts))


class _ReadOnlyStore:
    """Serves the entries of a diskcache folder that cannot be written (docs/architecture.md, "Cache keys").

    diskcache's constructor writes its settings row, so it cannot open a read-only folder at all;
    this reads its SQLite index with ``mode=ro`` and the value files directly (raw and binary
    values only: the only kinds :func:`put_arrays` stores). Hand-written: diskcache has no
    read-only mode.
    """

    def __init__(self, directory: str):
        self.directory = directory
        db = Path(directory) / "cache.db"
        self._con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False) if db.exists() else None

    def _sql(self, query: str, args: tuple) -> Any:
        if self._con is not None:
            try:
                return self._con.execute(query, args)
            except sqlite3.DatabaseError:  # a damaged index it may not rebuild: it serves nothing
                pass
        return sqlite3.connect(":memory:").execute("SELECT NULL WHERE 0")

    def get(self, key: str, default: Any = None) -> Any:
        row = self._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if not row:
            return default
        mode, filename, value = row
        if mode == diskcache.core.MODE_BINARY and filename:
            return (Path(self.directory) / filename).read_bytes()
        return bytes(value) if value is not None else default

    def __contains__(self, key: str) -> bool:
        return self._sql("SELECT 1 FROM Cache WHERE key = ?", (key,)).fetchone() is not None

    def set(self, key: str, value: Any) -> None:
        raise OSError(errno.EROFS, "read-only cache")

    def delete(self, key: str) -> bool:
        return False

    def close(self) -> None:
        if self._con is not None:
            self._con.close()


def _read_only(d: str, exc: BaseException) -> _ReadOnlyStore:
    warn_once(f"ro:{d}", f"the cache folder {Path(d).parent} cannot be written ({storage_message(exc, 'to it')}); "
              "results already cached are served, new ones are computed without being stored")
    return _ReadOnlyStore(d)


def _open(d: str) -> diskcache.Cache:
    return diskcache.Cache(d, size_limit=2**34, disk_min_file_size=1024)


def _store(damaged: BaseException | None = None) -> diskcache.Cache | _ReadOnlyStore:
    """The open store of this cache folder; ``damaged`` (an error an open handle raised) rebuilds its index."""
    d = str(cache_dir() / "arrays")
    with _lock:
        c = _caches.get(d)
        if c is None or not Path(d).exists():
            # A missing folder (deleted while the app runs) is recreated, not an error.
            try:
                ensure_dir(Path(d))
                try:
                    c = _open(d) if damaged is None else _rebuild_index(d, damaged)
                except sqlite3.DatabaseError as exc:
                    if not _damaged(exc):
                        raise
                    c = _rebuild_index(d, exc)
            except StorageError as exc:
                c = _read_only(d, exc)
            except (OSError, sqlite3.OperationalError) as exc:
                if not storage_failure(exc):
                    raise
                c = _read_only(d, exc)
            _caches[d] = c
        return c


def _damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says the SQLite index itself is damaged (not locked, not a full disk)."""
    if isinstance(exc, sqlite3.OperationalError):
        return "malformed" in str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError)


def _rebuild_index(d: str, why: BaseException) -> diskcache.Cache:
    """Set a damaged ``cache.db`` aside (``cache.db.damaged-TIMESTAMP``) and index the value files again.

    docs/architecture.md, "Cache keys": every value file starts with its payload's checksum and
    its key, so a new index can be built from the files alone; a file that fails its checksum
    or predates the key header is left where it is (its entry is recomputed when next asked for).
    One warning says what happened. Two processes finding the damage at once rebuild once (a lock).
    """
    db = Path(d) / "cache.db"
    # No timeout: a rebuild reads every value file, and a second process finding the same damage
    # must wait for it rather than give up and go read-only.
    with file_lock(db, timeout=-1):
        try:  # another process may have rebuilt it while this one waited for the lock
            if _index_sound(db):
                return _open(d)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
        aside = aside_name(db)
        os.replace(db, aside)
        for suffix in ("-wal", "-shm"):  # the journal of the old file must not be replayed into the new one
            side = db.with_name("cache.db" + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        c = _open(d)
        kept = skipped = 0
        for f in sorted(Path(d).rglob("*.val")):
            try:
                blob = f.read_bytes()
                key = _blob_key(blob)
                _unpack(blob)  # checksum
            except Exception:  # noqa: BLE001 - damaged or unreadable: recomputed when asked for
                key = None
            if key is None:
                skipped += 1
                continue
            c.set(key, blob)  # a new value file; the old one is then a duplicate
            f.unlink(missing_ok=True)
            kept += 1
    log.warning("the cache index %s was damaged (%s); kept it as %s and rebuilt the index from the cached "
                "arrays: %d entries recovered%s", db, first_line(why), aside.name, kept,
                f", {skipped} files without a readable key left for recomputation" if skipped else "")
    return c


def _index_sound(db: Path) -> bool:
    """Whether SQLite finds ``cache.db`` whole (``PRAGMA quick_check``): opening it reads only its
    settings, so damage in the entries' table passes an open and shows on the first read."""
    if not db.exists():  # nothing to check: opening creates it
        return True
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=60)
    try:
        return con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            raise
        return False
    finally:
        con.close()


def _recover(store: Any, exc: BaseException) -> diskcache.Cache | _ReadOnlyStore | None:
    """After a damaged-index error on an open handle: a rebuilt store, or None when ``exc`` is another error."""
    if not _damaged(exc) or isinstance(store, _ReadOnlyStore):
        return None
    d = store.directory
    with _lock:
        if _caches.get(d) is store:
            with contextlib.suppress(Exception):
                store.close()
            del _caches[d]
    return _store(damaged=exc)


def reset() -> None:
    """Forget open cache handles (after the cache folder moved or was deleted)."""
    with _lock:
        for c in _caches.values():
            try:
                c.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass
        _caches.clear()


def _canon(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return array_sha256(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), hashed in place: no ``tobytes`` copy (a map's 100,000 × 128
    features are 51 MB), the same digest as ``sha256(a.tobytes())``."""
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject or a.size == 0:
        return hashlib.sha256(a.tobytes()).hexdigest()
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def make_key(kind: str, **parts: Any) -> str:
    """A stable key: the step's kind plus a SHA-256 of its canonicalised inputs."""
    blob = json.dumps(_canon(parts), sort_keys=True, default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()}"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks (model archives and subspace files can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pack(arrays: Mapping[str, np.ndarray], key: str = "") -> bytes:
    """``SHA256 KEY\n`` then the npz payload: the key in the header lets a damaged index be rebuilt
    from the value files alone (:func:`_rebuild_index`)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    payload = buf.getvalue()
    head = hashlib.sha256(payload).hexdigest() + (f" {key}" if key else "")
    return head.encode() + b"\n" + payload


_HEAD_MAX = 64 + 1 + 512  # digest, space, key


def _blob_key(blob: bytes) -> str | None:
    """The key stored in an entry's header (None for entries written before keys were)."""
    head = blob[:_HEAD_MAX].split(b"\n", 1)[0]
    parts = head.split(b" ", 1)
    return parts[1].decode("utf-8", "replace") if len(parts) == 2 and parts[1] else None


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    if not isinstance(blob, (bytes, bytearray)) or b"\n" not in blob[:_HEAD_MAX]:
        raise CacheCorrupt("entry has no checksum header")
    head, payload = blob.split(b"\n", 1)
    digest = head.split(b" ", 1)[0]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CacheCorrupt("checksum mismatch (truncated or half-written entry)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def get_arrays(key: str) -> dict[str, np.ndarray] | None:
    """The arrays under ``key``, or None when absent or corrupt (corrupt ones are dropped)."""
    store = _store()
    try:
        blob = store.get(key, default=None)
    except sqlite3.DatabaseError as exc:  # the index was damaged while this process had it open
        again = _recover(store, exc)
        if again is None:  # not damage (locked, I/O): a miss, as any other unreadable entry
            log.warning("cache entry %s unreadable (%s)", key, exc)
            return None
        blob = again.get(key, default=None)
    except Exception as exc:  # diskcache raises on a vanished value file
        log.warning("cache entry %s unreadable (%s); dropping it", key, exc)
        _drop(store, key)
        return None
    if blob is None:
        return None
    try:
        return _unpack(blob)
    except Exception as exc:
        log.warning("cache entry %s corrupt (%s); dropping it", key, exc)
        _drop(store, key)
        return None


def _drop(store: diskcache.Cache, key: str) -> None:
    try:
        store.delete(key)
    except Exception:  # pragma: no cover - best effort
        pass


def put_arrays(key: str, arrays: Mapping[str, np.ndarray]) -> bool:
    """Store arrays under ``key``; diskcache writes value files before committing the row.

    A full disk or a read-only cache stores nothing (said once per process) and returns False:
    the caller keeps its computed result (docs/architecture.md, "Cache keys").
    """
    if not distributed.is_writer():  # docs/architecture.md, "Distributed passes": only rank 0 writes
        return False
    store = _store()
    try:
        try:
            store.set(key, _pack(arrays, key))
        except sqlite3.DatabaseError as exc:  # the index was damaged while this process had it open
            again = _recover(store, exc)
            if again is None:
                raise
            store = again
            store.set(key, _pack(arrays, key))
        return True
    except (OSError, sqlite3.OperationalError) as exc:
        if not storage_failure(exc):
            raise
        warn_once(f"put:{store.directory}", f"{storage_message(exc, 'to the cache')} (results are computed "
                  "without being stored)")
        _drop(store, key)  # no half-written entry stays behind
        return False


def cached_arrays(key: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key`` or compute, store and return them.

    One computation per key at a time across threads and processes (:func:`key_lock`): a second
    caller waits (a cancelled job stops waiting: :func:`key_lock`) and then reuses the first one's entry. Under torchrun every rank computes when any rank misses
    (the computation may hold collectives all ranks must join, so no lock); only rank 0 stores."""
    hit = get_arrays(key)
    if distributed.is_distributed():
        if distributed.any_true(hit is None):
            hit = None
    elif hit is None:
        with key_lock(key):
            hit = get_arrays(key)  # the pass we waited for has stored it
            if hit is None:
                arrays = {k: np.asarray(v) for k, v in compute().items()}
                put_arrays(key, arrays)
                return arrays
    if hit is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    put_arrays(key, arrays)
    return arrays


def has(key: str) -> bool:
    return get_arrays(key) is not None


def contains(key: str) -> bool:
    """Whether an entry for ``key`` is stored (not read nor checked: cheap)."""
    try:
        return key in _store()
    except Exception:  # noqa: BLE001 - an unreadable index holds nothing we can use
        return False


# --- one computation per key (docs/architecture.md, "Concurrency and cancellation") ------

_held = threading.local()


def _lock_path(key: str) -> Path:
    return subdir("locks") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def key_lock(key: str, waiting: Callable[[], None] | None = None, blocking: bool = True,
             poll_s: float = 0.5) -> Iterator[bool]:
    """Hold the cross-process lock of ``key`` (``cache/locks/<hash>.lock``); yields whether it is held.

    filelock takes ``flock`` on the lock file: exclusive between processes and between threads
    (each call opens its own descriptor), and released by the OS when its holder dies, so a killed
    pass never blocks the next one, which then resumes its chunks. The wait polls; between polls
    ``jobs.checkpoint()`` stops it when the job on this thread is cancelled, and ``waiting`` (if
    given) says what it waits for.
    ``blocking=False`` yields False at once when another holder has it. Re-entering a key this
    thread already holds is a no-op. A cache that cannot be written holds no lock (yields True:
    there is nothing to protect on disk).
    """
    held: set[str] = _held.__dict__.setdefault("keys", set())
    if key in held:
        yield True
        return
    try:
        lock = filelock.FileLock(str(_lock_path(key)))
        got = lock.acquire(timeout=0 if not blocking else poll_s) and True
    except filelock.Timeout:
        got = False
    except (OSError, StorageError) as exc:
        if isinstance(exc, OSError) and not storage_failure(exc):
            raise
        yield True
        return
    while not got and blocking:
        checkpoint()  # a cancelled job (Stop, a closed tab, Ctrl-C) stops waiting too
        if waiting is not None:
            waiting()
        try:
            lock.acquire(timeout=poll_s)
            got = True
        except filelock.Timeout:
            pass
    if not got:
        yield False
        return
    held.add(key)
    try:
        yield True
    finally:
        held.discard(key)
        lock.release()


def value_path(key: str) -> Path | None:
    """Where an entry's value file lives on disk (tests corrupt it on purpose)."""
    store = _store()
    row = store._sql("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()  # noqa: SLF001
    if not row or row[0] is None:
        return None
    return Path(store.directory) / row[0]
