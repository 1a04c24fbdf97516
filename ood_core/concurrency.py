"""Sharing one model between threads (docs/architecture.md, "Concurrency and cancellation").

The app keeps one :class:`~ood_core.models.ModelBundle` per model in the process and every
session's jobs run on it at once. Two things on a shared ``nn.Module`` are global to it and so
would leak between threads:

* forward hooks: a hook registered by one call fires on every thread's forward pass;
  :func:`call_hooks` registers hooks that act only for the thread (and the call) that made them;
* ``torch.func.functional_call``, which swaps the module's parameters in place for the duration
  of the call; :func:`private_module` gives a call its own module tree that shares the parameter
  and buffer tensors (no copy of the weights), so the swap is invisible to other threads.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import threading
from typing import Any, Callable, Iterable, Iterator

from torch import nn

_scope = threading.local()
_ids = itertools.count(1)


@contextlib.contextmanager
def call_hooks(modules: Iterable[nn.Module], hook: Callable[[nn.Module, Any, Any], Any]) -> Iterator[None]:
    """Forward hooks on ``modules`` that fire only for forward passes run by this call, removed on exit.

    A forward hook is called on the thread that runs the forward, so a call-scoped token kept in
    thread-local storage tells this call's passes from another thread's (or another, nested
    call's) passes on the same modules. Chosen over a per-model lock: two sessions' gradient
    passes then really run at once.
    """
    token = next(_ids)
    outer = getattr(_scope, "token", None)

    def scoped(m: nn.Module, i: Any, o: Any) -> Any:
        if getattr(_scope, "token", None) == token:
            return hook(m, i, o)
        return None

    handles = [m.register_forward_hook(scoped) for m in modules]
    _scope.token = token
    try:
        yield
    finally:
        _scope.token = outer
        for h in handles:
            h.remove()


def private_module(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree for one call that shares its parameter and buffer tensors.

    ``functional_call`` on the copy swaps the copy's attributes, never the shared model's. The copy
    costs the module objects only (the weights are not copied) and carries no hooks. A module that cannot be copied
    (some scripted or exported ones) is returned as is, and the caller takes :func:`model_lock`.
    """
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    # The copy starts with no hooks: the shared model's hook dicts belong to other calls, and another
    # thread removing its call-scoped hook would change a dict deepcopy is iterating ("mutated during
    # iteration", which used to send the call to the serialised fallback).
    for m in module.modules():
        for name, value in vars(m).items():
            if "hooks" in name and isinstance(value, dict):
                memo[id(value)] = type(value)()
    try:
        return copy.deepcopy(module, memo)
    except Exception:  # noqa: BLE001 - uncopyable: the caller serialises on the model instead
        return module


_locks: dict[int, threading.RLock] = {}
_locks_guard = threading.Lock()


def model_lock(module: nn.Module) -> threading.RLock:
    """A per-module lock, the fallback when a call cannot be isolated from other threads."""
    with _locks_guard:
        return _locks.setdefault(id(module), threading.RLock())
