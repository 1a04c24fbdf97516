"""ExGrad: the expected norm of the last layer's cross-entropy gradient (Igoe et al., 2022).

Igoe, Lim, Chen, Eftekhari, "How Useful are Gradients for OOD Detection, Really?",
arXiv 2205.10439 (2022). Formula and defaults: ``docs/methods.md`` ("The gradient family").

For a label ``y`` the cross-entropy ``CE(f/T, y)`` has last-layer weight gradient
``∂CE/∂W = (p − e_y) hᵀ / T`` with ``p = softmax(f/T)``. ExGrad averages its norm over
labels drawn from the model's own prediction:

    E(x) = Σ_y p_y ‖(p − e_y) hᵀ‖ / T

A rank-one matrix's Frobenius (L2) norm factorises, ``‖(p − e_y) hᵀ‖_F = ‖p − e_y‖₂·‖h‖₂``,
and ``‖p − e_y‖₂² = (1 − p_y)² + Σ_{i≠y} p_i²``; its entry-wise L1 norm factorises as
``‖p − e_y‖₁·‖h‖₁`` with ``‖p − e_y‖₁ = 2(1 − p_y)``, so ``Σ_y p_y ‖p − e_y‖₁ = 2(1 − ‖p‖²)``.
No backward pass is needed; the tests in ``tests/detectors/`` checks both against autograd.

Orientation: a confident prediction (``p`` near one-hot) has a small expected gradient, so
ExGrad's raw value is higher for OOD; our score is its negation, ``S = −E(x)``
(higher = more ID, docs/architecture.md, "Score sign").
"""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, register, softmax

EXGRAD_PAPER = Paper("How Useful are Gradients for OOD Detection, Really?", "Igoe, Lim, Chen & Eftekhari",
                     "arXiv", 2022, "https://arxiv.org/abs/2205.10439")


def expected_output_factor(logits: np.ndarray, T: float = 1.0, ord: int = 2) -> np.ndarray:
    """``Σ_y p_y ‖p − e_y‖_ord`` with ``p = softmax(f/T)`` (ord 1 or 2)."""
    p = softmax(logits, T)
    sq = np.einsum("ij,ij->i", p, p)
    if ord == 1:
        return 2.0 * (1.0 - sq)
    # (1 − p_y)² + (Σ p_i² − p_y²): both terms non-negative, no cancellation below zero
    d = np.sqrt((1.0 - p) ** 2 + np.maximum(sq[:, None] - p * p, 0.0))
    return np.einsum("ij,ij->i", p, d)


def exgrad_score(logits: np.ndarray, features: np.ndarray, T: float = 1.0, ord: int = 2) -> np.ndarray:
    """``−Σ_y p_y ‖∂CE(f/T, y)/∂W‖_ord`` (higher = more ID)."""
    h = np.asarray(features, np.float64)
    hn = np.abs(h).sum(axis=1) if ord == 1 else np.sqrt(np.einsum("ij,ij->i", h, h))
    return -expected_output_factor(logits, T, ord) * hn / T


@register
class ExGrad(Detector):
    """ExGrad: ``S = −Σ_y p_y ‖(p − e_y) hᵀ‖ / T``, the negated expected last-layer CE gradient norm."""

    name = "exgrad"
    title = "ExGrad (expected gradient norm, last layer)"
    paper = EXGRAD_PAPER
    needs = frozenset({"logits", "features"})
    family = "gradient"
    help = ("How large the last layer's training gradient would be if the label were drawn from the model's own "
            "prediction (negated): confident, low-norm samples score high; it behaves like a confidence score "
            "weighted by the feature norm, so it helps most on far OOD where confidence already separates.")
    knobs = (
        Knob("T", 1.0, 0.1, 100.0, "log", help="softmax temperature"),
        Knob("ord", 2, kind="choice", choices=(2, 1),
             help="matrix norm of the gradient: 2 = Frobenius (the paper's), 1 = entry-wise L1 (GradNorm's)"),
    )
    grid = {"T": [0.5, 1, 2, 4, 8], "ord": [2, 1]}

    def _score(self, ext: Extraction, T: float, ord: int) -> np.ndarray:
        return exgrad_score(ext.logits, ext.features, T, int(ord))
