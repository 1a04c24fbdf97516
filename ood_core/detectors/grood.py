"""GROOD: gradients of a nearest-prototype loss, searched among ID training gradients (ElAraby et al.).

ElAraby, Sahoo, Pequignot, Novello, Paull, "GROOD: Gradient-Aware Out-of-Distribution
Detection" (arXiv 2312.14427); reference code OpenOOD ``openood/postprocessors/grood.py``
with its preset ``configs/postprocessors/grood.yaml``. Formula: ``docs/methods.md``
("More gradient methods").

* Class prototypes ``μ_c``: mean penultimate feature of the ID training samples labelled c.
* An OOD prototype ``μ_o``: the reference preset (``use_val_ood: True``) takes the mean feature
  of ``n_noise = 100`` validation-OOD samples: here the first registered set whose role is
  ``ood_val`` (``aux_val`` on the embedded default). ``proto_mean`` (the mean of the class
  prototypes, the reference's ``use_proto_mean``) needs no extra data.
* Nearest-prototype scores ``s_j = −‖h − μ_j‖`` over the C + 1 prototypes and the loss
  ``CE(s, ŷ)`` with ``ŷ = argmax f``. Its gradient with respect to ``μ_o`` is, in closed form,
  ``∇ = q_o·(h − μ_o)/‖h − μ_o‖`` with ``q = softmax(s)`` (``ŷ`` is never the OOD prototype);
  the reference takes it by autograd, and the tests in ``tests/detectors/`` checks the two agree.
* The training gradients of correctly classified ID training samples form the index; the
  score is minus the squared Euclidean distance to the k-th nearest of them (k = 1), higher
  = more ID. The reference searches a faiss IVF index (approximate, ``nprobe = 4``); we search
  exactly (scikit-learn).

The features of the validation-OOD set are extracted with the model once, at fitting time;
scoring then uses cached arrays only. The reference's other prototype sources (blurred
uniform-noise images, mixup of ID features at an inner layer) are not offered.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import DetectorError, ModelDetector, ProgressFn, register

GROOD_PAPER = Paper("GROOD: Gradient-Aware Out-of-Distribution Detection", "ElAraby, Sahoo, Pequignot, Novello & Paull",
                    "arXiv", 2023, "https://arxiv.org/abs/2312.14427")


def class_prototypes(h: np.ndarray, labels: np.ndarray, C: int) -> np.ndarray:
    """``(C, D)`` mean feature per class (zeros for a class with no sample, as the reference initialises them)."""
    P = np.zeros((C, h.shape[1]))
    for c in range(C):
        rows = labels == c
        if rows.any():
            P[c] = h[rows].mean(axis=0)
    return P


def noise_gradients(h: np.ndarray, protos: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``q_o·(h − μ_o)/‖h − μ_o‖``: the gradient of ``CE(−‖h − μ_j‖_j, ŷ)`` with respect to ``μ_o``."""
    h = np.asarray(h, np.float64)
    allp = np.vstack([protos, noise[None, :]])
    d2 = (h * h).sum(1)[:, None] - 2.0 * h @ allp.T + (allp * allp).sum(1)[None, :]
    s = -np.sqrt(np.maximum(d2, 0.0))
    s -= s.max(axis=1, keepdims=True)
    q = np.exp(s)
    q /= q.sum(axis=1, keepdims=True)
    v = h - noise[None, :]
    n = np.sqrt((v * v).sum(1, keepdims=True))
    return q[:, -1:] * v / np.maximum(n, 1e-12)


