"""Detectors on low-dimensional gradients ``G_low = G̃·V``: KNN, Mahalanobis, and the workbench's own scores.

Wu, Li, Cheng, Yang, Huang, "Low-Dimensional Gradient Helps Out-of-Distribution
Detection". The **reference preset** (the default of ``lowdim_knn``, ``lowdim_maha`` and
the probe detectors in :mod:`.lowdim_probe`) follows the authors' code (repository
``snowien/Low-dimensional-Gradient-Helps-OOD-Detection``, ``github_main.py``,
``github_PCA.py``, ``github_Average_gradient.py``): ``y(x) = LSE(f(x))`` differentiated
w.r.t. all parameters, NFK-normalised, projected on the top r = 200 right singular
vectors of the normalised training gradients (see ``docs/methods.md``, section
"Low-dimensional gradients", and :mod:`ood_core.gradients`).

* ``lowdim_knn`` (reference): ``S = −‖z − z_(k)‖``, ``z = G_low/‖G_low‖``, k = 5.
* ``lowdim_maha``: class-conditional Mahalanobis on G_low (the workbench's, kept).
* ``lowdim_norm``, ``lowdim_react`` (clipped norm) and ``lowdim_ens`` (z-scored
  forward + backward ensemble) are **the workbench's own variants, not the paper's**;
  they default to the earlier reading (GradNorm's KL loss on the head, 10 raw-gradient
  directions) and take every gradient knob.

Fitting needs the model, so these detectors set ``needs_model``: ``fit_model`` keeps the
ID training split, and the subspace plus the training statistics are fitted lazily per
gradient setting the first time ``score_model`` sees it (cached on disk by
ood_core.gradients; the statistics in memory).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .. import cache
from .. import gradients as grads
from ..data import Dataset
from ..extract import Extraction
from .base import ModelDetector, DetectorError, Knob, Paper, SortedValues, energy, max_softmax, register

LOWDIM_PAPER = Paper("Low-Dimensional Gradient Helps Out-of-Distribution Detection",
                     "Wu, Li, Cheng, Yang & Huang", "arXiv preprint", 2023,
                     "https://github.com/snowien/Low-dimensional-Gradient-Helps-OOD-Detection")
LOWDIM_FIT_VERSION = 2

# Orientation of ‖G_low‖ (higher = more ID), checked on the embedded default by
# tests/detectors/test_lowdim.py::test_norm_orientation_on_default: with kl_uniform an ID sample is
# confident, p is far from uniform and the gradient is large (as in GradNorm); with
# ce_pred a confident prediction has a near-zero gradient, so the norm is negated. For
# lse the same test fixes the sign (+: LSE's gradient grows with the logits' scale).
NORM_SIGN = {"kl_uniform": 1.0, "ce_pred": -1.0, "lse": 1.0}

REFERENCE_KNOBS = grads.GRAD_KNOBS
EARLIER_KNOBS = grads.grad_knobs(**grads.EARLIER)


def _stage(progress: Any, lo: float, hi: float) -> Any:
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * f, msg)


def _unit(g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, np.float64)
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def norm_score(g_low: np.ndarray, loss: str) -> np.ndarray:
    """``±‖G_low‖_2`` oriented by ``NORM_SIGN`` (higher = more ID)."""
    return NORM_SIGN[loss] * np.linalg.norm(np.asarray(g_low, np.float64), axis=1)


def react_score(g_low: np.ndarray, c: float, loss: str) -> np.ndarray:
    """Entries of ``G_low`` clipped to ``[−c, c]``, then the oriented norm."""
    return norm_score(np.clip(np.asarray(g_low, np.float64), -c, c), loss)


def maha_fit(g_train: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means and a shared Ledoit-Wolf precision of class-centred training G_low."""
    from sklearn.covariance import LedoitWolf

    g = np.asarray(g_train, np.float64)
    classes = np.unique(labels)
    means = np.stack([g[labels == c].mean(0) for c in classes])
    centred = g - means[np.searchsorted(classes, labels)]
    # Ledoit-Wolf shrinkage keeps the precision finite when G_low is (near) rank deficient
    prec = LedoitWolf(assume_centered=True).fit(centred).precision_
    return classes, means, prec


