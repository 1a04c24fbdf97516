"""Datasets from a local path or an upload, never downloaded (and never unpickled freely).

Formats, recognised from the folder's content (``fmt="auto"``) or named:

- ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folders.
  Their batches are Python pickles; they are read with a restricted unpickler that only
  rebuilds numpy arrays (torchvision's reader would run any pickle);
- ``svhn``: torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` (``scipy.io.loadmat``, label 10 -> 0);
- ``mnist`` / ``fashion_mnist``: the raw idx files (``MNIST/raw``, ``FashionMNIST/raw``, gzipped or not);
- ``imagefolder``: ``root/class/*.png`` (labels from sorted folder names, torchvision's convention),
  or ``root/train/class/…`` + ``root/test|val/class/…`` for two splits;
- ``flat``: a folder of images without labels (OOD sets);
- ``npz``: ``x`` (N,H,W[,C]) and optional ``y``, or ``x_train``/``y_train``/``x_test``/``y_test``;
  read with ``allow_pickle=False``;
- ``zip``: an archive of any of the above, unpacked under the cache after checks
  against path tricks and zip bombs.

Unreadable images are skipped and counted (``meta["skipped"]``); a source with no
readable image is refused. Images keep their size unless a folder mixes sizes, in which
case all are resized to the most common one. :func:`register_local` adds a source to the
registry and remembers it in ``<cache>/datasets/registry.json``, reloaded on import.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import re
import threading
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import DatasetSpec, ImageDataset, list_datasets, register, unregister
from .base import DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagefolder", "flat", "npz", "zip")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
USER_ROLES = ("id_test", "id_train", "ood_test", "ood_val", "aux")
MAX_SIDE_AFTER_RESIZE = 512
_LOCK = threading.Lock()

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def max_dataset_bytes() -> int:
    """Memory budget for one decoded dataset (and one unpacked zip): ``$OOD_MAX_DATASET_BYTES`` or 4 GiB."""
    try:
        return int(os.environ.get("OOD_MAX_DATASET_BYTES", 4 << 30))
    except ValueError:
        return 4 << 30


# --- a pickle reader that can only build numpy arrays -------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes and numpy arrays only.

    CIFAR's python batches are pickles, and ``pickle.load`` (what torchvision uses) runs
    whatever a file names; no library offers a restricted reader, so this allow-list is
    hand-written: anything else raises instead of importing.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refused: the pickle names {module}.{name}, which a dataset file has no reason to "
                            "contain (it could run code); use the original CIFAR files or convert to .npz")
        import numpy._core.multiarray as ma  # numpy >= 2; old pickles say numpy.core

        if name == "_reconstruct":
            return ma._reconstruct  # noqa: SLF001
        if name == "scalar":
            return ma.scalar
        if module == "_codecs":
            import codecs
            return codecs.encode
        return getattr(np, name)


def safe_unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="latin1").load()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged batch file
            raise DataError(f"could not read {Path(path).name}: {type(exc).__name__}: {str(exc)[:120]}") from None


def _get(d: dict, key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


# --- readers returning (images uint8 NHWC, labels, class_names, meta) --------------

Read = tuple[np.ndarray, np.ndarray, "list[str] | None", dict]


def _cifar_root(path: Path, hundred: bool) -> Path:
    sub = path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    return sub if sub.is_dir() else path


def cifar_splits(path: Path, hundred: bool) -> list[str]:
    root = _cifar_root(path, hundred)
    if hundred:
        return [s for s in ("train", "test") if (root / s).is_file()]
    out = []
    if any((root / f"data_batch_{i}").is_file() for i in range(1, 6)):
        out.append("train")
    if (root / "test_batch").is_file():
        out.append("test")
    return out


def read_cifar(path: Path, split: str, hundred: bool = False) -> Read:
    root = _cifar_root(Path(path), hundred)
    files = ([root / split] if hundred else
             ([root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]))
    files = [f for f in files if f.is_file()]
    if not files:
        raise DataError(f"no CIFAR-{100 if hundred else 10} {split} batches in {root}")
    xs, ys = [], []
    for f in files:
        d = safe_unpickle(f)
        if not isinstance(d, dict):
            raise DataError(f"{f.name} is not a CIFAR batch (a {type(d).__name__}, not a dict)")
        data = _get(d, "data")
        labels = _get(d, "fine_labels" if hundred else "labels")
        if not isinstance(data, np.ndarray) or data.dtype == object or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{f.name}: 'data' must be an (N, 3072) array as in the CIFAR python format")
        labels = np.asarray(labels if labels is not None else np.full(len(data), -1), dtype=np.int64)
        if labels.shape != (len(data),):
            raise DataError(f"{f.name}: {len(data)} images but {labels.size} labels")
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    names = CIFAR10_CLASSES if not hundred else None
    meta_file = root / ("meta" if hundred else "batches.meta")
    if meta_file.is_file():
        try:
            m = safe_unpickle(meta_file)
            got = _get(m, "fine_label_names" if hundred else "label_names")
            if got:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in got]
        except DataError:
            pass
    return np.concatenate(xs), np.concatenate(ys), names, {"files": [f.name for f in files]}


def svhn_splits(path: Path) -> list[str]:
    path = Path(path)
    if path.is_file():
        return ["test"]
    return [s for s in ("train", "test", "extra") if (path / f"{s}_32x32.mat").is_file()]


def read_svhn(path: Path, split: str) -> Read:
    import scipy.io

    path = Path(path)
    f = path if path.is_file() else path / f"{split}_32x32.mat"
    if not f.is_file():
        raise DataError(f"no {f.name} in {path}")
    try:
        m = scipy.io.loadmat(str(f))
    except NotImplementedError:
        raise DataError(f"{f.name} is a MATLAB v7.3 (HDF5) file; save it with scipy.io.savemat or as .npz") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not read {f.name}: {str(exc)[:120]}") from None
    x, y = m.get("X"), m.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] not in (1, 3):
        raise DataError(f"{f.name}: 'X' must be (32, 32, 3, N) as in SVHN's format")
    imgs = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    labels = np.full(len(imgs), -1, np.int64) if y is None else np.asarray(y, np.int64).reshape(-1)
    if labels.shape != (len(imgs),):
        raise DataError(f"{f.name}: {len(imgs)} images but {labels.size} labels")
    labels = np.where(labels == 10, 0, labels)  # SVHN stores digit 0 as 10 (torchvision maps it back)
    return _to_uint8(imgs, f.name), labels, [str(i) for i in range(10)], {"files": [f.name]}


_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _mnist_raw(path: Path) -> Path:
    path = Path(path)
    for cand in (path, path / "raw", path / "MNIST" / "raw", path / "FashionMNIST" / "raw", path / "KMNIST" / "raw"):
        if any((cand / (n + ext)).is_file() for n, _ in _IDX.values() for ext in ("", ".gz")):
            return cand
    return path


def mnist_splits(path: Path) -> list[str]:
    raw = _mnist_raw(path)
    return [s for s, (img, _) in _IDX.items() if any((raw / (img + e)).is_file() for e in ("", ".gz"))]


def _read_idx(path: Path) -> np.ndarray:
    """The idx format (magic, dims, raw bytes); hand-written to read gzipped files and check sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path.name} is not an idx file of unsigned bytes")
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    start = 4 + 4 * nd
    need = int(np.prod(dims)) if dims else 0
    if len(data) - start < need:
        raise DataError(f"{path.name} is truncated: {len(data) - start} bytes for shape {tuple(dims)}")
    return np.frombuffer(data, np.uint8, need, start).reshape(dims)


