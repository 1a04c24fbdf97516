"""The models this process holds in memory, by spec key.

``workbench.load_model(spec)`` looks here first: the default model, model files loaded by
path, and uploads (``upload:NAME@HASH``, put here by :mod:`ood_core.persist`, which also
brings them back after a restart). A plain dict behind a lock; nothing here touches disk.
"""
from __future__ import annotations

import threading

from .bundle import ModelBundle

_lock = threading.RLock()
_models: dict[str, ModelBundle] = {}


def put(key: str, bundle: ModelBundle) -> None:
    """Make ``bundle`` reachable as ``key`` (replaces what was there)."""
    with _lock:
        _models[key] = bundle


def get(key: str) -> ModelBundle | None:
    with _lock:
        return _models.get(key)


def has(key: str) -> bool:
    with _lock:
        return key in _models


def forget(key: str) -> None:
    """Drop ``key`` from memory (its files stay where they are)."""
    with _lock:
        _models.pop(key, None)


def items(prefix: str = "") -> list[tuple[str, ModelBundle]]:
    """``(key, bundle)`` pairs whose key starts with ``prefix``, in the order they were added."""
    with _lock:
        return [(k, b) for k, b in _models.items() if k.startswith(prefix)]
