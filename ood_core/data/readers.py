"""Datasets from a local path, one reader per format, and :func:`load_local`, the one entry point.

Formats, recognised from the folder's content (``fmt="auto"``) or named (nothing is
downloaded, nothing is unpickled freely; see :mod:`.safety`):

- ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folders,
  read with the restricted unpickler (torchvision's reader would run any pickle);
- ``svhn``: torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` (``scipy.io.loadmat``, label 10 -> 0);
- ``mnist`` / ``fashion_mnist``: the raw idx files (``MNIST/raw``, ``FashionMNIST/raw``, gzipped or not);
- ``imagefolder``: ``root/class/*.png`` or ``root/train|test|val/class/…``; ``flat``: a folder of
  images without labels; ``filelist``: a text file of ``relative/path.jpg [label]`` lines (all three
  in :mod:`.images`, and all three **streamed**: the dataset keeps paths, never the pixels);
- ``npz``: ``x`` (N,H,W[,C]) and optional ``y``, or ``x_train``/``y_train``/``x_test``/``y_test``;
  read with ``allow_pickle=False``;
- ``zip``: an archive of any of the above, unpacked under the cache after :func:`.safety.unpack_zip`'s checks.

Registering a source under a name is :mod:`.registry`'s job; remembering it across restarts
is :mod:`ood_core.persist`'s.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError, Dataset, ImageDataset
from .images import (LIST_EXTS, Read, class_dirs, images_in, imagefolder_splits, is_image, read_filelist, read_flat,
                     read_imagefolder, resize_array, split_tree, subsample)
from .safety import npz_headers, safe_unpickle, unpack_zip

FORMATS = ("auto", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagefolder", "flat", "filelist", "npz",
           "zip")
STREAMED_FORMATS = ("imagefolder", "flat", "filelist")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]



def _get(d: dict, key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


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
    return to_uint8(imgs, f.name), labels, [str(i) for i in range(10)], {"files": [f.name]}


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
    npz_headers(path)  # shapes, dtypes and the size limit, before a byte is decompressed
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
    arrays = npz_headers(path)
    sp = [s for s in ("train", "test") if f"x_{s}" in arrays]
    return sp or ["test"]


def to_uint8(x: np.ndarray, what: str) -> np.ndarray:
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
    return to_uint8(np.ascontiguousarray(x), path.name), labels, None, {"keys": sorted(a)}



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
        if suf in LIST_EXTS:
            return "filelist"
        if is_image(path):
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
    if split_tree(path) or (class_dirs(path) and any(images_in(c) for c in class_dirs(path))):
        return "imagefolder"
    if images_in(path, recursive=False):
        return "flat"
    if images_in(path):
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


def resolve(path: Path | str, fmt: str) -> tuple[Path, str]:
    path = Path(path).expanduser()
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if not path.is_file() and not path.is_dir():  # never open a FIFO (blocks) or a device (endless)
        raise DataError(f"{path} is not a regular file or folder (a device, pipe or socket); "
                        "give a dataset folder or a .npz/.mat/.zip file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "zip":
        path = unpack_zip(path)
        fmt = detect_format(path)
    return path, fmt


def load_local(path: Path | str, fmt: str = "auto", split: str | None = None, limit: int | None = None,
               name: str = "local", labelled: bool = True, size: tuple[int, int] | None = None,
               content_hash: bool = False) -> Dataset:
    """Read one split of a local source (nothing is registered).

    Folders and file lists come back as a :class:`~.streamed.StreamedDataset` (paths, not
    pixels; ``content_hash`` adds a hash of every file's bytes to the fingerprint); the array
    formats as an in-memory :class:`ImageDataset`, resized to ``size`` when given."""
    path, fmt = resolve(path, fmt)
    splits = source_splits(path, fmt)
    if not splits:
        raise DataError(f"{path} has no {fmt} data files")
    sp = split or ("test" if "test" in splits else splits[0])
    if sp not in splits:
        raise DataError(f"{path} has no {sp!r} split in {fmt} format (has: {', '.join(splits)})")
    if fmt in STREAMED_FORMATS:
        if fmt == "imagefolder":
            ds = read_imagefolder(path, sp, labelled, limit, name, content_hash)
        elif fmt == "flat":
            ds = read_flat(path, limit, name, content_hash)
        else:
            ds = read_filelist(path, labelled, limit, name, content_hash)
        ds.meta.update({"source": str(path), "format": fmt, "split": sp, "limit": limit})
        ds.description = f"{fmt} from {path} ({sp} split, {len(ds)} images, streamed from disk)"
        return ds
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
    ids = subsample(len(x), limit)
    if len(ids) < len(x):
        x, y = x[ids], y[ids]
    if size and tuple(x.shape[1:3]) != tuple(size):
        x = resize_array(x, tuple(size))
    meta["skipped"] = 0
    if len(x) == 0:
        raise DataError(f"{path} holds no images")
    meta.update({"source": str(path), "format": fmt, "split": sp, "limit": limit})
    return ImageDataset(name=name, images=x, labels=y, class_names=names, sample_ids=np.asarray(ids, np.int64),
                        meta=meta, description=f"{fmt} from {path} ({sp} split, {len(x)} images)")
