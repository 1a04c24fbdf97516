"""ReAct (rectified activations + energy), and the clip fit it shares with RG.

RG (ReActivate GradNorm, in :mod:`.gradnorm`) clips features the same way, so its
detectors build on :class:`ClipFromTraining` from here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, SortedValues, register


class ClipFromTraining(Detector):
    """Shared fit: every training feature value, sorted, so percentiles are O(1)."""

    needs = frozenset({"logits", "features", "head", "training"})

    def _fit(self, train: Extraction) -> None:
        self.sorted_feats = SortedValues.of(train.features)
        self.train_info = {"n_train": len(train), "feature_max": float(self.sorted_feats.values[-1])}


def clipped_head_energy(features: np.ndarray, W: np.ndarray, b: np.ndarray, c: float, block: int = 2048) -> np.ndarray:
    """``LSE(W·min(h, c) + b)`` row block by row block, in float32 (~2e-7 relative).

    This is the one cached-array score whose knob move costs a full (N×D)·(D×C) matmul.
    Blocks keep the clipped copy cache-sized instead of allocating an N×D array, and the
    float32 matmul and exponentials are ~1.6x faster than float64 (bench/knob_latency.py).
    """
    h = np.asarray(features, np.float32)
    WT = np.ascontiguousarray(np.asarray(W, np.float32).T)
    b32 = np.asarray(b, np.float32)
    out = np.empty(len(h), np.float64)
    buf = np.empty((min(block, max(1, len(h))), h.shape[1]), np.float32)
    for i in range(0, len(h), block):
        hb = h[i: i + block]
        bb = buf[: len(hb)]
        np.minimum(hb, np.float32(c), out=bb)
        z = bb @ WT
        z += b32
        m = z.max(axis=1, keepdims=True)
        np.subtract(z, m, out=z)  # in place: no temporaries on the hot path
        np.exp(z, out=z)
        out[i: i + len(hb)] = m[:, 0] + np.log(z.sum(axis=1, dtype=np.float64))
    return out


@register
class ReAct(ClipFromTraining):
    """ReAct + Energy: ``S = LSE(W·min(h, c) + b)``, ``c`` = p-th percentile of training feature values."""

    name = "react"
    title = "ReAct (+ Energy)"
    paper = Paper("ReAct: Out-of-distribution Detection With Rectified Activations", "Sun, Guo & Li", "NeurIPS",
                  2021, "https://arxiv.org/abs/2111.12797")
    family = "feature"
    knobs = (Knob("p", 90.0, 50.0, 99.9, help="clip at this percentile of all training feature values"),)
    grid = {"p": [80, 85, 90, 95, 99]}

    def clip_value(self, p: float) -> float:
        return self.sorted_feats.percentile(p)

    def derived(self, p: float = 90.0, **_: Any) -> dict[str, Any]:
        return {"clip c": self.clip_value(p)} if self.fitted else {}

    def _score(self, ext: Extraction, p: float) -> np.ndarray:
        return clipped_head_energy(ext.features, ext.head_weight, ext.head_bias, self.clip_value(p))