def read_mnist(path: Path, split: str, fashion: bool = False) -> Read:
    raw = _mnist_raw(Path(path))
    img_name, lab_name = _IDX[split]

    def find(n: str) -> Path | None:
        return next((raw / (n + e) for e in ("", ".gz") if (raw / (n + e)).is_file()), None)

    fi, fl = find(img_name), find(lab_name)
    if fi is None:
        raise DataError(f"no {img_name} in {raw}")
    x = _read_idx(fi)
    if x.ndim != 3:
        raise DataError(f"{fi.name}: expected (N, H, W) images, got {x.shape}")
    y = _read_idx(fl).astype(np.int64).reshape(-1) if fl else np.full(len(x), -1, np.int64)
    if len(y) != len(x):
        raise DataError(f"{fi.name} has {len(x)} images but {fl.name if fl else 'labels'} {len(y)} labels")
    names = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    return np.ascontiguousarray(x), y, names, {"files": [fi.name] + ([fl.name] if fl else [])}


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"{Path(path).name} holds Python objects (object arrays), which are refused; "
                            "save plain numeric arrays: np.savez(f, x=uint8_images, y=int_labels)") from None
        raise DataError(f"could not read {Path(path).name}: {str(exc)[:120]}") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{Path(path).name} is not a readable .npz: {str(exc)[:120]}") from None