@register
class GROOD(ModelDetector):
    """GROOD: −(squared distance from the sample's OOD-prototype gradient to its k-th nearest ID training gradient)."""

    name = "grood"
    title = "GROOD (prototype gradients, nearest neighbour)"
    paper = GROOD_PAPER
    needs = frozenset({"logits", "features", "training"})
    family = "gradient"
    help = ("Where the sample would pull an 'OOD' prototype if it were classified by its nearest class prototype, "
            "compared with where ID training samples pull it: a feature-space distance method with a learned "
            "reference point; it needs a small OOD validation set and suits far OOD best.")
    knobs = (
        Knob("k", 1, 1, 1000, kind="int", help="the k-th nearest training gradient gives the distance (reference: 1)"),
        Knob("noise_proto", "val_ood", kind="choice", choices=("val_ood", "proto_mean"),
             help="OOD prototype: mean feature of validation-OOD samples (reference preset) or the mean of the "
                  "class prototypes (no extra data)"),
        Knob("n_noise", 100, 1, 100_000, kind="int", help="validation-OOD samples averaged into the prototype (reference: 100)"),
    )
    grid = {"k": [1, 10, 20, 50, 100], "noise_proto": ["val_ood", "proto_mean"]}

    def fit_model(self, bundle: Any, train_ds: Any, train_ext: Extraction,
                  progress: ProgressFn | None = None) -> "GROOD":
        from ..data import get_dataset, list_datasets
        from ..extract import extract

        reason = self.unavailable_reason(train_ext)
        if reason:
            raise DetectorError(reason)
        h = np.asarray(train_ext.features, np.float64)
        labels = np.asarray(train_ext.labels)
        pred = np.asarray(train_ext.logits).argmax(axis=1)
        if (labels < 0).all():
            raise DetectorError("grood needs labelled ID training data: its class prototypes are per-label means")
        self._h, self._ok = h, labels == pred
        self._protos = class_prototypes(h, labels, int(train_ext.logits.shape[1]))
        self._val: np.ndarray | None = None
        self._val_name = next((s.name for s in list_datasets() if s.role == "ood_val"), None)
        if self._val_name is not None:
            self._val = np.asarray(extract(bundle, get_dataset(self._val_name), progress=progress).features, np.float64)
        self._index: dict[tuple[str, int], tuple[NearestNeighbors, np.ndarray]] = {}
        self.train_info = {"n_train": len(h), "indexed": int(self._ok.sum()), "ood_val": self._val_name or "none"}
        self.fitted = True
        return self

    def noise_prototype(self, noise_proto: str, n_noise: int) -> np.ndarray:
        if noise_proto == "proto_mean":
            return self._protos.mean(axis=0)
        if self._val is None:
            raise DetectorError("grood's reference preset takes its OOD prototype from a validation-OOD set, and none "
                                "is registered: register one with role ood_val, or set grood.noise_proto=proto_mean")
        return self._val[: int(n_noise)].mean(axis=0)

    def _neighbours(self, noise_proto: str, n_noise: int) -> tuple[NearestNeighbors, np.ndarray]:
        key = (noise_proto, int(n_noise) if noise_proto == "val_ood" else 0)
        if key not in self._index:
            noise = self.noise_prototype(noise_proto, n_noise)
            g = noise_gradients(self._h[self._ok], self._protos, noise)
            self._index[key] = (NearestNeighbors().fit(g), noise)
        return self._index[key]

    def score_model(self, bundle: Any, ds: Any, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, **knobs: Any) -> np.ndarray:
        if ext is None:
            from ..extract import extract
            ext = extract(bundle, ds, progress=progress)
        return self.score_arrays(ext, **knobs)

    def score_arrays(self, ext: Extraction, k: int, noise_proto: str, n_noise: int) -> np.ndarray:
        """The score from cached arrays, once :meth:`fit_model` has run."""
        nn_, noise = self._neighbours(noise_proto, n_noise)
        if int(k) > nn_.n_samples_fit_:
            raise DetectorError(f"grood.k={k} must be at most the {nn_.n_samples_fit_} correctly classified training samples")
        g = noise_gradients(np.asarray(ext.features, np.float64), self._protos, noise)
        d, _ = nn_.kneighbors(g, n_neighbors=int(k))
        return -(d[:, -1] ** 2)
