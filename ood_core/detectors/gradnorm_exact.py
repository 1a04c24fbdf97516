"""GradNorm by autograd: per-sample gradients (torch.func) over any parameter set."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import gradients as grads
from ..data import Dataset
from ..extract import Extraction
from ..knobs import Knob
from .base import ModelDetector, DetectorError, register
from .gradnorm import GRADNORM_PAPER


def gradnorm_exact_scores(bundle: Any, data: Any, T: float = 1.0, param_set: str = "last_weight",
                          device: str | None = None, progress: Any = None) -> np.ndarray:
    """``‖∂L(x)/∂θ‖_1`` per sample, ``L = KL(u ‖ softmax(f/T))``, θ the chosen parameter set.

    ``data`` is an Dataset, uint8 images or a preprocessed ``(N,C,H,W)`` tensor.
    """
    return grads.per_sample_grad_norms(bundle, data, "kl_uniform", param_set, T, ord=1.0, device=device,
                                       progress=progress)


@register
class GradNormExact(ModelDetector):
    """GradNorm, exact: ``S = ‖∂ KL(u ‖ softmax(f/T)) / ∂θ‖_1`` by per-sample autograd.

    θ = the head's weight (``last_weight``: the reference code's choice, equal to the
    closed form ``gradnorm``), weight and bias (``last``), the last block before the head
    plus the head (``last_block``) or every parameter (``all``). Gradients are batched
    with ``torch.func`` (vmap over grad) in memory-bounded chunks; higher = more ID.
    """

    name = "gradnorm_exact"
    title = "GradNorm (exact, per-sample autograd)"
    paper = GRADNORM_PAPER
    needs = frozenset({"logits", "model"})
    family = "gradient"
    knobs = (
        Knob("T", 1.0, 0.1, 100.0, "log", help="temperature of the softmax in the KL loss"),
        Knob("param_set", "last_weight", kind="choice", choices=("last_weight", "last", "last_block", "all"),
             help="parameters whose gradient L1 norm is the score (the reference uses the last layer's weight)"),
    )
    grid = {"T": [0.5, 1, 2, 4, 8], "param_set": ["last_weight", "last", "last_block", "all"]}

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction, progress: Any = None,
                    T: float = 1.0, param_set: str = "last_weight") -> np.ndarray:
        """Scores of ``ds`` (the extraction is unused: the gradients need the model)."""
        if len(ds) == 0:
            raise DetectorError("gradnorm_exact: the dataset is empty")
        return gradnorm_exact_scores(bundle, ds, T, param_set, progress=progress)