def npz_splits(path: Path) -> list[str]:
    arrays = _npz_arrays(path)
    sp = [s for s in ("train", "test") if f"x_{s}" in arrays]
    return sp or ["test"]


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what}: images must be numbers, got dtype {x.dtype}")
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if not np.isfinite(x).all():
        raise DataError(f"{what}: images contain NaN or inf")
    if np.issubdtype(x.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.round(x * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.round(x).astype(np.uint8)
    raise DataError(f"{what}: pixel values span [{lo:g}, {hi:g}]; expected uint8 0-255 or floats in [0, 1]")


def read_npz(path: Path, split: str = "test") -> Read:
    path = Path(path)
    a = _npz_arrays(path)
    if f"x_{split}" in a:
        x, y = a[f"x_{split}"], a.get(f"y_{split}")
        xk = f"x_{split}"
    else:
        xk = next((k for k in ("x", "images", "X", "data") if k in a), None)
        if xk is None:
            raise DataError(f"{path.name} has no array named 'x' (found: {', '.join(a) or 'none'}); "
                            "save it as np.savez(f, x=images, y=labels)")
        x = a[xk]
        y = next((a[k] for k in ("y", "labels", "Y", "targets") if k in a), None)
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise DataError(f"{path.name}: '{xk}' has shape {x.shape}, which looks channels-first; "
                        "save x.transpose(0, 2, 3, 1) so it is (N, H, W, C)")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise DataError(f"{path.name}: '{xk}' must be (N, H, W) or (N, H, W, C) with C = 1 or 3; got shape {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path.name}: '{xk}' holds no images")
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (len(x),):
            raise DataError(f"{path.name}: {len(x)} images but labels of shape {y.shape}; y must be (N,) integers")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise DataError(f"{path.name}: labels must be integers, got dtype {y.dtype}")
        if (y < -1).any():
            raise DataError(f"{path.name}: labels must be class indices >= 0 (or -1 for unknown)")
    labels = np.full(len(x), -1, np.int64) if y is None else y.astype(np.int64)
    return _to_uint8(np.ascontiguousarray(x), path.name), labels, None, {"keys": sorted(a)}


# --- image folders ---------------------------------------------------------------

def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _images_in(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and _is_image(p) and "__MACOSX" not in p.parts)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))


def _split_tree(path: Path) -> dict[str, Path]:
    """``{"train": path/train, "test": path/test or path/val}`` when the folder is split that way."""
    subs = {d.name.lower(): d for d in _class_dirs(path)}
    out = {}
    if "train" in subs:
        out["train"] = subs["train"]
    for t in ("test", "val", "valid", "validation"):
        if t in subs:
            out["test"] = subs[t]
            break
    # only a split tree when those folders themselves hold class folders or images
    if out and all(_class_dirs(p) or _images_in(p, False) for p in out.values()) and set(subs) <= set(out) | {
            "val", "valid", "validation", "test", "train"}:
        return out
    return {}


def imagefolder_splits(path: Path) -> list[str]:
    tree = _split_tree(Path(path))
    return sorted(tree, key=lambda s: s != "train") if tree else ["test"]


