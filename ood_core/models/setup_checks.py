""""Does my setup match the published one?": checks of a loaded model against its declaration.

:func:`check_setup` takes a :class:`~.bundle.ModelBundle` and an ID dataset (and optionally the ID
:class:`~ood_core.extract.Extraction`, any object with ``logits`` and ``labels`` arrays) and returns
:class:`SetupCheck` rows, each ``ok`` or ``warn`` with the measured value, the expected one and what
to change (docs/architecture.md, "Published architectures"):

- ``accuracy``: ID accuracy against the accuracy published for the architecture on that dataset
  (:func:`ood_core.published.published_arch_accuracy`: a cited table row, or torchvision's declared
  ImageNet-1K accuracy; other training runs, so only a clear shortfall warns);
- ``normalisation``: accuracy under the preprocessing in use against the alternative (no
  normalisation when one is applied, the family's published one when none is) on a few hundred ID
  images, paired per image (McNemar): the alternative clearly better means the wrong one is in use;
- ``input_statistics``: mean and std of a preprocessed batch (raw pixels have mean ~0.45, std
  ~0.25; normalised ones ~0 and ~1);
- ``eval_mode``: no module (batch norm, dropout) left in training mode;
- ``input_size``: the input size and resize mode against the architecture's published ones.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..published import published_arch_accuracy
from .archs import ArchInfo, arch_info, known_arch
from .bundle import ModelBundle, Preprocess
from .preprocess import guess_preprocess

N_IMAGES = 300  # images the normalisation check runs (twice): a few seconds for a CIFAR network on a CPU


@dataclass
class SetupCheck:
    """One check: ``status`` is ``"ok"`` or ``"warn"``; ``change`` says what to do when it warns."""

    name: str
    status: str
    measured: str
    expected: str
    change: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def dataset_key(name: str) -> str:
    """``"CIFAR-10:test"`` -> ``"cifar10"``: the key published accuracies are stored under."""
    n = re.sub(r"[^a-z0-9]", "", name.split(":")[0].lower())
    for key in ("cifar100", "cifar10", "imagenet200"):
        if n.startswith(key):
            return key
    return "imagenet" if n.startswith("imagenet") or n in ("ilsvrc", "ilsvrc2012", "in1k") else n


def check_setup(bundle: ModelBundle, dataset: Any, extraction: Any | None = None, n_images: int = N_IMAGES,
                batch_size: int = 50, published_dataset: str | None = None) -> list[SetupCheck]:
    """The checks of the module docstring, in order: eval mode, input size, input statistics,
    normalisation, accuracy (the last two only on a labelled ID set)."""
    info = arch_info(bundle.arch) if known_arch(bundle.arch) else None  # None: an archive (.pt2, TorchScript)
    pp = bundle.preprocess
    checks = [_eval_mode(bundle.model)]
    if info is not None:
        checks.append(_input_size(pp, info))
    idx = _subset(len(dataset), n_images)
    x = next(iter(dataset.batches(pp, min(len(idx), 64), indices=idx[:64])))
    checks.append(_statistics(x, info))
    labels = np.asarray(dataset.labels)
    if (labels[idx] >= 0).sum() >= 20:
        norm, acc_sub = _normalisation(bundle, dataset, idx, info, batch_size)
        checks.append(norm)
        checks.extend(_accuracy(bundle, dataset, extraction, acc_sub, len(idx), published_dataset))
    return checks


def _subset(n: int, k: int) -> np.ndarray:
    """A fixed, spread-out subset (every n/k-th row): deterministic and across all classes."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _eval_mode(model: nn.Module) -> SetupCheck:
    training = [n or type(model).__name__ for n, m in model.named_modules()
                if m.training and isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout, nn.modules.dropout._DropoutNd))]
    if not training and not model.training:
        return SetupCheck("eval_mode", "ok", "every module in eval mode", "eval mode")
    some = ", ".join(training[:3]) + ("…" if len(training) > 3 else "")
    return SetupCheck("eval_mode", "warn", f"{len(training)} batch-norm/dropout modules in training mode ({some})"
                      if training else "the model is in training mode", "eval mode",
                      "call model.eval() before scoring: in training mode batch norm uses each batch's statistics "
                      "and dropout is on, so scores depend on the batch")


def _input_size(pp: Preprocess, info: ArchInfo) -> SetupCheck:
    got = f"{pp.input_size[0]}x{pp.input_size[1]} {pp.resize}"
    want = f"{info.input_size[0]}x{info.input_size[1]} {info.resize}"
    if tuple(pp.input_size) == tuple(info.input_size) and pp.resize == info.resize:
        return SetupCheck("input_size", "ok", got, want)
    return SetupCheck("input_size", "warn", got, want,
                      f"use --input-size {info.input_size[0]} --resize {info.resize} (the published pipeline)")


def _statistics(x: torch.Tensor, info: ArchInfo | None) -> SetupCheck:
    mean, std = float(x.mean()), float(x.std())
    got = f"mean {mean:.3f}, std {std:.3f}"
    inside = bool(info and info.normalises_inside)
    raw_declared = bool(info and info.raw_pixels)
    looks_raw = 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    if inside or raw_declared:
        want = "raw [0,1] pixels (mean ~0.45, std ~0.25)" + (": the model normalises inside" if inside else "")
        if looks_raw:
            return SetupCheck("input_statistics", "ok", got, want)
        return SetupCheck("input_statistics", "warn", got, want,
                          "this model expects raw pixels: use --mean 0 --std 1"
                          + (" (normalising outside too normalises twice)" if inside else ""))
    want = "normalised input (mean ~0, std ~1)"
    if looks_raw and info is not None:
        return SetupCheck("input_statistics", "warn", got, want,
                          f"inputs look like raw [0,1] pixels but {info.label} was published with normalised input: "
                          f"use --mean {' '.join(f'{v:.4g}' for v in info.mean)} --std {' '.join(f'{v:.4g}' for v in info.std)}")
    if abs(mean) > 1.5 or not 0.2 < std < 5:
        return SetupCheck("input_statistics", "warn", got, want,
                          "check --mean/--std: these values are far from a normalised input")
    return SetupCheck("input_statistics", "ok", got, want)


