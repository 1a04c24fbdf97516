"""Dataset formats: one :class:`Reader` class per on-disk format, in one registry.

A format is declared once (docs/architecture.md, "Datasets", and "Where to add things"): a
``Reader`` subclass decorated with :func:`register_format` gives its ``name``, a one-line
``description`` of the files, the ``safety`` checks it applies before trusting a byte,
``detect(path)``, ``splits(path)`` and ``read(path, split, ...)``. :func:`detect_dataset_format`
asks the readers in ``priority`` order (ties: the order they were registered) and the first
that recognises the path names its format; :data:`FORMATS` (the CLI's ``--format`` choices,
the Models & data page's list) is ``"auto"`` and the registered names, kept up to date in place.

The built-in readers are in :mod:`.readers`; a format outside the package is one module
defining one decorated class, imported before the source is registered.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import DataError, Dataset, ImageDataset
from .images import Read, is_image, resize_array, subsample

# Priorities: the built-in readers that recognise a source by its own markers (CIFAR batch
# names, a .mat or .npz file, idx files) come first, then formats added without a priority
# (DEFAULT_PRIORITY), then the generic ones that would claim a new format's files: any zip
# archive (70), image trees (80), folders of images (85), text lists (.txt/.lst/.csv, 90).
DEFAULT_PRIORITY = 50


class Reader:
    """One on-disk dataset format. Subclass, set the class attributes, decorate with
    :func:`register_format`; :class:`ArrayReader` is the shorter path for formats read into memory."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # what the files look like, one line
    safety: ClassVar[str] = ""  # what is checked before the content is trusted, one line
    priority: ClassVar[int] = DEFAULT_PRIORITY  # lower is asked first by detect_dataset_format
    container: ClassVar[bool] = False  # an archive: unwrap() gives the folder read instead (see resolve)

    def detect(self, path: Path) -> bool:
        """Whether ``path`` (an existing file or folder) is in this format; cheap, reads no pixels."""
        raise NotImplementedError

    def splits(self, path: Path) -> list[str]:
        """The splits the source holds (``train``, ``test``, …); a single set is ``["test"]``."""
        return ["test"]

    def read(self, path: Path, split: str, *, labelled: bool = True, limit: int | None = None,
             name: str = "local", content_hash: bool = False, size: tuple[int, int] | None = None) -> Dataset:
        """One split as a :class:`Dataset` (``limit``: a fixed random subset, seed 0)."""
        raise NotImplementedError

    def unwrap(self, path: Path) -> Path:
        """A container's unpacked folder (only for ``container`` formats)."""
        raise NotImplementedError


class ArrayReader(Reader):
    """A format read whole into memory: a subclass gives :meth:`arrays`; this turns them into an
    :class:`ImageDataset` (labels dropped when unlabelled, the fixed subset, the resize)."""

    def arrays(self, path: Path, split: str) -> Read:
        """``(images (N, H, W[, C]) uint8 or floats in [0, 1], labels (N,) int or -1, class names or None, meta)``."""
        raise NotImplementedError

    def read(self, path: Path, split: str, *, labelled: bool = True, limit: int | None = None,
             name: str = "local", content_hash: bool = False, size: tuple[int, int] | None = None) -> ImageDataset:
        x, y, names, meta = self.arrays(Path(path), split)
        x = to_uint8(np.asarray(x), Path(path).name)
        y = np.asarray(y, np.int64) if labelled and y is not None else np.full(len(x), -1, np.int64)
        ids = subsample(len(x), limit)
        if len(ids) < len(x):
            x, y = x[ids], y[ids]
        if size and tuple(x.shape[1:3]) != tuple(size):
            x = resize_array(x if x.ndim == 4 else x[..., None], tuple(size))
        meta["skipped"] = 0
        if len(x) == 0:
            raise DataError(f"{path} holds no images")
        return ImageDataset(name=name, images=x, labels=y, class_names=names, sample_ids=np.asarray(ids, np.int64),
                            meta=meta)


def to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 pixels from uint8, integers in 0-255 or floats in [0, 1]; DataError naming ``what`` otherwise."""
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


_READERS: dict[str, Reader] = {}  # registration order: the order FORMATS lists them
# "auto" and the registered names: one list object updated in place, so a caller that took it
# before a format was registered (argparse's choices, the page's selectbox) still offers it.
# A plain list, not a view: Streamlit's widgets accept lists and tuples only.
FORMATS: list[str] = ["auto"]


def register_format(cls: type[Reader]) -> type[Reader]:
    """Class decorator: add a dataset format under ``cls.name`` (a later class of the same name replaces it)."""
    if not cls.name or cls.name == "auto" or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}: a format's name is a non-empty identifier other than 'auto'")
    if cls.name not in _READERS:
        FORMATS.append(cls.name)
    _READERS[cls.name] = cls()
    return cls


def unregister_format(name: str) -> None:
    """Forget a format (tests; a module that registered one and is being unloaded)."""
    if _READERS.pop(name, None) is not None:
        FORMATS.remove(name)


def get_reader(fmt: str) -> Reader:
    reader = _READERS.get(fmt)
    if reader is None:
        raise DataError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return reader


def readers() -> list[Reader]:
    """The registered readers in the order detection asks them (priority, then registration)."""
    return sorted(_READERS.values(), key=lambda r: r.priority)  # sorted() is stable: ties keep registration order




def detect_dataset_format(path: Path | str) -> str:
    """The format of a local dataset source, asked of each reader in turn; DataError when none claims it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    for reader in readers():
        if reader.detect(path):
            return reader.name
    if path.is_file():
        if is_image(path):
            raise DataError(f"{path.name} is a single image; register the folder that holds it")
        raise DataError(f"{path.name}: unknown file type; expected a folder, a .npz, a .mat or a .zip")
    raise DataError(f"could not recognise {path}: expected CIFAR-10/100 batches, SVHN .mat files, MNIST idx files, "
                    "class folders of images, a folder of images, or a .npz")
