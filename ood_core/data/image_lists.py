"""Image lists: text files of ``relative/path.jpg [label]`` lines (OpenOOD's ``benchmark_imglist``).

Parsed once per list and remembered under the cache by its size, mtime and inode
(:func:`parsed_list`); each distinct path is checked and stat'ed once per read, and the images
are streamed like a folder's (:mod:`.images`, docs/architecture.md, "Datasets").
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DataError
from .images import _streamed, is_image, scan_table, subsample
from .streamed import StreamedDataset


def read_filelist(path: Path, labelled: bool = True, limit: int | None = None, name: str = "local",
                  content_hash: bool = False) -> StreamedDataset:
    """A text file with one image per line, ``relative/path.jpg [label]`` (OpenOOD's image lists),
    paths relative to the list's folder (or, for a list in OpenOOD's ``benchmark_imglist/<b>/``, to
    the ``images_classic/`` or ``images_largescale/`` beside it: :func:`list_base`); ``#`` starts a
    comment, a UTF-8 byte-order mark is ignored, and the label is the last field (after a space,
    tab or comma) when it is an integer, so paths may hold spaces. Entries that leave that folder
    are skipped like links that do (docs/architecture.md, "Uploads are data, not code").

    The parse is remembered under the cache by the list's size and mtime (:func:`parsed_list`);
    the files are checked and stat'ed on every read, once per distinct path."""
    path = Path(path)
    lst = parsed_list(path)
    base = list_base(path, first=lst.first)
    ok, stats, problems = _check_entries(base, lst, path.name)
    rows_ok = ok[lst.codes]
    accepted = np.flatnonzero(rows_ok)
    outside = [problems[c] for c in lst.codes[~rows_ok][:1000]]
    n_outside = int(len(lst.codes) - len(accepted))
    if not len(accepted):
        seen = f"; skipped: {', '.join(outside[:3])}" if outside else ""
        raise DataError(f"{path.name} is not a list of image files: no line names a readable image "
                        f"(expected lines 'relative/path.jpg [label]'){seen}")
    idx = subsample(len(accepted), limit)
    rows = accepted[idx]
    codes = lst.codes[rows]
    rel = [lst.paths[c].encode() for c in codes]
    labels = lst.labels[rows] if labelled else np.full(len(rows), -1, np.int64)
    ds = _streamed(scan_table(rel, stats[codes], base), labels, idx, base, None, {"list": path.name}, outside,
                   name, content_hash, listed=True)
    if n_outside > len(outside):  # only the first 1000 names are carried; the count is exact
        ds.meta["skipped"] += n_outside - len(outside)
    return ds


LIST_CACHE_VERSION = 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
MAX_LABEL = 999_999  # class indices; a larger one is a damaged line (and would size arrays by it)
_LABELLED = re.compile(r"(.*?)[\s,]+([+-]?[0-9]+)")  # "path label": the last field, split from the right


@dataclass
class ImageList:
    """An image list parsed: its distinct paths, each line's index into them and label."""

    paths: list[str]  # distinct entries as written (relative to the list's base)
    codes: np.ndarray  # per line: index into paths
    labels: np.ndarray  # per line: label, -1 when absent
    lines: np.ndarray  # per distinct path: the line it first appears on
    unlabelled_spaced: dict[int, str]  # distinct path -> its last field, for paths with a space and no label

    @property
    def first(self) -> str | None:
        return self.paths[int(self.codes[0])] if len(self.codes) else None


def parse_entry(line: str) -> tuple[str, str | None] | None:
    """``(path, label text or None)`` of one line; None for a blank or comment line."""
    s = line.split("#", 1)[0].strip()
    if not s:
        return None
    m = _LABELLED.fullmatch(s) if s[-1] in "0123456789" else None
    if m:  # the lazy path group leaves the last separated integer to the label
        return m.group(1).rstrip(" \t,"), m.group(2)
    return s.rstrip(" \t,"), None


