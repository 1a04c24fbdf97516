"""Head-geometry detectors: fDBD (decision-boundary distance) and NCI (neural collapse).

Both use the final linear layer's weights and the mean ``μ`` of the ID training features;
formulas and defaults in ``docs/methods.md`` ("Post-2023 baselines").

- **fDBD** (Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML
  2024; code ``litianliu/fDBD-OOD``, OpenOOD ``fdbd_postprocessor.py``): the feature-space
  distance from ``h`` to the boundary between the predicted class ``ŷ`` and class ``c`` is
  ``|f_ŷ − f_c| / ‖w_ŷ − w_c‖``; averaged over ``c ≠ ŷ`` and divided by ``‖h − μ‖``:
  ``S = (1/(C−1)) Σ_{c≠ŷ} |f_ŷ − f_c| / ‖w_ŷ − w_c‖ / ‖h − μ‖`` (higher = more ID). OpenOOD
  offers ``‖h‖`` instead of ``‖h − μ‖`` (knob ``normalizer``).
- **NCI** (Liu & Qin, "Detecting Out-of-Distribution Through the Lens of Neural Collapse",
  CVPR 2025; code ``litianliu/NCI-OOD``, OpenOOD ``nci_postprocessor.py``):
  ``S = w_ŷ·(h − μ) / ‖h − μ‖ + α‖h‖₁`` (higher = more ID).
"""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, register

_TINY = 1e-12


class _TrainMean(Detector):
    needs = frozenset({"logits", "features", "head", "training"})
    family = "feature"

    def _fit(self, train: Extraction) -> None:
        self.mu = np.asarray(train.features, np.float64).mean(axis=0)
        self.W = np.asarray(train.head_weight, np.float64)
        self.train_info = {"n_train": len(train)}

    def _centred_norm(self, ext: Extraction) -> np.ndarray:
        d = np.asarray(ext.features, np.float64) - self.mu
        return np.maximum(np.sqrt(np.einsum("ij,ij->i", d, d)), _TINY)


def boundary_distances(logits: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``Σ_{c≠ŷ} |f_ŷ − f_c| / ‖w_ŷ − w_c‖`` per sample (pairs with equal weight rows count 0)."""
    f = np.asarray(logits, np.float64)
    pred = f.argmax(axis=1)
    sq = np.einsum("ij,ij->i", W, W)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * W @ W.T, 0.0))  # ‖w_p − w_c‖, C × C
    den = dist[pred]
    num = np.abs(f - f[np.arange(len(f)), pred][:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > _TINY, num / den, 0.0)
    return ratio.sum(axis=1)


@register
class FDBD(_TrainMean):
    """fDBD: mean feature-space distance to the decision boundaries of the predicted class, over ``‖h − μ‖``."""

    name = "fdbd"
    title = "fDBD (fast decision-boundary distance)"
    paper = Paper("Fast Decision Boundary based Out-of-Distribution Detector", "Liu & Qin", "ICML", 2024,
                  "https://arxiv.org/abs/2312.11536")
    help = ("How far the sample's features sit from the decision boundaries of its predicted class, relative to "
            "its distance from the ID feature mean: ID samples lie deep inside their class region; hyperparameter-"
            "free and cheap, it tends to help on near OOD that lands close to a boundary.")
    knobs = (Knob("normalizer", "train_mean", kind="choice", choices=("train_mean", "origin"),
                  help="divide by ‖h − μ‖ (the paper) or by ‖h‖ (an OpenOOD option)"),)
    grid = {"normalizer": ["train_mean", "origin"]}

    def _score(self, ext: Extraction, normalizer: str) -> np.ndarray:
        C = ext.logits.shape[1]
        if C < 2:
            raise DetectorError("fdbd needs at least 2 classes")
        if normalizer == "train_mean":
            norm = self._centred_norm(ext)
        else:
            h = np.asarray(ext.features, np.float64)
            norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", h, h)), _TINY)
        return boundary_distances(ext.logits, self.W) / ((C - 1) * norm)


@register
class NCI(_TrainMean):
    """NCI: ``S = w_ŷ·(h − μ)/‖h − μ‖ + α‖h‖₁``."""

    name = "nci"
    title = "NCI (neural-collapse inspired)"
    paper = Paper("Detecting Out-of-Distribution Through the Lens of Neural Collapse", "Liu & Qin", "CVPR", 2025,
                  "https://arxiv.org/abs/2311.01479")
    help = ("How well the centred features line up with the predicted class's weight vector (ID features collapse "
            "onto it), plus a small bonus for a large feature norm: works on near and far OOD when the model "
            "was trained long enough to show neural collapse; α is in units of the feature L1 norm.")
    knobs = (Knob("alpha", 1e-4, 0.0, 10.0, help="weight of the feature L1 norm (OpenOOD's default 1e-4; "
                                                 "its scale depends on the model's feature norms)"),)
    grid = {"alpha": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}

    def _score(self, ext: Extraction, alpha: float) -> np.ndarray:
        h = np.asarray(ext.features, np.float64)
        pred = np.asarray(ext.logits).argmax(axis=1)
        align = np.einsum("ij,ij->i", self.W[pred], h - self.mu) / self._centred_norm(ext)
        if alpha == 0:
            return align
        return align + alpha * np.abs(h).sum(axis=1)
