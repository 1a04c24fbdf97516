"""Previews the Models & Data page and the CLI show: a grid of samples, a dataset's facts, what a model sees.

Pure numpy/torch: arrays in, arrays and dicts out; the page puts them on screen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import ImageDataset
from ..models import Preprocess


def sample_grid(ds: ImageDataset, n: int = 32, cols: int = 8, seed: int = 0, pad: int = 2) -> np.ndarray:
    """A grid of ``n`` random samples as one uint8 RGB image (for a preview)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False))
    imgs = ds.images[idx]
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    h, w = imgs.shape[1:3]
    rows = (len(imgs) + cols - 1) // cols
    grid = np.full((rows * (h + pad) + pad, min(cols, len(imgs)) * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return grid


def summary(ds: ImageDataset) -> dict[str, Any]:
    """Counts and facts the page shows next to the preview."""
    lab = ds.labels[ds.labels >= 0]
    counts = {}
    if len(lab):
        u, c = np.unique(lab, return_counts=True)
        names = ds.class_names or []
        counts = {(names[k] if k < len(names) else str(k)): int(v) for k, v in zip(u.tolist(), c.tolist())}
    return {"name": ds.name, "images": len(ds), "shape": "x".join(map(str, ds.shape)), "labelled": int(len(lab)),
            "classes": len(counts), "fingerprint": ds.fingerprint, "skipped": int(ds.meta.get("skipped", 0)),
            "resized": int(ds.meta.get("resized", 0)), "format": ds.meta.get("format", ""),
            "source": ds.meta.get("source", ""), "class_counts": counts}


def preview_input(pp: Preprocess, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """What the model sees for one uint8 image: the preprocessed input mapped back to pixels
    (``x * std + mean``, uint8 ``(H, W, C)``) and the normalised value range."""
    x = pp(np.asarray(image)[None])
    mean = torch.tensor(pp.mean).view(1, -1, 1, 1)
    std = torch.tensor(pp.std).view(1, -1, 1, 1)
    pix = (x * std + mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    img = (pix * 255).round().astype(np.uint8)
    return (img[..., 0] if img.shape[-1] == 1 else img), {"min": float(x.min()), "max": float(x.max()),
                                                          "mean": float(x.mean())}