def _decode_all(files: list[Path], base: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, list[int], dict]:
    """Decode images (skipping unreadable ones); resize only when sizes are mixed or ``size`` is set."""
    from PIL import Image

    heads: list[tuple[int, tuple[int, int], bool]] = []
    skipped: list[str] = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                w, h = im.size
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F") or (im.mode == "P" and _palette_gray(im))
            heads.append((i, (h, w), gray))
        except Exception:  # noqa: BLE001 - unreadable header: skip and count
            skipped.append(str(f.relative_to(base)))
    if not heads:
        return np.zeros((0, 1, 1, 1), np.uint8), [], {"skipped": len(skipped), "skipped_files": skipped[:20]}
    channels = 1 if all(g for _, _, g in heads) else 3
    sizes = Counter(s for _, s, _ in heads)
    target = tuple(size) if size else sizes.most_common(1)[0][0]
    resized_note = ""
    if not size and len(sizes) > 1 and max(target) > MAX_SIDE_AFTER_RESIZE:
        s = MAX_SIDE_AFTER_RESIZE / max(target)
        target = (max(1, round(target[0] * s)), max(1, round(target[1] * s)))
        resized_note = f"mixed sizes: resized to {target[0]}x{target[1]} (longest side capped at {MAX_SIDE_AFTER_RESIZE})"
    need = len(heads) * target[0] * target[1] * channels
    if need > max_dataset_bytes():
        raise DataError(f"{len(heads)} images of {target[0]}x{target[1]}x{channels} need {need / 2**30:.1f} GiB; "
                        "use a smaller subset (limit) or a smaller size, or raise OOD_MAX_DATASET_BYTES")
    out = np.empty((len(heads), target[0], target[1], channels), np.uint8)
    kept: list[int] = []
    n_resized = 0
    for i, _, _ in heads:
        f = files[i]
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if (im.size[1], im.size[0]) != target:
                    im = im.resize((target[1], target[0]), Image.BILINEAR)
                    n_resized += 1
                arr = np.asarray(im, np.uint8)
        except Exception:  # noqa: BLE001 - truncated or corrupt data: skip and count
            skipped.append(str(f.relative_to(base)))
            continue
        out[len(kept)] = arr.reshape(target[0], target[1], channels)
        kept.append(i)
    meta = {"skipped": len(skipped), "skipped_files": skipped[:20], "resized": n_resized,
            "sizes_seen": len(sizes)}
    if n_resized:
        meta["resize_note"] = resized_note or f"mixed sizes: {n_resized} images resized to {target[0]}x{target[1]}"
    return out[: len(kept)], kept, meta


def _palette_gray(im: Any) -> bool:
    try:
        pal = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
        return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
    except Exception:  # noqa: BLE001
        return False


def _subsample(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, int(limit), replace=False))


def read_imagefolder(path: Path, split: str = "test", labelled: bool = True, limit: int | None = None,
                     size: tuple[int, int] | None = None) -> Read:
    path = Path(path)
    tree = _split_tree(path)
    root = tree.get(split, path) if tree else path
    classes = _class_dirs(root)
    files: list[Path] = []
    labels: list[int] = []
    names = [c.name for c in classes]
    for ci, c in enumerate(classes):
        fs = _images_in(c)
        files += fs
        labels += [ci if labelled else -1] * len(fs)
    loose = _images_in(root, recursive=False)
    if not classes or not files:
        files, labels, names = loose, [-1] * len(loose), None
        loose = []
    return _read_files(files, np.asarray(labels, np.int64), root, limit, size, names,
                       {"ignored_loose_files": len(loose)} if loose else {})


def read_flat(path: Path, limit: int | None = None, size: tuple[int, int] | None = None) -> Read:
    path = Path(path)
    files = _images_in(path)
    return _read_files(files, np.full(len(files), -1, np.int64), path, limit, size, None, {})


