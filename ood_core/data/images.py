"""Image folders: ``root/class/*.png`` (torchvision's ImageFolder), split trees, flat folders; the
scan and streaming that image lists (:mod:`.image_lists`) share.

Folders and file lists are streamed (docs/architecture.md, "Datasets"): reading one scans the
file table and every image's header, never the pixels, and returns a
:class:`~.streamed.StreamedDataset`. Unreadable images (a bad header, a JPEG or PNG cut short)
and links leaving the folder are skipped and counted (``meta["skipped"]``); a source with no
readable image is refused. The scan of a folder is remembered under the cache per file (size
and mtime), so a second read of a million-image tree only stats the files.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .base import DataError
from .decoding import UnmappableImage, check, is_gray, orientation, transposed
from .streamed import StreamedDataset, content_sha

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LIST_EXTS = (".txt", ".lst", ".csv")
Read = tuple[np.ndarray, np.ndarray, "list[str] | None", dict]
INDEX_VERSION = 2  # 2: sizes as displayed (EXIF orientation), unmappable files (h = UNMAPPABLE)
UNMAPPABLE = -2


def is_image(p: Path | str) -> bool:
    """An image by its name: a known extension, and not hidden (``._x.png`` is macOS metadata).
    Strings go through ``os.path`` (an image list checks a million of them)."""
    name = os.path.basename(p) if isinstance(p, str) else p.name
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS and not name.startswith(".")


def images_in(folder: Path, recursive: bool = True) -> list[Path]:
    return scan_images(folder, recursive)[0]


def has_images(folder: Path, recursive: bool = True) -> bool:
    """Whether :func:`images_in` would find any, stopping at the first (format detection)."""
    return any(kind == "file" for kind, _ in _walk_images(Path(folder), recursive, Path(folder)))


def scan_images(folder: Path, recursive: bool = True, root: Path | None = None) -> tuple[list[Path], list[str]]:
    """Image files under ``folder`` and the links skipped on the way (relative to ``root``).

    Links to folders are never followed, and a link to a file counts only when its target lies
    inside ``root`` (docs/architecture.md, "Uploads are data, not code"): a dataset folder reads
    the same whatever its links point at.
    """
    files: list[Path] = []
    skipped: list[str] = []
    for kind, item in _walk_images(Path(folder), recursive, Path(root or folder)):
        if kind == "file":
            files.append(item)
        else:
            skipped.append(item)
    return sorted(files), skipped


def _walk_images(folder: Path, recursive: bool, base: Path) -> Iterator[tuple[str, Any]]:
    """``("file", path)`` for each image and ``("skipped", relative name)`` for each link left out, lazily."""
    inside = base.resolve()
    try:
        walk = os.walk(folder) if recursive else [next(os.walk(folder))]
    except StopIteration:  # unreadable or vanished folder
        return
    for dirpath, dirnames, filenames in walk:
        d = Path(dirpath)
        links = [n for n in dirnames if (d / n).is_symlink()]
        if recursive:
            for n in links:
                yield "skipped", str((d / n).relative_to(base))
        dirnames[:] = sorted(n for n in dirnames if n not in links and n != "__MACOSX")
        for n in filenames:
            p = d / n
            if not is_image(p):
                continue
            if p.is_symlink() and not (p.is_file() and p.resolve().is_relative_to(inside)):
                yield "skipped", str(p.relative_to(base))
                continue
            if p.is_file():
                yield "file", p


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


def _tail_ok(path: str) -> bool:
    """A JPEG ends with its EOI marker and a PNG with its IEND chunk; a cut file lacks them.

    Headers alone pass a truncated file, and decoding every image to find one would cost the
    whole pass, so the last 4 KB are read (trailing bytes after the marker are allowed)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jpg", ".jpeg", ".png"):
        return True
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4096))
        tail = f.read()
    return (b"\xff\xd9" in tail) if ext != ".png" else (b"IEND" in tail)


