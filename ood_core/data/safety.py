"""What keeps a dataset file from doing harm: a pickle reader that only builds arrays, archive checks, size limits.

Datasets are data, never code (docs/architecture.md, "Uploads are data, not code"): CIFAR's
Python batches are read with :func:`safe_unpickle`, whose allow-list rebuilds numpy arrays and
nothing else; zip archives are unpacked by :func:`unpack_zip` only after every member passed
the path, link and compression-ratio checks; one decoded dataset stays within
:func:`max_dataset_bytes`.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import cache
from ..errors import first_line
from ..resources import env_number
from .base import DataError


def max_dataset_bytes() -> int:
    """Memory budget for one in-memory dataset (an array format: CIFAR, SVHN, MNIST, ``.npz``) and one unpacked
    zip: ``$OOD_MAX_DATASET_BYTES`` or 4 GiB. Folders and image lists stream from disk and have no such cap.
    A value that is not a positive number of bytes is refused naming the variable (:func:`env_number`)."""
    return int(env_number("OOD_MAX_DATASET_BYTES", 4 << 30, "a positive number of bytes", integer=True))


# What zipfile can unpack: stored, deflate, bzip2, lzma (anything else raises NotImplementedError mid-unpack).
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
MAX_ZIP_DEPTH = 64  # folders inside an upload; 1,500 nested ones broke path handling with a RecursionError


# --- a pickle reader that can only build numpy arrays -------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes and numpy arrays only.

    CIFAR's python batches are pickles, and ``pickle.load`` (what torchvision uses) runs
    whatever a file names; no library offers a restricted reader, so this allow-list is
    hand-written: anything else raises instead of importing.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refused: the pickle names {module}.{name}, which a dataset file has no reason to "
                            "contain (it could run code); use the original CIFAR files or convert to .npz")
        import numpy._core.multiarray as ma  # numpy >= 2; old pickles say numpy.core

        if name == "_reconstruct":
            return ma._reconstruct  # noqa: SLF001
        if name == "scalar":
            return ma.scalar
        if module == "_codecs":
            import codecs
            return codecs.encode
        return getattr(np, name)


def safe_unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="latin1").load()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged batch file
            raise DataError(f"could not read {Path(path).name}: {type(exc).__name__}: {str(exc)[:120]}") from None



def uploads_dir() -> Path:
    """Where uploaded dataset archives are kept (content-addressed) and unpacked."""
    return cache.subdir("uploads", "datasets")


def unpack_zip(src: Path | bytes, dest: Path | None = None, max_bytes: int | None = None,
               max_files: int = 200_000) -> Path:
    """Unpack a zip under the cache after checking it: no absolute or ``..`` paths, no links,
    total size and per-file compression ratio within limits (zip bombs). Returns the root."""
    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    limit = max_dataset_bytes() if max_bytes is None else int(max_bytes)
    sha = hashlib.sha256(data).hexdigest()[:16]
    dest = Path(dest) if dest else uploads_dir() / sha
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError("the upload is not a valid zip archive") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > max_files:
            raise DataError(f"the zip holds {len(infos)} files, over the limit of {max_files}")
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise DataError(f"the zip unpacks to {total / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB limit "
                            "(OOD_MAX_DATASET_BYTES); register the folder by path instead")
        for i in infos:
            name = i.filename.replace("\\", "/")
            if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
                raise DataError(f"refused: the zip member {i.filename!r} points outside the archive")
            if (i.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"refused: the zip member {i.filename!r} is a symbolic link")
            if i.compress_size and i.file_size / i.compress_size > 1000 and i.file_size > 1 << 20:
                raise DataError(f"refused: {i.filename!r} expands {i.file_size // i.compress_size}x (a zip bomb?)")
            if i.flag_bits & 0x1:
                raise DataError(f"refused: the zip member {i.filename!r} is encrypted; upload an unencrypted zip")
            if i.compress_type not in _ZIP_METHODS:
                raise DataError(f"refused: the zip member {i.filename!r} uses compression method {i.compress_type}; "
                                "zip it again with the standard deflate method")
            if name.count("/") > MAX_ZIP_DEPTH:
                raise DataError(f"refused: the zip member {i.filename[:60]!r}… lies {name.count('/')} folders deep "
                                f"(at most {MAX_ZIP_DEPTH})")
        done = dest / ".complete"
        if not done.exists():
            fresh = not dest.exists()
            dest.mkdir(parents=True, exist_ok=True)
            try:
                _extract_members(z, infos, dest)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                # A damaged member (bad CRC, a size smaller than its data, a cut stream): nothing half-unpacked stays.
                if fresh:
                    shutil.rmtree(dest, ignore_errors=True)
                raise DataError(f"the zip archive is damaged: {first_line(exc)}; zip the folder again") from None
            done.write_text("ok")
    # one top-level folder: that is the dataset's root
    entries = [p for p in dest.iterdir() if p.name not in (".complete", "__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    if len(entries) == 1 and entries[0].suffix.lower() in (".npz", ".mat"):
        return entries[0]
    if not entries:
        raise DataError("the zip archive is empty")
    return dest


def _extract_members(z: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    """Write each member under ``dest``; reading to the end checks its CRC and declared size."""
    for i in infos:
        name = i.filename.replace("\\", "/")
        if "__MACOSX" in name.split("/") or Path(name).name.startswith("._"):
            continue
        target = (dest / name).resolve()
        if not str(target).startswith(str(dest.resolve()) + os.sep):
            raise DataError(f"refused: the zip member {i.filename!r} points outside the archive")
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(i) as fsrc, open(target, "wb") as fdst:
            # zipfile reads no further than the declared size and checks the CRC at the end, so a
            # member that holds more than it declares fails as BadZipFile ("Bad CRC-32")
            shutil.copyfileobj(fsrc, fdst, 1 << 20)


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in a .npz, read from the ``.npy`` headers only.

    Checked before anything is loaded: a file that is not a zip of ``.npy`` arrays, an object
    array, or arrays whose declared size exceeds :func:`max_dataset_bytes` (a deflated array of
    zeros is tiny on disk and huge in memory) are refused with one line.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path.name} is not a .npz (a zip of .npy arrays, as np.savez writes); "
                        "save it with np.savez(f, x=uint8_images, y=int_labels)")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[info.filename[:-4]] = (tuple(int(v) for v in shape), np.dtype(dtype))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged archive or header
        raise DataError(f"{path.name} is not a readable .npz: {type(exc).__name__}: {str(exc)[:120]}") from None
    objects = [k for k, (_, dt) in out.items() if dt.hasobject]
    if objects:
        raise DataError(f"{path.name} holds Python objects (object arrays: {', '.join(objects)}), which are refused; "
                        "save plain numeric arrays: np.savez(f, x=uint8_images, y=int_labels)")
    total = sum(int(np.prod(sh, dtype=np.float64)) * dt.itemsize for sh, dt in out.values())
    limit = max_dataset_bytes()
    if total > limit:
        big = max(out, key=lambda k: np.prod(out[k][0], dtype=np.float64) * out[k][1].itemsize)
        raise DataError(f"{path.name} declares {total / 2**20:.0f} MiB of arrays ('{big}' is {out[big][0]} "
                        f"{out[big][1]}), over the {limit / 2**20:.0f} MiB limit (OOD_MAX_DATASET_BYTES); "
                        "save a smaller subset")
    return out


def is_npz(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return all(n.endswith(".npy") for n in z.namelist())
    except zipfile.BadZipFile:
        return False
