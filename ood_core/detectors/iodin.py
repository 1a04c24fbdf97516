"""I-ODIN: ODIN that perturbs only the input's most sensitive value (OpenOOD).

The ODIN step of ``docs/methods.md`` ("Input-gradient detectors") restricted to one input
value per image: with ``g = ∇_x CE(f(x)/T, ŷ)`` (= ``−∇_x log S_ŷ(x; T)``), ``m`` the one-hot
mask of ``argmax |g|`` over all channels and pixels, and ``σ_c`` the preprocessing std,

    x̃ = x − (ε/σ_c)·sign(g)⊙m,   S = max_i softmax(f(x̃)/T)_i   (higher = more ID).

Reference: OpenOOD ``openood/postprocessors/iodin_postprocessor.py`` and
``configs/postprocessors/iodin.yml`` (T = 1000, ε = 0.0014; sweep T ∈ {1, 10, 100, 1000},
ε ∈ {0.0014, 0.0028}); the paper is ODIN's (Liang et al., ICLR 2018). OpenOOD takes
``sign(0) = +1``; the chosen value has the largest |g|, so its sign is 0 only when the whole
gradient is 0, where we (like ``torch.sign``) leave the input unchanged.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset
from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import ModelDetector, ProgressFn, register
from .odin import perturbed_msp

BATCH_SIZE = 256


def iodin_perturb(bundle: Any, x: torch.Tensor, T: float, eps: float) -> torch.Tensor:
    """``x − (ε/σ_c)·sign(g)⊙m``: one value per image moved, the one with the largest |g|."""
    x = x.detach()
    if eps <= 0:
        return x
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = bundle.logits(xg) / T
        (g,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum"), xg)
    flat = g.reshape(len(g), -1)
    idx = flat.abs().argmax(dim=1, keepdim=True)
    step = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign()).view_as(g)
    std = torch.tensor(bundle.preprocess.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x - eps * step / std


@register
class IODIN(ModelDetector):
    """I-ODIN: ODIN's temperature and signed step, applied to the single most sensitive input value."""

    name = "i_odin"
    title = "I-ODIN (ODIN on the most sensitive input value)"
    paper = Paper("Enhancing The Reliability of Out-of-distribution Image Detection in Neural Networks "
                  "(I-ODIN: OpenOOD's one-pixel variant)", "Liang, Li & Srikant; OpenOOD", "ICLR", 2018,
                  "https://github.com/Jingkang50/OpenOOD/blob/main/openood/postprocessors/iodin_postprocessor.py")
    needs = frozenset({"logits", "model"})
    family = "input-gradient"
    help = ("ODIN's temperature-scaled confidence after nudging only the one input value the prediction is most "
            "sensitive to: almost the cost of ODIN's gradient, with an input that stays visually unchanged; mostly "
            "the temperature does the work, so it behaves like MSP at a high temperature with a small ID boost.")
    knobs = (
        Knob("T", 1000.0, 1.0, 10000.0, "log", help="softmax temperature"),
        Knob("eps", 0.0014, 0.0, 1.0, help="step on the chosen value, in pixel units (images in [0, 1])"),
    )
    grid = {"T": [1, 10, 100, 1000], "eps": [0.0, 0.0014, 0.0028, 0.01, 0.05]}

    def __init__(self) -> None:
        super().__init__()
        self.last_run: dict[str, Any] = {}

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, T: float = 1000.0, eps: float = 0.0014) -> np.ndarray:
        """Scores of every image in ``ds``, batched, with progress (a raising callback cancels)."""
        kn = self.resolve({"T": T, "eps": eps})
        T, eps = kn["T"], kn["eps"]
        was_training = bundle.model.training
        bundle.model.eval()
        n = len(ds)
        out = np.empty(n, np.float64)
        outside = 0.0
        try:
            for i, x in ds.numbered_batches(bundle.preprocess, BATCH_SIZE):
                x = x.to(bundle.device)
                out[i: i + len(x)], n_out = perturbed_msp(bundle, iodin_perturb(bundle, x, T, eps), T)
                outside += n_out
                if progress:
                    done = min(n, i + BATCH_SIZE)
                    progress(done / n, f"I-ODIN on {ds.name}: {done}/{n}")
        finally:
            bundle.model.train(was_training)
        self.last_run = {"dataset": ds.name, "share of input values outside the valid range": outside / max(1, n)}
        return out