def _read_files(files: list[Path], labels: np.ndarray, root: Path, limit: int | None,
                size: tuple[int, int] | None, names: list[str] | None, extra: dict) -> Read:
    if not files:
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTS)})")
    idx = _subsample(len(files), limit)
    files = [files[i] for i in idx]
    labels = labels[idx]
    imgs, kept, meta = _decode_all(files, root, size)
    if not kept:
        raise DataError(f"none of the {len(files)} image files in {root} could be read "
                        f"(e.g. {', '.join(meta['skipped_files'][:3])})")
    meta.update(extra)
    meta["sample_ids"] = idx[kept]
    meta["files"] = [str(files[i].relative_to(root)) for i in kept[:5]]
    return imgs, labels[kept], names, meta


# --- zip archives ------------------------------------------------------------------

def uploads_dir() -> Path:
    from .. import cache
    d = cache.cache_dir() / "uploads" / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def unpack_zip(src: Path | bytes, dest: Path | None = None, max_bytes: int | None = None,
               max_files: int = 200_000) -> Path:
    """Unpack a zip under the cache after checking it: no absolute or ``..`` paths, no links,
    total size and per-file compression ratio within limits (zip bombs). Returns the root."""
    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    limit = max_dataset_bytes() if max_bytes is None else int(max_bytes)
    sha = hashlib.sha256(data).hexdigest()[:16]
    dest = Path(dest) if dest else uploads_dir() / sha
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError("the upload is not a valid zip archive") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > max_files:
            raise DataError(f"the zip holds {len(infos)} files, over the limit of {max_files}")
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise DataError(f"the zip unpacks to {total / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB limit "
                            "(OOD_MAX_DATASET_BYTES); register the folder by path instead")
        for i in infos:
            name = i.filename.replace("\\", "/")
            if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
                raise DataError(f"refused: the zip member {i.filename!r} points outside the archive")
            if (i.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"refused: the zip member {i.filename!r} is a symbolic link")
            if i.compress_size and i.file_size / i.compress_size > 1000 and i.file_size > 1 << 20:
                raise DataError(f"refused: {i.filename!r} expands {i.file_size // i.compress_size}x (a zip bomb?)")
        done = dest / ".complete"
        if not done.exists():
            dest.mkdir(parents=True, exist_ok=True)
            for i in infos:
                name = i.filename.replace("\\", "/")
                if "__MACOSX" in name.split("/") or Path(name).name.startswith("._"):
                    continue
                target = (dest / name).resolve()
                if not str(target).startswith(str(dest.resolve()) + os.sep):
                    raise DataError(f"refused: the zip member {i.filename!r} points outside the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(i) as fsrc, open(target, "wb") as fdst:
                    fdst.write(fsrc.read(i.file_size + 1)[: i.file_size])
            done.write_text("ok")
    # one top-level folder: that is the dataset's root
    entries = [p for p in dest.iterdir() if p.name not in (".complete", "__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    if len(entries) == 1 and entries[0].suffix.lower() in (".npz", ".mat"):
        return entries[0]
    if not entries:
        raise DataError("the zip archive is empty")
    return dest


# --- format detection and one entry point ------------------------------------------

def detect_format(path: Path) -> str:
    """The format of a local source (see the module docstring); DataError when unrecognised."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if path.is_file():
        suf = path.suffix.lower()
        if suf == ".npz":
            return "npz"
        if suf == ".mat":
            return "svhn"
        if zipfile.is_zipfile(path):
            return "zip"
        if _is_image(path):
            raise DataError(f"{path.name} is a single image; register the folder that holds it")
        raise DataError(f"{path.name}: unknown file type; expected a folder, a .npz, a .mat or a .zip")
    if (path / "cifar-10-batches-py").is_dir() or (path / "test_batch").is_file() or (path / "data_batch_1").is_file():
        return "cifar10"
    if (path / "cifar-100-python").is_dir() or ((path / "meta").is_file() and (path / "test").is_file()
                                                 and not (path / "test").is_dir()):
        return "cifar100"
    if svhn_splits(path):
        return "svhn"
    if mnist_splits(path):
        raw = str(_mnist_raw(path)).lower()
        return "fashion_mnist" if "fashion" in raw or "fashion" in path.name.lower() else "mnist"
    if _split_tree(path) or (_class_dirs(path) and any(_images_in(c) for c in _class_dirs(path))):
        return "imagefolder"
    if _images_in(path, recursive=False):
        return "flat"
    if _images_in(path):
        return "imagefolder"
    raise DataError(f"could not recognise {path}: expected CIFAR-10/100 batches, SVHN .mat files, MNIST idx files, "
                    "class folders of images, a folder of images, or a .npz")


def source_splits(path: Path, fmt: str) -> list[str]:
    path = Path(path)
    if fmt in ("cifar10", "cifar100"):
        return cifar_splits(path, fmt == "cifar100")
    if fmt == "svhn":
        return svhn_splits(path)
    if fmt in ("mnist", "fashion_mnist"):
        return mnist_splits(path)
    if fmt == "imagefolder":
        return imagefolder_splits(path)
    if fmt == "npz":
        return npz_splits(path)
    return ["test"]


def _resolve(path: Path | str, fmt: str) -> tuple[Path, str]:
    path = Path(path).expanduser()
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "zip":
        path = unpack_zip(path)
        fmt = detect_format(path)
    return path, fmt


def load_local(path: Path | str, fmt: str = "auto", split: str | None = None, limit: int | None = None,
               name: str = "local", labelled: bool = True, size: tuple[int, int] | None = None) -> ImageDataset:
    """Read one split of a local source as an :class:`ImageDataset` (nothing is registered)."""
    path, fmt = _resolve(path, fmt)
    splits = source_splits(path, fmt)
    if not splits:
        raise DataError(f"{path} has no {fmt} data files")
    sp = split or ("test" if "test" in splits else splits[0])
    if sp not in splits:
        raise DataError(f"{path} has no {sp!r} split in {fmt} format (has: {', '.join(splits)})")
    if fmt in ("imagefolder", "flat"):
        reader = read_imagefolder(path, sp, labelled, limit, size) if fmt == "imagefolder" else read_flat(path, limit, size)
        x, y, names, meta = reader
        ids = meta.pop("sample_ids")
    else:
        if fmt in ("cifar10", "cifar100"):
            x, y, names, meta = read_cifar(path, sp, fmt == "cifar100")
        elif fmt == "svhn":
            x, y, names, meta = read_svhn(path, sp)
        elif fmt in ("mnist", "fashion_mnist"):
            x, y, names, meta = read_mnist(path, sp, fmt == "fashion_mnist")
        else:
            x, y, names, meta = read_npz(path, sp)
        if not labelled:
            y = np.full(len(x), -1, np.int64)
        ids = _subsample(len(x), limit)
        if len(ids) < len(x):
            x, y = x[ids], y[ids]
        if size and tuple(x.shape[1:3]) != tuple(size):
            x = _resize_array(x, tuple(size))
        meta["skipped"] = 0
    if len(x) == 0:
        raise DataError(f"{path} holds no images")
    meta.update({"source": str(path), "format": fmt, "split": sp, "limit": limit})
    return ImageDataset(name=name, images=x, labels=y, class_names=names, sample_ids=np.asarray(ids, np.int64),
                        meta=meta, description=f"{fmt} from {path} ({sp} split, {len(x)} images)")


def _resize_array(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(x), size[0], size[1], x.shape[-1]), np.uint8)
    for i, a in enumerate(x):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out[i] = np.asarray(im.resize((size[1], size[0]), Image.BILINEAR)).reshape(size[0], size[1], -1)
    return out


# --- the registry of user datasets, persisted ------------------------------------------

def _registry_file() -> Path:
    from .. import cache
    d = cache.cache_dir() / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d / "registry.json"


def _read_saved() -> dict[str, dict]:
    from .. import cache
    return cache.read_json_dict(_registry_file())


def _write_saved(data: dict[str, dict]) -> None:
    from .. import cache
    cache.write_json_dict(_registry_file(), data)


def _builtin_names() -> set[str]:
    return {s.name for s in list_datasets() if s.embedded}


def _spec_from_entry(name: str, entry: dict) -> DatasetSpec:
    sources: dict[str, dict] = entry["sources"]
    role = entry["role"]

    def build(split: str) -> ImageDataset:
        src = sources.get(split)
        if src is None:
            raise DataError(f"dataset {name!r} has no {split!r} split")
        ds = load_local(src["path"], src["fmt"], src.get("split"), src.get("limit"),
                        name=name if split == "test" else f"{name}:{split}", labelled=src.get("labelled", True))
        ds.role = role if split == "test" else "id_train"
        ds.description = entry.get("description") or ds.description
        return ds

    splits = tuple(s for s in ("train", "test") if s in sources)
    paths = sorted({s["path"] for s in sources.values()})
    desc = entry.get("description") or f"{entry.get('format', '')} from {', '.join(paths)}"
    return DatasetSpec(name, desc, role, build, splits, embedded=False, source=", ".join(paths))


def register_local(path: Path | str, name: str, role: str, fmt: str = "auto", split: str | None = None,
                   limit: int | None = None, labelled: bool = True, description: str = "",
                   persist: bool = True, validate: bool = True) -> DatasetSpec:
    """Register a local source under ``name`` with a role; remembered across restarts.

    Roles: ``id_test`` (an ID set; a source with a training split also gives ``name:train``),
    ``id_train`` (adds the ``train`` split to the ID set ``name``), ``ood_test``, ``ood_val``,
    ``aux``. ``split`` picks the source's split for a single-split registration, ``limit``
    keeps a fixed random subset (seed 0). With ``validate`` every split is read once now,
    so a bad source fails here and not later on a page.
    """
    name = str(name).strip()
    if role not in USER_ROLES:
        raise DataError(f"role must be one of {', '.join(USER_ROLES)}; got {role!r}")
    if not name or ":" in name or "/" in name:
        raise DataError(f"dataset names must be non-empty without ':' or '/'; got {name!r}")
    if name in _builtin_names():
        raise DataError(f"{name!r} is a built-in dataset; choose another name")
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    rpath, rfmt = _resolve(path, fmt)
    splits = source_splits(rpath, rfmt)
    if not splits:
        raise DataError(f"{rpath} has no {rfmt} data files")
    if split is not None and split not in splits:
        raise DataError(f"{rpath} has no {split!r} split (has: {', '.join(splits)})")

    def src(sp: str) -> dict:
        return {"path": str(rpath.resolve()), "fmt": rfmt, "split": sp, "limit": int(limit) if limit else None,
                "labelled": bool(labelled)}

    with _LOCK:
        saved = _read_saved()
        entry = dict(saved.get(name) or {})
        old_sources = dict(entry.get("sources") or {})
        if role == "id_train":
            sp = split or ("train" if "train" in splits else splits[0])
            sources = {**old_sources, "train": src(sp)}
            new_role = entry.get("role") if entry.get("role") == "id_test" else "id_train"
        elif role == "id_test":
            if split:
                sources = {**({"train": old_sources["train"]} if "train" in old_sources else {}), "test": src(split)}
            else:
                sp_test = "test" if "test" in splits else splits[-1]
                sources = {"test": src(sp_test)}
                if "train" in splits and sp_test != "train":
                    sources["train"] = src("train")
                elif "train" in old_sources:
                    sources["train"] = old_sources["train"]
            new_role = "id_test"
        else:
            sp = split or ("test" if "test" in splits else splits[0])
            sources = {"test": src(sp)}
            new_role = role
        entry = {"role": new_role, "sources": sources, "format": rfmt,
                 "description": description or entry.get("description", "")}
        spec = _spec_from_entry(name, entry)
        if validate:
            for s in spec.splits:
                spec.build(s)  # fails here, clearly, rather than later on a page
        register(spec, replace=True)
        if persist:
            saved[name] = entry
            _write_saved(saved)
    return spec


def unregister_local(name: str) -> None:
    """Forget a user dataset (the files are not touched)."""
    with _LOCK:
        saved = _read_saved()
        if name not in saved:
            raise DataError(f"{name!r} is not a registered local dataset")
        saved.pop(name)
        _write_saved(saved)
        unregister(name)


def saved_datasets() -> dict[str, dict]:
    """The persisted registrations, ``{name: {"role", "sources", "format", "description"}}``."""
    return _read_saved()


def load_saved() -> list[str]:
    """Register every remembered local dataset whose files still exist (lazily: nothing is read yet)."""
    done = []
    builtin = _builtin_names()
    for name, entry in _read_saved().items():
        try:
            if name in builtin:
                continue
            missing = [s["path"] for s in entry["sources"].values() if not Path(s["path"]).exists()]
            if missing:
                log.warning("dataset %s not restored: %s is gone", name, missing[0])
                continue
            register(_spec_from_entry(name, entry), replace=True)
            done.append(name)
        except (KeyError, TypeError, DataError) as exc:
            log.warning("dataset %s not restored: %s", name, exc)
    return done


def register_upload(data: bytes, filename: str, name: str, role: str, **kwargs: Any) -> DatasetSpec:
    """Register uploaded bytes (a .zip or .npz): stored under the cache, then like a local path."""
    from .. import cache

    fname = Path(str(filename)).name
    suffix = Path(fname).suffix.lower()
    if len(data) > max_dataset_bytes():
        raise DataError(f"the upload is {len(data) / 2**20:.0f} MiB, over the limit; register the folder by path")
    sha = hashlib.sha256(data).hexdigest()[:16]
    zipped = data[:4] == b"PK\x03\x04"  # an .npz is a zip of .npy files too
    if suffix == ".zip" or (suffix != ".npz" and zipped and not _is_npz(data)):
        p = unpack_zip(data, uploads_dir() / sha)
    elif suffix == ".npz" or zipped:
        p = uploads_dir() / sha / "data.npz"
        if not p.exists():
            cache.atomic_write_bytes(p, data)
    else:
        raise DataError(f"{fname}: upload a .zip (of a folder in a supported format) or a .npz; "
                        "larger sets: register their folder by path")
    return register_local(p, name, role, **kwargs)


def _is_npz(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return all(n.endswith(".npy") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


# --- previews --------------------------------------------------------------------

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


# --- the CLI subcommand ------------------------------------------------------------

def _cli_hook(sub: Any) -> None:
    p = sub.add_parser("register", help="register a local dataset folder/file (remembered across restarts)")
    p.add_argument("--path", help="folder or file (.npz, .mat, .zip)")
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=USER_ROLES, default="ood_test")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS)
    p.add_argument("--split", help="which split of the source to use (default: test, or train for id_train)")
    p.add_argument("--limit", type=int, help="keep a fixed random subset of this many samples")
    p.add_argument("--unlabelled", action="store_true", help="ignore labels (folder names)")
    p.add_argument("--remove", action="store_true", help="forget the dataset NAME instead")
    p.set_defaults(fn=_cli_register)


def _cli_register(a: Any) -> int:
    if a.remove:
        unregister_local(a.name)
        print(f"removed {a.name}")
        return 0
    if not a.path:
        raise DataError("register needs --path (or --remove)")
    spec = register_local(a.path, a.name, a.role, a.fmt, a.split, a.limit, labelled=not a.unlabelled)
    from . import get_dataset

    for s in spec.splits:
        ds = get_dataset(spec.name, s)
        info = summary(ds)
        extra = f", {info['skipped']} unreadable skipped" if info["skipped"] else ""
        print(f"{ds.name}\t{spec.role if s == 'test' else 'id_train'}\t{info['images']} images {info['shape']}, "
              f"{info['classes']} classes, fingerprint {info['fingerprint']}{extra}")
    return 0


def _install_cli() -> None:
    from .. import cli

    if _cli_hook not in cli._EXTRA_COMMANDS:  # noqa: SLF001 - idempotent on re-import
        cli.add_command(_cli_hook)


_install_cli()
load_saved()
