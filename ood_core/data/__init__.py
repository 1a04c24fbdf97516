"""Datasets: the registry, the embedded sets, and users' sources in standard formats.

- :mod:`.base`: :class:`ImageDataset` (uint8 NHWC images, labels, sample ids, fingerprint);
- :mod:`.registry`: names -> datasets (``mnist``, ``mnist:train``, …), embedded and user sources;
- :mod:`.embedded`: the built-in MNIST digits and OOD sets, made from packaged data;
- :mod:`.readers`, :mod:`.images`: one reader per on-disk format and :func:`load_local`;
- :mod:`.safety`: the restricted unpickler, archive and size checks.

Remembering user datasets across restarts lives in :mod:`ood_core.persist` and happens only
when ``workbench.restore_saved()`` is called, never on import (docs/architecture.md).
"""
from __future__ import annotations

from .base import ROLES, DataError, ImageDataset, fingerprint_arrays
from .registry import (DEFAULT_ID, DEFAULT_OOD, DatasetSpec, get_dataset, get_spec, list_datasets, register,
                       split_name, train_name_for, unregister)

__all__ = [
    "DataError", "ImageDataset", "DatasetSpec", "ROLES", "register", "unregister", "get_dataset", "get_spec",
    "list_datasets", "fingerprint_arrays", "split_name", "train_name_for", "DEFAULT_ID", "DEFAULT_OOD",
]
