"""Previews the Models & Data page and the CLI show: a grid of samples, a dataset's facts, what a model sees.

Pure numpy/torch: arrays in, arrays and dicts out; the page puts them on screen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import Dataset
from ..models import Preprocess


def sample_grid(ds: Dataset, n: int = 32, cols: int = 8, seed: int = 0, pad: int = 2, cell: int = 96) -> np.ndarray:
    """A grid of ``n`` random samples as one uint8 RGB image (for a preview).

    Only those ``n`` images are read (a streamed set decodes ``n`` files). Cells take the first
    image's size, capped at ``cell`` pixels a side; images of other sizes are fitted to it."""
    from PIL import Image

    idx = np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False))
    imgs = ds.images_at(idx)
    h, w = imgs[0].shape[:2]
    s = min(1.0, cell / max(h, w))
    h, w = max(1, round(h * s)), max(1, round(w * s))
    rows = (len(imgs) + cols - 1) // cols
    grid = np.full((rows * (h + pad) + pad, min(cols, len(imgs)) * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(imgs):
        if im.shape[-1] == 1:
            im = np.repeat(im, 3, axis=-1)
        if im.shape[:2] != (h, w):
            im = np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return grid


def thumbnail(img: np.ndarray, side: int = 84) -> np.ndarray:
    """One image for a gallery cell: small images scaled up by whole pixels (crisp, not the
    browser's blur), large ones (a streamed photo) scaled down to about ``side`` pixels;
    greyscale comes back ``(H, W)``."""
    from PIL import Image

    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    h, w = img.shape[:2]
    if max(h, w) * 2 <= side:
        k = side // max(h, w)
        return np.repeat(np.repeat(img, k, 0), k, 1)
    if max(h, w) > 2 * side:
        s = 2 * side / max(h, w)  # twice the cell, for sharp display on dense screens
        return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
    return img


def summary(ds: Dataset) -> dict[str, Any]:
    """Counts and facts the page shows next to the preview."""
    lab = ds.labels[ds.labels >= 0]
    counts = {}
    if len(lab):
        u, c = np.unique(lab, return_counts=True)
        names = ds.class_names or []
        counts = {(names[k] if k < len(names) else str(k)): int(v) for k, v in zip(u.tolist(), c.tolist())}
    shape = "x".join(map(str, ds.shape))
    seen = int(ds.meta.get("sizes_seen", 1))
    if seen > 1:
        shape = f"mixed sizes (first {shape})"
    return {"name": ds.name, "images": len(ds), "shape": shape, "labelled": int(len(lab)),
            "classes": len(counts), "fingerprint": ds.fingerprint, "skipped": int(ds.meta.get("skipped", 0)),
            "format": ds.meta.get("format", ""),
            "source": ds.meta.get("source", ""), "class_counts": counts,
            "streamed": bool(ds.streamed), "sizes_seen": seen}


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
