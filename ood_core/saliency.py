"""Which pixels drive a prediction or an OOD score: captum attributions in pixel space.

The attributed function is a small ``torch.nn.Module`` that takes pixels in ``[0, 1]``
(``(N, C, H, W)`` at the image's own size), applies the model's preprocessing
differentiably (channels, resize, normalisation, mirroring ``Preprocess.__call__``) and
returns either the logits (target ``logit``: captum picks the predicted class) or one
OOD score per sample, all oriented higher = more in-distribution:

* ``energy``   ``S = T·LSE(f/T)``;
* ``gradnorm`` ``S = (1/T)·Σ_i |p_i − 1/C| · Σ_j |h_j|`` with ``p = softmax(f/T)`` (GradNorm's
  closed form on the last layer's weight, computed from ``bundle.body``/``bundle.head`` so
  it stays differentiable in the input);
* ``rg``       ``S = T·LSE(f/T) · Σ_j min(h_j, k)``.

A positive attribution marks a pixel whose increase makes the sample look *more* ID.
Attributions are summed over colour channels and returned as ``(N, H, W)`` float32.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .knobs import Knob, KnobError, KnobSet
from .models import ModelBundle, Preprocess
from .workbench import WorkbenchError

TARGETS = ("logit", "energy", "gradnorm", "rg")
TARGET_LABELS = {"logit": "predicted-class logit", "energy": "Energy T·LSE(f/T)",
                 "gradnorm": "GradNorm (closed form)", "rg": "RG: energy × Σmin(h,k)"}
METHODS = ("saliency", "ig", "smoothgrad", "input_x_gradient")
METHOD_LABELS = {"saliency": "Saliency", "ig": "Integrated Gradients", "smoothgrad": "SmoothGrad",
                 "input_x_gradient": "Input × Gradient"}
# Methods whose maps are signed (the others are |gradient| by default).
SIGNED = {"ig", "input_x_gradient"}
# The attribution settings, declared as data: the Saliency page builds its widgets from these
# (docs/architecture.md, "Knobs").
KNOBS = KnobSet("saliency", (
    Knob("T", 1.0, 0.1, 1000.0, "log", label="Temperature T (scores)",
         help="temperature of the scores whose gradients are attributed (GradNorm, Energy, RG)"),
    Knob("k", 1.0, 0.0, 1e6, label="RG clip k (feature units)",
         help="default on the page: the 90th percentile of ID training feature values"),
    Knob("abs", True, kind="bool", label="|gradient| for Saliency and SmoothGrad"),
    Knob("n_steps", 32, 2, 256, kind="int", step=2, label="Integrated Gradients steps", help="baseline: a black image"),
    Knob("nt_samples", 16, 1, 128, kind="int", label="SmoothGrad samples"),
    Knob("stdev", 0.15, 0.0, 1.0, step=0.01, label="SmoothGrad noise (pixel units)",
         help="standard deviation of the Gaussian noise, in pixel units (0–1)"),
))


class SaliencyError(WorkbenchError):
    """An attribution cannot be computed as asked; the message says what to change (shown as one line)."""


# --- the attributed functions -------------------------------------------------------------------

class PixelsToInput(nn.Module):
    """``[0, 1]`` pixels ``(N, C_in, H, W)`` -> the model's normalised input, differentiably.

    :meth:`ood_core.models.Preprocess.pixels` and :meth:`~ood_core.models.Preprocess.finish` on
    float pixels: the same ops in the same order, except that the resize runs on floats (Preprocess
    gets uint8 and rounds to whole grey levels) so the gradient reaches the pixels; a test checks the
    two agree.
    """

    def __init__(self, pre: Preprocess):
        super().__init__()
        self.pre = pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre.finish(self.pre.pixels(x))


class _OnPixels(nn.Module):
    """Shared part: pixels -> (logits, features) through ``bundle.body`` and ``bundle.head``."""

    def __init__(self, bundle: ModelBundle):
        super().__init__()
        self.to_input = PixelsToInput(bundle.preprocess)
        self.bundle = bundle  # not a submodule: the bundle owns the weights

    def logits_features(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.bundle.forward(self.to_input(x01))


class LogitModel(_OnPixels):
    """All logits ``f(x)``; captum selects the target class."""

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.bundle.logits(self.to_input(x01))


class EnergyScore(_OnPixels):
    """``T·LSE(f/T)`` per sample (Liu et al., NeurIPS 2020)."""

    def __init__(self, bundle: ModelBundle, T: float = 1.0):
        super().__init__(bundle)
        self.T = float(T)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        f = self.bundle.logits(self.to_input(x01))
        return self.T * torch.logsumexp(f / self.T, dim=1)


class GradNormScore(_OnPixels):
    """GradNorm's closed form ``(1/T)·Σ_i |p_i − 1/C| · ‖h‖₁`` (Huang et al., NeurIPS 2021)."""

    def __init__(self, bundle: ModelBundle, T: float = 1.0):
        super().__init__(bundle)
        self.T = float(T)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        f, h = self.logits_features(x01)
        p = torch.softmax(f / self.T, dim=1)
        u = (p - 1.0 / f.shape[1]).abs().sum(1)
        return u * h.abs().sum(1) / self.T


