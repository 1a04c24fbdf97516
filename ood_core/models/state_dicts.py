"""Reading a ``state_dict`` safely and matching it to a named architecture.

Files are read **only** with ``torch.load(weights_only=True, map_location="cpu")``; a pickled
whole model (or any file needing other globals) is refused with a message saying what to save
instead, never unpickled (docs/architecture.md, "Uploads are data, not code"). Keys are
unwrapped from common checkpoint dicts, stripped of wrapper prefixes (``module.``,
``_orig_mod.``), renamed by the architecture's aliases, and compared by shape with every
architecture in :data:`~ood_core.models.archs.ARCHITECTURES` built on the meta device.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import first_line
from .archs import ARCHITECTURES, STATE_KEY_ALIASES, arch_info, build_arch, known_arch, structure_of
from .archs_cifar import DENSENET_NAME, family_candidates
from .bundle import ModelError, find_head
from .formats import SAVE_HINT

_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True, map_location="cpu")`` and unwrap common checkpoint dicts.

    A pickled whole model (or any file needing other globals) is refused, never unpickled.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one user message
        raise ModelError(_weights_only_message(path, exc)) from None
    return _unwrap_state(obj, Path(path).name)


def _weights_only_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m or "Weights only load failed" in text:
        what = f" (it contains a {m.group(1)} object)" if m else ""
        return (f"refused {Path(path).name}: it is a pickled Python object{what}, which could run code when loaded. "
                f"Use a file that holds only tensors: {SAVE_HINT}")
    if "TorchScript" in text:
        return f"{Path(path).name} looks like a damaged TorchScript archive: save it again with torch.jit.save"
    first = first_line(exc, 160)
    return (f"{Path(path).name} is not a PyTorch model file this workbench can read ({first}); "
            "expected a .pt2 (torch.export), a TorchScript archive or a state_dict saved with torch.save")


def _unwrap_state(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, or of the wrapper entry holding most of them: GReg saves
    ``{'epoch', 'arch', 'state_dict', 'cla_acc'}`` (``cla_acc`` may itself be a tensor), the
    low-dimensional-gradient code ``{'epoch', 'model'}``, Learning ODIN ``{'net': ...}``."""
    if isinstance(obj, dict):
        found = [{k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}]
        for key in _STATE_DICT_WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict):
                found.append({k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)})
        best = max(found, key=len)  # the top level wins ties: a plain state_dict stays as it is
        if best:
            return best
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ModelError(f"{name} holds a dict without tensors (keys: {keys}); expected a state_dict "
                         f"(name -> tensor), possibly under one of: {', '.join(_STATE_DICT_WRAPPERS)}")
    raise ModelError(f"{name} holds a {type(obj).__name__}, not a state_dict; {SAVE_HINT}")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (DataParallel's ``module.``, torch.compile's ``_orig_mod.``)."""
    changed = True
    while changed:
        changed = False
        for p in _KEY_PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


_META: dict[str, tuple[dict[str, tuple[int, ...]], str | None, str | None]] = {}
_FLOAT_KEYS: dict[str, frozenset[str]] = {}  # per structure: the entries that hold floating-point tensors
_DENSENET_ALIASES = [("linear.", "fc.")]
_META_LOCK = threading.Lock()


def _arch_meta(arch: str) -> tuple[dict[str, tuple[int, ...]], str | None, str | None]:
    """``(shapes, head weight key, stem conv key)`` of ``arch`` built with 1 class on the meta
    device: no memory and no initialisation cost, so every architecture can be compared."""
    arch = structure_of(arch)
    with _META_LOCK:
        hit = _META.get(arch)
    if hit is None:
        try:
            with torch.device("meta"):
                m = build_arch(arch, 1, arch_info(arch).channels)
        except NotImplementedError:  # a builder that computes with tensors (RegNet): build it for real
            m = build_arch(arch, 1, arch_info(arch).channels)
        sd = m.state_dict()
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        floats = frozenset(k for k, v in sd.items() if v.is_floating_point())
        found = find_head(m)
        head = f"{found[0]}.weight" if found else None
        conv = next((k for k, s in shapes.items() if len(s) == 4), None)
        hit = (shapes, head, conv)
        with _META_LOCK:
            _META[arch] = hit
            _FLOAT_KEYS[arch] = floats
    return hit


def as_float32(state: dict[str, torch.Tensor], arch: str, name: str = "state_dict"
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with the floating-point entries of ``arch`` in float32, and the dtypes that were
    cast (half, bfloat16, double: the model runs in float32, so a half-precision file loads as the
    same weights widened). An integer, boolean or quantised tensor where ``arch`` holds floats is
    refused with one line: its values are not weights this model can use as they are."""
    _arch_meta(arch)
    floats = _FLOAT_KEYS[structure_of(arch)]
    bad = [k for k in state if k in floats and not state[k].is_floating_point()]
    if bad:
        k = bad[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ModelError(f"{name} holds {str(state[k].dtype).replace('torch.', '')} tensors where {arch} has "
                         f"floating-point weights ({k}{more}); quantised or integer weights cannot be loaded, "
                         "save the float model's state_dict instead.")
    cast = sorted({str(state[k].dtype).replace("torch.", "") for k in floats
                   if k in state and state[k].dtype != torch.float32})
    if cast:
        state = {k: (v.float() if k in floats and v.dtype != torch.float32 else v) for k, v in state.items()}
    return state, cast


def _alias(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename keys spelled as in other code bases (``STATE_KEY_ALIASES``): a pattern starting
    with '.' is replaced anywhere, one without only as the key's prefix."""
    out = state
    base = structure_of(arch)
    aliases = STATE_KEY_ALIASES.get(base) or (_DENSENET_ALIASES if DENSENET_NAME.match(base) else [])
    for old, new in aliases:
        if old.startswith("."):
            out = {k.replace(old, new): v for k, v in out.items()}
        else:
            out = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in out.items()}
    head = _arch_meta(arch)[1]
    w = out.get(head) if head else None
    if w is not None and w.ndim == 4 and tuple(w.shape[2:]) == (1, 1):  # a 1x1-conv classifier is this linear map
        out = {**out, head: w.flatten(1)}
    return out


def _mismatch(state: dict[str, torch.Tensor], arch: str) -> tuple[int, list[str], list[str], list[str]]:
    """(number of problems, missing keys, unexpected keys, shape clashes) of ``state`` against ``arch``."""
    ref, head, conv = _arch_meta(arch)
    skip_dim0 = {head, head[:-len("weight")] + "bias"} if head else set()
    missing = [k for k in ref if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in ref]
    clashes = []
    for k, s in ref.items():
        if k in state:
            got = tuple(state[k].shape)
            if len(got) != len(s):
                clashes.append(k)
            elif k in skip_dim0:
                if got[1:] != s[1:]:
                    clashes.append(k)
            elif k == conv:
                if got[0] != s[0] or got[2:] != s[2:]:
                    clashes.append(k)
            elif got != s:
                clashes.append(k)
    return len(missing) + len(unexpected) + len(clashes), missing, unexpected, clashes


def similarity(state: dict[str, torch.Tensor], arch: str) -> float:
    """Jaccard index of ``state``'s and ``arch``'s (key, shape) pairs: the share of the two sets
    that agrees. The head's class count and the stem's input channels are free (the loader reads
    them from the file), ``num_batches_tracked`` does not count."""
    ref, head, conv = _arch_meta(arch)
    free0 = {head, head[:-len("weight")] + "bias"} if head else set()

    def pairs(shapes: dict[str, tuple[int, ...]]) -> set[tuple[str, tuple]]:
        out = set()
        for k, s in shapes.items():
            if k.endswith("num_batches_tracked"):
                continue
            if k in free0 and s:
                s = ("*", *s[1:])
            elif k == conv and len(s) == 4:
                s = (s[0], "*", *s[2:])
            out.add((k, tuple(s)))
        return out

    a, b = pairs(ref), pairs({k: tuple(v.shape) for k, v in state.items()})
    return len(a & b) / max(1, len(a | b))


def candidate_architectures(state: dict[str, torch.Tensor]) -> list[str]:
    """Every registered structure, then the family members the file's shapes name (``wrn16_2``)."""
    extra = family_candidates({k: tuple(v.shape) for k, v in strip_prefixes(state).items()})
    return list(dict.fromkeys([*ARCHITECTURES, *extra]))


def rank_architectures(state: dict[str, torch.Tensor], candidates: Iterable[str] | None = None
                       ) -> list[tuple[str, int, float]]:
    """``[(arch, problems, similarity)]``: exact fits first, then by :func:`similarity` (best
    first), each with the key spelling (as saved, or aliased) that fits it best."""
    state = strip_prefixes(state)
    out = []
    for arch in candidates or candidate_architectures(state):
        best = min(((_mismatch(s, arch)[0], -similarity(s, arch)) for s in (state, _alias(state, arch))))
        out.append((arch, best[0], -best[1]))
    return sorted(out, key=lambda t: (t[1] > 0, -t[2], t[1]))


def match_architectures(state: dict[str, torch.Tensor], candidates: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """Architectures ranked by how well ``state``'s keys and shapes fit them: ``[(arch, problems)]``,
    exact fits first, the others by the share of (key, shape) pairs that match (:func:`similarity`)."""
    return [(a, p) for a, p, _ in rank_architectures(state, candidates)]


def closest_text(ranked: list[tuple[str, int, float]], n: int = 3) -> str:
    """``"wrn16_2 (94% of keys and shapes match), ..."`` for a refusal."""
    return ", ".join(f"{a} ({100 * sim:.0f}% of keys and shapes match)" for a, _, sim in ranked[:n])


def state_dict_into(state: dict[str, torch.Tensor], arch: str, name: str = "state_dict") -> tuple[nn.Module, int, int]:
    """Build ``arch`` with the class count read from the head weight and load ``state`` strictly.

    Returns ``(model, num_classes, in_channels)``.
    """
    if not known_arch(arch):
        raise ModelError(f"unknown architecture {arch!r}; `python -m ood_core archs` lists them "
                         "(and the families wrn<depth>_<widen>, densenet<depth>)")
    state = strip_prefixes(state)
    n, missing, unexpected, clashes = _mismatch(state, arch)
    aliased = _alias(state, arch)
    if aliased is not state:
        alt = _mismatch(aliased, arch)
        if alt[0] < n:
            state, (n, missing, unexpected, clashes) = aliased, alt
    if n:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', …' if len(unexpected) > 3 else ''})")
        if clashes:
            k = clashes[0]
            parts.append(f"{len(clashes)} of another shape ({k}: file {tuple(state[k].shape)}, "
                         f"{arch} {_arch_meta(arch)[0][k]})")
        ranked = rank_architectures(state)
        best = [a for a, p, _ in ranked if p == 0]
        hint = (f"it fits {', '.join(best)}" if best else
                f"closest: {closest_text([r for r in ranked if r[0] != arch] or ranked)}; "
                "pick the architecture it was saved from (it is never loaded in part)")
        raise ModelError(f"{name} does not fit {arch}: {'; '.join(parts)} — {hint}")
    state, _ = as_float32(state, arch, name)
    _, head, conv = _arch_meta(arch)
    num_classes = int(state[head].shape[0]) if head and head in state else 0
    in_channels = int(state[conv].shape[1]) if conv and conv in state else 3
    if num_classes < 1:
        raise ModelError(f"could not read the class count from {name}: no head weight {head!r}")
    try:
        model = _build_assigned(arch, num_classes, in_channels, state)
    except RuntimeError as exc:
        raise ModelError(f"{name} does not fit {arch}: {_load_error(exc)}") from None
    return model.eval(), num_classes, in_channels


def _load_error(exc: BaseException) -> str:
    """The reason in ``load_state_dict``'s message: its first line is a banner ending in ':'."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return " ".join(lines[1:3])[:300]
    return first_line(exc, 300)


def _build_assigned(arch: str, num_classes: int, in_channels: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build on the meta device and adopt the file's tensors (``assign=True``): skips the random
    initialisation a real build would waste time on (about a second for a ResNet-50)."""
    with torch.device("meta"):
        try:
            model = build_arch(arch, num_classes, in_channels)
        except NotImplementedError:
            model = None
    if model is not None:
        model.load_state_dict(state, strict=True, assign=True)
        if not any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            return model
    # non-persistent buffers (or a builder that computes) need a real build
    model = build_arch(arch, num_classes, in_channels)
    model.load_state_dict(state, strict=True)
    return model
