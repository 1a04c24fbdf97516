"""Cross-entropy methods: plain cross-entropy (``ce``) and Outlier Exposure (``oe``).

docs/methods.md, "Training methods".
"""
from __future__ import annotations

import torch

from ...knobs import Knob, Paper
from .. import losses as L
from .base import StepLoss, TrainerView, TrainingMethod, register


@register
class CrossEntropy(TrainingMethod):
    name, title, terms = "ce", "Cross-entropy", ("total", "ce")
    help = "plain cross-entropy on ID data: the baseline"
    uses_aux = False

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        ce = L.ce_loss(trainer.forward(x), y)
        return {"total": ce, "ce": ce}


@register
class OutlierExposure(TrainingMethod):
    name, title, terms = "oe", "Outlier Exposure", ("total", "ce", "oe")
    knobs = (Knob("lam", 0.5, 0.0, 10.0, help="λ, weight of the cross-entropy to uniform on auxiliary outliers"),)
    paper = Paper("Deep Anomaly Detection with Outlier Exposure", "Hendrycks, Mazeika, Dietterich", "ICLR", 2019,
                  "https://github.com/hendrycks/outlier-exposure")
    help = "L_CE + λ·mean_aux[-(1/C) Σ_i log softmax(f)_i]"
    recommended_detector = "msp"

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        b = len(x)
        logits = trainer.logits(x, trainer.aux_batch(b))
        ce, oe = L.ce_loss(logits[:b], y), L.oe_loss(logits[b:])
        return {"total": ce + trainer.k["lam"] * oe, "ce": ce, "oe": oe}
