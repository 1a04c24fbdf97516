"""Training-time augmentation on preprocessed batches: the ``augment`` knob's choices.

``shift`` is the workbench's own (random translations of up to 2 pixels, for digit-sized inputs);
``crop_flip`` is the CIFAR recipe of the papers whose training the ``paper`` recipes reproduce:
``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` on the pixels before ``Normalize``
(sources in docs/methods.md, "Paper recipes"). The workbench augments the batch after
preprocessing, so the crop's padding is the normalised value of a zero pixel, ``(0 - mean) / std``
per channel: the same numbers the authors' pipeline gives (normalising commutes with cropping
and flipping).

Why hand-written: torchvision's ``RandomCrop``/``RandomHorizontalFlip`` draw one offset and one
flip per call, which on a batched tensor is one for the whole batch; the papers draw them per
image (a ``DataLoader`` transform). Here every row gets its own draws, from the run's seeded
generator, in one gather, and under torchrun each rank draws the whole global batch's values and
keeps its slice (docs/architecture.md, "Distributed passes").
"""
from __future__ import annotations

from typing import Sequence

import torch

AUGMENTATIONS = ("none", "shift", "crop_flip")
DESCRIPTIONS = {
    "none": "none",
    "shift": "random shifts of up to 2 pixels",
    "crop_flip": "random crop to the input size from a 4-pixel zero-pixel padding, and a horizontal flip with p=0.5",
}
# Retired values of the knob (it was a bool before crop_flip): saved configs and --param spellings.
ALIASES = {True: "shift", False: "none", "true": "shift", "false": "none", "True": "shift", "False": "none"}
CROP_PAD = 4  # RandomCrop(32, padding=4) in every source of the paper recipes


def zero_pixel(mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
    """Per channel, what a zero pixel becomes after ``Normalize(mean, std)``: the crop's padding value."""
    return tuple(-float(m) / float(s) for m, s in zip(mean, std))


def crop_flip_at(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = CROP_PAD,
                 fill: Sequence[float] | None = None) -> torch.Tensor:
    """Row ``i`` of ``x`` (N, C, H, W) padded by ``pad`` with ``fill`` (per channel; default 0), cropped
    back to H×W at offset ``(dy[i], dx[i])`` and mirrored left-right where ``flip[i]``."""
    n, c, h, w = x.shape
    f = (x.new_zeros(1, c, 1, 1) if fill is None
         else torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1))
    padded = f.expand(n, c, h + 2 * pad, w + 2 * pad).clone()  # constant padding with a per-channel value
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dev = x.device
    rows = dy.to(dev).view(n, 1) + torch.arange(h, device=dev).view(1, h)
    cols = dx.to(dev).view(n, 1) + torch.arange(w, device=dev).view(1, w)
    cols = torch.where(flip.to(dev).view(n, 1), cols.flip(1), cols)  # flipping the crop reverses its columns
    return padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)].contiguous()


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = CROP_PAD, fill: Sequence[float] | None = None,
              draw: tuple[int, int] | None = None) -> torch.Tensor:
    """Random crop (offsets uniform in ``[0, 2·pad]``, as ``RandomCrop(size, padding=pad)``) and horizontal
    flip (p = 0.5) per row, drawn from ``gen``: the offsets' rows, the columns', then the flips.
    ``draw=(total, start)``: ``x`` is rows ``[start, start+len(x))`` of a batch of ``total`` (the draws of
    all ``total`` rows are made; one rank's shard under torchrun).

    Flip-then-crop (the authors' ID transform) and crop-then-flip (their auxiliary one) are the same
    distribution: the mirror of offset ``d`` is offset ``2·pad − d``, equally likely.
    """
    n = len(x)
    total, start = draw if draw is not None else (n, 0)
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=gen)[start:start + n]
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=gen)[start:start + n]
    flip = (torch.rand(total, generator=gen) < 0.5)[start:start + n]
    return crop_flip_at(x, dy, dx, flip, pad, fill)
