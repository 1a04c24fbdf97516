"""Memory budgets (how many bytes one kind of work may use on a device) and the thread policy.

docs/architecture.md, "Memory": one rule for every pass that sizes its batches or refuses
before it starts. ``$OOD_MEM_<KIND>_MB`` (e.g. ``OOD_MEM_FORWARD_MB``) sets a kind's budget in
megabytes; without it the budget is the kind's fraction of the memory the device has free
now (free GPU memory on CUDA, ``MemAvailable`` on the CPU). Layer 1: no ``ood_core`` imports,
and torch only when the device is a GPU.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import UserError

# kind -> (fraction of the free memory, what it bounds)
KINDS: dict[str, tuple[float, str]] = {
    "forward": (0.5, "one batch of an extraction's forward pass"),
    "grad_chunk": (0.1, "one chunk of per-sample gradients (activations and per-sample blocks), "
                        "or a whole (N, P) gradient matrix"),
    "grad_fit": (0.9, "everything a gradient-subspace fit holds: V's columns, statistics, one chunk"),
    "grad_hold": (0.25, "the fit set's whole per-sample gradient matrix, kept between the passes of a "
                        "randomized SVD so they are not recomputed (skipped when it does not fit)"),
}
# the variables of earlier releases, read for one more release with a one-line warning
DEPRECATED: dict[str, str] = {
    "OOD_EXTRACT_MEM_BUDGET_MB": "forward",
    "OOD_GRAD_MEM_BUDGET_MB": "grad_chunk",
    "OOD_GRAD_WORK_MB": "grad_chunk",
    "OOD_GRAD_MEM_LIMIT_MB": "grad_fit",
}
_FALLBACK_BYTES = 8 * 2**30  # no /proc/meminfo and no sysconf: assume 8 GB free
_warned: set[str] = set()


class MemoryBudgetValueError(UserError):
    """A memory-budget environment variable holds something other than a positive number of megabytes."""


def env_var(kind: str) -> str:
    """The variable that sets ``kind``'s budget in megabytes."""
    if kind not in KINDS:
        raise ValueError(f"unknown memory kind {kind!r}; one of {', '.join(KINDS)}")
    return f"OOD_MEM_{kind.upper()}_MB"


def free_bytes(device: Any = "cpu") -> int:
    """What the device has free now: free GPU memory on CUDA, ``MemAvailable`` on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_BYTES


class EnvValueError(UserError):
    """An environment variable of the workbench holds a value it cannot use; the message names it."""


def env_number(var: str, default: float | None, what: str = "a positive number", *, integer: bool = False,
               minimum: float = 0.0, allow_min: bool = False) -> float | None:
    """The one parser of the workbench's numeric environment variables (docs/architecture.md, "Errors").

    Unset or blank: ``default``. Otherwise a finite number above ``minimum`` (or equal to it with
    ``allow_min``), whole with ``integer``; anything else (``abc``, ``-1``, ``inf``, ``nan``)
    raises :class:`EnvValueError` naming the variable, never a silent fall back to the default.
    """
    raw = os.environ.get(var, "")
    if not raw.strip():
        return default
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    ok = math.isfinite(v) and (v >= minimum if allow_min else v > minimum) and (not integer or v == int(v))
    if not ok:
        raise EnvValueError(f"{var} must be {what}; got {raw.strip()[:40]!r} (fix or unset it)")
    return int(v) if integer else v


def _megabytes(var: str) -> int:
    try:
        mb = env_number(var, None, "a positive number of megabytes")
    except EnvValueError as exc:
        raise MemoryBudgetValueError(str(exc)) from None
    return int(float(mb or 0) * 2**20)


def _set_value(kind: str) -> tuple[str, str] | None:
    """(variable, value) that sets ``kind``, the new name first; None when none is set."""
    new = env_var(kind)
    if os.environ.get(new, "").strip():
        return new, os.environ[new]
    for old, k in DEPRECATED.items():
        if k == kind and os.environ.get(old, "").strip():
            if old not in _warned:
                _warned.add(old)
                warnings.warn(f"{old} is deprecated; set {new} instead", FutureWarning, stacklevel=3)
            return old, os.environ[old]
    return None


def memory_budget(kind: str, device: Any = "cpu") -> int:
    """Bytes ``kind`` of work may use on ``device`` (docs/architecture.md, "Memory").

    ``$OOD_MEM_<KIND>_MB`` when set, else ``KINDS[kind]``'s fraction of :func:`free_bytes`.
    A value that is not a positive finite number raises :class:`MemoryBudgetValueError`.
    """
    given = _set_value(kind)  # raises on an unknown kind
    if given is not None:
        return _megabytes(given[0])
    return int(KINDS[kind][0] * free_bytes(device))


# ------------------------------------------------------------------------------------ threads
def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, a batch scheduler's binding),
    bounded by a cgroup v2 CPU quota (a container's ``--cpus``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads(environ: dict[str, str] | None = None) -> dict[str, str]:
    """OpenMP's thread policy for torch, set where the user has not set it (docs/architecture.md, "Threads").

    ``OMP_WAIT_POLICY=passive``: torch's OpenMP threads sleep at the end of a parallel region instead of
    spinning. With another process on the cores a spinning thread burns the time slice its partner
    needs: one fixed piece of training took 4-5x the CPU seconds with the default policy and one
    busy process beside it, against the same with ``passive`` (measured in docs/architecture.md).
    ``OMP_NUM_THREADS``: the CPUs this process may actually use (:func:`available_cpus`), not the
    machine's. OpenMP reads both once, when torch loads it, so call this before ``import torch``;
    afterwards it changes nothing. Returns what it set.
    """
    env = os.environ if environ is None else environ
    if environ is None and "torch" in sys.modules:
        return {}
    wanted = {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": str(available_cpus())}
    done = {k: v for k, v in wanted.items() if not env.get(k, "").strip()}
    env.update(done)
    return done