def maha_score(g_low: np.ndarray, means: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """``−min_c (g−μ_c)ᵀ Σ⁻¹ (g−μ_c)``."""
    d = np.asarray(g_low, np.float64)[:, None, :] - means[None]
    md = np.einsum("ncd,de,nce->nc", d, prec, d)
    return -md.min(axis=1)


def knn_score(g_low: np.ndarray, nn: Any, k: int, skip_self: bool = False) -> np.ndarray:
    """``−‖z − z_(k)‖`` with ``z = g/‖g‖`` and ``nn`` fitted on normalised training G_low."""
    kk = k + 1 if skip_self else k
    dist, _ = nn.kneighbors(_unit(g_low), n_neighbors=kk)
    return -dist[:, kk - 1]


class _LowDim(ModelDetector):
    """Shared fit: the ID training split now, subspace and statistics per setting later."""

    paper = LOWDIM_PAPER
    family = "gradient"
    needs = frozenset({"logits", "model", "training"})
    knobs = REFERENCE_KNOBS
    grid = {"r": [10, 50, 100, 200], "subspace": ["pca", "avg"]}

    def __init__(self) -> None:
        super().__init__()
        self._fit_parts: dict[str, Any] | None = None
        self._train_ds: Dataset | None = None
        self._train_ext: Extraction | None = None
        self._stats: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def fit_model(self, bundle: Any, train_ds: Dataset, train_ext: Extraction, progress: Any = None) -> "_LowDim":
        """Keep the ID training split; the subspace is fitted per setting on first use."""
        if train_ds is None or len(train_ds) == 0:
            raise DetectorError(f"{self.name} needs training statistics: set an ID training split first")
        self._train_ds, self._train_ext = train_ds, train_ext
        self._fit_parts = {"model": bundle.fingerprint, "train": train_ds.fingerprint, "n": len(train_ds)}
        self._stats = {}
        self.train_info = {"n_train": len(train_ds)}
        self.fitted = True
        return self

    @property
    def fit_key(self) -> str:
        """What the scores' cache keys hold of the fit: model and training split, the gradient code's
        version (``GRAD_VERSION``: scores cached by older gradient code are not served), and the number
        of samples the subspace is fitted on (``$OOD_GRAD_MAX_FIT`` may cap it; read now, not at fit
        time, so a cap set later cannot serve scores of the other fit)."""
        if self._fit_parts is None:
            return ""
        return cache.make_key("lowdim-fit", v=LOWDIM_FIT_VERSION, grad=grads.GRAD_VERSION,
                              n_fit=min(self._fit_parts["n"], grads.max_fit()), **self._fit_parts)

    @staticmethod
    def grad_params(knobs: dict[str, Any]) -> dict[str, Any]:
        return {k: knobs[k] for k in grads.GRAD_KNOB_NAMES}

    def _require_fit(self) -> None:
        if not self.fitted or self._train_ds is None:
            raise DetectorError(f"{self.name} needs training statistics: call fit_model(bundle, train_ds, train_ext) first")

    def _train_stats(self, bundle: Any, gp: dict[str, Any], progress: Any = None) -> dict[str, Any]:
        """Training G_low and labels for one gradient setting (memoised per subspace)."""
        self._require_fit()
        key = grads.subspace_key(bundle, self._train_ds, gp)
        with self._lock:
            hit = self._stats.get(key)
        if hit is not None:
            return hit
        g = grads.lowdim_for_dataset(bundle, self._train_ds, self._train_ds, gp, progress)
        labels = self._train_ds.labels
        if (labels < 0).any() and self._train_ext is not None:
            labels = self._train_ext.preds
        st = {"g": g.astype(np.float64), "labels": labels, "r": g.shape[1]}
        with self._lock:
            self._stats[key] = st
        return st

    @staticmethod
    def _maha(st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if "maha" not in st:
            _, means, prec = maha_fit(st["g"], st["labels"])
            st["maha"] = (means, prec)
        return st["maha"]

    def _knn(self, st: dict[str, Any], k: int) -> Any:
        n = len(st["g"])
        if k >= n:
            raise DetectorError(f"{self.name}.k={k} must be smaller than the {n} training samples")
        if "nn" not in st:
            from sklearn.neighbors import NearestNeighbors
            st["nn"] = NearestNeighbors().fit(_unit(st["g"]))
        return st["nn"]

    def estimate(self, bundle: Any, probe: Dataset, n_images: int, **knobs: Any) -> dict[str, Any]:
        """The subspace fit (unless cached) and ``G_low`` of ``n_images`` images, from a dry run (no fit)."""
        self._require_fit()
        return grads.estimate_cost(bundle, self._train_ds, probe, n_images, self.grad_params(knobs))

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction, progress: Any = None, **knobs: Any) -> np.ndarray:
        """Scores (higher = more ID) of ``ds`` for one resolved knob setting."""
        self._require_fit()
        gp = self.grad_params(knobs)
        st = self._train_stats(bundle, gp, _stage(progress, 0.0, 0.5))
        g = grads.lowdim_for_dataset(bundle, ds, self._train_ds, gp, _stage(progress, 0.5, 1.0))
        return np.asarray(self._score_low(g, ext, st, **knobs), np.float64)

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], **knobs: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@register
class LowDimNorm(_LowDim):
    """The workbench's own variant, not the paper's: ``S = +‖G_low‖_2`` for ``kl_uniform``/``lse``, ``−‖G_low‖_2`` for ``ce_pred``.

    Orientation fixed on the embedded default (tests/detectors/test_lowdim.py): with GradNorm's
    loss ID samples have the larger projected gradient (AUROC > 0.5 with the + sign);
    with cross-entropy to the predicted label they have the smaller one.
    """

    name = "lowdim_norm"
    title = "Low-dim gradient norm (workbench variant)"
    knobs = EARLIER_KNOBS
    grid = {"r": [2, 5, 10, 20, 50]}

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], loss: str, **_: Any) -> np.ndarray:
        return norm_score(g, loss)