class RGScore(_OnPixels):
    """RG, multiplicative: ``T·LSE(f/T) · Σ_j min(h_j, k)``."""

    def __init__(self, bundle: ModelBundle, T: float = 1.0, k: float = 1.0):
        super().__init__(bundle)
        self.T, self.k = float(T), float(k)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        f, h = self.logits_features(x01)
        return self.T * torch.logsumexp(f / self.T, dim=1) * torch.clamp(h, max=self.k).sum(1)


def score_module(bundle: ModelBundle, target: str, T: float = 1.0, k: float = 1.0) -> nn.Module:
    """The module captum attributes for ``target`` (see the module docstring)."""
    if target not in TARGETS:
        raise SaliencyError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    if T <= 0:
        raise SaliencyError(f"temperature T must be positive; got {T:g}")
    if target in ("gradnorm", "rg") and not bundle.has_features:
        raise SaliencyError(f"{target} needs the model's features: {bundle.feature_reason or 'no final linear layer'}")
    if target == "logit":
        return LogitModel(bundle)
    if target == "energy":
        return EnergyScore(bundle, T)
    if target == "gradnorm":
        return GradNormScore(bundle, T)
    return RGScore(bundle, T, k)


# --- attribution ------------------------------------------------------------------------------

def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W[, C])`` -> float ``(N, C, H, W)`` in ``[0, 1]`` (a single image is promoted)."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise SaliencyError(f"images must be uint8 pixels (0–255); got {a.dtype}")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] > 3):
        a = a[None]  # one image
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or a.shape[0] == 0:
        raise SaliencyError(f"images must be (N, H, W) or (N, H, W, C) with C in (1, 3); got shape {np.shape(images)}")
    return torch.as_tensor(a).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def stack_images(images: list[np.ndarray], input_size: tuple[int, int]) -> np.ndarray:
    """uint8 images of possibly different sizes and channels as one ``(N, H, W, C)`` batch.

    Images that already agree are stacked as they are (attributions at their own pixels);
    otherwise each goes to the model's input size (what the model sees anyway) and to three
    channels when any is colour: a streamed photo beside an ID digit, say."""
    from PIL import Image

    imgs = [np.asarray(a)[..., None] if np.asarray(a).ndim == 2 else np.asarray(a) for a in images]
    if len({a.shape for a in imgs}) == 1:
        return np.stack(imgs)
    c = 3 if any(a.shape[-1] == 3 for a in imgs) else 1
    h, w = int(input_size[0]), int(input_size[1])
    out = []
    for a in imgs:
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
        out.append(np.asarray(im).reshape(h, w, c))
    return np.stack(out)


