"""What a model expects as input, when its file does not say, and the dry run that checks it.

:func:`guess_preprocess` reads defaults from the first convolution's shape (a 7x7 stem means
ImageNet, a 3x3 RGB stem CIFAR, one channel MNIST); :func:`override` applies what the user
typed; :func:`first_size_that_runs` tries input sizes until a dry run passes; :func:`dry_run`
is the one-batch forward every loaded model passes before it is handed out, with messages that
say what to change (docs/architecture.md, "Uploads are data, not code").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import first_line
from .archs import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD
from .bundle import ModelError, Preprocess

# Sizes tried, in order, when nothing in the file says which input the model expects.
CANDIDATE_SIZES = (32, 28, 224, 64, 96, 128, 299)


def guess_preprocess(first_conv: tuple[int, ...] | None, channels: int | None = None,
                     input_size: tuple[int, int] | None = None) -> tuple[Preprocess, str]:
    """Defaults from the first convolution's weight shape ``(out, in, kh, kw)``.

    A large stem kernel (7x7) or a patch embedding (16x16) means ImageNet-style input
    (224, ImageNet mean/std); a 3x3 RGB stem means CIFAR (32); one channel means MNIST (28).
    """
    c = channels or (first_conv[1] if first_conv else 3)
    if c not in (1, 3):
        c = 3
    k = first_conv[2] if first_conv else 3
    if c == 1:
        pp, why = Preprocess(input_size or (28, 28), 1, MNIST_MEAN, MNIST_STD), "1-channel stem: MNIST-style"
    elif k >= 7:
        pp, why = Preprocess(input_size or (224, 224), 3, IMAGENET_MEAN, IMAGENET_STD), f"{k}x{k} stem: ImageNet-style"
    else:
        pp, why = Preprocess(input_size or (32, 32), 3, CIFAR_MEAN, CIFAR_STD), f"{k}x{k} RGB stem: CIFAR-style"
    return pp, why


def override(pp: Preprocess, input_size: Sequence[int] | int | None, mean: Sequence[float] | float | None,
              std: Sequence[float] | float | None, channels: int | None, resize: str | None = None) -> Preprocess:
    size = pp.input_size
    if input_size is not None:
        vals = [int(input_size)] if isinstance(input_size, (int, np.integer)) else [int(v) for v in input_size]
        if len(vals) not in (1, 2):
            raise ModelError(f"input size needs 1 or 2 integers (H [W]), got {len(vals)}")
        size = (vals[0], vals[-1])
    c = int(channels) if channels is not None else pp.channels
    m = mean if mean is not None else (pp.mean if c == pp.channels else (sum(pp.mean) / len(pp.mean),))
    s = std if std is not None else (pp.std if c == pp.channels else (sum(pp.std) / len(pp.std),))
    return Preprocess(size, c, m, s, resize or pp.resize, pp.crop_ratio)


class ModelOutputError(ModelError):
    """The model ran but its output is not logits: another input size would not help."""


def dry_run(model: nn.Module, pp: Preprocess, batch: int = 2) -> torch.Tensor:
    """One forward pass on a small random batch; refuses with a short message on failure."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, pp.channels, *pp.input_size, generator=gen)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's model can raise anything
        line = first_line(exc, 200)
        if not line.startswith(type(exc).__name__):
            line = f"{type(exc).__name__}: {line}"
        raise ModelError(f"the model failed a dry run on a batch of shape {tuple(x.shape)}: "
                         f"{line} — check the input size and channels "
                         "(or the architecture)") from None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        raise ModelOutputError(f"the model returns a {type(out).__name__} of {len(out)} tensors; "
                         "export a model whose forward returns the logits tensor only")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelOutputError(f"the model's output has shape {shape} for {batch} inputs; expected logits (N, classes)")
    if out.shape[1] < 2:
        raise ModelOutputError("the model outputs one value per sample; the workbench needs one logit per class (2 or more)")
    if not torch.isfinite(out).all():
        raise ModelError("the model's dry-run output contains NaN or inf; check the weights and the preprocessing")
    return out


def check_classes(out_classes: int, expected: int | None, what: str = "the model") -> None:
    if expected is not None and int(expected) != out_classes:
        raise ModelError(f"{what} outputs {out_classes} logits per sample but {expected} classes were expected; "
                         "load the matching model or pick the matching ID dataset")


def verify_split(model: nn.Module, body: nn.Module, head: nn.Linear, pp: Preprocess) -> str:
    """'' if ``head(body(x)) == model(x)`` on a random batch, else why not."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, pp.channels, *pp.input_size, generator=gen)
    try:
        with torch.no_grad():
            ref = model(x)
            h = body(x)
            got = head(h.flatten(1) if h.ndim > 2 else h)
    except Exception as exc:  # noqa: BLE001
        return f"splitting at the head failed ({first_line(exc, 120)})"
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
        return "the chosen layer is not the final one: head(features) differs from the model's output"
    return ""


def first_size_that_runs(model: nn.Module, pp: Preprocess, size_hint: Sequence[int] | None
                         ) -> tuple[Preprocess, torch.Tensor, list[str], bool]:
    """Try the stem's guess, then the ID images' size, then common sizes, until a dry run passes.

    (The guess comes first: the ID set chosen while uploading is often still the default
    MNIST, not the model's data.) Returns ``(preprocess, dry-run output, sizes that failed
    before it, whether the size that ran is the hint's)``.
    """
    tried = []
    hint = [tuple(size_hint)[:2] if len(size_hint) > 1 else (size_hint[0], size_hint[0])] if size_hint else []
    sizes = [pp.input_size] + hint + [(s, s) for s in CANDIDATE_SIZES]
    out, err = None, None
    for sz in dict.fromkeys(tuple(int(v) for v in s) for s in sizes):
        cand = Preprocess(sz, pp.channels, pp.mean, pp.std, pp.resize, pp.crop_ratio)
        try:
            out = dry_run(model, cand)
            pp = cand
            break
        except ModelOutputError:
            raise  # the model ran: its output, not the input size, is the problem
        except ModelError as exc:
            tried.append(f"{sz[0]}x{sz[1]}")
            err = err or exc
    if out is None:
        raise ModelError(f"{err} (also tried input sizes {', '.join(tried)})")
    return pp, out, tried, bool(hint) and tuple(pp.input_size) == tuple(hint[0])
