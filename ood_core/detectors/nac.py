"""NAC: neuron activation coverage (Liu et al., ICLR 2024), on the penultimate layer.

Liu, Tian, Yang, Shen, "Neuron Activation Coverage: Rethinking Out-of-distribution
Detection and Generalization", ICLR 2024; the authors' code ``BierOne/ood_coverage``
(``openood/postprocessors/nac/coverage.py`` ``KMNC``/``Estimator``, ``utils.py``
``get_state_func``, ``instr_state.py`` ``kl_grad``; CIFAR-10 preset
``configs/postprocessors/nac/resnet/nac_cifar10.yml``). Formula: ``docs/methods.md``
("More gradient methods").

A neuron's *state* weighs its activation by the gradient of GradNorm's loss
``KL(u‖p) = −(1/C)·Σ_c log p_c`` (up to a constant) with respect to it, squashed:
``s_n(x) = sigmoid(α·h_n·g_n)`` with ``g = ∂KL/∂h = Wᵀ(p − u)`` for a linear head
``f = W h + b`` (the closed form of the reference's autograd; tested against autograd).
On a subset of the ID training set (``n_fit`` samples, balanced over classes as the
reference's ``valid_num = 1000``) each neuron's states are counted in ``M − 1`` bins between
the reference's symmetric log-spaced edges on [0, 1] (``coverage.logspace``); a bin's
coverage is ``min(count/O, 1)``. The score is the mean over neurons of the coverage of
the bin the sample's state falls in (higher = more ID, as the reference's ``ood_test``).

The reference's CIFAR preset (and ours) watches one layer, the average-pool output = the
penultimate features, so NAC runs on cached arrays. Its other presets add intermediate
ResNet stages (``layer1``–``layer3``), which need the model at scoring time: not offered here.
pytorch-ood's ``NACUE`` differs (geometric bin edges ``bucketize``d, spatial mean instead of
sum); we follow the authors' code (``docs/methods.md``, "Known differences").
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, register, softmax

NAC_PAPER = Paper("Neuron Activation Coverage: Rethinking Out-of-distribution Detection and Generalization",
                  "Liu, Tian, Yang & Shen", "ICLR", 2024, "https://openreview.net/forum?id=SNGXbZtK6Q")


def bin_edges(M: int) -> np.ndarray:
    """The reference's ``M`` bin edges: log-spaced towards 0 and 1 on [0, 1] (base 1000), the last
    nudged to 1.01, then 1.2; ``M − 1`` bins ``[e_k, e_{k+1})``. ``M`` must be even."""
    half = M // 2
    x = np.linspace(1.0, np.sqrt(1000.0), half)
    left = np.log(x) / np.log(1000.0)
    edges = np.concatenate([left[:-1], (1.0 - left)[::-1]])
    edges[-1] += 1e-2
    return np.append(edges, 1.2)


def nac_states(ext: Extraction, alpha: float) -> np.ndarray:
    """``sigmoid(α·h ⊙ Wᵀ(p − u))`` per sample and neuron, float64 ``(N, D)``."""
    h = np.asarray(ext.features, np.float64)
    p = softmax(ext.logits)
    g = (p - 1.0 / p.shape[1]) @ np.asarray(ext.head_weight, np.float64)
    return expit(alpha * h * g)


def balanced_subset(labels: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Row indices: ``n // C`` per class (capped at the smallest class), seeded; a random ``n`` without labels."""
    rng = np.random.RandomState(seed)
    if (labels < 0).all():
        return np.sort(rng.permutation(len(labels))[:n])
    classes = np.unique(labels[labels >= 0])
    per = min(max(1, n // len(classes)), min(int((labels == c).sum()) for c in classes))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]))


@register
class NAC(Detector):
    """NAC: mean coverage, over penultimate neurons, of the training-histogram bin of ``sigmoid(α·h·∂KL/∂h)``."""

    name = "nac"
    title = "NAC (neuron activation coverage)"
    paper = NAC_PAPER
    needs = frozenset({"logits", "features", "head", "training"})
    family = "gradient"
    help = ("How often ID training samples put each neuron in the same gradient-weighted activation state as this "
            "sample (averaged over neurons): an ID-coverage test rather than a confidence score, so it can catch "
            "OOD inputs that are confidently misclassified; needs a few hundred training samples per histogram.")
    knobs = (
        Knob("O", 50, 1, 1000, kind="int", help="count at which a bin counts as fully covered (reference CIFAR: 50)"),
        Knob("M", 50, kind="choice", choices=(10, 20, 50, 100, 200, 500, 1000),
             help="number of bin edges (M − 1 bins; reference CIFAR: 50)"),
        Knob("alpha", 100.0, 1e-3, 1e5, "log", help="steepness of the sigmoid on h·∂KL/∂h (reference CIFAR: 100)"),
        Knob("n_fit", 1000, 10, 1_000_000, kind="int",
             help="training samples histogrammed, balanced over classes (reference: 1,000)"),
    )
    grid = {"O": [10, 50], "M": [50, 500], "alpha": [100.0, 1000.0]}

    def _fit(self, train: Extraction) -> None:
        self._train = train
        self._counts: dict[tuple[int, float, int], np.ndarray] = {}

    def _bins(self, states: np.ndarray, edges: np.ndarray) -> np.ndarray:
        # bin k holds e_k ≤ s < e_{k+1} (the reference's two comparisons); sigmoid ∈ [0, 1] < 1.2 always lands
        return np.clip(np.searchsorted(edges, states, side="right") - 1, 0, len(edges) - 2)

    def counts(self, M: int, alpha: float, n_fit: int) -> np.ndarray:
        """``(M − 1, D)`` training counts per bin and neuron (memoised per setting)."""
        key = (int(M), float(alpha), int(n_fit))
        if key not in self._counts:
            idx = balanced_subset(np.asarray(self._train.labels), int(n_fit))
            b = self._bins(nac_states(self._train.subset(idx), alpha), bin_edges(M))
            D = b.shape[1]
            flat = (b + np.arange(D)[None, :] * (M - 1)).ravel()
            self._counts[key] = np.bincount(flat, minlength=D * (M - 1)).reshape(D, M - 1).T
            self.train_info = {"n_fit": int(len(idx)), "neurons": int(D)}
        return self._counts[key]

    def _score(self, ext: Extraction, O: int, M: Any, alpha: float, n_fit: int) -> np.ndarray:
        M = int(M)
        cov = np.minimum(self.counts(M, alpha, n_fit) / float(O), 1.0)  # (M − 1, D)
        b = self._bins(nac_states(ext, alpha), bin_edges(M))
        return cov[b, np.arange(b.shape[1])[None, :]].mean(axis=1)
