"""GradNorm from cached arrays, by its exact closed form on the last layer."""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, shifted_exp, register

GRADNORM_PAPER = Paper("On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
                       "Huang, Geng & Li", "NeurIPS", 2021, "https://arxiv.org/abs/2110.00218")


def gradnorm_u(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """The output-space factor ``Σ_i |p_i − 1/C|`` with ``p = softmax(f/T)``."""
    # Σ|e_i/s − 1/C| = Σ|e_i − s/C| / s, computed in place on the exponentials (hot path).
    _, e, s = shifted_exp(logits, T, 1)
    np.subtract(e, s / e.shape[1], out=e)
    np.abs(e, out=e)
    return e.sum(axis=1) / s[:, 0]


def feature_l1(ext: Extraction) -> np.ndarray:
    """``‖h‖₁`` per sample: knob-independent, so memoised on the extraction."""
    return ext.memo("feature_l1", lambda: np.abs(ext.features.astype(np.float64)).sum(axis=1))


def gradnorm_closed_form(logits: np.ndarray, features: np.ndarray, T: float = 1.0, include_bias: bool = False,
                         feature_l1: np.ndarray | None = None) -> np.ndarray:
    """``‖∂L/∂W‖_1 (+ ‖∂L/∂b‖_1)`` for ``L = KL(u ‖ softmax(f/T))``.

    ``∂L/∂f = (p − u)/T`` so ``∂L/∂W = (p − u) hᵀ / T`` and its L1 norm factorises as
    ``(1/T)·Σ_i |p_i − 1/C| · Σ_j |h_j|``; the bias adds ``(1/T)·Σ_i |p_i − 1/C|``.
    """
    u = gradnorm_u(logits, T)
    v = feature_l1 if feature_l1 is not None else np.abs(np.asarray(features, np.float64)).sum(axis=1)
    if include_bias:
        v = v + 1.0
    return u * v / T


@register
class GradNorm(Detector):
    """GradNorm: L1 norm of the last layer's gradient of ``KL(u ‖ softmax(f/T))``.

    ``S = (1/T)·Σ_i |p_i − 1/C| · ‖h‖_1`` (exact closed form, no backward pass needed).
    Higher = more ID: ID samples are confident, so p is far from uniform.
    """

    name = "gradnorm"
    title = "GradNorm (closed form, last layer)"
    paper = GRADNORM_PAPER
    needs = frozenset({"logits", "features"})
    family = "gradient"
    knobs = (
        Knob("T", 1.0, 0.1, 100.0, "log", help="temperature of the softmax in the KL loss"),
        Knob("include_bias", False, kind="bool", help="add the bias gradient's L1 norm (the reference code uses the weight only)"),
    )
    grid = {"T": [0.5, 1, 2, 4, 8]}

    def _score(self, ext: Extraction, T: float, include_bias: bool) -> np.ndarray:
        return gradnorm_closed_form(ext.logits, ext.features, T, include_bias, feature_l1(ext))
