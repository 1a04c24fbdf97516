"""Datasets: the registry, the embedded sets, and users' sources in standard formats.

- :mod:`.base`: the :class:`Dataset` interface and :class:`ImageDataset` (uint8 NHWC images in memory);
- :mod:`.streamed`: :class:`StreamedDataset` (image folders and file lists: paths, decoded on demand);
- :mod:`.registry`: names -> datasets (``mnist``, ``mnist:train``, …), embedded and user sources;
- :mod:`.embedded`: the built-in MNIST digits and OOD sets, made from packaged data;
- :mod:`.readers`, :mod:`.images`: one reader per on-disk format and :func:`load_local`;
- :mod:`.safety`: the restricted unpickler, archive and size checks.

Remembering user datasets across restarts lives in :mod:`ood_core.persist` and happens only
when ``workbench.restore_saved()`` is called, never on import (docs/architecture.md).
"""
from __future__ import annotations

from .base import ROLES, DataError, Dataset, ImageDataset, RowSource, fingerprint_arrays
from .streamed import StreamedDataset
from .registry import (DEFAULT_ID, DEFAULT_OOD, DatasetSpec, get_dataset, get_spec, list_datasets, register,
                       sample_info, set_sample, split_name, train_name_for, unregister)

__all__ = [
    "DataError", "Dataset", "ImageDataset", "StreamedDataset", "RowSource", "DatasetSpec", "ROLES", "register", "unregister", "get_dataset", "get_spec",
    "list_datasets", "fingerprint_arrays", "set_sample", "sample_info", "split_name", "train_name_for", "DEFAULT_ID", "DEFAULT_OOD",
]
