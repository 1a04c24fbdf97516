"""ODIN: temperature scaling plus an input perturbation (Liang et al., ICLR 2018).

A model-time detector: it needs one backward pass to the input per sample, so the
workbench runs it as a cached job (``ood_core.workbench.score`` caches per setting).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageDataset
from ..extract import Extraction
from .base import Detector, Knob, Paper, ProgressFn, register

BATCH_SIZE = 256


def odin_perturb(bundle: Any, x: torch.Tensor, T: float, eps: float, clamp: bool = False) -> torch.Tensor:
    """``x̃ = x − (ε/std_c)·sign(−∇_x log S_ŷ(x; T))`` on a preprocessed batch.

    ``ε`` is in pixel units ([0, 1] images): the model sees inputs normalised per channel
    by ``preprocess.std``, so the step on the normalised input is ``ε/std_c`` (the
    reference code divides by the std the same way). ``ŷ`` is the predicted class. With
    ``clamp`` the result is clipped to the normalised image of [0, 1] pixels
    (``preprocess.valid_range()``); without it, perturbed inputs may leave that range, as
    in the reference code.
    """
    x = x.detach()
    if eps > 0:
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            logits = bundle.logits(xg) / T
            y = logits.argmax(dim=1)
            # cross-entropy to ŷ is −log S_ŷ; per-sample terms are independent, so one
            # summed backward gives every sample's own input gradient.
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
        std = torch.tensor(bundle.preprocess.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x - eps * grad.sign() / std
    if clamp:
        lo, hi = (t.to(x.device, x.dtype) for t in bundle.preprocess.valid_range())
        x = torch.maximum(torch.minimum(x, hi), lo)
    return x


def fraction_out_of_range(bundle: Any, x: torch.Tensor, tol: float = 1e-6) -> float:
    """Share of input values outside the normalised image of [0, 1] pixels."""
    lo, hi = (t.to(x.device, x.dtype) for t in bundle.preprocess.valid_range())
    return float(((x < lo - tol) | (x > hi + tol)).float().mean())


@register
class ODIN(Detector):
    """ODIN: ``S = max_i softmax(f(x̃)/T)_i`` with ``x̃ = x − ε·sign(−∇_x log S_ŷ(x; T))``.

    ``ε`` is in pixel units and divided per channel by the preprocessing std. Inputs that
    the step pushes outside the valid pixel range are kept unless ``clamp`` is on; the
    share of such values in the last run is in ``last_run`` (shown on the pages). ``ε``
    above 0.02 (5 grey levels, 14× the paper's default) is refused by the knob's range.
    """

    name = "odin"
    title = "ODIN (temperature + input perturbation)"
    paper = Paper("Enhancing The Reliability of Out-of-distribution Image Detection in Neural Networks",
                  "Liang, Li & Srikant", "ICLR", 2018, "https://arxiv.org/abs/1706.02690")
    needs = frozenset({"logits", "model"})
    family = "input-gradient"
    needs_model = True
    knobs = (
        Knob("T", 1000.0, 1.0, 10000.0, "log", help="softmax temperature"),
        Knob("eps", 0.0014, 0.0, 0.02, help="perturbation size in pixel units (images in [0, 1])"),
        Knob("clamp", False, kind="bool", help="clip perturbed inputs to the valid pixel range"),
    )
    grid = {"T": [1, 10, 100, 1000], "eps": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01]}

    def __init__(self) -> None:
        super().__init__()
        self.last_run: dict[str, Any] = {}

    def fit_model(self, bundle: Any, train_ds: ImageDataset, train_ext: Extraction,
                  progress: ProgressFn | None = None) -> "ODIN":
        """ODIN needs no training statistics."""
        self.fitted = True
        return self

    def score_model(self, bundle: Any, ds: ImageDataset, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, T: float = 1000.0, eps: float = 0.0014,
                    clamp: bool = False) -> np.ndarray:
        """Scores of every image in ``ds``, batched, with progress."""
        kn = self.resolve({"T": T, "eps": eps, "clamp": clamp})
        T, eps, clamp = kn["T"], kn["eps"], kn["clamp"]
        model_was_training = bundle.model.training
        bundle.model.eval()
        device = bundle.device
        n = len(ds)
        out = np.empty(n, np.float64)
        outside = 0.0
        try:
            for i in range(0, n, BATCH_SIZE):
                x = bundle.preprocess(ds.images[i: i + BATCH_SIZE]).to(device)
                xt = odin_perturb(bundle, x, T, eps, clamp)
                outside += fraction_out_of_range(bundle, xt) * len(x)
                with torch.no_grad():
                    p = torch.softmax(bundle.logits(xt).double() / T, dim=1)
                out[i: i + len(x)] = p.max(dim=1).values.cpu().numpy()
                if progress:
                    done = min(n, i + BATCH_SIZE)
                    progress(done / n, f"ODIN on {ds.name}: {done}/{n}")
        finally:
            bundle.model.train(model_was_training)
        self.last_run = {"dataset": ds.name, "share of input values outside the valid range": outside / max(1, n)}
        return out
