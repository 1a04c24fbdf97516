"""GAIA: gradient abnormality inspection (Chen et al., NeurIPS 2023): GAIA-Z and GAIA-A.

Chen, Li, Qiang, Zhao, Ying, Zhuo, "GAIA: Delving into Gradient-based Attribution
Abnormality for Out-of-distribution Detection", NeurIPS 2023 (code ``JGEthanChen/GAIA-OOD``,
``cal_method.py``, ``hook.py``, ``networks/methods.py``). Formulas: ``docs/methods.md``
("Model-time baselines"). Both scores are the negation the reference code evaluates
(``methods.py`` scores ``−cal_method(...)``), so higher = more ID.

- **GAIA-Z** (``cal_zero``): backpropagate ``Σ max_i f_i`` to the outputs ``A_l (C_l×H×W)`` of the
  watched layers; per channel, the share of spatial positions with a non-zero gradient,
  ``z_lc = mean_{hw} 1[∂/∂A_lchw ≠ 0]``; ``S = −mean_{l,c} z_lc²``.
- **GAIA-A** (``cal_grad_value``): with ``M`` the last feature map (the input of global
  pooling), ``o = sqrt(mean_c |mean_{hw} ∂(Σ_i log softmax(f)_i)/∂M_c|)``; for the watched
  layers before ``M``, ``a_lc = |mean_{hw} ∂(Σ M)/∂A_lc|``; ``S = −mean_{l,c} (a_lc / o)²``.

Watched layers: the reference hooks the BatchNorm (GroupNorm for BiT) outputs — of every
block for GAIA-Z, of the last two ResNet stages for GAIA-A. We watch every 2-D norm layer
of the model, or every ``Conv2d`` when it has none (the embedded CNN): the gradient at a
conv output feeding a ReLU has the same zero pattern as at a BN output feeding one. ``M`` is
the last module whose output is a 4-D map with more than one position (as in ``rankfeat``).
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
from .rankfeat import last_feature_map

BATCH_SIZE = 128
NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)
GAIA_PAPER = Paper("GAIA: Delving into Gradient-based Attribution Abnormality for Out-of-distribution Detection",
                   "Chen, Li, Qiang, Zhao, Ying, Zhuo", "NeurIPS", 2023, "https://arxiv.org/abs/2311.09620")


def watched_layers(bundle: Any) -> list[str]:
    """Norm layers if the model has any, else every Conv2d (names in module order)."""
    mods = list(bundle.model.named_modules())
    names = [n for n, m in mods if isinstance(m, NORMS)]
    if not names:
        names = [n for n, m in mods if isinstance(m, nn.Conv2d)]
    if not names:
        raise DetectorError("GAIA needs convolutional or normalisation layers to watch; this model has none")
    return names


def _capture(bundle: Any, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of ``x`` and the outputs of the named modules (in the graph, for autograd)."""
    outs: dict[str, torch.Tensor] = {}
    mods = {n: bundle.model.get_submodule(n) for n in names}
    name_of = {id(m): n for n, m in mods.items()}

    def keep(m: nn.Module, _i: Any, o: Any) -> None:
        outs[name_of[id(m)]] = o

    with call_hooks(list(mods.values()), keep):  # this call's forward only: the model is shared
        logits = bundle.logits(x)
    return logits, outs


