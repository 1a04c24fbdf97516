"""The in-memory dataset type every source produces."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

ROLES = ("id_train", "id_test", "ood_test", "ood_val", "aux", "shifted_id")


class DataError(UserError):
    """A dataset could not be read or is unusable; the message says why and what to do."""


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, H, W, C)`` plus integer labels (-1 where unknown).

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

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

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
