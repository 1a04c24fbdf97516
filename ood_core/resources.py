"""Memory budgets: how many bytes one kind of work may use on a device.

docs/architecture.md, "Memory": one rule for every pass that sizes its batches or refuses
before it starts. ``$OOD_MEM_<KIND>_MB`` (e.g. ``OOD_MEM_FORWARD_MB``) sets a kind's budget in
megabytes; without it the budget is the kind's fraction of the memory the device has free
now (free GPU memory on CUDA, ``MemAvailable`` on the CPU). Layer 1: no ``ood_core`` imports,
and torch only when the device is a GPU.
"""
from __future__ import annotations

import math
import os
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


def _megabytes(var: str, raw: str) -> int:
    try:
        mb = float(raw)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise MemoryBudgetValueError(f"{var} must be a positive number of megabytes; got {raw!r} (fix or unset it)")
    return int(mb * 2**20)


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
        return _megabytes(*given)
    return int(KINDS[kind][0] * free_bytes(device))
