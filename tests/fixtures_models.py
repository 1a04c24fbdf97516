"""Tiny models and image sets the gradient and detector tests share (fast enough for exact references)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ood_core.data import ImageDataset
from ood_core.models import ModelBundle, Preprocess

C = 4


def tiny_bundle(seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, C),
    )
    return ModelBundle(model, Preprocess((8, 8), 1, (0.5,), (0.5,)), name="tiny", arch="tiny")


def tiny_images(n: int, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return ImageDataset(f"tiny{seed}", imgs, rng.integers(0, C, n), role="id_train")


class Sleep(nn.Module):
    """Sleeps ``delay()`` seconds per forward: a slow model for the concurrency and cancellation tests.

    No parameters, so the bundle's fingerprint (and cache key) is that of any other ``slow_tiny_bundle``."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.delay() if callable(self.delay) else self.delay)
        return x


def slow_tiny_bundle(delay, seed: int = 0) -> ModelBundle:
    """:func:`tiny_bundle` behind a :class:`Sleep` layer (``delay``: seconds, or a callable giving them)."""
    base = tiny_bundle(seed).model
    model = nn.Sequential(Sleep(delay), *base)
    return ModelBundle(model, Preprocess((8, 8), 1, (0.5,), (0.5,)), name="tiny", arch="tiny")


class Picky(nn.Module):
    """Passes the load-time dry run (a batch of 2) and raises on any real batch: a model that fails late."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise RuntimeError("boom on the real batch")
        return self.lin(x.flatten(1).mean(1, keepdim=True))


def picky_torchscript(path) -> None:
    """Save :class:`Picky` as a TorchScript archive at ``path``."""
    torch.jit.save(torch.jit.script(Picky()), str(path))