def parsed_list(path: Path) -> ImageList:
    """The parse of the list at ``path``, from the cache when the list's size and mtime match the
    remembered one (a 1,000,000-line list parses in seconds, and is not parsed again)."""
    from .. import cache, stores

    try:
        st = os.stat(path)
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name} is not a readable text file list ({_oserror(exc)})") from None
    # one entry per list (named by its path), holding the stamp it was parsed at: an edited list
    # replaces its entry instead of leaving the old parse behind
    # not created here: the write below does, and a cache that cannot be written only costs a parse
    cfile = cache.cache_dir() / "datasets" / "lists" / f"{hashlib.sha256(real.encode()).hexdigest()[:24]}.npz"
    stamp = np.asarray([LIST_CACHE_VERSION, st.st_size, st.st_mtime_ns, st.st_ino], np.int64)
    got = _load_parsed(cfile, stamp)
    if got is not None:
        return got
    lst = _parse_list(path)
    buf = io.BytesIO()
    amb = sorted(lst.unlabelled_spaced.items())
    np.savez(buf, stamp=stamp, paths=np.asarray(lst.paths, dtype=np.str_), codes=lst.codes, labels=lst.labels, lines=lst.lines,
             amb_idx=np.asarray([a for a, _ in amb], np.int64), amb_tok=np.asarray([t for _, t in amb], dtype=np.str_))
    try:
        stores.atomic_write_bytes(cfile, buf.getvalue())
    except Exception:  # noqa: BLE001 - a read-only cache only costs the next read its parse
        pass
    return lst


def _load_parsed(cfile: Path, stamp: np.ndarray) -> ImageList | None:
    try:
        with np.load(cfile, allow_pickle=False) as z:
            if not np.array_equal(z["stamp"], stamp):
                return None
            paths = z["paths"].tolist()
            return ImageList(paths, z["codes"], z["labels"], z["lines"],
                             dict(zip(z["amb_idx"].tolist(), z["amb_tok"].tolist())))
    except Exception:  # noqa: BLE001 - missing or damaged: parsed again, never trusted
        return None


