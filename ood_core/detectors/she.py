"""SHE: simplified Hopfield energy (Zhang et al., ICLR 2023).

Zhang, Fu, Luo, Deng, "Out-of-Distribution Detection based on In-Distribution Data
Patterns Memorization with Modern Hopfield Energy", ICLR 2023 (OpenOOD
``she_postprocessor.py``). Formula: ``docs/methods.md`` ("Post-2023 baselines").

``S_c`` = the mean feature of the training samples of class ``c`` that the model
classifies correctly; with ``ŷ`` the predicted class, ``S = hᵀ S_ŷ`` (higher = more ID).
A class with no correctly classified training sample (or a training set without labels)
falls back to the samples predicted as that class, and ``train_info`` says so. OpenOOD also offers the cosine and the negative Euclidean distance to ``S_ŷ``.
"""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, register


@register
class SHE(Detector):
    """SHE: inner product of the features with the stored pattern of the predicted class."""

    name = "she"
    title = "SHE (simplified Hopfield energy)"
    paper = Paper("Out-of-Distribution Detection based on In-Distribution Data Patterns Memorization with Modern "
                  "Hopfield Energy", "Zhang, Fu, Luo & Deng", "ICLR", 2023, "https://openreview.net/forum?id=KkazG4lgKL")
    needs = frozenset({"logits", "features", "training"})
    family = "feature"
    help = ("Similarity of the sample's features to the average correctly classified training sample of its "
            "predicted class: simple and fast; strong on far OOD, weaker on near OOD that resembles a class.")
    knobs = (Knob("metric", "inner_product", kind="choice", choices=("inner_product", "cosine", "euclidean"),
                  help="similarity to the class pattern: the paper's inner product, or OpenOOD's alternatives"),)
    grid = {"metric": ["inner_product", "cosine", "euclidean"]}

    def _fit(self, train: Extraction) -> None:
        h = np.asarray(train.features, np.float64)
        pred = np.asarray(train.logits).argmax(axis=1)
        C = train.logits.shape[1]
        y = train.labels
        notes = []
        if (y < 0).all():
            y = pred  # no labels: every sample counts as correctly classified as its prediction
            notes.append("training labels unknown: patterns are means per predicted class")
        ok = (pred == y) & (y >= 0)
        patterns, fallback = [], []
        for c in range(C):
            for rows in (ok & (y == c), pred == c, y == c):  # correct ones; else predicted as c; else labelled c
                if rows.any():
                    patterns.append(h[rows].mean(axis=0))
                    break
            else:
                patterns.append(np.zeros(h.shape[1]))
            if not (ok & (y == c)).any():
                fallback.append(c)
        if fallback:
            notes.append(f"no correctly classified training sample of class(es) {', '.join(map(str, fallback[:10]))}"
                         f"{' …' if len(fallback) > 10 else ''}: their patterns use the samples predicted (or "
                         "labelled) as that class")
        self.patterns = np.stack(patterns)
        self.train_info = {"n_train": len(train), "correct": int(ok.sum()), **({"note": "; ".join(notes)} if notes else {})}

    def _score(self, ext: Extraction, metric: str) -> np.ndarray:
        h = np.asarray(ext.features, np.float64)
        S = self.patterns[np.asarray(ext.logits).argmax(axis=1)]
        if metric == "inner_product":
            return np.einsum("ij,ij->i", h, S)
        if metric == "euclidean":
            d = h - S
            return -np.sqrt(np.einsum("ij,ij->i", d, d))
        den = np.linalg.norm(h, axis=1) * np.linalg.norm(S, axis=1)
        return np.einsum("ij,ij->i", h, S) / np.maximum(den, 1e-12)
