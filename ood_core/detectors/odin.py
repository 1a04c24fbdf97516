"""ODIN: temperature scaling plus an input perturbation (Liang et al., ICLR 2018).

A model-time detector: it needs one backward pass to the input per sample, so the
workbench runs it as a cached job (``ood_core.workbench.score`` caches per setting).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset
from ..extract import Extraction
from ..jobs import checkpoint
from ..knobs import Knob, Paper
from .base import ModelDetector, ProgressFn, register

BATCH_SIZE = 256
SIGN_CACHE_VALUES = 20_000_000  # largest set (in input values) whose gradient signs are kept in memory
SIGN_CACHE_ENTRIES = 6


def odin_grad_sign(bundle: Any, x: torch.Tensor, T: float) -> torch.Tensor:
    """``sign(−∇_x log S_ŷ(x; T))`` of a preprocessed batch, ``ŷ`` the predicted class."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = bundle.logits(xg) / T
        y = logits.argmax(dim=1)
        # cross-entropy to ŷ is −log S_ŷ; per-sample terms are independent, so one summed
        # backward gives every sample's own input gradient.
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    return grad.sign()


def odin_step(bundle: Any, x: torch.Tensor, sign: torch.Tensor | None, eps: float, clamp: bool = False) -> torch.Tensor:
    """``x − (ε/std_c)·sign``, optionally clipped to the valid range (see :func:`odin_perturb`)."""
    x = x.detach()
    if eps > 0 and sign is not None:
        std = torch.tensor(bundle.preprocess.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x - eps * sign.to(x.dtype) / std
    if clamp:
        lo, hi = (t.to(x.device, x.dtype) for t in bundle.preprocess.valid_range())
        x = torch.maximum(torch.minimum(x, hi), lo)
    return x


def odin_perturb(bundle: Any, x: torch.Tensor, T: float, eps: float, clamp: bool = False) -> torch.Tensor:
    """``x̃ = x − (ε/std_c)·sign(−∇_x log S_ŷ(x; T))`` on a preprocessed batch.

    ``ε`` is in pixel units ([0, 1] images): the model sees inputs normalised per channel
    by ``preprocess.std``, so the step on the normalised input is ``ε/std_c`` (the
    reference code divides by the std the same way). ``ŷ`` is the predicted class. With
    ``clamp`` the result is clipped to the normalised image of [0, 1] pixels
    (``preprocess.valid_range()``); without it, perturbed inputs may leave that range, as
    in the reference code.
    """
    return odin_step(bundle, x, odin_grad_sign(bundle, x, T) if eps > 0 else None, eps, clamp)


def fraction_out_of_range(bundle: Any, x: torch.Tensor, tol: float = 1e-6) -> float:
    """Share of input values outside the normalised image of [0, 1] pixels."""
    lo, hi = (t.to(x.device, x.dtype) for t in bundle.preprocess.valid_range())
    return float(((x < lo - tol) | (x > hi + tol)).float().mean())


def perturbed_msp(bundle: Any, xt: torch.Tensor, T: float) -> tuple[np.ndarray, float]:
    """``max softmax(f(x̃)/T)`` of perturbed inputs, and how many of their values left the valid range
    (ODIN and I-ODIN score the same way once the input is perturbed)."""
    with torch.no_grad():
        p = torch.softmax(bundle.logits(xt).double() / T, dim=1)
    return p.max(dim=1).values.cpu().numpy(), fraction_out_of_range(bundle, xt) * len(xt)


@register
class ODIN(ModelDetector):
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
    knobs = (
        Knob("T", 1000.0, 1.0, 10000.0, "log", help="softmax temperature"),
        Knob("eps", 0.0014, 0.0, 0.02, help="perturbation size in pixel units (images in [0, 1])"),
        Knob("clamp", False, kind="bool", help="clip perturbed inputs to the valid pixel range"),
    )
    grid = {"T": [1, 10, 100, 1000], "eps": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01]}

    def __init__(self) -> None:
        super().__init__()
        self.last_run: dict[str, Any] = {}
        self._sign_cache: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._sign_lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "ODIN":  # clone(): a fresh lock and cache, same knobs
        new = ODIN()
        new.knobs, new.fitted = self.knobs, self.fitted
        return new

    def _sign_key(self, bundle: Any, ds: Dataset, T: float) -> tuple | None:
        """The sign does not depend on ε, so a sweep over ε at one T needs one backward pass,
        not one per ε. Signs (int8) are kept for sets up to SIGN_CACHE_VALUES input values,
        for the last SIGN_CACHE_ENTRIES (model, dataset, T) combinations, stored only once
        complete (so a cancelled or concurrent run never leaves a partial entry)."""
        pp = bundle.preprocess  # the signs are model inputs: one int8 per input value
        if len(ds) * pp.channels * pp.input_size[0] * pp.input_size[1] > SIGN_CACHE_VALUES:
            return None
        return (bundle.fingerprint, ds.fingerprint, float(T))

    def _cached_signs(self, key: tuple | None) -> list[torch.Tensor] | None:
        if key is None:
            return None
        with self._sign_lock:
            hit = self._sign_cache.get(key)
            if hit is not None:
                self._sign_cache.move_to_end(key)
            return hit

    def _store_signs(self, key: tuple | None, signs: list[torch.Tensor]) -> None:
        if key is None:
            return
        with self._sign_lock:
            self._sign_cache[key] = signs
            while len(self._sign_cache) > SIGN_CACHE_ENTRIES:
                self._sign_cache.popitem(last=False)

    def fit_model(self, bundle: Any, train_ds: Dataset, train_ext: Extraction,
                  progress: ProgressFn | None = None) -> "ODIN":
        """ODIN needs no training statistics."""
        self.fitted = True
        return self

    def score_model(self, bundle: Any, ds: Dataset, ext: Extraction | None = None,
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
            key = self._sign_key(bundle, ds, T) if eps > 0 else None
            cached = self._cached_signs(key)
            fresh: list[torch.Tensor] = []
            for bi, (i, x) in enumerate(ds.numbered_batches(bundle.preprocess, BATCH_SIZE)):
                checkpoint()  # a cancelled job, a gone session or Ctrl-C stops between batches
                x = x.to(device)
                sign = None
                if eps > 0:
                    if cached is not None:
                        sign = cached[bi].to(device)
                    else:
                        sign = odin_grad_sign(bundle, x, T)
                        if key is not None:
                            fresh.append(sign.to("cpu", torch.int8))
                out[i: i + len(x)], n_out = perturbed_msp(bundle, odin_step(bundle, x, sign, eps, clamp), T)
                outside += n_out
                if progress:
                    done = min(n, i + BATCH_SIZE)
                    progress(done / n, f"ODIN on {ds.name}: {done}/{n}")
        finally:
            bundle.model.train(model_was_training)
        if cached is None and key is not None:
            self._store_signs(key, fresh)
        self.last_run = {"dataset": ds.name, "share of input values outside the valid range": outside / max(1, n)}
        return out
