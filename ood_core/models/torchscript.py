"""TorchScript archives (``torch.jit.save``): loading on the CPU and splitting at the head.

A TorchScript archive holds a compiled program, not Python code to run, and is read with
``torch.jit.load(map_location="cpu")`` (docs/architecture.md, "Uploads are data, not code").
Its body/head split (:func:`script_split`) gives a copy of the model an identity head.
"""
from __future__ import annotations

import copy
import warnings
from operator import attrgetter
from pathlib import Path

import torch
from torch import nn

from ..errors import first_line
from .bundle import ModelError, linear_from

def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load(map_location="cpu")`` in eval mode; a damaged archive is one ModelError line."""
    try:
        with warnings.catch_warnings():  # torch's "jit is deprecated" notice is not the user's problem
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"could not load the TorchScript archive {Path(path).name}: {first_line(exc, 200)}") from None
    return model.eval()


def script_linears(sm: torch.jit.ScriptModule) -> list[str]:
    return [n for n, m in sm.named_modules() if n and getattr(m, "original_name", "") == "Linear"]


def script_split(sm: torch.jit.ScriptModule, head: str | None) -> tuple[nn.Module, nn.Linear, str] | str:
    """Split a scripted/traced model by giving a copy an identity head.

    A TorchScript submodule cannot be swapped for ``nn.Identity`` (its type is fixed), but
    its weight can be replaced: with ``W = I`` and ``b = 0`` the copy returns the head's
    input. All other parameters are shared with the original, so nothing is duplicated.
    """
    names = script_linears(sm)
    if not names:
        return "no Linear submodule in the TorchScript model (a frozen or fully inlined graph)"
    name = head or names[-1]
    if name not in names:
        return f"no Linear layer named {name!r} in the TorchScript model (found: {', '.join(names)})"
    lin = attrgetter(name)(sm)
    w = lin.weight
    b = getattr(lin, "bias", None)
    body = copy.deepcopy(sm)
    d = int(w.shape[1])
    blin = attrgetter(name)(body)
    blin.weight = torch.eye(d, dtype=w.dtype)
    if b is not None:
        blin.bias = torch.zeros(d, dtype=b.dtype)
    head_prefix = name + "."
    for pname, p in list(sm.named_parameters()) + list(sm.named_buffers()):
        if pname.startswith(head_prefix):
            continue
        owner, _, leaf = pname.rpartition(".")
        try:
            setattr(attrgetter(owner)(body) if owner else body, leaf, p)
        except Exception:  # noqa: BLE001 - an unshareable tensor stays a private copy
            pass
    return body, linear_from(w, b), name
