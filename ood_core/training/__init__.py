"""Training with gradient regularizers: the methods (one module each in :mod:`.methods`), losses,
outlier sampling, the loop.

The ``train`` command (``python -m ood_core train --method NAME …``) lives in
:mod:`ood_core.cli`, which calls down into this package (docs/architecture.md, "Command line").
"""
from __future__ import annotations

from .config import DEFAULT_EPOCHS, TrainConfig, TrainResult
from .loop import Trainer, job_fn, train
from .methods import (METHODS, Method, TrainingDiverged, TrainingError, TrainingMethod, get_method, knob_view,
                      register)

__all__ = ["DEFAULT_EPOCHS", "METHODS", "Method", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingError",
           "TrainingMethod", "TrainResult", "get_method", "job_fn", "knob_view", "register", "train"]