def resolve_knobs(**knobs: Any) -> dict[str, Any]:
    """Defaults overlaid with ``knobs`` (``None`` = default), validated against :data:`KNOBS`."""
    try:
        return KNOBS.resolve({k: v for k, v in knobs.items() if v is not None})
    except KnobError as exc:
        raise SaliencyError(str(exc)) from None


_thread_lock = threading.Lock()


@contextlib.contextmanager
def few_threads(n_images: int) -> Iterator[None]:
    """One intra-op thread for a handful of small images, restored afterwards.

    A few 28×28 images are too little work to split: with two threads on a busy 2-core
    machine the OpenMP barriers made 16 attributions of one sample take 3–7 s instead of
    0.3 s. Larger batches keep torch's setting.
    """
    if n_images > 8 or not _thread_lock.acquire(blocking=False):
        yield
        return
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(before)
        _thread_lock.release()


def predicted_classes(bundle: ModelBundle, x01: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return LogitModel(bundle)(x01.to(bundle.device)).argmax(1).cpu().numpy()


def attribute(bundle: ModelBundle, images_uint8: np.ndarray, target: str = "energy", method: str = "saliency",
              cls: int | np.ndarray | None = None, **knobs: Any) -> np.ndarray:
    """Attributions ``(N, H, W)`` of ``target`` for uint8 ``images`` with one captum method.

    ``target``: ``logit`` (of ``cls``, default the predicted class), ``energy``,
    ``gradnorm`` or ``rg``. ``method``: ``saliency`` (|∂S/∂x| unless ``abs=False``),
    ``ig`` (Integrated Gradients from a black image, ``n_steps``), ``smoothgrad``
    (NoiseTunnel over Saliency, ``nt_samples`` draws of Gaussian noise of ``stdev`` in
    pixel units) or ``input_x_gradient``. Knobs ``T`` and ``k`` set the scores.
    """
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    if method not in METHODS:
        raise SaliencyError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    kn = resolve_knobs(**knobs)
    x = to_pixels(images_uint8).to(bundle.device).requires_grad_()  # captum warns when it has to set this
    mod = score_module(bundle, target, kn["T"], kn["k"]).to(bundle.device)
    tgt = None
    if target == "logit":
        if cls is None:
            tgt = torch.as_tensor(predicted_classes(bundle, x), device=bundle.device)
        else:
            c = np.broadcast_to(np.asarray(cls, np.int64), (len(x),))
            if c.min() < 0 or c.max() >= bundle.num_classes:
                raise SaliencyError(f"class must be in [0, {bundle.num_classes - 1}]; got {cls!r}")
            tgt = torch.as_tensor(c.copy(), device=bundle.device)
    with few_threads(len(x)):
        if method == "saliency":
            a = Saliency(mod).attribute(x, target=tgt, abs=kn["abs"])
        elif method == "ig":
            a = IntegratedGradients(mod).attribute(x, baselines=torch.zeros_like(x), target=tgt, n_steps=kn["n_steps"],
                                                   internal_batch_size=max(kn["n_steps"], 64))
        elif method == "smoothgrad":
            a = NoiseTunnel(Saliency(mod)).attribute(x, nt_type="smoothgrad", nt_samples=kn["nt_samples"],
                                                     stdevs=kn["stdev"], target=tgt, abs=kn["abs"])
        else:
            a = InputXGradient(mod).attribute(x, target=tgt)
    return a.detach().sum(1).cpu().numpy().astype(np.float32)


def attribute_grid(bundle: ModelBundle, images_uint8: np.ndarray, targets: tuple[str, ...] = TARGETS,
                   methods: tuple[str, ...] = METHODS, progress: Callable[[float, str], None] | None = None,
                   **knobs: Any) -> tuple[dict[tuple[str, str], np.ndarray], float]:
    """Every (target, method) attribution of ``images`` (a batch, e.g. a sample and its ID twin).

    Returns ``({(target, method): (N, H, W)}, seconds)``.
    """
    t0 = time.time()
    out: dict[tuple[str, str], np.ndarray] = {}
    pairs = [(t, m) for t in targets for m in methods]
    with few_threads(len(to_pixels(images_uint8))):
        for i, (t, m) in enumerate(pairs):
            out[(t, m)] = attribute(bundle, images_uint8, t, m, **knobs)
            if progress:
                progress((i + 1) / len(pairs), f"{TARGET_LABELS[t]} · {METHOD_LABELS[m]}")
    return out, time.time() - t0


# --- samples -----------------------------------------------------------------------------------

def sample_image(dataset: str, index: int) -> np.ndarray:
    """The uint8 ``(H, W, C)`` image at ``index`` of a registered dataset (SaliencyError if out of range)."""
    from .data import get_dataset

    ds = get_dataset(dataset)
    if not 0 <= int(index) < len(ds):
        raise SaliencyError(f"{dataset} has {len(ds)} samples: index must be in [0, {len(ds) - 1}]; got {index}")
    return ds.image(int(index))  # one file decoded for a streamed set, never the whole set


def default_rg_k(bundle: ModelBundle, id_name: str = "mnist", q: float = 90.0) -> float:
    """RG's k as the q-th percentile of ID training feature values (the ``rg`` detector's default)."""
    from . import workbench as wb

    det = wb.fitted_detector("rg", bundle, id_name)
    return float(det.clip_value("percentile", q, 1.0))  # type: ignore[attr-defined]


def sample_info(bundle: ModelBundle, dataset: str, index: int, id_name: str = "mnist") -> dict[str, Any]:
    """Label, prediction and scores of one sample (from the cached extraction and scores)."""
    from . import workbench as wb
    from .maps import SCORE_COLUMNS

    sample_image(dataset, index)  # range check
    ext = wb.get_extraction(bundle, dataset)
    info: dict[str, Any] = {"dataset": dataset, "index": int(index), "label": int(ext.labels[index]),
                            "pred": int(ext.preds[index])}
    for d in SCORE_COLUMNS:
        try:
            info[d] = float(wb.score(bundle, d, dataset, id_name)[index])
        except UserError:
            pass
    return info


def nearest_id_example(bundle: ModelBundle, id_name: str, predicted_class: int,
                       dataset: str | None = None, index: int | None = None) -> int:
    """Index of an ID test sample the model also predicts as ``predicted_class``.

    With ``dataset`` and ``index`` it is the one whose features are nearest in cosine
    distance to that sample's (both read from the cached extractions: no forward pass),
    the sample itself left out when it is in the ID set; without, the most confident one
    (highest energy).
    """
    from . import workbench as wb

    ext = wb.get_extraction(bundle, id_name)
    cand = np.flatnonzero(ext.preds == int(predicted_class))
    if dataset == id_name and index is not None:
        cand = cand[cand != int(index)]
    if cand.size == 0:
        raise SaliencyError(f"no {id_name} test sample is predicted as class {predicted_class}: nothing to compare with")
    if dataset is not None and index is not None and ext.has_features:
        q_ext = wb.get_extraction(bundle, dataset)
        if not 0 <= int(index) < len(q_ext):
            raise SaliencyError(f"{dataset} has {len(q_ext)} samples: index must be in [0, {len(q_ext) - 1}]; got {index}")
        q = q_ext.features[int(index)].astype(np.float64)
        F_ = ext.features[cand].astype(np.float64)
        sim = F_ @ q / (np.linalg.norm(F_, axis=1) * np.linalg.norm(q) + 1e-12)
        return int(cand[int(np.argmax(sim))])
    from .detectors import energy
    return int(cand[int(np.argmax(energy(ext.logits[cand])))])
