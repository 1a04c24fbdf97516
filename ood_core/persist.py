"""Saved state: user datasets and uploaded models, remembered in the cache and restored explicitly.

One mechanism for both (docs/architecture.md, "Saved state"): a small JSON registry
``{key: entry}`` under the cache folder, read and written whole (atomically, through
:func:`ood_core.stores.update_json_dict`) under a lock that holds across processes; a file that
cannot be parsed is kept aside, never overwritten:

- datasets: ``<cache>/datasets/registry.json``, ``{name: entry}`` with the entry of
  :mod:`ood_core.data.registry` (paths, formats, role); the files stay where the user keeps them,
  uploads (.zip / .npz) are stored content-addressed under ``<cache>/uploads/datasets``;
- models: ``<cache>/uploads/models/registry.json``, ``{"upload:NAME@HASH": {"path", "options"}}``;
  uploaded files are stored content-addressed under ``<cache>/uploads/models``.

Nothing is restored at import time. :func:`restore_saved` (exposed to the app and the CLI as
``workbench.restore_saved()``) registers every remembered dataset and reloads every remembered
upload into :mod:`ood_core.models.loaded`, and reports what it skipped and why.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import cache, stores
from .data import DataError, DatasetSpec, unregister
from .data import registry as data_registry
from .data.safety import is_npz, max_dataset_bytes, unpack_zip, uploads_dir as dataset_uploads_dir
from .errors import UserError, first_line
from .models import ModelBundle, ModelError, loaded
from .models.files import load_model_file
from .models.formats import check_size

log = logging.getLogger(__name__)


class SavedRegistry:
    """A JSON file ``{key: entry}`` under the cache root; every change is one read-modify-write
    under a cross-process file lock (:func:`ood_core.stores.update_json_dict`)."""

    def __init__(self, kind: str, *parts: str):
        self.kind = kind  # "dataset" / "model": what the log lines and skip reasons call an entry
        self.folder = parts[:-1]
        self.filename = parts[-1]

    def path(self) -> Path:
        return cache.subdir(*self.folder) / self.filename

    def read(self) -> dict[str, dict]:
        return stores.read_json_dict(self.path())

    def update(self, change: Callable[[dict[str, dict]], Any]) -> Any:
        return stores.update_json_dict(self.path(), change)

    def put(self, key: str, entry: dict) -> None:
        self.update(lambda data: data.__setitem__(key, entry))

    def pop(self, key: str) -> dict | None:
        return self.update(lambda data: data.pop(key, None))

    def restore(self, restore_one: Callable[[str, dict], Any], skip: Callable[[str], bool] = lambda key: False,
                hint: str = "") -> tuple[list[str], dict[str, str]]:
        """Call ``restore_one(key, entry)`` for every entry (not those ``skip`` names); a user error
        or a vanished file skips that entry with a one-line reason instead of failing the rest.

        A reason is logged as a warning once, not on every later start: the entry remembers the
        reason it was last reported with (``skip_reported``), cleared when it restores again."""
        done, skipped, report = [], {}, {}
        for key, entry in self.read().items():
            if skip(key):
                continue
            try:
                restore_one(key, entry)
                done.append(key)
                if isinstance(entry, dict) and entry.get("skip_reported"):
                    report[key] = None
            except (UserError, OSError, KeyError, TypeError, AttributeError) as exc:  # a vanished file, a malformed entry
                skipped[key] = first_line(exc)
                said = isinstance(entry, dict) and entry.get("skip_reported") == skipped[key]
                log.log(logging.INFO if said else logging.WARNING, "%s %s not restored: %s%s", self.kind, key,
                        skipped[key], hint.format(key=key))
                if not said and isinstance(entry, dict):
                    report[key] = skipped[key]
        if report:
            def mark(data: dict) -> None:
                for key, why in report.items():
                    if isinstance(data.get(key), dict):
                        if why is None:
                            data[key].pop("skip_reported", None)
                        else:
                            data[key]["skip_reported"] = why
            try:
                self.update(mark)
            except stores.StorageError:  # a read-only cache: the warning simply comes again next time
                pass
        return done, skipped


DATASETS = SavedRegistry("dataset", "datasets", "registry.json")
UPLOADS = SavedRegistry("model", "uploads", "models", "registry.json")


@dataclass
class Restored:
    """What :func:`restore_saved` brought back, and what it skipped with a one-line reason each."""

    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset name or upload key -> why

    def __add__(self, other: "Restored") -> "Restored":
        return Restored(self.datasets + other.datasets, self.models + other.models, {**self.skipped, **other.skipped})


def restore_saved() -> Restored:
    """Register every remembered dataset, then reload every remembered upload not yet in memory."""
    return restore_datasets() + restore_uploads()


# --- datasets --------------------------------------------------------------------------

def register_local(path: Path | str, name: str, role: str, fmt: str = "auto", split: str | None = None,
                   limit: int | None = None, labelled: bool = True, description: str = "",
                   persist: bool = True, validate: bool = True, replace: bool = False,
                   content_hash: bool = False) -> DatasetSpec:
    """Register a local source under ``name`` (see :func:`ood_core.data.registry.add_source`) and,
    with ``persist``, remember it so :func:`restore_saved` brings it back after a restart.

    An existing name is replaced only with ``replace`` (joining the train and test splits of one
    ID set is not a replacement)."""
    name = data_registry.check_name(name)
    previous = DATASETS.read().get(name)
    data_registry.check_replace(name, role, previous, replace)
    # Reading the source (validation) happens outside the lock; the store is locked only to write.
    spec, entry = data_registry.add_source(path, name, role, fmt, split, limit, labelled, description,
                                           previous=previous, validate=validate, content_hash=content_hash)
    if persist:
        def put(saved: dict) -> None:
            if saved.get(name) != previous:  # another process registered this name meanwhile
                data_registry.check_replace(name, role, saved.get(name), replace)
            saved[name] = entry
        DATASETS.update(put)
    return spec


def register_dataset_upload(data: bytes, filename: str, name: str, role: str, **kwargs: Any) -> DatasetSpec:
    """Register uploaded bytes (a .zip or .npz): stored under the cache, then like a local path."""
    fname = Path(str(filename)).name
    suffix = Path(fname).suffix.lower()
    if len(data) > max_dataset_bytes():
        raise DataError(f"the upload is {len(data) / 2**20:.0f} MiB, over the limit; register the folder by path")
    sha = hashlib.sha256(data).hexdigest()[:16]
    zipped = data[:4] == b"PK\x03\x04"  # an .npz is a zip of .npy files too
    if suffix == ".zip" or (suffix != ".npz" and zipped and not is_npz(data)):
        p = unpack_zip(data, dataset_uploads_dir() / sha)
    elif suffix == ".npz" or zipped:
        p = dataset_uploads_dir() / sha / "data.npz"
        if not p.exists():
            stores.atomic_write_bytes(p, data)
    else:
        raise DataError(f"{fname}: upload a .zip (of a folder in a supported format) or a .npz; "
                        "larger sets: register their folder by path")
    return register_local(p, name, role, **kwargs)


def unregister_local(name: str) -> None:
    """Forget a user dataset (the files are not touched)."""
    def drop(saved: dict) -> None:
        if name not in saved:
            raise DataError(f"{name!r} is not a registered local dataset")
        saved.pop(name)
    DATASETS.update(drop)
    unregister(name)


def saved_datasets() -> dict[str, dict]:
    """The persisted registrations, ``{name: {"role", "sources", "format", "description"}}``."""
    return DATASETS.read()


def restore_datasets() -> Restored:
    """Register every remembered dataset whose files still exist (lazily: nothing is read yet)."""
    done, skipped = DATASETS.restore(data_registry.restore_entry,
                                     hint=" (said once; forget it with `register --remove --name {key}`)")
    return Restored(datasets=done, skipped=skipped)


# --- uploaded models --------------------------------------------------------------------

def model_uploads_dir() -> Path:
    return cache.subdir("uploads", "models")


def _safe_filename(name: str) -> str:
    base = Path(str(name)).name or "model"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"
    return base[:100]


def save_upload(data: bytes, filename: str, max_bytes: int | None = None) -> Path:
    """Store uploaded bytes under the cache (content-addressed); the size limit is checked first."""
    check_size(len(data), max_bytes, f"the upload {Path(str(filename)).name}")
    sha = hashlib.sha256(data).hexdigest()[:16]
    p = model_uploads_dir() / sha / _safe_filename(filename)
    if not p.exists():
        stores.atomic_write_bytes(p, data)
    return p


def saved_uploads() -> dict[str, dict]:
    """The remembered uploads, ``{key: {"path", "options"}}`` (as :func:`saved_datasets` for data)."""
    return UPLOADS.read()


def upload_init(spec: str) -> dict[str, Any]:
    """``TrainConfig``'s ``init`` and ``load`` for a remembered upload ``upload:NAME@HASH``: training starts
    from its file with the options it was loaded with (its own preprocessing), so the checkpoint written
    loads back the same way. The Train page and ``train --init upload:…`` both come here."""
    entry = saved_uploads().get(spec)
    if not entry:
        known = ", ".join(sorted(saved_uploads())) or "none"
        raise UserError(f"uploaded model {spec!r} is not remembered (remembered: {known}); upload it on the "
                        "Models & data page, or give its file with --init PATH --arch NAME")
    return {"init": entry["path"], "load": {k: v for k, v in dict(entry.get("options") or {}).items() if k != "name"}}


def upload_key(bundle: ModelBundle) -> str:
    return f"upload:{bundle.name}@{bundle.fingerprint[:8]}"


def register_upload(path: Path | str, **options: Any) -> tuple[str, ModelBundle]:
    """Load a model file, make it reachable as ``upload:NAME@HASH`` (``workbench.load_model``) and
    remember it (path + options) so :func:`restore_saved` brings it back after a restart."""
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v is not None}
    bundle = load_model_file(Path(path), **opts)
    key = upload_key(bundle)
    bundle.info["spec"] = key
    loaded.put(key, bundle)
    UPLOADS.put(key, {"path": str(Path(path).resolve()), "options": opts})
    return key, bundle


def restore_upload(key: str, entry: dict | None = None) -> ModelBundle:
    """Reload one remembered upload into memory (``workbench.load_model('upload:…')`` after a restart)."""
    entry = entry if entry is not None else UPLOADS.read().get(key)
    if not entry:
        raise ModelError(f"no uploaded model {key!r}; upload it again on the Models & Data page")
    if not Path(entry["path"]).exists():
        raise ModelError(f"the file of {key!r} is gone from the cache; upload it again")
    bundle = load_model_file(Path(entry["path"]), **entry.get("options", {}))
    bundle.info["spec"] = key
    loaded.put(key, bundle)
    return bundle


def restore_uploads() -> Restored:
    """Reload every remembered upload not yet in memory."""
    done, skipped = UPLOADS.restore(restore_upload, skip=loaded.has)
    return Restored(models=done, skipped=skipped)


def forget_upload(key: str) -> None:
    """Drop a remembered upload (the file stays in the content-addressed store)."""
    UPLOADS.pop(key)
    loaded.forget(key)
