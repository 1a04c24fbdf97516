"""GradOrth: the last layer's gradient projected on the ID feature subspace (Behpour et al., 2023).

Behpour, Doan, Li, He, Gou, Ren, "GradOrth: A Simple yet Efficient Out-of-Distribution
Detection with Orthogonal Projection of Gradients", NeurIPS 2023 (arXiv 2308.00310; no
official code). Formula and defaults: ``docs/methods.md`` ("The gradient family").

GradOrth takes GradNorm's loss ``L = KL(u ‖ softmax(f/T))`` and its last-layer weight
gradient ``G = ∂L/∂W = (p − u) hᵀ / T``, projects it on the span of the top-``k`` left
singular vectors ``U_k`` of the ID training representation matrix ``R = [h_1 … h_N]``
(features not centred, as in the paper's gradient-projection memory) and scores the L2
(Frobenius) norm of the projection. With ``G`` rank one this factorises exactly:

    S(x) = ‖G U_k U_kᵀ‖_F = ‖p − u‖₂ · ‖U_kᵀ h‖₂ / T

A small projection means the sample's gradient lies outside what ID data excites, so
higher = more ID already (no negation). ``k`` is chosen as in the paper by an energy
threshold (the smallest k with ``Σ_{i≤k} σ_i² ≥ ε·Σ σ_i²``), or given directly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, register, softmax

GRADORTH_PAPER = Paper("GradOrth: A Simple yet Efficient Out-of-Distribution Detection with Orthogonal Projection "
                       "of Gradients", "Behpour, Doan, Li, He, Gou & Ren", "NeurIPS", 2023,
                       "https://arxiv.org/abs/2308.00310")


def output_l2(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """``‖softmax(f/T) − u‖₂``."""
    p = softmax(logits, T)
    p -= 1.0 / p.shape[1]
    return np.sqrt(np.einsum("ij,ij->i", p, p))


@register
class GradOrth(Detector):
    """GradOrth: ``S = ‖p − u‖₂ · ‖U_kᵀ h‖₂ / T`` (gradient of KL(u‖p) projected on the ID feature subspace)."""

    name = "gradorth"
    title = "GradOrth (gradient projected on the ID subspace)"
    paper = GRADORTH_PAPER
    needs = frozenset({"logits", "features", "training"})
    family = "gradient"
    help = ("GradNorm's last-layer gradient, keeping only the part that lies in the main directions of the ID "
            "training features: OOD samples whose features point elsewhere lose most of their norm, which helps "
            "on far OOD (noise, textures) more than on near OOD that shares the ID feature directions.")
    knobs = (
        Knob("k_mode", "energy", kind="choice", choices=("energy", "absolute"),
             help="choose k by the share of ID feature energy kept (the paper's rule) or give k directly"),
        Knob("energy", 0.97, 0.5, 1.0, help="keep the smallest k whose singular values hold this share of "
                                            "Σσ² (k_mode=energy)"),
        Knob("k", 64, 1, 1_000_000, kind="int", help="subspace dimension (k_mode=absolute; at most D)"),
        Knob("T", 1.0, 0.1, 100.0, "log", help="temperature of the softmax in the KL loss"),
    )
    grid = {"energy": [0.8, 0.9, 0.95, 0.97, 0.99], "T": [0.5, 1, 2, 4]}

    def _fit(self, train: Extraction) -> None:
        R = np.asarray(train.features, np.float64)
        # U_k = top eigenvectors of the D×D Gram matrix (the N×D features' right singular vectors,
        # σ_i² its eigenvalues): one N·D² product instead of an SVD of the N×D matrix
        ev, V = np.linalg.eigh(R.T @ R)
        order = np.argsort(-ev, kind="stable")
        s2 = np.maximum(ev[order], 0.0)
        if not np.any(s2 > 0):
            raise DetectorError("gradorth: the training features are all zero")
        self.basis = V[:, order]  # D × D, columns by decreasing singular value
        self.energy_cum = np.cumsum(s2) / np.sum(s2)
        D = R.shape[1]
        self.knobs = tuple(k.with_range(high=D, default=min(D, max(1, D // 2))) if k.name == "k" else k
                           for k in self.knobs)
        self.train_info = {"n_train": len(train), "D": D}

    def subspace_dim(self, k_mode: str, energy: float, k: int) -> int:
        r = self.basis.shape[1]
        if k_mode == "absolute":
            return min(int(k), r)
        return int(min(r, np.searchsorted(self.energy_cum, energy - 1e-12, side="left") + 1))

    def derived(self, k_mode: str = "energy", energy: float = 0.97, k: int = 64, **_: Any) -> dict[str, Any]:
        if not self.fitted:
            return {}
        kk = self.subspace_dim(k_mode, energy, k)
        return {"k": kk, "share of ID feature energy kept": float(self.energy_cum[kk - 1])}

    def _score(self, ext: Extraction, k_mode: str, energy: float, k: int, T: float) -> np.ndarray:
        kk = self.subspace_dim(k_mode, energy, k)
        proj = np.asarray(ext.features, np.float64) @ self.basis[:, :kk]
        return output_l2(ext.logits, T) * np.sqrt(np.einsum("ij,ij->i", proj, proj)) / T
