"""Datasets that stay on disk: paths, labels and a fingerprint; pixels decoded on demand.

docs/architecture.md, "Datasets". Image folders and file lists become a :class:`StreamedDataset`.
A whole pass (extraction, gradients, scoring with the model) decodes and resizes each batch in a
thread pool between forwards on a CPU, and in a torch ``DataLoader``'s worker processes for a GPU
(:func:`default_workers`); a random draw of rows (training) decodes in the same thread pool (the
decoders release the GIL); a page asks for one :meth:`~StreamedDataset.image`.

Memory is the file table (a few dozen bytes per image) plus the batches in flight, whatever N is.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..errors import first_line
from .base import DataError, Dataset, Preprocessor, RowSource
from .decoding import UnmappableImage, pixels

# Below this many rows a pass decodes in this process: starting workers costs more than it saves.
INLINE_ROWS = 256
MAX_WORKERS = 8


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str | None = None) -> int:
    """Loader worker processes: ``$OOD_NUM_WORKERS``, else one per core up to 8 for a GPU pass and
    none for a CPU pass (0: this process decodes, in :func:`decode_pool`'s threads, between forwards).

    On a CPU the forward already uses every core. A worker process decoding beside it takes a core
    away mid-forward and the forward's other thread waits for it at every barrier: on 2 cores a
    ResNet-18 pass ran at 88% of the bare forward with one worker and at 96% with the batch decoded
    by two threads before each forward (bench/streaming.py). On a GPU the forward runs elsewhere,
    decoding is the bottleneck, and worker processes overlap it with the GPU.
    """
    from ..resources import env_number

    env = env_number("OOD_NUM_WORKERS", None, "a whole number from 0", integer=True, allow_min=True)
    if env is not None:
        return int(env)
    if device is not None and torch.device(device).type == "cuda":
        return max(1, min(MAX_WORKERS, _cores()))
    return 0


_POOL: dict[int, ThreadPoolExecutor] = {}


def decode_pool() -> ThreadPoolExecutor:
    """One thread per core, shared by every in-process decode of this process (a pass without
    workers, :class:`FileRows`): both decoders release the GIL while they work. Per process id: a
    forked child inherits the executor but not its threads, and would wait on it forever."""
    pid = os.getpid()
    pool = _POOL.get(pid)
    if pool is None:
        _POOL.clear()
        pool = _POOL[pid] = ThreadPoolExecutor(max_workers=max(2, _cores()), thread_name_prefix="ood-decode")
    return pool


def decode(path: str, gray: bool) -> np.ndarray:
    """One file as uint8 ``(H, W, 1)`` (``gray``) or ``(H, W, 3)``; raises on unreadable data."""
    return _decode(path, gray).permute(1, 2, 0).numpy()


def _decode(path: str, gray: bool) -> torch.Tensor:
    """One file as a uint8 ``(C, H, W)`` tensor over an ``(H, W, C)`` buffer (channels-last, which
    the resize's fast kernel wants).

    Colour JPEGs go through torchvision's libjpeg-turbo decoder: 0.7 ms against Pillow's 1.2 ms for
    a 400x350 photo here, the largest part of a loader worker's cost, with the same pixels (RGB, CMYK
    and greyscale JPEGs, baseline and progressive: tests/data/test_streamed.py). Everything else, and
    a JPEG torchvision refuses, goes through Pillow, mapped by :func:`.decoding.pixels` (16-bit,
    float, alpha, EXIF orientation: docs/architecture.md, "Image decoding"). Greyscale output always
    does: the two libraries turn colour into grey differently."""
    if not gray:
        with open(path, "rb") as f:
            data = f.read()
        jpeg = _jpeg_decoder() if data[:3] == b"\xff\xd8\xff" else None
        if jpeg is not None:
            try:
                return jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            except RuntimeError:
                pass  # Pillow decides: it decodes what it can and raises a clear error otherwise
    from PIL import Image

    with Image.open(path) as im:
        arr = pixels(im, gray, os.path.basename(path))
    arr = arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy()  # torch wants its own buffer
    return torch.from_numpy(arr).permute(2, 0, 1)


@functools.cache
def _jpeg_decoder():  # noqa: ANN202
    """torchvision's JPEG decoder in RGB mode, EXIF orientation applied as Pillow's path applies it,
    or None where this torchvision has none.

    torchvision 0.29 deprecates its image decoders in favour of TorchCodec, which needs FFmpeg on the
    system; until they go, they are the fast path and Pillow the fallback."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def run(data: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)

    return run


class _Files(TorchDataset):
    """The worker side: decode one file and resize it (:meth:`Preprocess.pixels_one`); the main
    process finishes the batch (:meth:`Preprocess.finish`).

    Paths are one numpy bytes array, not a list of str: forked workers then share the table
    instead of copying it page by page as reference counts change.
    """

    def __init__(self, root: str, files: np.ndarray, gray: bool, pp: Preprocessor, shape: tuple[int, ...]) -> None:
        self.root, self.files, self.gray, self.pp, self.shape = root, files, gray, pp, shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        path = os.path.join(self.root, self.files[i].decode())
        try:
            x = self.pp.pixels_one(_decode(path, self.gray))  # type: ignore[attr-defined]
            return x, True
        except Exception:  # noqa: BLE001 - a file damaged after the scan: a blank input, reported by the caller
            # shaped as the decoded images are (their channels, before finish() maps them to the model's)
            return torch.zeros(self.shape, dtype=torch.uint8), False


def _threaded(ds: _Files, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A pass without worker processes: each batch decoded by the thread pool, then handed over."""
    pool = decode_pool()
    for a in range(0, len(ds), batch_size):
        got = list(pool.map(ds.__getitem__, range(a, min(len(ds), a + batch_size))))
        yield torch.stack([x for x, _ in got]), torch.tensor([ok for _, ok in got])


class StreamedDataset(Dataset):
    """Images that stay on disk (docs/architecture.md, "Datasets").

    ``files`` are paths relative to ``root``; ``sizes`` and ``mtimes`` (ns) come from the scan
    and make the fingerprint, with the labels and sample ids (and a content hash when asked).
    ``hw`` is each image's (height, width) from its header; ``gray`` whether every image is
    greyscale (then rows are one channel, as the in-memory readers give them).
    """

    streamed = True

    def __init__(self, name: str, root: str | Path, files: np.ndarray, labels: np.ndarray, sizes: np.ndarray,
                 mtimes: np.ndarray, hw: np.ndarray, gray: bool, *, description: str = "", role: str = "ood_test",
                 class_names: list[str] | None = None, sample_ids: np.ndarray | None = None,
                 meta: dict | None = None, fingerprint: str = "", content_hash: str = "") -> None:
        self.name = name
        self.root = str(root)
        self.files = np.asarray(files, dtype=np.bytes_)
        n = len(self.files)
        if n == 0:
            raise DataError(f"dataset {name!r} is empty")
        self.labels = np.asarray(labels, np.int64)
        if self.labels.shape != (n,):
            raise DataError(f"dataset {name!r}: {n} files but labels of shape {self.labels.shape}")
        self.sizes = np.asarray(sizes, np.int64)
        self.mtimes = np.asarray(mtimes, np.int64)
        self.hw = np.asarray(hw, np.int32).reshape(n, 2)
        self.gray = bool(gray)
        self.description, self.role, self.class_names = description, role, class_names
        self.sample_ids = np.arange(n, dtype=np.int64) if sample_ids is None else np.asarray(sample_ids, np.int64)
        self.meta = dict(meta or {})
        self.content_hash = content_hash
        self.fingerprint = fingerprint or self._fingerprint()
        self.failed: set[int] = set()  # rows whose file would not decode during a pass (see batches)

    def _fingerprint(self) -> str:
        """The file table, not the pixels: cheap, and it moves whenever a file does."""
        # v2: pixels by data/decoding.py (16-bit, float, alpha, EXIF orientation), so entries cached
        # with v1's pixels miss
        h = hashlib.sha256(b"streamed-v2\0")
        for a in (self.files, self.sizes, self.mtimes, self.labels, self.sample_ids):
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
        h.update(self.content_hash.encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"StreamedDataset({self.name!r}, {len(self)} files under {self.root})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.hw[0, 0]), int(self.hw[0, 1]), 1 if self.gray else 3

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[int(i)].decode())

    def image(self, i: int) -> np.ndarray:
        try:
            return decode(self.path(i), self.gray)
        except Exception as exc:  # noqa: BLE001 - changed or damaged since the scan
            raise DataError(f"{self.files[int(i)].decode()} in {self.name!r} {self._why(exc)}; "
                            "the folder may have changed — reload the dataset") from None

    @staticmethod
    def _why(exc: Exception) -> str:
        if isinstance(exc, UnmappableImage):
            return f"cannot be mapped to pixels ({str(exc).split(': ', 1)[-1]})"
        return f"cannot be read ({type(exc).__name__}: {first_line(exc, 120)})"

    def why_failed(self, i: int) -> str:
        """Why row ``i``'s file gave a blank input: the error its decode raises now (decoded again:
        a pass records only which rows failed, and a resumed pass not even that for earlier chunks)."""
        try:
            decode(self.path(i), self.gray)
        except Exception as exc:  # noqa: BLE001 - the message is the point
            return self._why(exc)
        return "could not be read during the pass (it reads now: it changed meanwhile)"

    def blank_notes(self, rows: np.ndarray | list[int], limit: int = 20) -> list[str]:
        """``"relative/path.jpg: cannot be read (…)"`` for the first ``limit`` rows that became blanks."""
        return [f"{self.files[int(r)].decode()}: {self.why_failed(int(r))}" for r in list(rows)[:limit]]

    def nbytes_decoded(self) -> int:
        return int((self.hw[:, 0].astype(np.int64) * self.hw[:, 1]).sum()) * (1 if self.gray else 3)

    def loader(self, pp: Preprocessor, batch_size: int, indices: np.ndarray | None = None,
               workers: int | None = None, device: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The uint8 batches of a pass and their decoded-ok masks, in order: a ``DataLoader`` with
        worker processes (pinned memory when the batches go to a GPU), or with no workers the
        batch decoded by :func:`decode_pool` in this process (see :func:`default_workers`)."""
        files = self.files if indices is None else self.files[np.asarray(indices)]
        shape = (1 if self.gray else 3, *pp.input_size)  # type: ignore[attr-defined]
        ds = _Files(self.root, files, self.gray, pp, shape)
        w = default_workers(device) if workers is None else max(0, int(workers))
        if len(files) <= INLINE_ROWS:
            w = 0
        if w == 0:
            return _threaded(ds, max(1, int(batch_size)))
        cuda = device is not None and torch.device(device).type == "cuda"
        kw = {"prefetch_factor": 4, "persistent_workers": False} if w else {}
        return DataLoader(ds, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=w,
                          pin_memory=cuda, drop_last=False, **kw)

    def batches(self, pp: Preprocessor, batch_size: int, indices: np.ndarray | None = None,
                workers: int | None = None, device: str | None = None) -> Iterator[torch.Tensor]:
        """Preprocessed batches in order. A file that fails to decode (damaged after the scan)
        becomes a blank input and its row goes to :attr:`failed`, which the caller reports."""
        rows = np.arange(len(self)) if indices is None else np.asarray(indices)
        start = 0
        for x, ok in self.loader(pp, batch_size, indices, workers, device):
            x = pp.finish(x)  # type: ignore[attr-defined]
            if not bool(ok.all()):
                self.failed.update(int(r) for r in rows[start: start + len(ok)][~ok.numpy()])
                x[~ok] = 0
            start += len(ok)
            yield x

    def rows(self, pp: Preprocessor) -> RowSource:
        return FileRows(self, pp)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "StreamedDataset":
        idx = np.asarray(idx)
        return StreamedDataset(name or self.name, self.root, self.files[idx], self.labels[idx], self.sizes[idx],
                               self.mtimes[idx], self.hw[idx], self.gray, description=self.description,
                               role=self.role, class_names=self.class_names, sample_ids=self.sample_ids[idx],
                               meta=dict(self.meta), content_hash=self.content_hash)


class FileRows(RowSource):
    """Preprocessed rows of a streamed set by index, decoded by a thread pool on each access."""

    def __init__(self, ds: StreamedDataset, pp: Preprocessor) -> None:
        self.ds, self.pp = ds, pp

    def __len__(self) -> int:
        return len(self.ds)

    def _one(self, i: int) -> torch.Tensor:
        try:
            return self.pp.one(_decode(self.ds.path(i), self.ds.gray))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - as in batches: blank, and remembered
            self.ds.failed.add(int(i))
            return torch.zeros(self.pp.channels, *self.pp.input_size)  # type: ignore[attr-defined]

    def __getitem__(self, idx):  # noqa: ANN001, ANN204
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx).reshape(-1)
        return torch.stack(list(decode_pool().map(self._one, idx.tolist())))

    def split(self, n: int) -> Iterator[torch.Tensor]:
        for a in range(0, len(self), n):
            yield self[slice(a, min(len(self), a + n))]


def content_sha(root: str, files: np.ndarray) -> str:
    """SHA-256 over every file's bytes, in order: the optional, thorough half of a fingerprint."""
    h = hashlib.sha256()
    for f in files:
        with open(os.path.join(root, f.decode()), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]
