"""Training-method registry. Importing this package registers every method module in it.

One module a method or a small family (``cross_entropy``: ce, oe; ``energy``: energy_oe, greg,
greg_plus; ``gq``), each a :class:`TrainingMethod` subclass decorated with :func:`register`;
a new module here is found without touching any other file (docs/architecture.md, "Where to add
things"). Modules import in name order, which is the order of ``METHODS``.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import (COMMON_KNOBS, METHODS, Method, StepLoss, TrainerView, TrainingDiverged, TrainingError,
                   TrainingMethod, get_method, knob_view, register)


def _discover() -> None:
    """Import every method module on the package's path (imports of modules already loaded are no-ops)."""
    for m in pkgutil.iter_modules(__path__):
        if m.name != "base" and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")


_discover()

__all__ = ["COMMON_KNOBS", "METHODS", "Method", "StepLoss", "TrainerView", "TrainingDiverged", "TrainingError",
           "TrainingMethod", "get_method", "knob_view", "register"]
