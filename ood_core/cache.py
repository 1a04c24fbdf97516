"""The disk cache: content-hash keys, checksummed entries, recovery from corruption.

Every expensive result (extractions, per-sample gradients, model-time scores, maps)
is stored as a dict of numpy arrays under a key that hashes *all* of its inputs
(docs/architecture.md, "Cache keys"), so a changed input can never hit a stale entry. Each entry
carries a SHA-256 of its payload; an entry that fails the check (a half-written or
truncated file) is dropped and recomputed instead of crashing the caller.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import diskcache
import numpy as np

from .errors import UserError

log = logging.getLogger(__name__)

_DEFAULT_DIR = Path(__file__).resolve().parent.parent / "cache"
_lock = threading.Lock()
_caches: dict[str, diskcache.Cache] = {}


class CacheCorrupt(UserError):
    """A cache entry failed its integrity check."""


def cache_dir() -> Path:
    """The cache root: ``$OOD_CACHE_DIR`` or ``cache/`` beside the package."""
    d = Path(os.environ.get("OOD_CACHE_DIR", _DEFAULT_DIR))
    d.mkdir(parents=True, exist_ok=True)
    return d


def subdir(*parts: str) -> Path:
    """A folder under the cache root (created): ``subdir("uploads", "models")``."""
    d = cache_dir().joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _store() -> diskcache.Cache:
    d = str(cache_dir() / "arrays")
    with _lock:
        c = _caches.get(d)
        if c is None or not Path(d).exists():
            # A missing folder (deleted while the app runs) is recreated, not an error.
            Path(d).mkdir(parents=True, exist_ok=True)
            c = diskcache.Cache(d, size_limit=2**34, disk_min_file_size=1024)
            _caches[d] = c
        return c


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
        return hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def make_key(kind: str, **parts: Any) -> str:
    """A stable key: the step's kind plus a SHA-256 of its canonicalised inputs."""
    blob = json.dumps(_canon(parts), sort_keys=True, default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()}"


def _pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    payload = buf.getvalue()
    return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    if not isinstance(blob, (bytes, bytearray)) or b"\n" not in blob[:80]:
        raise CacheCorrupt("entry has no checksum header")
    digest, payload = blob.split(b"\n", 1)
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CacheCorrupt("checksum mismatch (truncated or half-written entry)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def get_arrays(key: str) -> dict[str, np.ndarray] | None:
    """The arrays under ``key``, or None when absent or corrupt (corrupt ones are dropped)."""
    store = _store()
    try:
        blob = store.get(key, default=None)
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


def put_arrays(key: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Store arrays under ``key``; diskcache writes value files before committing the row."""
    _store().set(key, _pack(arrays))


def cached_arrays(key: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key`` or compute, store and return them."""
    hit = get_arrays(key)
    if hit is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    put_arrays(key, arrays)
    return arrays


def has(key: str) -> bool:
    return get_arrays(key) is not None


def value_path(key: str) -> Path | None:
    """Where an entry's value file lives on disk (tests corrupt it on purpose)."""
    store = _store()
    row = store._sql("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()  # noqa: SLF001
    if not row or row[0] is None:
        return None
    return Path(store.directory) / row[0]


def read_json_dict(path: Path) -> dict:
    """A small JSON registry file as a dict; missing, unreadable or not-a-dict reads as empty."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_dict(path: Path, data: dict) -> None:
    """Write a small JSON registry atomically (readers never see half a file)."""
    atomic_write_bytes(Path(path), json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers never see it half-written (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
