"""Output-space baselines on cached logits: MSP, MaxLogit, Energy."""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, energy, max_softmax, register


def msp_score(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """``max_i softmax(f/T)_i``."""
    return max_softmax(logits, T)


@register
class MSP(Detector):
    """Maximum softmax probability: ``S = max_i softmax(f/T)_i``."""

    name = "msp"
    title = "MSP (maximum softmax probability)"
    paper = Paper("A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks",
                  "Hendrycks & Gimpel", "ICLR", 2017, "https://arxiv.org/abs/1610.02136")
    needs = frozenset({"logits"})
    knobs = (Knob("T", 1.0, 0.1, 1000.0, "log", help="softmax temperature"),)
    grid = {"T": [0.5, 1, 2, 5, 10, 100, 1000]}

    def _score(self, ext: Extraction, T: float) -> np.ndarray:
        return msp_score(ext.logits, T)


@register
class MaxLogit(Detector):
    """``S = max_i f_i``."""

    name = "maxlogit"
    title = "MaxLogit"
    paper = Paper("Scaling Out-of-Distribution Detection for Real-World Settings", "Hendrycks et al.", "ICML", 2022,
                  "https://arxiv.org/abs/1911.11132")
    needs = frozenset({"logits"})

    def _score(self, ext: Extraction) -> np.ndarray:
        return ext.logits.astype(np.float64).max(axis=1)


@register
class Energy(Detector):
    """Negative free energy: ``S = T·LSE(f/T)``."""

    name = "energy"
    title = "Energy score"
    paper = Paper("Energy-based Out-of-distribution Detection", "Liu, Wang, Owens & Li", "NeurIPS", 2020,
                  "https://arxiv.org/abs/2010.03759")
    needs = frozenset({"logits"})
    knobs = (Knob("T", 1.0, 0.1, 100.0, "log", help="energy temperature"),)
    grid = {"T": [0.5, 1, 2, 4, 8, 16]}

    def _score(self, ext: Extraction, T: float) -> np.ndarray:
        return energy(ext.logits, T)
