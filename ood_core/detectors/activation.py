"""Activation shaping on the feature vector: ASH (P/B/S), SCALE, and DICE's weight sparsification."""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, energy, head_logits, register

POOLED_NOTE = ("The original prunes the last feature map before pooling; we prune the pooled feature vector "
               "(the head's input), as most libraries do.")


def n_kept(D: int, p: float) -> int:
    """How many of D activations survive pruning the lowest p percent (at least one)."""
    return max(1, D - int(np.round(D * p / 100.0)))


def descending_order(h: np.ndarray) -> np.ndarray:
    """Each row's activation indices, largest first; ties (e.g. many zeros after a ReLU) go
    to the lower index, which makes ASH-B (where kept zeros become non-zero) deterministic.

    Independent of ``p``, so the detectors memoise it per extraction: the sort is most of
    a knob move's cost. Stored in the smallest integer type that holds D.
    """
    h = np.asarray(h)
    if h.dtype.kind != "f":  # negating unsigned integers would wrap
        h = h.astype(np.float64)
    order = np.argsort(-h, axis=1, kind="stable")
    return order.astype(np.min_scalar_type(max(0, h.shape[1] - 1)), copy=False)


def top_mask(h: np.ndarray, p: float, order: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of each sample's top ``n_kept(D, p)`` activations (``order``: :func:`descending_order` of ``h``)."""
    h = np.asarray(h)
    k = n_kept(h.shape[1], p)
    idx = (descending_order(h) if order is None else order)[:, :k]
    mask = np.zeros(h.shape, bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def _order(ext: Extraction) -> np.ndarray:
    return ext.memo("feature_order_desc", lambda: descending_order(ext.features))


def _safe_ratio(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    # s2 = 0 only when every kept activation is 0, i.e. (non-negative features) all are:
    # then the shaped vector is 0 whatever the factor, so use ratio 0 instead of 0/0.
    return np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0)


def ash(h: np.ndarray, p: float, variant: str = "S", order: np.ndarray | None = None) -> np.ndarray:
    """ASH-P/-B/-S of non-negative features ``h`` (N, D), pruning the lowest ``p`` percent."""
    h = np.asarray(h, np.float64)
    mask = top_mask(h, p, order)
    s1 = h.sum(axis=1)
    kept = np.where(mask, h, 0.0)
    if variant == "P":
        return kept
    if variant == "B":
        return np.where(mask, (s1 / mask.sum(axis=1))[:, None], 0.0)
    if variant == "S":
        return kept * np.exp(_safe_ratio(s1, kept.sum(axis=1)))[:, None]
    raise ValueError(f"unknown ASH variant {variant!r}")


def scale_features(h: np.ndarray, p: float, order: np.ndarray | None = None) -> np.ndarray:
    """SCALE: ``h·exp(s1/s2)``, ``s2`` the sum of the top (100−p)% activations; nothing pruned."""
    h = np.asarray(h, np.float64)
    s2 = np.where(top_mask(h, p, order), h, 0.0).sum(axis=1)
    return h * np.exp(_safe_ratio(h.sum(axis=1), s2))[:, None]


@register
class ASH(Detector):
    """ASH + energy: ``S = LSE(W·a(h) + b)``.

    ``a`` keeps each sample's top (100−p)% activations; ASH-P zeroes the rest, ASH-B sets
    the kept ones to ``s1/n_kept``, ASH-S multiplies the kept ones by ``exp(s1/s2)``
    (``s1``/``s2`` = activation sum before/after pruning). Needs non-negative features.
    """

    name = "ash"
    title = "ASH (activation shaping) + energy"
    paper = Paper("Extremely Simple Activation Shaping for Out-of-Distribution Detection",
                  "Djurisic, Bozanic, Ashok & Liu", "ICLR", 2023, "https://arxiv.org/abs/2209.09858")
    needs = frozenset({"logits", "features", "head", "nonneg_features"})
    family = "feature"
    knobs = (
        Knob("p", 90.0, 50.0, 99.0, help="prune each sample's lowest p percent of activations"),
        Knob("variant", "S", kind="choice", choices=("P", "B", "S"),
             help="P: prune; B: prune and binarise to s1/n_kept; S: prune and scale by exp(s1/s2)"),
    )
    grid = {"p": [60, 65, 70, 75, 80, 85, 90, 95], "variant": ["P", "B", "S"]}
    help = POOLED_NOTE

    def _score(self, ext: Extraction, p: float, variant: str) -> np.ndarray:
        return energy(head_logits(ash(ext.features, p, variant, _order(ext)), ext.head_weight, ext.head_bias))


@register
class SCALE(Detector):
    """SCALE + energy: ``S = LSE(W·(h·exp(s1/s2)) + b)``, nothing pruned in the scaled vector."""

    name = "scale"
    title = "SCALE (activation scaling) + energy"
    paper = Paper("Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement",
                  "Xu, Chen, Franchi & Lian", "ICLR", 2024, "https://arxiv.org/abs/2310.00227")
    needs = frozenset({"logits", "features", "head", "nonneg_features"})
    family = "feature"
    knobs = (Knob("p", 85.0, 50.0, 99.0, help="s2 sums each sample's top (100 − p) percent of activations"),)
    grid = {"p": [60, 65, 70, 75, 80, 85, 90, 95]}
    help = POOLED_NOTE

    def _score(self, ext: Extraction, p: float) -> np.ndarray:
        return energy(head_logits(scale_features(ext.features, p, _order(ext)), ext.head_weight, ext.head_bias))


@register
class DICE(Detector):
    """DICE + energy: ``S = LSE((W⊙M) h + b)``.

    ``M`` keeps the weights whose contribution ``W_cj · mean_train(h_j)`` is above the
    p-th percentile of all contributions (numpy's percentile, strict ``>`` as OpenOOD).
    """

    name = "dice"
    title = "DICE (weight sparsification) + energy"
    paper = Paper("DICE: Leveraging Sparsification for Out-of-Distribution Detection", "Sun & Li", "ECCV", 2022,
                  "https://arxiv.org/abs/2111.09805")
    needs = frozenset({"logits", "features", "head", "training"})
    family = "feature"
    knobs = (Knob("p", 90.0, 0.0, 99.0, help="drop the weights whose contribution is below this percentile"),)
    grid = {"p": [10, 30, 50, 70, 90]}

    def _fit(self, train: Extraction) -> None:
        self.mean_activation = np.asarray(train.features, np.float64).mean(axis=0)
        self.train_info = {"n_train": len(train)}

    def mask(self, W: np.ndarray, p: float) -> np.ndarray:
        contrib = np.asarray(W, np.float64) * self.mean_activation[None, :]
        return contrib > np.percentile(contrib, p)

    def _score(self, ext: Extraction, p: float) -> np.ndarray:
        W = np.asarray(ext.head_weight, np.float64)
        return energy(head_logits(ext.features, W * self.mask(W, p), ext.head_bias))
