"""Distance-based detectors on training features: Mahalanobis, relative Mahalanobis, KNN."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import eigh
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, register

SMALL_SEARCH = 10_000_000  # query × training pairs below which KNN searches on one thread
COVARIANCE_HELP = ("ledoit_wolf: scikit-learn's Ledoit-Wolf shrinkage (always invertible); empirical: the plain "
                   "maximum-likelihood covariance, pseudo-inverted when singular (e.g. dead ReLU units)")


def _precision_factor(cov_estimator: Any, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``L`` with ``Σ⁺ = L Lᵀ`` (so ``MD = ‖(h−μ) L‖²``) and facts about the covariance.

    ``Σ⁺`` is the pseudo-inverse with ``scipy.linalg.pinvh``'s cut-off (what scikit-learn's
    ``precision_`` uses), taken from one eigendecomposition because we need the whitening
    factor, which scikit-learn does not expose. A singular covariance therefore does not
    crash: directions without variance are ignored, and the returned note says so.
    """
    cov = np.asarray(cov_estimator.covariance_, np.float64)
    ev, V = eigh(cov)
    if ev.max() <= 0:
        raise DetectorError(f"{what}: the training features have zero variance; Mahalanobis distances are undefined")
    keep = ev > cov.shape[0] * np.finfo(np.float64).eps * np.abs(ev).max()
    L = V[:, keep] / np.sqrt(ev[keep])
    rank = int(keep.sum())
    info: dict[str, Any] = {"rank": rank, "dim": int(cov.shape[0])}
    if rank < cov.shape[0]:
        info["note"] = (f"{what} covariance is singular (rank {rank} of {cov.shape[0]}): used its pseudo-inverse; "
                        "covariance=ledoit_wolf shrinks it to an invertible estimate")
    if hasattr(cov_estimator, "shrinkage_"):
        info["shrinkage"] = float(cov_estimator.shrinkage_)
    return L, info


def _fit_cov(X: np.ndarray, kind: str) -> Any:
    # store_precision=False: _precision_factor inverts once; the estimator's own pinvh would repeat it
    est = (LedoitWolf(assume_centered=True, store_precision=False) if kind == "ledoit_wolf"
           else EmpiricalCovariance(assume_centered=True, store_precision=False))
    return est.fit(X)


def _class_labels(train: Extraction) -> tuple[np.ndarray, np.ndarray, str]:
    """Training labels where known; the model's predictions when the split has none."""
    y = train.labels
    keep = y >= 0
    if keep.any():
        return keep, y, "labels"
    return np.ones(len(train), bool), train.preds, "predicted classes (the training split has no labels)"


def squared_distances(h: np.ndarray, means: np.ndarray, L: np.ndarray) -> np.ndarray:
    """``(h−μ_c)ᵀ Σ⁻¹ (h−μ_c)`` for every sample and mean, shape (N, K), via whitening by ``L``."""
    Z = np.asarray(h, np.float64) @ L
    M = np.asarray(means, np.float64) @ L
    out = np.empty((Z.shape[0], M.shape[0]))
    for c in range(M.shape[0]):  # differences, not the expanded quadratic: no cancellation near a mean
        d = Z - M[c]
        out[:, c] = np.einsum("ij,ij->i", d, d)
    return out


class _GaussianFit(Detector):
    """Class means and one shared (within-class) covariance, both covariance estimators fitted."""

    needs = frozenset({"features", "training"})
    family = "feature"
    knobs = (Knob("covariance", "ledoit_wolf", kind="choice", choices=("ledoit_wolf", "empirical"),
                  help=COVARIANCE_HELP),)

    def _fit(self, train: Extraction) -> None:
        keep, y, source = _class_labels(train)
        h = np.asarray(train.features, np.float64)[keep]
        y = y[keep]
        if h.shape[0] < 2:
            raise DetectorError(f"{self.name} needs at least 2 training samples")
        self.classes = np.unique(y)
        self.means = np.stack([h[y == c].mean(axis=0) for c in self.classes])
        centred = h - self.means[np.searchsorted(self.classes, y)]
        self.L: dict[str, np.ndarray] = {}
        self.cov_info: dict[str, dict[str, Any]] = {}
        for kind in ("ledoit_wolf", "empirical"):
            self.L[kind], self.cov_info[kind] = _precision_factor(_fit_cov(centred, kind), f"{self.name} class")
        self.train_info = {"n_train": int(h.shape[0]), "classes": int(self.classes.size), "class source": source}
        self._fit_extra(h)

    def _fit_extra(self, h: np.ndarray) -> None:
        pass

    def derived(self, covariance: str = "ledoit_wolf", **_: Any) -> dict[str, Any]:
        if not self.fitted:
            return {}
        info = self.cov_info[covariance]
        out = {"covariance rank": f"{info['rank']} of {info['dim']}"}
        if "shrinkage" in info:
            out["Ledoit-Wolf shrinkage"] = info["shrinkage"]
        if "note" in info:
            out["note"] = info["note"]
        return out


