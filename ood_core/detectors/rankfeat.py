"""RankFeat: energy after removing the rank-1 part of the last feature map (Song et al., NeurIPS 2022).

Song, Sebe, Wang, "RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection",
NeurIPS 2022 (code ``KingJamesSong/RankFeat``; pytorch-ood ``detector/rankfeat.py``;
OpenOOD ``rankfeat_postprocessor.py``). Formula: ``docs/methods.md`` ("Model-time baselines").

Each sample's last convolutional feature map, read as a matrix ``X ∈ R^{C×HW}``, loses its
dominant singular component, ``X' = X − σ₁ u₁ v₁ᵀ`` (exact SVD, not the paper's power-
iteration speed-up), the rest of the network runs on ``X'``, and the score is the energy
``LSE(f')`` (higher = more ID). The paper removes it after block 4 of a ResNet (block 3 +
4 fused as an option); the workbench takes the **last module that outputs a 4-D map with
more than one spatial position** in forward order (the model's last feature map before
global pooling), and reports its name in ``last_run``. Models without such a map (MLPs,
compiled programs whose modules cannot be hooked) are refused with that reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..concurrency import call_hooks
from ..data import Dataset
from ..extract import Extraction
from ..knobs import Paper
from .base import DetectorError, ModelDetector, ProgressFn, register

BATCH_SIZE = 256


def remove_rank1(x: torch.Tensor) -> torch.Tensor:
    """``X − σ₁u₁v₁ᵀ`` per sample of a ``(B, C, H, W)`` map (computed in float64)."""
    B, C, H, W = x.shape
    m = x.reshape(B, C, H * W).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r1 = s[:, :1, None] * (u[:, :, :1] @ vh[:, :1, :])
    return (m - r1).reshape(B, C, H, W).to(x.dtype)


def last_feature_map(bundle: Any) -> str:
    """Name of the last module (in forward order) whose output is a 4-D map with H·W > 1."""
    found: list[str] = []
    skip = {bundle.head_name} if bundle.head_name else set()
    names = {id(mod): name for name, mod in bundle.model.named_modules() if name and name not in skip}

    def fn(m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1:
            found.append(names[id(m)])

    try:
        mods = [mod for name, mod in bundle.model.named_modules() if name and name not in skip]
        # call-scoped: another session's forward on the shared model must not add its modules' names
        with call_hooks(mods, fn), torch.no_grad():
            bundle.logits(bundle.dummy_input(1).to(bundle.device))
    except Exception as exc:  # noqa: BLE001 - scripted / exported modules may not take hooks
        raise DetectorError(f"rankfeat cannot hook this model's modules ({type(exc).__name__})") from None
    if not found:
        raise DetectorError("rankfeat needs a convolutional feature map (a 4-D activation with more than one "
                            "spatial position); this model has none")
    return found[-1]


@register
class RankFeat(ModelDetector):
    """RankFeat: ``S = LSE(f(x) with X − σ₁u₁v₁ᵀ in place of the last feature map X)``."""

    name = "rankfeat"
    title = "RankFeat (rank-1 feature removal)"
    paper = Paper("RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection", "Song, Sebe & Wang",
                  "NeurIPS", 2022, "https://arxiv.org/abs/2209.08590")
    needs = frozenset({"logits", "model"})
    family = "feature"
    help = ("Energy after removing the strongest singular direction of the last feature map, which OOD inputs "
            "tend to concentrate on: helps most on large models and far OOD; on small models the rank-1 part also "
            "carries class evidence, so check it against plain energy.")
    knobs = ()

    def __init__(self) -> None:
        super().__init__()
        self.last_run: dict[str, Any] = {}

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, **knobs: Any) -> np.ndarray:
        """Scores of every image in ``ds``, batched, with progress (a raising callback cancels)."""
        self.resolve(knobs)
        layer = last_feature_map(bundle)
        mod = bundle.model.get_submodule(layer)
        was_training = bundle.model.training
        bundle.model.eval()
        n = len(ds)
        out = np.empty(n, np.float64)
        try:
            with call_hooks([mod], lambda _m, _i, o: remove_rank1(o)):  # this call's forwards only
                for i, x in ds.numbered_batches(bundle.preprocess, BATCH_SIZE):
                    x = x.to(bundle.device)
                    with torch.no_grad():
                        out[i: i + len(x)] = torch.logsumexp(bundle.logits(x).double(), dim=1).cpu().numpy()
                    if progress:
                        done = min(n, i + BATCH_SIZE)
                        progress(done / n, f"RankFeat on {ds.name}: {done}/{n}")
        finally:
            bundle.model.train(was_training)
        self.last_run = {"dataset": ds.name, "feature map": layer}
        return out