def _header(path: str) -> tuple[int, int, bool] | str | None:
    """``(height, width, greyscale)`` as displayed (EXIF orientation applied), a reason when the
    file's pixels cannot be mapped (:func:`.decoding.check`: docs/architecture.md, "Image
    decoding"), None when the file is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            gray = is_gray(im)
            if transposed(orientation(im)):
                h, w = w, h
            try:
                check(im, os.path.basename(path))
            except UnmappableImage as exc:
                return str(exc).split(": ", 1)[-1]
        if not _tail_ok(path):
            return None
        return int(h), int(w), bool(gray)
    except Exception:  # noqa: BLE001 - unreadable header: skipped and counted
        return None


def _index_file(root: Path) -> Path:
    from .. import cache

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache.subdir("datasets", "index") / f"{tag}.npz"


def _load_index(path: Path) -> dict[bytes, tuple[int, int, int, int, int]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return {}
            return {f: (int(s), int(m), int(h), int(w), int(g))
                    for f, s, m, h, w, g in zip(z["files"], z["sizes"], z["mtimes"], z["h"], z["w"], z["gray"])}
    except Exception:  # noqa: BLE001 - a missing or damaged index is rebuilt, never trusted
        return {}


def scan_files(files: list[Path], base: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Stat every file and read its header (reusing the remembered scan of files whose size and
    mtime are unchanged). Returns the kept positions, their columns and the skipped names."""
    rel = [str(f.relative_to(base)).encode() for f in files]
    stats = np.zeros((len(files), 2), np.int64)
    for i, f in enumerate(files):
        st = os.stat(f)
        stats[i] = st.st_size, st.st_mtime_ns
    return scan_table(rel, stats, base)


def scan_table(rel: list[bytes], stats: np.ndarray, base: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """:func:`scan_files` for paths relative to ``base`` already stat'ed (``stats``: size and
    mtime per row). A file listed many times (an image list may) has its header read once."""
    from .. import stores

    uniq: dict[bytes, int] = {}
    codes = np.fromiter((uniq.setdefault(r, len(uniq)) for r in rel), np.int64, len(rel))
    keys = list(uniq)
    first = np.zeros(len(keys), np.int64)
    first[codes[::-1]] = np.arange(len(rel))[::-1]  # each file's first row
    ustats = [tuple(int(v) for v in row) for row in stats[first]] if len(keys) else []
    idx_path = _index_file(base)
    known = _load_index(idx_path)
    # files whose pixels could not be mapped (h = UNMAPPABLE) are read again: the reason is not kept
    todo = [u for u, r in enumerate(keys) if known.get(r, (-1, -1))[:2] != ustats[u] or known[r][2] == UNMAPPABLE]
    heads: dict[int, tuple[int, int, bool] | str | None] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:  # I/O-bound on network storage
            for u, hd in zip(todo, pool.map(lambda u: _header(os.path.join(base, keys[u].decode())), todo)):
                heads[u] = hd
    uok = np.zeros(len(keys), bool)
    uhw = np.zeros((len(keys), 2), np.int64)
    ugray = np.zeros(len(keys), bool)
    why: list[str] = [""] * len(keys)
    for u, r in enumerate(keys):
        if u in heads:
            hd = heads[u]
        else:
            _, _, h, w, g = known[r]
            hd = None if h < 0 else (h, w, bool(g))
        if isinstance(hd, tuple):
            uok[u], uhw[u], ugray[u] = True, hd[:2], hd[2]
        else:
            why[u] = r.decode() + (f" ({hd})" if hd else "")
    if todo:  # remember this scan (unreadable files too, as h = -1) for the next read
        merged = dict(known)
        for u in todo:
            hd = heads[u]
            merged[keys[u]] = (*ustats[u], *(hd if isinstance(hd, tuple) else (UNMAPPABLE if hd else -1, -1, 0)))
        buf = io.BytesIO()
        mk = list(merged)
        cols = np.asarray([merged[k] for k in mk], np.int64).reshape(-1, 5)
        np.savez(buf, version=INDEX_VERSION, files=np.asarray(mk, dtype=np.bytes_), sizes=cols[:, 0],
                 mtimes=cols[:, 1], h=cols[:, 2], w=cols[:, 3], gray=cols[:, 4])
        try:
            stores.atomic_write_bytes(idx_path, buf.getvalue())
        except Exception:  # noqa: BLE001 - a read-only cache only costs the next scan its time
            pass
    ok = uok[codes]
    k = np.flatnonzero(ok)
    kc = codes[k]
    skipped = [why[c] for c in codes[~ok]]
    stats = np.asarray(stats, np.int64).reshape(-1, 2)
    columns = {"files": np.asarray(keys, dtype=np.bytes_)[kc] if len(k) else np.zeros(0, np.bytes_),
               "sizes": stats[k, 0], "mtimes": stats[k, 1], "hw": uhw[kc], "gray": ugray[kc]}
    return k, columns, skipped


def subsample(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DataError(f"limit must be a positive number of samples, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, int(limit), replace=False))


def read_imagefolder(path: Path, split: str = "test", labelled: bool = True, limit: int | None = None,
                     name: str = "local", content_hash: bool = False) -> StreamedDataset:
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
        labels += [ci if labelled else -1] * len(fs)
        links += skipped
    loose, skipped = scan_images(root, recursive=False)
    links += skipped
    if not classes or not files:
        files, labels, names = loose, [-1] * len(loose), None
        loose = []
    extra = {"ignored_loose_files": len(loose)} if loose else {}
    return stream_files(files, np.asarray(labels, np.int64), root, limit, names, extra, links, name, content_hash)


def read_flat(path: Path, limit: int | None = None, name: str = "local", content_hash: bool = False) -> StreamedDataset:
    path = Path(path)
    files, links = scan_images(path)
    return stream_files(files, np.full(len(files), -1, np.int64), path, limit, None, {}, links, name, content_hash)


def stream_files(files: list[Path], labels: np.ndarray, root: Path, limit: int | None, names: list[str] | None,
                 extra: dict, links: list[str] | None = None, name: str = "local",
                 content_hash: bool = False, listed: bool = False) -> StreamedDataset:
    """The streamed dataset of ``files`` (a random subset of ``limit`` with seed 0): the table
    and headers are read, the pixels are not."""
    links = links or []
    if not files:
        why = f" ({len(links)} links leaving the folder skipped)" if links else ""
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTS)}){why}")
    idx = subsample(len(files), limit)
    files = [files[i] for i in idx]
    return _streamed(scan_files(files, root), labels[idx], idx, root, names, extra, links, name, content_hash, listed)