def gaia_z_batch(bundle: Any, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    logits, outs = _capture(bundle, names, x)
    acts = [outs[n] for n in names if n in outs and outs[n].ndim == 4]
    if not acts:
        raise DetectorError("GAIA-Z found no 4-D activation at the watched layers")
    grads = torch.autograd.grad(logits.max(dim=1).values.sum(), acts, allow_unused=True)
    z = torch.cat([(g != 0).double().mean(dim=(-1, -2)) if g is not None else torch.zeros(a.shape[:2], dtype=torch.float64)
                   for g, a in zip(grads, acts)], dim=1)
    return -(z ** 2).mean(dim=1)


def gaia_a_batch(bundle: Any, x: torch.Tensor, names: list[str], last: str) -> torch.Tensor:
    logits, outs = _capture(bundle, names + [last], x)
    M = outs[last]
    inner_names = [n for n in names if n != last and n in outs and outs[n].ndim == 4]
    if not inner_names:
        raise DetectorError("GAIA-A found no watched layer before the last feature map")
    (gM,) = torch.autograd.grad(torch.log_softmax(logits, dim=1).sum(), M, retain_graph=True)
    o = gM.double().mean(dim=(-1, -2)).abs().mean(dim=1).sqrt().clamp_min(1e-30)[:, None]
    grads = torch.autograd.grad(M.sum(), [outs[n] for n in inner_names], allow_unused=True)
    a = torch.cat([g.double().mean(dim=(-1, -2)).abs() if g is not None
                   else torch.zeros(outs[n].shape[:2], dtype=torch.float64)
                   for g, n in zip(grads, inner_names)], dim=1)
    return -((a / o) ** 2).mean(dim=1)


class _GAIA(ModelDetector):
    needs = frozenset({"logits", "model"})
    family = "gradient"
    paper = GAIA_PAPER
    knobs = ()

    def __init__(self) -> None:
        super().__init__()
        self.last_run: dict[str, Any] = {}

    def _batch(self, bundle: Any, x: torch.Tensor, names: list[str], last: str) -> torch.Tensor:
        raise NotImplementedError

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, **knobs: Any) -> np.ndarray:
        """Scores of every image in ``ds``, batched, with progress (a raising callback cancels)."""
        self.resolve(knobs)
        names = watched_layers(bundle)
        last = last_feature_map(bundle)
        names = [n for n in names if n != last]
        was_training = bundle.model.training
        bundle.model.eval()
        n = len(ds)
        out = np.empty(n, np.float64)
        try:
            for i, x in ds.numbered_batches(bundle.preprocess, BATCH_SIZE):
                x = x.to(bundle.device)
                with torch.inference_mode(False), torch.enable_grad():
                    out[i: i + len(x)] = self._batch(bundle, x, names, last).detach().cpu().numpy()
                if progress:
                    done = min(n, i + BATCH_SIZE)
                    progress(done / n, f"{self.title} on {ds.name}: {done}/{n}")
        finally:
            bundle.model.train(was_training)
        self.last_run = {"dataset": ds.name, "watched layers": ", ".join(names), "last feature map": last}
        return out


@register
class GAIAZ(_GAIA):
    """GAIA-Z: ``S = −mean_{l,c} (share of non-zero gradients of Σ max f in channel c of layer l)²``."""

    name = "gaia_z"
    title = "GAIA-Z (zero-gradient ratios)"
    help = ("How many positions of each channel pass a gradient from the top logit back through the ReLUs: OOD "
            "inputs switch on unusual numbers of units; no knobs, one backward pass per batch; tends to help on "
            "far OOD and on models with many channels.")

    def _batch(self, bundle: Any, x: torch.Tensor, names: list[str], last: str) -> torch.Tensor:
        return gaia_z_batch(bundle, x, names)


@register
class GAIAA(_GAIA):
    """GAIA-A: ``S = −mean_{l,c} (|mean_hw ∂ΣM/∂A_lc| / o)²``, ``o`` the output-side gradient scale."""

    name = "gaia_a"
    title = "GAIA-A (channel-wise gradient attribution)"
    help = ("How strongly the last feature map's activations depend on each earlier channel, relative to how "
            "much the log-probabilities depend on the last map: OOD inputs give abnormal attribution ratios; "
            "two backward passes per batch; tends to help on far OOD.")

    def _batch(self, bundle: Any, x: torch.Tensor, names: list[str], last: str) -> torch.Tensor:
        return gaia_a_batch(bundle, x, names, last)
