"""The built-in dataset formats, one :class:`~.formats.Reader` class each, and :func:`load_local`.

Formats, recognised from the source's content (``fmt="auto"``, :func:`.formats.detect_dataset_format`)
or named (nothing is downloaded, nothing is unpickled freely; see :mod:`.safety`):

- ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folders,
  read with the restricted unpickler (torchvision's reader would run any pickle);
- ``svhn``: torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` (``scipy.io.loadmat``, label 10 -> 0);
- ``mnist`` / ``fashion_mnist``: the raw idx files (``MNIST/raw``, ``FashionMNIST/raw``, gzipped or not);
- ``imagefolder``: ``root/class/*.png`` or ``root/train|test|val/class/…``; ``flat``: a folder of
  images without labels; ``filelist``: a text file of ``relative/path.jpg [label]`` lines (all three
  read by :mod:`.images`, and all three **streamed**: the dataset keeps paths, never the pixels);
- ``npz``: ``x`` (N,H,W[,C]) and optional ``y``, or ``x_train``/``y_train``/``x_test``/``y_test``;
  read with ``allow_pickle=False``;
- ``zip``: an archive of any of the above, unpacked under the cache after :func:`.safety.unpack_zip`'s checks.

The classes are registered in the order :data:`.formats.FORMATS` lists them; detection asks them
by ``priority``. Registering a source under a name is :mod:`.registry`'s job; remembering it
across restarts is :mod:`ood_core.persist`'s.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError, Dataset
from .formats import FORMATS, ArrayReader, Reader, detect_dataset_format, get_reader, register_format, to_uint8
from .image_lists import read_filelist
from .images import LIST_EXTS, Read, class_dirs, has_images, imagefolder_splits, read_flat, read_imagefolder, split_tree
from .safety import npz_headers, safe_unpickle, unpack_zip

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


@register_format
class Cifar10(ArrayReader):
    name = "cifar10"
    description = "CIFAR-10 python batches: cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"
    safety = "pickles go through the restricted unpickler (plain arrays, lists, dicts; safety.safe_unpickle)"
    priority = 10
    hundred = False

    def detect(self, path: Path) -> bool:
        return path.is_dir() and ((path / "cifar-10-batches-py").is_dir() or (path / "test_batch").is_file()
                                  or (path / "data_batch_1").is_file())

    def splits(self, path: Path) -> list[str]:
        return cifar_splits(path, self.hundred)

    def arrays(self, path: Path, split: str) -> Read:
        return read_cifar(path, split, self.hundred)


@register_format
class Cifar100(Cifar10):
    name = "cifar100"
    description = "CIFAR-100 python files: cifar-100-python/ (train, test, meta); fine labels"
    priority = 11
    hundred = True

    def detect(self, path: Path) -> bool:
        return path.is_dir() and ((path / "cifar-100-python").is_dir() or (
            (path / "meta").is_file() and (path / "test").is_file() and not (path / "test").is_dir()))


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


@register_format
class Svhn(ArrayReader):
    name = "svhn"
    description = "SVHN: train_32x32.mat / test_32x32.mat / extra_32x32.mat (a folder of them, or one .mat)"
    safety = "scipy.io.loadmat reads arrays only (no code); MATLAB v7.3 (HDF5) files are refused"
    priority = 20

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() == ".mat" if path.is_file() else bool(svhn_splits(path))

    def splits(self, path: Path) -> list[str]:
        return svhn_splits(path)

    def arrays(self, path: Path, split: str) -> Read:
        return read_svhn(path, split)


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


def _fashion(path: Path) -> bool:
    return "fashion" in str(_mnist_raw(path)).lower() or "fashion" in path.name.lower()


@register_format
class Mnist(ArrayReader):
    name = "mnist"
    description = "MNIST raw idx files: MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
    safety = "the idx header's shape is checked against the bytes present (a cut file is refused)"
    priority = 30
    fashion = False

    def detect(self, path: Path) -> bool:
        return path.is_dir() and bool(mnist_splits(path)) and _fashion(path) == self.fashion

    def splits(self, path: Path) -> list[str]:
        return mnist_splits(path)

    def arrays(self, path: Path, split: str) -> Read:
        return read_mnist(path, split, self.fashion)


@register_format
class FashionMnist(Mnist):
    name = "fashion_mnist"
    description = "Fashion-MNIST raw idx files: FashionMNIST/raw/… (a path naming 'fashion')"
    fashion = True


@register_format
class ImageFolder(Reader):
    name = "imagefolder"
    description = "class folders of images, root/class/*.png, or root/train|test|val/class/… (streamed)"
    safety = "links leaving the folder and unreadable or cut images are skipped and counted; headers only are read"
    priority = 80

    def detect(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if split_tree(path) or any(has_images(c) for c in class_dirs(path)):
            return True
        # images only in folders class_dirs leaves out (``.x``, ``__x``): a tree, unless some lie at the top (flat)
        return not has_images(path, recursive=False) and has_images(path)

    def splits(self, path: Path) -> list[str]:
        return imagefolder_splits(path)

    def read(self, path: Path, split: str, *, labelled: bool = True, limit: int | None = None,
             name: str = "local", content_hash: bool = False, size: tuple[int, int] | None = None) -> Dataset:
        return read_imagefolder(path, split, labelled, limit, name, content_hash)


@register_format
class Flat(Reader):
    name = "flat"
    description = "a folder of images without labels (streamed)"
    safety = ImageFolder.safety
    priority = 85

    def detect(self, path: Path) -> bool:
        return path.is_dir() and has_images(path, recursive=False)

    def read(self, path: Path, split: str, *, labelled: bool = True, limit: int | None = None,
             name: str = "local", content_hash: bool = False, size: tuple[int, int] | None = None) -> Dataset:
        return read_flat(path, limit, name, content_hash)


@register_format
class FileList(Reader):
    name = "filelist"
    description = f"a text file ({', '.join(LIST_EXTS)}) of 'relative/path.jpg [label]' lines (streamed)"
    safety = "entries outside the list's folder, missing files and unreadable images are skipped and counted"
    priority = 90

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in LIST_EXTS

    def read(self, path: Path, split: str, *, labelled: bool = True, limit: int | None = None,
             name: str = "local", content_hash: bool = False, size: tuple[int, int] | None = None) -> Dataset:
        return read_filelist(path, labelled, limit, name, content_hash)


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


@register_format
class Npz(ArrayReader):
    name = "npz"
    description = "a .npz of x (N,H,W[,C]) and optional y, or x_train/y_train/x_test/y_test"
    safety = "headers (shapes, dtypes, total size) are checked before decompressing; allow_pickle=False"
    priority = 40

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".npz"

    def splits(self, path: Path) -> list[str]:
        return npz_splits(path)

    def arrays(self, path: Path, split: str) -> Read:
        return read_npz(path, split)


@register_format
class Zip(Reader):
    name = "zip"
    description = "a .zip of a folder in any of these formats"
    safety = "sizes, compression ratio, paths and links are checked before unpacking (safety.unpack_zip)"
    priority = 70
    container = True

    def detect(self, path: Path) -> bool:
        return path.is_file() and zipfile.is_zipfile(path)

    def unwrap(self, path: Path) -> Path:
        return unpack_zip(path)

    def splits(self, path: Path) -> list[str]:
        inner = self.unwrap(path)
        return get_reader(detect_dataset_format(inner)).splits(inner)

    def read(self, path: Path, split: str, **kw: Any) -> Dataset:
        inner = self.unwrap(path)
        return get_reader(detect_dataset_format(inner)).read(inner, split, **kw)


def source_splits(path: Path, fmt: str) -> list[str]:
    """The splits of a source in format ``fmt`` (``["test"]`` for a single set)."""
    return get_reader(fmt).splits(Path(path))


def resolve(path: Path | str, fmt: str) -> tuple[Path, str]:
    """The path to read and its format: ``auto`` detected, an archive unpacked and its content detected."""
    path = Path(path).expanduser()
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if not path.is_file() and not path.is_dir():  # never open a FIFO (blocks) or a device (endless)
        raise DataError(f"{path} is not a regular file or folder (a device, pipe or socket); "
                        "give a dataset folder or a .npz/.mat/.zip file")
    if fmt == "auto":
        fmt = detect_dataset_format(path)
    reader = get_reader(fmt)
    if reader.container:
        path = reader.unwrap(path)
        fmt = detect_dataset_format(path)
    return path, fmt


def load_local(path: Path | str, fmt: str = "auto", split: str | None = None, limit: int | None = None,
               name: str = "local", labelled: bool = True, size: tuple[int, int] | None = None,
               content_hash: bool = False) -> Dataset:
    """Read one split of a local source (nothing is registered).

    Folders and file lists come back as a :class:`~.streamed.StreamedDataset` (paths, not
    pixels; ``content_hash`` adds a hash of every file's bytes to the fingerprint); the array
    formats as an in-memory :class:`~.base.ImageDataset`, resized to ``size`` when given."""
    path, fmt = resolve(path, fmt)
    reader = get_reader(fmt)
    splits = reader.splits(path)
    if not splits:
        raise DataError(f"{path} has no {fmt} data files")
    sp = split or ("test" if "test" in splits else splits[0])
    if sp not in splits:
        raise DataError(f"{path} has no {sp!r} split in {fmt} format (has: {', '.join(splits)})")
    ds = reader.read(path, sp, labelled=labelled, limit=limit, name=name, content_hash=content_hash, size=size)
    ds.meta.update({"source": str(path), "format": fmt, "split": sp, "limit": limit})
    streamed = ", streamed from disk" if ds.streamed else ""
    ds.description = f"{fmt} from {path} ({sp} split, {len(ds)} images{streamed})"
    return ds
