"""ViM: virtual-logit matching (Wang et al., CVPR 2022)."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import EmpiricalCovariance

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, logsumexp, register


@register
class ViM(Detector):
    """ViM: ``S = LSE(f) − α·‖(h−o)_{P⊥}‖``.

    ``o = −pinv(W) b`` is the origin where the logits vanish; ``P`` is the top-``d``
    principal subspace of the training features centred at ``o`` (eigenvectors of
    scikit-learn's ``EmpiricalCovariance(assume_centered=True)``, as OpenOOD does);
    ``α = Σ_train max_i f_i / Σ_train ‖(h−o)_{P⊥}‖`` matches the virtual logit's scale
    to the real logits'. ``d`` ranges over [1, D−1] (set at fit time); α is computed
    per ``d`` on first use and remembered.
    """

    name = "vim"
    title = "ViM (virtual-logit matching)"
    paper = Paper("ViM: Out-Of-Distribution with Virtual-logit Matching", "Wang, Li, Zhang & Zhang", "CVPR", 2022,
                  "https://arxiv.org/abs/2203.10807")
    needs = frozenset({"logits", "features", "head", "training"})
    family = "feature"
    knobs = (Knob("d", 64, 1, 1_000_000, kind="int",
                  help="dimension of the principal subspace (default D/2; at most D − 1)"),)
    grid = {"d": [8, 16, 32, 64, 96, 112]}

    def _fit(self, train: Extraction) -> None:
        D = train.features.shape[1]
        if D < 2:
            raise DetectorError(f"vim needs at least 2 feature dimensions; this model has {D}")
        W = np.asarray(train.head_weight, np.float64)
        b = np.asarray(train.head_bias, np.float64)
        self.origin = -np.linalg.pinv(W) @ b
        X = np.asarray(train.features, np.float64) - self.origin
        cov = EmpiricalCovariance(assume_centered=True).fit(X).covariance_
        ev, V = np.linalg.eigh(cov)
        order = np.argsort(-ev, kind="stable")  # descending: the first d columns span P
        self.eigvals, self.basis = ev[order], V[:, order]
        self._train_proj = X @ self.basis
        self._train_maxlogit_sum = float(np.asarray(train.logits, np.float64).max(axis=1).sum())
        self._alpha: dict[int, float] = {}
        self.knobs = tuple(k.with_range(high=D - 1, default=D // 2) if k.name == "d" else k for k in self.knobs)
        self.train_info = {"n_train": len(train), "D": D}

    def alpha(self, d: int) -> float:
        d = int(d)
        if d not in self._alpha:
            resid = np.linalg.norm(self._train_proj[:, d:], axis=1).sum()
            if resid <= 0:
                raise DetectorError(f"vim: the training features have no residual outside the top-{d} subspace; "
                                    "choose a smaller d")
            self._alpha[d] = self._train_maxlogit_sum / resid
        return self._alpha[d]

    def residual_norm(self, features: np.ndarray, d: int) -> np.ndarray:
        X = np.asarray(features, np.float64) - self.origin
        return np.linalg.norm(X @ self.basis[:, int(d):], axis=1)

    def derived(self, d: int = 64, **_: Any) -> dict[str, Any]:
        if not self.fitted:
            return {}
        return {"alpha": self.alpha(d), "variance explained by P": float(self.eigvals[:d].sum() / self.eigvals.sum())}

    def _score(self, ext: Extraction, d: int) -> np.ndarray:
        return logsumexp(ext.logits) - self.alpha(d) * self.residual_norm(ext.features, d)