def _streamed(scanned: tuple[np.ndarray, dict[str, np.ndarray], list[str]], labels: np.ndarray, idx: np.ndarray,
              root: Path, names: list[str] | None, extra: dict, links: list[str], name: str, content_hash: bool,
              listed: bool) -> StreamedDataset:
    """The dataset of scanned rows (:func:`scan_table`); ``idx``: each row's index in its source."""
    kept, cols, skipped = scanned
    meta: dict[str, Any] = {"skipped": len(skipped) + len(links),
                            "skipped_files": (skipped + [x if listed else f"{x} (link)" for x in links])[:20]}
    if links:
        meta["links_skipped"] = len(links)
    if not len(kept):
        raise DataError(f"none of the {len(labels)} image files in {root} could be read "
                        f"(e.g. {', '.join(meta['skipped_files'][:3])})")
    meta.update(extra)
    sizes_seen = len({(int(h), int(w)) for h, w in cols["hw"][:10000]})
    meta["sizes_seen"] = sizes_seen
    meta["files"] = [f.decode() for f in cols["files"][:5]]
    meta["streamed"] = True
    gray = bool(cols["gray"].all())
    files_kept = cols["files"]
    chash = content_sha(str(root), files_kept) if content_hash else ""
    return StreamedDataset(name, root, files_kept, labels[kept], cols["sizes"], cols["mtimes"], cols["hw"], gray,
                           class_names=names, sample_ids=np.asarray(idx[kept], np.int64), meta=meta,
                           content_hash=chash)


def resize_array(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(x), size[0], size[1], x.shape[-1]), np.uint8)
    for i, a in enumerate(x):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out[i] = np.asarray(im.resize((size[1], size[0]), Image.BILINEAR)).reshape(size[0], size[1], -1)
    return out
