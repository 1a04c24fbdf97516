"""Image folders: ``root/class/*.png`` (torchvision's ImageFolder), split trees, and flat folders.

Unreadable images are skipped and counted (``meta["skipped"]``); a source with no readable
image is refused. Images keep their size unless a folder mixes sizes, in which case all are
resized to the most common one (the longest side capped at ``MAX_SIDE_AFTER_RESIZE``).
Readers return ``(images uint8 NHWC, labels, class_names, meta)`` like the others in
:mod:`.readers`.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError
from .safety import max_dataset_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_SIDE_AFTER_RESIZE = 512
Read = tuple[np.ndarray, np.ndarray, "list[str] | None", dict]


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def images_in(folder: Path, recursive: bool = True) -> list[Path]:
    return scan_images(folder, recursive)[0]


def scan_images(folder: Path, recursive: bool = True, root: Path | None = None) -> tuple[list[Path], list[str]]:
    """Image files under ``folder`` and the links skipped on the way (relative to ``root``).

    Links to folders are never followed, and a link to a file counts only when its target lies
    inside ``root`` (docs/architecture.md, "Uploads are data, not code"): a dataset folder reads
    the same whatever its links point at.
    """
    folder = Path(folder)
    base = Path(root or folder)
    inside = base.resolve()
    files: list[Path] = []
    skipped: list[str] = []
    try:
        walk = os.walk(folder) if recursive else [next(os.walk(folder))]
    except StopIteration:  # unreadable or vanished folder
        return [], []
    for dirpath, dirnames, filenames in walk:
        d = Path(dirpath)
        links = [n for n in dirnames if (d / n).is_symlink()]
        if recursive:
            skipped += [str((d / n).relative_to(base)) for n in links]
        dirnames[:] = sorted(n for n in dirnames if n not in links and n != "__MACOSX")
        for n in filenames:
            p = d / n
            if not is_image(p):
                continue
            if p.is_symlink() and not (p.is_file() and p.resolve().is_relative_to(inside)):
                skipped.append(str(p.relative_to(base)))
                continue
            if p.is_file():
                files.append(p)
    return sorted(files), skipped


def class_dirs(folder: Path) -> list[Path]:
    """Class folders: real sub-folders (links to folders are not followed, see :func:`scan_images`)."""
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.is_symlink() and not d.name.startswith((".", "__")))


def split_tree(path: Path) -> dict[str, Path]:
    """``{"train": path/train, "test": path/test or path/val}`` when the folder is split that way."""
    subs = {d.name.lower(): d for d in class_dirs(path)}
    out = {}
    if "train" in subs:
        out["train"] = subs["train"]
    for t in ("test", "val", "valid", "validation"):
        if t in subs:
            out["test"] = subs[t]
            break
    # only a split tree when those folders themselves hold class folders or images
    if out and all(class_dirs(p) or images_in(p, False) for p in out.values()) and set(subs) <= set(out) | {
            "val", "valid", "validation", "test", "train"}:
        return out
    return {}


def imagefolder_splits(path: Path) -> list[str]:
    tree = split_tree(Path(path))
    return sorted(tree, key=lambda s: s != "train") if tree else ["test"]


def _decode_all(files: list[Path], base: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, list[int], dict]:
    """Decode images (skipping unreadable ones); resize only when sizes are mixed or ``size`` is set."""
    from PIL import Image

    heads: list[tuple[int, tuple[int, int], bool]] = []
    skipped: list[str] = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                w, h = im.size
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F") or (im.mode == "P" and _palette_gray(im))
            heads.append((i, (h, w), gray))
        except Exception:  # noqa: BLE001 - unreadable header: skip and count
            skipped.append(str(f.relative_to(base)))
    if not heads:
        return np.zeros((0, 1, 1, 1), np.uint8), [], {"skipped": len(skipped), "skipped_files": skipped[:20]}
    channels = 1 if all(g for _, _, g in heads) else 3
    sizes = Counter(s for _, s, _ in heads)
    target = tuple(size) if size else sizes.most_common(1)[0][0]
    resized_note = ""
    if not size and len(sizes) > 1 and max(target) > MAX_SIDE_AFTER_RESIZE:
        s = MAX_SIDE_AFTER_RESIZE / max(target)
        target = (max(1, round(target[0] * s)), max(1, round(target[1] * s)))
        resized_note = f"mixed sizes: resized to {target[0]}x{target[1]} (longest side capped at {MAX_SIDE_AFTER_RESIZE})"
    need = len(heads) * target[0] * target[1] * channels
    if need > max_dataset_bytes():
        raise DataError(f"{len(heads)} images of {target[0]}x{target[1]}x{channels} need {need / 2**30:.1f} GiB; "
                        "use a smaller subset (limit) or a smaller size, or raise OOD_MAX_DATASET_BYTES")
    out = np.empty((len(heads), target[0], target[1], channels), np.uint8)
    kept: list[int] = []
    n_resized = 0
    for i, _, _ in heads:
        f = files[i]
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if (im.size[1], im.size[0]) != target:
                    im = im.resize((target[1], target[0]), Image.BILINEAR)
                    n_resized += 1
                arr = np.asarray(im, np.uint8)
        except Exception:  # noqa: BLE001 - truncated or corrupt data: skip and count
            skipped.append(str(f.relative_to(base)))
            continue
        out[len(kept)] = arr.reshape(target[0], target[1], channels)
        kept.append(i)
    meta = {"skipped": len(skipped), "skipped_files": skipped[:20], "resized": n_resized,
            "sizes_seen": len(sizes)}
    if n_resized:
        meta["resize_note"] = resized_note or f"mixed sizes: {n_resized} images resized to {target[0]}x{target[1]}"
    return out[: len(kept)], kept, meta


def _palette_gray(im: Any) -> bool:
    try:
        pal = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
        return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
    except Exception:  # noqa: BLE001
        return False


def subsample(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, int(limit), replace=False))


def read_imagefolder(path: Path, split: str = "test", labelled: bool = True, limit: int | None = None,
                     size: tuple[int, int] | None = None) -> Read:
    path = Path(path)
    tree = split_tree(path)
    root = tree.get(split, path) if tree else path
    classes = class_dirs(root)
    files: list[Path] = []
    labels: list[int] = []
    names = [c.name for c in classes]
    links = [str(d.relative_to(root)) for d in root.iterdir() if d.is_symlink() and d.is_dir()]
    for ci, c in enumerate(classes):
        fs, skipped = scan_images(c, root=root)
        files += fs
        links += skipped
        labels += [ci if labelled else -1] * len(fs)
    loose, skipped = scan_images(root, recursive=False)
    links += skipped
    if not classes or not files:
        files, labels, names = loose, [-1] * len(loose), None
        loose = []
    extra = {"ignored_loose_files": len(loose)} if loose else {}
    return _read_files(files, np.asarray(labels, np.int64), root, limit, size, names, extra, links)


def read_flat(path: Path, limit: int | None = None, size: tuple[int, int] | None = None) -> Read:
    path = Path(path)
    files, links = scan_images(path)
    return _read_files(files, np.full(len(files), -1, np.int64), path, limit, size, None, {}, links)


def _read_files(files: list[Path], labels: np.ndarray, root: Path, limit: int | None,
                size: tuple[int, int] | None, names: list[str] | None, extra: dict,
                links: list[str] | None = None) -> Read:
    links = links or []
    if not files:
        why = f" ({len(links)} links leaving the folder skipped)" if links else ""
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTS)}){why}")
    idx = subsample(len(files), limit)
    files = [files[i] for i in idx]
    labels = labels[idx]
    imgs, kept, meta = _decode_all(files, root, size)
    if links:  # counted with the unreadable files, in the usual "N skipped" line
        meta["skipped"] += len(links)
        meta["skipped_files"] = (meta["skipped_files"] + [f"{x} (link)" for x in links])[:20]
        meta["links_skipped"] = len(links)
    if not kept:
        raise DataError(f"none of the {len(files)} image files in {root} could be read "
                        f"(e.g. {', '.join(meta['skipped_files'][:3])})")
    meta.update(extra)
    meta["sample_ids"] = idx[kept]
    meta["files"] = [str(files[i].relative_to(root)) for i in kept[:5]]
    return imgs, labels[kept], names, meta


def resize_array(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(x), size[0], size[1], x.shape[-1]), np.uint8)
    for i, a in enumerate(x):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out[i] = np.asarray(im.resize((size[1], size[0]), Image.BILINEAR)).reshape(size[0], size[1], -1)
    return out
