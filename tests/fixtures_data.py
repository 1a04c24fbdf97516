"""Tiny dataset fixtures in the exact on-disk formats users bring (generated, never downloaded)."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import nn


def cifar10_folder(root: Path, n_train: int = 24, n_test: int = 12, seed: int = 0, batches: int = 2) -> Path:
    """``root/cifar-10-batches-py`` with ``data_batch_*``, ``test_batch`` and ``batches.meta`` pickles
    laid out as the real files (dict with ``data`` (N, 3072) uint8 and ``labels`` list)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    per = n_train // batches
    for b in range(batches):
        _cifar_batch(d / f"data_batch_{b + 1}", rng, per, "labels", 10)
    _cifar_batch(d / "test_batch", rng, n_test, "labels", 10)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                             "frog", "horse", "ship", "truck"]],
                     b"num_vis": 3072}, f, protocol=2)
    return root


def cifar100_folder(root: Path, n: int = 10, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    _cifar_batch(d / "train", rng, n, "fine_labels", 100)
    _cifar_batch(d / "test", rng, n, "fine_labels", 100)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}, f, protocol=2)
    return root


def _cifar_batch(path: Path, rng, n: int, key: str, classes: int) -> None:
    # CIFAR images are class-coloured blobs so a tiny model can learn them in a few steps
    labels = rng.integers(0, classes, n)
    imgs = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        imgs[i, :, :, c % 3] += np.uint8(120 + 10 * (c % 5))
    data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, key.encode(): [int(v) for v in labels], b"batch_label": b"fixture"}, f, protocol=2)


def svhn_folder(root: Path, n: int = 12, seed: int = 2, splits=("test",)) -> Path:
    import scipy.io

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in splits:
        x = rng.integers(0, 255, (32, 32, 3, n)).astype(np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN: digit 0 is stored as 10
        scipy.io.savemat(str(root / f"{s}_32x32.mat"), {"X": x, "y": y})
    return root


def mnist_raw_folder(root: Path, n: int = 10, fashion: bool = False, gz: bool = False, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / ("FashionMNIST" if fashion else "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        x = rng.integers(0, 255, (n, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return root


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def image_tree(root: Path, classes=("a", "b", "c"), per: int = 4, size=(20, 20), corrupt: int = 1,
               seed: int = 4, mode: str = "RGB") -> Path:
    """ImageFolder tree ``root/class/*.png`` with ``corrupt`` unreadable files in the first class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8), mode).save(d / f"{i}.png")
    for k in range(corrupt):
        (root / classes[0] / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def flat_images(root: Path, n: int = 5, sizes=((16, 16),), seed: int = 5) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(root / f"img{i}.jpg")
    return root


class TinyNet(nn.Module):
    """A 3-channel conv net small enough to script, save and upload in a test."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def file_list(root: Path, n: int = 4, name: str = "list.txt") -> Path:
    """``root/name`` listing ``a/img*.jpg`` with labels on every other line (OpenOOD's image lists)."""
    flat_images(root / "a", n=n)
    lines = [f"a/img{i}.jpg {i}" if i % 2 == 0 else f"a/img{i}.jpg" for i in range(n)]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def npz_file(path: Path, n: int = 6, seed: int = 6, splits: bool = False) -> Path:
    """A ``.npz`` of ``x`` (N, 8, 8, 3) uint8 and ``y``, or ``x_train``/``y_train``/``x_test``/``y_test``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if splits:
        k = n // 2
        np.savez(path, x_train=x[:k], y_train=np.zeros(k, int), x_test=x[k:], y_test=np.ones(n - k, int))
    else:
        np.savez(path, x=x, y=np.arange(n))
    return path


def zip_folder(folder: Path, dest: Path) -> Path:
    """``dest``: a zip of ``folder`` (its name as the top folder in the archive)."""
    import zipfile

    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder.parent))
    return dest


def digits_tree(root: Path, n_train: int = 60, n_test: int = 40) -> Path:
    from ood_core.data import get_dataset

    """An ImageFolder tree of the embedded MNIST digits, ``train/`` and ``test/``, one folder per class."""
    for split, n in (("train", n_train), ("test", n_test)):
        ds = get_dataset(f"mnist:{split}" if split == "train" else "mnist")
        for i in np.linspace(0, len(ds) - 1, n).astype(int):  # every class (the embedded splits are sorted)
            d = root / split / str(int(ds.labels[i]))
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.image(i)[..., 0]).save(d / f"{i:05d}.png")
    return root


def photo_folder(root: Path, n: int = 30, seed: int = 0) -> Path:
    """JPEGs of varied sizes (around 40x36), as a photo folder would hold."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(30, 50)), int(rng.integers(26, 46))
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        img.save(root / f"p{i:03d}.jpg", quality=90)
    return root
