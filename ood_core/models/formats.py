"""Recognising a model file by its content, and the size limit every model file passes first.

:func:`detect_model_format` tells a ``torch.export`` archive, a TorchScript archive, a workbench
checkpoint and a plain ``state_dict`` apart without loading anything (docs/architecture.md,
"Uploads are data, not code"): the zip's member names or the first byte of a legacy pickle.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from .bundle import ModelError

DEFAULT_MAX_BYTES = 1 << 30
SAVE_HINT = ("save the weights with torch.save(model.state_dict(), 'model.pt') and pick the architecture, "
             "or export the model: torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2') "
             "or torch.jit.save(torch.jit.script(model), 'model.pt')")


def max_model_bytes() -> int:
    """The upload/file size limit: ``$OOD_MAX_MODEL_BYTES`` or 1 GiB."""
    from ..resources import env_number

    return int(env_number("OOD_MAX_MODEL_BYTES", DEFAULT_MAX_BYTES, "a positive number of bytes", integer=True))


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def check_size(nbytes: int, max_bytes: int | None = None, what: str = "the model file") -> None:
    limit = max_model_bytes() if max_bytes is None else int(max_bytes)
    if nbytes > limit:
        raise ModelError(f"{what} is {human_bytes(nbytes)}, over the {human_bytes(limit)} limit; "
                         "raise it with OOD_MAX_MODEL_BYTES (or max_bytes=) if you trust the file")


def detect_model_format(path: Path) -> str:
    """``'pt2'``, ``'torchscript'``, ``'checkpoint'``, ``'state_dict'`` (a torch.save zip or
    legacy pickle) or ``'unknown'``, from the file's content."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
            return "pt2"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "checkpoint" if workbench_sidecar(path) else "state_dict"
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(2)
    # Protocol-2+ pickles start with 0x80: torch.save's legacy (pre-1.6) format.
    if head[:1] == b"\x80":
        return "checkpoint" if workbench_sidecar(path) else "state_dict"
    return "unknown"


def workbench_sidecar(path: Path) -> dict | None:
    side = Path(path).with_suffix(".json")
    if not side.exists() or side == Path(path):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "arch" in meta and "preprocess" in meta else None
