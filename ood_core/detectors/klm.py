"""KL matching (Hendrycks et al., ICML 2022): distance of the posterior to class templates."""
from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from ..extract import Extraction
from ..knobs import Paper
from .base import Detector, register, softmax


def kl_to_templates(p: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """``KL(p_n ‖ d_c)`` for every sample n and template c, shape (N, K).

    ``0·log 0 = 0``; a zero template entry where ``p > 0`` would give an infinite
    divergence, so ``log d`` is floored at the smallest positive float (as pytorch-ood does).
    """
    p = np.asarray(p, np.float64)
    log_d = np.log(np.maximum(np.asarray(templates, np.float64), np.finfo(np.float64).tiny))
    return xlogy(p, p).sum(axis=1, keepdims=True) - p @ log_d.T


@register
class KLMatching(Detector):
    """KL matching: ``S = −min_c KL(p(x) ‖ d_c)``.

    ``d_c`` is the mean softmax of the training samples the model *predicts* as class
    ``c`` (labels are not used, as in the paper); classes never predicted have no template.
    """

    name = "klm"
    title = "KL matching"
    paper = Paper("Scaling Out-of-Distribution Detection for Real-World Settings", "Hendrycks et al.", "ICML", 2022,
                  "https://arxiv.org/abs/1911.11132")
    needs = frozenset({"logits", "training"})
    family = "output"

    def _fit(self, train: Extraction) -> None:
        p = softmax(train.logits, 1.0)
        pred = p.argmax(axis=1)
        classes = np.unique(pred)  # non-empty: fit() refuses an empty training split
        self.classes = classes
        self.templates = np.stack([p[pred == c].mean(axis=0) for c in classes])
        self.train_info = {"n_train": len(train), "templates": int(classes.size),
                           "classes without a template": int(p.shape[1] - classes.size)}

    def _score(self, ext: Extraction) -> np.ndarray:
        return -kl_to_templates(softmax(ext.logits, 1.0), self.templates).min(axis=1)
