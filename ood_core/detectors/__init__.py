"""Detector registry. Importing this package registers every detector module."""
from __future__ import annotations

import importlib
import pkgutil

from ..knobs import Knob, Paper
from .base import (Detector, DetectorError, detector_classes, detector_names, energy, get_detector,
                   logsumexp, register, softmax)

# One module per family; each registers its detectors on import.
for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Detector", "DetectorError", "Knob", "Paper", "detector_classes", "detector_names", "energy",
           "get_detector", "logsumexp", "register", "softmax"]
