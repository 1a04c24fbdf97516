"""The dataset interface every source satisfies, and the in-memory kind.

docs/architecture.md, "Datasets": two kinds behind one interface.

- :class:`ImageDataset` holds uint8 ``(N, H, W, C)`` images in memory: the embedded sets and the
  array formats (CIFAR, SVHN, MNIST, ``.npz``).
- :class:`~.streamed.StreamedDataset` holds file paths, labels and a fingerprint; pixels are decoded
  when a consumer asks, in ``DataLoader`` workers for whole passes (image folders, file lists).

Consumers never touch pixels directly: a pass over the data is :meth:`Dataset.batches` (preprocessed
float batches, in order), a random draw of rows is :meth:`Dataset.rows` (training), one picture for
a page is :meth:`Dataset.image`. Nothing downstream assumes an ``images`` array.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:  # the data layer hands tensors out but needs torch only when it does
    import torch

ROLES = ("id_train", "id_test", "ood_test", "ood_val", "aux", "shifted_id")
# One preprocessing callable: uint8 (N,H,W,C) -> float (N,C,h,w); ood_core.models.Preprocess is one.
Preprocessor = Callable[[np.ndarray], "torch.Tensor"]


class DataError(UserError):
    """A dataset could not be read or is unusable; the message says why and what to do."""


class Dataset:
    """What every dataset offers (docs/architecture.md, "Datasets").

    Attributes shared by both kinds: ``name``, ``labels`` (int64, -1 where unknown), ``role``,
    ``description``, ``class_names``, ``fingerprint`` (changes whenever the samples do),
    ``sample_ids`` (each row's index in its source, stable under :meth:`subset`) and ``meta``.
    """

    streamed: bool = False
    name: str
    labels: np.ndarray
    description: str
    role: str
    class_names: list[str] | None
    fingerprint: str
    sample_ids: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the images (of the first image, when sizes vary)."""
        raise NotImplementedError

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def image(self, i: int) -> np.ndarray:
        """Row ``i`` as uint8 ``(H, W, C)``, at its own size (what a page shows)."""
        raise NotImplementedError

    def images_at(self, idx: Sequence[int]) -> list[np.ndarray]:
        """Several rows as :meth:`image` gives them."""
        return [self.image(int(i)) for i in idx]

    def batches(self, pp: Preprocessor, batch_size: int, indices: np.ndarray | None = None,
                workers: int | None = None, device: str | None = None) -> Iterator["torch.Tensor"]:
        """Preprocessed float batches of the rows ``indices`` (all rows when None), in order."""
        raise NotImplementedError

    def numbered_batches(self, pp: Preprocessor, batch_size: int, **kw) -> Iterator[tuple[int, "torch.Tensor"]]:
        """``(first row, batch)`` pairs of :meth:`batches`."""
        start = 0
        for x in self.batches(pp, batch_size, **kw):
            yield start, x
            start += len(x)

    def rows(self, pp: Preprocessor) -> "RowSource":
        """Random access to preprocessed rows (``source[idx]``), for training and sampling."""
        raise NotImplementedError

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Dataset":
        """The rows ``idx`` as a dataset of the same kind (its fingerprint says which rows)."""
        raise NotImplementedError

    def nbytes_decoded(self) -> int:
        """Bytes the decoded uint8 pixels take (in memory, or if they were)."""
        h, w, c = self.shape
        return len(self) * h * w * c


class RowSource:
    """Preprocessed rows by index: ``len(src)`` and ``src[idx] -> (B, C, H, W)`` float tensor."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, idx: "torch.Tensor | np.ndarray | slice") -> "torch.Tensor":
        raise NotImplementedError


class TensorRows(RowSource):
    """Rows of one preprocessed tensor (small sets are preprocessed once and indexed)."""

    def __init__(self, x: "torch.Tensor") -> None:
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx):  # noqa: ANN001, ANN204
        import torch

        return self.x[torch.as_tensor(idx) if isinstance(idx, np.ndarray) else idx]

    def split(self, n: int):  # noqa: ANN201 - the tensor's own split, for chunked passes
        return self.x.split(n)


@dataclass
class ImageDataset(Dataset):
    """Images as uint8 ``(N, H, W, C)`` in memory plus integer labels (-1 where unknown).

    Preprocessing (resize, channels, normalisation) belongs to the model, not here,
    so one dataset serves every model.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    description: str = ""
    role: str = "ood_test"
    class_names: list[str] | None = None
    fingerprint: str = ""
    sample_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs = np.asarray(self.images)
        if imgs.ndim == 3:
            imgs = imgs[..., None]
        if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
            raise DataError(
                f"dataset {self.name!r}: images must be (N,H,W) or (N,H,W,C) with C in (1,3), got {imgs.shape}"
            )
        if imgs.shape[0] == 0:
            raise DataError(f"dataset {self.name!r} is empty")
        if imgs.dtype != np.uint8:
            raise DataError(f"dataset {self.name!r}: images must be uint8, got {imgs.dtype}")
        self.images = np.ascontiguousarray(imgs)
        labels = np.asarray(self.labels if self.labels is not None else np.full(len(imgs), -1)).astype(np.int64)
        if labels.shape != (len(imgs),):
            raise DataError(f"dataset {self.name!r}: {len(imgs)} images but labels of shape {labels.shape}")
        self.labels = labels
        if self.sample_ids is None:
            self.sample_ids = np.arange(len(imgs), dtype=np.int64)
        if not self.fingerprint:
            self.fingerprint = fingerprint_arrays(self.images, self.labels)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def image(self, i: int) -> np.ndarray:
        return self.images[int(i)]

    def batches(self, pp: Preprocessor, batch_size: int, indices: np.ndarray | None = None,
                workers: int | None = None, device: str | None = None) -> Iterator["torch.Tensor"]:
        """Slices of the array through ``pp`` in this process (no workers: the pixels are here)."""
        n = len(self) if indices is None else len(indices)
        b = max(1, int(batch_size))
        for i in range(0, n, b):
            yield pp(self.images[i: i + b] if indices is None else self.images[np.asarray(indices[i: i + b])])

    def rows(self, pp: Preprocessor) -> RowSource:
        return TensorRows(pp(self.images))

    def subset(self, idx: np.ndarray, name: str | None = None) -> "ImageDataset":
        idx = np.asarray(idx)
        return ImageDataset(
            name=name or self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            description=self.description,
            role=self.role,
            class_names=self.class_names,
            sample_ids=self.sample_ids[idx],
            meta=dict(self.meta),
        )


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