def _predictions(bundle: ModelBundle, dataset: Any, pp: Preprocess, idx: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    was = bundle.model.training
    bundle.model.eval()
    try:
        with torch.inference_mode():
            for x in dataset.batches(pp, batch_size, indices=idx):
                out.append(bundle.logits(x.to(bundle.device)).argmax(1).cpu().numpy())
    finally:
        bundle.model.train(was)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _alternative(pp: Preprocess, info: ArchInfo | None) -> tuple[Preprocess, str]:
    raw = all(m == 0 for m in pp.mean) and all(s == 1 for s in pp.std)
    if not raw:
        return Preprocess(pp.input_size, pp.channels, 0.0, 1.0, pp.resize, pp.crop_ratio), "none (mean 0, std 1)"
    if info is not None and not info.raw_pixels:
        mean, std = info.mean, info.std
    else:  # what the stem suggests (CIFAR or ImageNet statistics)
        guess, _ = guess_preprocess((1, pp.channels, 7 if max(pp.input_size) >= 128 else 3, 3), pp.channels)
        mean, std = guess.mean, guess.std
    alt = Preprocess(pp.input_size, pp.channels, mean, std, pp.resize, pp.crop_ratio)
    return alt, "mean " + " ".join(f"{v:.4g}" for v in alt.mean) + " std " + " ".join(f"{v:.4g}" for v in alt.std)


def _normalisation(bundle: ModelBundle, dataset: Any, idx: np.ndarray, info: ArchInfo | None,
                   batch_size: int) -> tuple[SetupCheck, float]:
    labels = np.asarray(dataset.labels)[idx]
    keep = labels >= 0
    idx, labels = idx[keep], labels[keep]
    pp = bundle.preprocess
    alt, alt_txt = _alternative(pp, info)
    right = _predictions(bundle, dataset, pp, idx, batch_size) == labels
    right_alt = _predictions(bundle, dataset, alt, idx, batch_size) == labels
    acc, acc_alt = float(right.mean()), float(right_alt.mean())
    b = int((right_alt & ~right).sum())  # only the alternative right
    c = int((right & ~right_alt).sum())  # only ours right
    # McNemar's test on the paired outcomes: the alternative is clearly better at z >= 2 (p ~ 0.02)
    clearly = b - c >= max(3.0, 2.0 * math.sqrt(b + c))
    got = f"{100 * acc:.1f}% with the preprocessing in use vs {100 * acc_alt:.1f}% with {alt_txt} ({len(idx)} ID images)"
    want = "the preprocessing in use is not worse than the alternative"
    if not clearly:
        return SetupCheck("normalisation", "ok", got, want), acc
    if alt_txt.startswith("none"):
        change = "this checkpoint expects raw pixels; use --mean 0 --std 1"
    else:
        change = f"this checkpoint expects normalised input; use --mean {' '.join(f'{v:.4g}' for v in alt.mean)} " \
                 f"--std {' '.join(f'{v:.4g}' for v in alt.std)}"
    return SetupCheck("normalisation", "warn", got, want, change), acc


def _accuracy(bundle: ModelBundle, dataset: Any, extraction: Any | None, acc_sub: float, n_sub: int,
              published_dataset: str | None) -> list[SetupCheck]:
    key = dataset_key(published_dataset or getattr(dataset, "name", ""))
    found = published_arch_accuracy(bundle.arch, key) if bundle.arch and known_arch(bundle.arch) else None
    if found is None:  # an archive, or no published accuracy known for this architecture on this dataset
        return []
    want, _, cite = found
    if extraction is not None and (np.asarray(extraction.labels) >= 0).any():
        lab = np.asarray(extraction.labels)
        ok = lab >= 0
        acc = float((np.asarray(extraction.logits)[ok].argmax(1) == lab[ok]).mean())
        n = int(ok.sum())
    else:
        acc, n = acc_sub, n_sub
    # approximate numbers from other training runs: warn only beyond 3 points plus 3 standard errors
    se = math.sqrt(max(acc * (1 - acc), 1e-4) / max(n, 1))
    tol = 3.0 + 300 * se
    got = f"{100 * acc:.1f}% on {n} ID images"
    expected = f"~{want:.1f}% ({cite}; approximate)"
    if 100 * acc >= want - tol:
        return [SetupCheck("accuracy", "ok", got, expected)]
    return [SetupCheck("accuracy", "warn", got, expected,
                       "far below the published accuracy: check the architecture (--arch), the normalisation "
                       "(--mean/--std), the input size and the class order of the ID set")]


def check_setup_named(bundle: ModelBundle, id_name: str, extraction: Any | None = None,
                      n_images: int = N_IMAGES) -> list[SetupCheck]:
    """:func:`check_setup` on a registered ID dataset by name (its test split unless the name says
    ``:train``); the front door's and the command line's entry point."""
    from ..data import get_dataset

    return check_setup(bundle, get_dataset(id_name), extraction, n_images)


def format_checks(rows: list[dict[str, str]]) -> list[str]:
    """``[ok] name: measured (expected …)`` lines, each warning followed by what to change."""
    out = []
    for c in rows:
        out.append(f"[{c['status']}] {c['name']}: {c['measured']} (expected {c['expected']})")
        if c["change"]:
            out.append(f"      -> {c['change']}")
    return out
