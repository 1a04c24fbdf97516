"""GEN: generalized entropy on the top-M softmax probabilities (Liu et al., CVPR 2023)."""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, register, softmax


def gen_score(logits: np.ndarray, gamma: float = 0.1, M: int = 100) -> np.ndarray:
    """``S = −Σ_{i∈top-M(p)} p_i^γ (1−p_i)^γ`` with ``p = softmax(f)`` (T = 1).

    The generalized entropy is large for flat posteriors (OOD); negated so higher = more
    ID. ``M`` larger than the class count uses all classes. No clamping of ``p``
    (pytorch-ood clamps to [1e-7, 1−1e-7] and averages instead of summing; OpenOOD sums).
    """
    p = softmax(logits, 1.0)
    m = int(min(max(1, M), p.shape[1]))
    top = -np.sort(-p, axis=1)[:, :m]
    return -(top ** gamma * (1.0 - top) ** gamma).sum(axis=1)


@register
class GEN(Detector):
    """GEN: ``S = −Σ_{i∈top-M(p)} p_i^γ (1−p_i)^γ`` on ``p = softmax(f)``."""

    name = "gen"
    title = "GEN (generalized entropy)"
    paper = Paper("GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
                  "Liu, Lochman & Zach", "CVPR", 2023, "https://openaccess.thecvf.com/content/CVPR2023/html/"
                  "Liu_GEN_Pushing_the_Limits_of_Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html")
    needs = frozenset({"logits"})
    family = "output"
    knobs = (
        Knob("gamma", 0.1, 0.01, 1.0, "log", help="exponent γ of the generalized entropy"),
        Knob("M", 100, 1, 10000, kind="int",
             help="sum over the M largest probabilities; values above the class count use all classes (paper: min(100, C))"),
    )
    grid = {"gamma": [0.01, 0.05, 0.1, 0.2, 0.5, 1.0], "M": [1, 5, 10, 100]}
    help = "Higher = more ID. T = 1 as in the paper."

    def _score(self, ext: Extraction, gamma: float, M: int) -> np.ndarray:
        return gen_score(ext.logits, gamma, M)
