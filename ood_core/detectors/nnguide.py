"""NNGuide: energy guided by nearest training neighbours (Park et al., ICCV 2023).

Park, Jung, Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV
2023 (code ``roomo7time/nnguide``; OpenOOD ``nnguide_postprocessor.py``). Formula:
``docs/methods.md`` ("Post-2023 baselines").

The bank holds every ID training feature normalised and scaled by its energy,
``b_z = LSE(f(z))·h(z)/‖h(z)‖``. For a sample ``x`` with ``ĥ = h/‖h‖``:

    S(x) = LSE(f(x)) · (1/k) Σ_{top-k z} ⟨ĥ(x), b_z⟩

(higher = more ID). The paper builds the bank from a random share of the training set
(1% on ImageNet); the workbench's training splits are small, so the bank is all of it.
"""
from __future__ import annotations

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, logsumexp, register

BLOCK = 1024


def _unit(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    n = np.sqrt(np.einsum("ij,ij->i", h, h))
    return h / np.maximum(n, 1e-12)[:, None]


@register
class NNGuide(Detector):
    """NNGuide: ``S = LSE(f) · mean of the k largest ⟨ĥ(x), LSE(f(z))·ĥ(z)⟩`` over training samples ``z``."""

    name = "nnguide"
    title = "NNGuide (nearest-neighbour guided energy)"
    paper = Paper("Nearest Neighbor Guidance for Out-of-Distribution Detection", "Park, Jung & Teoh", "ICCV", 2023,
                  "https://arxiv.org/abs/2309.14888")
    needs = frozenset({"logits", "features", "training"})
    family = "feature"
    help = ("The energy score, multiplied by how close the sample's feature direction is to its nearest confident "
            "training samples: keeps energy's strength on far OOD and removes overconfident OOD that sits away "
            "from the ID data, which tends to help on near OOD.")
    knobs = (Knob("k", 10, 1, 1_000_000, kind="int", help="number of nearest bank entries averaged "
                                                          "(at most N_train)"),)
    grid = {"k": [1, 5, 10, 50, 100]}

    def _fit(self, train: Extraction) -> None:
        # D × N in float32: the similarity matmul and the top-k partition are this detector's whole cost,
        # and float32 halves both (the k largest similarities agree with float64 to ~1e-7 relative)
        self.bank = np.ascontiguousarray((_unit(train.features) * logsumexp(train.logits)[:, None]).T, np.float32)
        n = len(train)
        self.knobs = tuple(k.with_range(high=n, default=min(10, n)) if k.name == "k" else k for k in self.knobs)
        self.train_info = {"n_train": n, "bank size": n}

    def guidance(self, features: np.ndarray, k: int) -> np.ndarray:
        z = _unit(features).astype(np.float32)
        n = self.bank.shape[1]
        if k > n:
            raise DetectorError(f"nnguide.k must be at most the bank size {n}; got {k}")
        out = np.empty(len(z))
        for i in range(0, len(z), BLOCK):
            sim = z[i: i + BLOCK] @ self.bank
            top = np.partition(sim, n - k, axis=1)[:, n - k:]
            out[i: i + BLOCK] = top.mean(axis=1, dtype=np.float64)
        return out

    def _score(self, ext: Extraction, k: int) -> np.ndarray:
        return logsumexp(ext.logits) * self.guidance(ext.features, int(k))