@register
class Mahalanobis(_GaussianFit):
    """Mahalanobis (feature-only): ``S = −min_c (h−μ_c)ᵀ Σ⁻¹ (h−μ_c)``.

    Class means ``μ_c`` and one shared covariance ``Σ`` from the training features (by
    label), no input perturbation. ``Σ`` is Ledoit-Wolf-shrunk by default (scikit-learn),
    which keeps it invertible when some feature never varies (dead ReLU units).
    """

    name = "mahalanobis"
    title = "Mahalanobis distance (class-conditional, shared covariance)"
    paper = Paper("A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
                  "Lee, Lee, Lee & Shin", "NeurIPS", 2018, "https://arxiv.org/abs/1807.03888")
    grid = {"covariance": ["ledoit_wolf", "empirical"]}

    def _score(self, ext: Extraction, covariance: str) -> np.ndarray:
        return -squared_distances(ext.features, self.means, self.L[covariance]).min(axis=1)


@register
class RelativeMahalanobis(_GaussianFit):
    """Relative Mahalanobis: ``S = −min_c [MD_c(h) − MD_0(h)]``.

    ``MD_c`` as in ``mahalanobis``; ``MD_0`` uses the global mean and covariance of all
    training features (the "background" Gaussian), with the same covariance estimator.
    """

    name = "rmd"
    title = "Relative Mahalanobis distance"
    paper = Paper("A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection",
                  "Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan", "arXiv", 2021, "https://arxiv.org/abs/2106.09022")
    grid = {"covariance": ["ledoit_wolf", "empirical"]}

    def _fit_extra(self, h: np.ndarray) -> None:
        self.mean0 = h.mean(axis=0, keepdims=True)
        self.L0: dict[str, np.ndarray] = {}
        for kind in ("ledoit_wolf", "empirical"):
            self.L0[kind], info = _precision_factor(_fit_cov(h - self.mean0, kind), "rmd background")
            if "note" in info:
                self.cov_info[kind].setdefault("note", info["note"])

    def _score(self, ext: Extraction, covariance: str) -> np.ndarray:
        md = squared_distances(ext.features, self.means, self.L[covariance])
        md0 = squared_distances(ext.features, self.mean0, self.L0[covariance])[:, 0]
        return -(md - md0[:, None]).min(axis=1)


def l2_normalise(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)


@register
class KNN(Detector):
    """Deep nearest neighbours: ``S = −‖z − z_(k)‖`` with ``z = h/‖h‖``.

    ``z_(k)`` is the k-th nearest L2-normalised training feature (scikit-learn
    ``NearestNeighbors``, exact). ``k`` can be at most N_train − 1; its range is set
    when the detector is fitted.
    """

    name = "knn"
    title = "KNN (k-th nearest normalised training feature)"
    paper = Paper("Out-of-Distribution Detection with Deep Nearest Neighbors", "Sun, Ming, Zhu & Li", "ICML", 2022,
                  "https://arxiv.org/abs/2204.06507")
    needs = frozenset({"features", "training"})
    family = "feature"
    knobs = (Knob("k", 50, 1, 1_000_000, kind="int", help="the k-th nearest training neighbour (at most N_train − 1)"),)
    grid = {"k": [1, 5, 10, 20, 50, 100, 200, 500]}

    def _fit(self, train: Extraction) -> None:
        n = len(train)
        if n < 2:
            raise DetectorError(f"knn needs at least 2 training samples; the training split has {n}")
        self.n_train = n
        self.nn = NearestNeighbors(algorithm="brute").fit(l2_normalise(train.features))
        self.knobs = tuple(k.with_range(high=n - 1, default=min(int(k.default), n - 1)) if k.name == "k" else k
                           for k in self.knobs)
        self.train_info = {"n_train": n}

    def resolve(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return super().resolve(params)
        except DetectorError as exc:
            if self.fitted and "knn.k " in str(exc):
                raise DetectorError(f"{exc} (k can be at most N_train − 1 = {self.n_train - 1}: the training split "
                                    f"has {self.n_train} samples)") from None
            raise

    def _score(self, ext: Extraction, k: int) -> np.ndarray:
        z = l2_normalise(ext.features)
        # Small searches run single-threaded: OpenMP's start-up and barriers cost more than
        # they save below ~10^7 distance pairs, and far more on a shared, busy CPU.
        threads = 1 if len(z) * self.n_train <= SMALL_SEARCH else None
        with threadpool_limits(limits=threads, user_api="openmp"):
            dist, _ = self.nn.kneighbors(z, n_neighbors=int(k))
        return -dist[:, -1]