def _oserror(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _line_at(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _parse_list(path: Path) -> ImageList:
    try:
        data = path.read_bytes()
    except OSError as exc:  # a symlink loop, a folder, no permission
        raise DataError(f"{path.name} is not a readable text file list ({_oserror(exc)})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path.name}, line {_line_at(data, nul)}: a NUL byte; an image list is "
                        "plain text (lines 'path [label]')")
    try:
        text = data.decode("utf-8-sig")  # the BOM some editors write is not part of the first path
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name}, line {_line_at(data, exc.start)}: not UTF-8 text") from None
    del data
    # The common line, "path label" without a comment or comma, takes the C-level str methods only
    # (rsplit from the right keeps spaces in paths); the rest go through parse_entry. 1,000,000
    # lines: 1.1 s here against 5.7 s through parse_entry for every line.
    lines = text.splitlines()
    fast = "#" not in text and "," not in text
    paths: list[str] = []
    labs: list[str] = []
    rows: list[int] = []
    for ln, line in enumerate(lines):
        parts = line.rsplit(None, 1) if fast else None
        if parts is None or (len(parts) == 2 and not _INTEGER.fullmatch(parts[1])):
            entry = parse_entry(line)
            if entry is None:
                continue
            paths.append(entry[0])
            labs.append(entry[1] or "")
        elif len(parts) == 2:
            paths.append(parts[0].strip())
            labs.append(parts[1])
        elif parts:
            paths.append(parts[0])
            labs.append("")
        else:
            continue
        rows.append(ln + 1)
    del lines, text
    index = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    codes = np.fromiter(map(index.__getitem__, paths), np.int64, len(paths))
    first = np.zeros(len(index), np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # each distinct path's first row
    line_of = np.asarray(rows, np.int64)
    lab = np.asarray(labs, dtype=np.str_) if labs else np.zeros(0, "U1")
    given = lab != ""
    labels = np.full(len(lab), -1, np.int64)
    if given.any():
        long = np.flatnonzero(given & (np.char.str_len(lab) > 8))  # never parse thousands of digits
        vals = lab[given].astype(np.int64) if not len(long) else None
        bad = long if vals is None else np.flatnonzero(given)[(vals < -1) | (vals > MAX_LABEL)]
        if len(bad):
            t = str(lab[bad[0]])
            raise DataError(f"{path.name}, line {int(line_of[bad[0]])}: the label {t[:20]}{'…' if len(t) > 20 else ''} "
                            f"is not a class index (0 to {MAX_LABEL:,}, or -1 for unknown)")
        labels[given] = vals
    upaths = list(index)
    spaced = {}
    for c in np.unique(codes[~given]).tolist():  # a path with a space and no label may be "path badlabel"
        if re.search(r"[\s,]", upaths[c]):
            spaced[c] = re.split(r"[\s,]+", upaths[c])[-1]
    return ImageList(upaths, codes, labels, line_of[first], spaced)


def _check_entries(base: Path, lst: ImageList, list_name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per distinct path: whether it names an image file inside ``base`` (links resolved), its
    size and mtime, and why not. Each folder is resolved once, each file stat'ed once."""
    inside = os.path.realpath(base)
    n = len(lst.paths)
    ok = np.zeros(n, bool)
    stats = np.zeros((n, 2), np.int64)
    problems = [""] * n
    dirs: dict[str, bool] = {}
    for c, rel in enumerate(lst.paths):
        why = _entry_problem(base, inside, rel, dirs, stats, c)
        if why is None:
            ok[c] = True
            continue
        if c in lst.unlabelled_spaced and not os.path.lexists(os.path.join(base, rel)):  # "path label", bad label
            raise DataError(f"{list_name}, line {int(lst.lines[c])}: the label "
                            f"{lst.unlabelled_spaced[c][:20]!r} is not an integer (lines are 'path [label]')")
        problems[c] = f"{rel} ({why})"
    return ok, stats, problems


def _entry_problem(base: Path, inside: str, rel: str, dirs: dict[str, bool], stats: np.ndarray, c: int) -> str | None:
    if os.path.isabs(rel):
        return "outside the list's folder"
    norm = os.path.normpath(rel)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return "outside the list's folder"
    d = os.path.dirname(norm)
    if d not in dirs:
        real = os.path.realpath(os.path.join(base, d))
        dirs[d] = real == inside or real.startswith(inside.rstrip(os.sep) + os.sep)
    if not dirs[d]:
        return "outside the list's folder"
    p = os.path.join(base, norm)
    try:
        st = os.lstat(p)
        if not is_image(norm):
            return "not an image file"
        if stat.S_ISLNK(st.st_mode):  # a link counts when its target is a file inside the folder
            real = os.path.realpath(p)
            if not real.startswith(inside.rstrip(os.sep) + os.sep):
                return "outside the list's folder"
            st = os.stat(p)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:  # a symlink loop, no permission, a name too long
        return f"unreadable: {_oserror(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return "not an image file"
    stats[c] = st.st_size, st.st_mtime_ns
    return None


OPENOOD_IMAGE_DIRS = ("images_classic", "images_largescale")


def list_base(path: Path, first: str | None = None) -> Path:
    """The folder a list's entries are relative to: the list's own folder, except for OpenOOD's
    layout (``ROOT/benchmark_imglist/<benchmark>/x.txt``, entries relative to ``ROOT/images_classic/``
    or ``ROOT/images_largescale/``), where the first of those holding ``first`` (the list's first
    entry) wins."""
    path = Path(path)
    if path.parent.parent.name != "benchmark_imglist":
        return path.parent
    if first is None or (path.parent / first).exists():
        return path.parent
    root = path.parent.parent.parent
    for d in OPENOOD_IMAGE_DIRS:
        if (root / d / first).exists():
            return root / d
    return path.parent
