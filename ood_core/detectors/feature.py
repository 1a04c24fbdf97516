"""Feature-space detectors with a clip: ReAct and RG (ReActivate GradNorm)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, SortedValues, clipped_l1, energy, logsumexp, register

RG_PAPER = Paper("ReActivate GradNorm: gradient-based OOD detection by decomposing the gradient",
                 "the ReAct-GradNorm authors", "preprint", 2024, "")


class _ClipFromTraining(Detector):
    """Shared fit: every training feature value, sorted, so percentiles are O(1)."""

    needs = frozenset({"logits", "features", "head", "training"})

    def _fit(self, train: Extraction) -> None:
        self.sorted_feats = SortedValues.of(train.features)
        self.train_info = {"n_train": len(train), "feature_max": float(self.sorted_feats.values[-1])}


K_KNOBS = (
    Knob("k_mode", "percentile", kind="choice", choices=("percentile", "absolute"),
         help="give the clip k as a percentile of training feature values or as an absolute value"),
    Knob("q", 90.0, 1.0, 100.0, help="k as this percentile of all training feature values (k_mode=percentile)"),
    Knob("k", 1.0, 0.0, 1e6, help="k in feature units (k_mode=absolute); the paper's default is 1"),
)


class ClipK(_ClipFromTraining):
    """RG's clip ``k``, given absolutely or as a percentile of all training feature values."""

    needs = frozenset({"logits", "features", "training"})
    family = "gradient"

    def clip_value(self, k_mode: str, q: float, k: float) -> float:
        return self.sorted_feats.percentile(q) if k_mode == "percentile" else float(k)

    def derived(self, k_mode: str = "percentile", q: float = 90.0, k: float = 1.0, **_: Any) -> dict[str, Any]:
        """Both forms of k, so a user sees the absolute clip and where it sits in the training values."""
        if not self.fitted:
            return {}
        kv = self.clip_value(k_mode, q, k)
        vals = self.sorted_feats.values
        pct = 100.0 * np.searchsorted(vals, kv, side="right") / max(1, vals.size)
        return {"k (absolute)": kv, "k (percentile of training features)": float(pct)}


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
class ReAct(_ClipFromTraining):
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


def rg_score(logits: np.ndarray, features: np.ndarray, k: float, T: float = 1.0) -> np.ndarray:
    """RG, multiplicative (eq. 8): ``S = T·LSE(f/T) · Σ_j min(h_j, k)``."""
    return energy(logits, T) * clipped_l1(features, k)


@register
class RG(ClipK):
    """RG (ReAct-GradNorm, multiplicative): ``S = T·LSE(f/T) · Σ_j min(h_j, k)``.

    The output-space factor (energy) times the clipped feature L1 norm. ``k`` is in the
    units of the model's features: give it absolutely (``k_mode=absolute``) or as the
    q-th percentile of training feature values (``k_mode=percentile``). Where
    ``LSE(f/T) ≤ 0`` the product's order reverses; :meth:`diagnostics` counts those.
    """

    name = "rg"
    title = "RG: ReActivate GradNorm (energy × clipped feature L1)"
    paper = RG_PAPER
    knobs = (
        *K_KNOBS,
        Knob("T", 1.0, 0.1, 100.0, "log", help="energy temperature"),
    )
    grid = {"k": [0.1, 0.3, 0.5, 0.7, 1, 2, 3, 5, 1e6], "T": [0.5, 1, 2, 4, 8, 16, 32, 64]}

    def _score(self, ext: Extraction, k_mode: str, q: float, k: float, T: float) -> np.ndarray:
        return rg_score(ext.logits, ext.features, self.clip_value(k_mode, q, k), T)

    def diagnostics(self, ext: Extraction, T: float = 1.0, **_: Any) -> dict[str, Any]:
        n_neg = int((logsumexp(ext.logits, T=T) <= 0).sum())
        return {"samples with LSE(f/T) ≤ 0": n_neg}
