"""The one root of every user-facing error, and the two helpers every layer shares.

A :class:`UserError` means "the input was wrong, here is what to do": the app shows its
first line in a red box, the CLI prints it on stderr and exits 2. Anything that is not a
``UserError`` is a bug and keeps its traceback. Every module's error class subclasses
``UserError`` (see ``docs/architecture.md``, "Errors").
"""
from __future__ import annotations

from typing import Any

import numpy as np


class UserError(ValueError):
    """Bad input anywhere in the workbench; the message says what to do instead."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The informative line of an exception's message (its class name when empty).

    That is the first non-empty line, except for TorchScript errors, whose first line is a
    generic banner and whose real cause ("RuntimeError: mat1 and mat2 …") comes last.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return line[:limit] if limit else line


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones, recursively through dicts and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(jsonable(v) for v in value)
    return value