@register
class LowDimMaha(_LowDim):
    """``S = −min_c (g−μ_c)ᵀ Σ⁻¹ (g−μ_c)`` on G_low: class means of training G_low (by label), one shared
    Ledoit-Wolf covariance."""

    name = "lowdim_maha"
    title = "Low-dim gradient Mahalanobis"
    grid = {"r": [10, 50, 100, 200]}

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], **_: Any) -> np.ndarray:
        return maha_score(g, *self._maha(st))


@register
class LowDimKNN(_LowDim):
    """``S = −‖z − z_(k)‖``, ``z = G_low/‖G_low‖``, ``z_(k)`` the k-th nearest normalised training G_low.

    The reference (``github_main.py``, ``knn``) ranks by the squared distance from faiss,
    which orders samples identically; k = 5 (CIFAR), 10 for ImageNet.
    """

    name = "lowdim_knn"
    title = "Low-dim gradient KNN"
    knobs = REFERENCE_KNOBS + (Knob("k", 5, 1, 100_000, kind="int",
                                    help="which nearest training neighbour (reference: 5 on CIFAR, 10 on ImageNet)"),)
    grid = {"k": [1, 5, 10, 50, 100], "r": [10, 50, 100, 200]}

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], k: int, **_: Any) -> np.ndarray:
        return knn_score(g, self._knn(st, k), k)


@register
class LowDimReAct(_LowDim):
    """The workbench's own variant, not the paper's: entries of G_low clipped to ``[−c, c]``, ``c`` the p-th
    percentile of training ``|G_low|``, then the oriented norm (as lowdim_norm). The paper's ReAct is
    ``lowdim_probe_react`` (clipping before a linear probe)."""

    name = "lowdim_react"
    title = "Low-dim gradient, clipped norm (workbench variant)"
    knobs = EARLIER_KNOBS + (Knob("p", 90.0, 50.0, 99.9, help="clip at this percentile of training |G_low| entries"),)
    grid = {"p": [70, 80, 90, 95, 99], "r": [2, 5, 10, 20, 50]}

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], p: float, loss: str, **_: Any) -> np.ndarray:
        if "abs_sorted" not in st:
            st["abs_sorted"] = SortedValues.of(np.abs(st["g"]))
        return react_score(g, st["abs_sorted"].percentile(p), loss)


FORWARD_SCORES = {
    "energy": energy,
    "msp": max_softmax,
    "maxlogit": lambda logits: np.asarray(logits, np.float64).max(axis=1),
}


@register
class LowDimEnsemble(_LowDim):
    """The workbench's own variant, not the paper's: forward + backward ensemble ``S = (1−w)·z(F) + w·z(B)``.

    ``F`` a forward score (Energy by default), ``B`` a G_low score (norm, Mahalanobis or
    KNN with k = 50), each z-scored with the mean and std of its values on the ID training
    split (KNN's training values leave each sample itself out).
    """

    name = "lowdim_ens"
    title = "Low-dim gradient + forward ensemble (workbench variant)"
    knobs = EARLIER_KNOBS + (
        Knob("w", 0.5, 0.0, 1.0, help="weight of the gradient score (0 = forward only, 1 = gradient only)"),
        Knob("forward", "energy", kind="choice", choices=tuple(FORWARD_SCORES), help="the forward score"),
        Knob("backward", "maha", kind="choice", choices=("norm", "maha", "knn"), help="the G_low score"),
    )
    grid = {"w": [0.0, 0.25, 0.5, 0.75, 1.0]}
    ENS_K = 50

    def _backward(self, g: np.ndarray, st: dict[str, Any], backward: str, loss: str, train: bool = False) -> np.ndarray:
        if backward == "norm":
            return norm_score(g, loss)
        if backward == "maha":
            return maha_score(g, *self._maha(st))
        k = min(self.ENS_K, len(st["g"]) - 2)
        return knn_score(g, self._knn(st, k + 1), k, skip_self=train)

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], w: float, forward: str, backward: str,
                   loss: str, **_: Any) -> np.ndarray:
        zkey = ("z", forward, backward, loss)
        if zkey not in st:
            f_tr = FORWARD_SCORES[forward](self._train_ext.logits)  # type: ignore[union-attr]
            b_tr = self._backward(st["g"], st, backward, loss, train=True)
            st[zkey] = (f_tr.mean(), f_tr.std() or 1.0, b_tr.mean(), b_tr.std() or 1.0)
        fm, fs, bm, bs = st[zkey]
        zf = (FORWARD_SCORES[forward](ext.logits) - fm) / fs
        zb = (self._backward(g, st, backward, loss) - bm) / bs
        return (1.0 - w) * zf + w * zb
