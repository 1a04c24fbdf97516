"""Loading a user's model file safely (DESIGN.md contract 5: uploads are data, not code).

Accepted, recognised by content rather than extension:

- ``torch.export`` archives (``.pt2``): checked member by member *before*
  ``torch.export.load`` runs, because that loader falls back to plain unpickling for
  some payloads; archives with compiled code (AOTInductor) or pickled objects are refused;
- TorchScript archives (``torch.jit.save``), read with ``torch.jit.load(map_location="cpu")``;
- workbench checkpoints (``.pt`` + ``.json`` sidecar), via :func:`checkpoints.load_checkpoint`;
- ``state_dict`` files read **only** with ``torch.load(weights_only=True, map_location="cpu")``
  into an architecture from :mod:`ood_core.models.archs` (detected from the keys when not given),
  the class count read from the head weight and checked by a dry run.

Everything else, pickled whole models first, is refused with a message saying what to
save instead. Every model passes a one-batch dry run before it is handed out.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import threading
import warnings
import zipfile
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import first_line
from . import ARCHITECTURES, ModelBundle, ModelError, Preprocess, build_arch, find_head
from .archs import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, STATE_KEY_ALIASES, arch_info

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
SAVE_HINT = ("save the weights with torch.save(model.state_dict(), 'model.pt') and pick the architecture, "
             "or export the model: torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2') "
             "or torch.jit.save(torch.jit.script(model), 'model.pt')")
# Sizes tried, in order, when nothing in the file says which input the model expects.
CANDIDATE_SIZES = (32, 28, 224, 64, 96, 128, 299)
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.")


def max_model_bytes() -> int:
    """The upload/file size limit: ``$OOD_MAX_MODEL_BYTES`` or 1 GiB."""
    try:
        return int(os.environ.get("OOD_MAX_MODEL_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


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


# --- format detection -----------------------------------------------------------

def detect_format(path: Path) -> str:
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
            return "checkpoint" if _workbench_sidecar(path) else "state_dict"
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(2)
    # Protocol-2+ pickles start with 0x80: torch.save's legacy (pre-1.6) format.
    if head[:1] == b"\x80":
        return "checkpoint" if _workbench_sidecar(path) else "state_dict"
    return "unknown"


def _workbench_sidecar(path: Path) -> dict | None:
    side = Path(path).with_suffix(".json")
    if not side.exists() or side == Path(path):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "arch" in meta and "preprocess" in meta else None


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --- safe reading of state_dicts -------------------------------------------------

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
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        for key in _STATE_DICT_WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict):
                t = {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
                if t:
                    return t
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ModelError(f"{name} holds a dict without tensors (keys: {keys}); expected a state_dict "
                         f"(name -> tensor), possibly under one of: {', '.join(_STATE_DICT_WRAPPERS)}")
    raise ModelError(f"{name} holds a {type(obj).__name__}, not a state_dict; {SAVE_HINT}")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
_META_LOCK = threading.Lock()


def _arch_meta(arch: str) -> tuple[dict[str, tuple[int, ...]], str | None, str | None]:
    """``(shapes, head weight key, stem conv key)`` of ``arch`` built with 1 class on the meta
    device: no memory and no initialisation cost, so every architecture can be compared."""
    with _META_LOCK:
        hit = _META.get(arch)
    if hit is None:
        try:
            with torch.device("meta"):
                m = build_arch(arch, 1, arch_info(arch).channels)
        except NotImplementedError:  # a builder that computes with tensors (RegNet): build it for real
            m = build_arch(arch, 1, arch_info(arch).channels)
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        found = find_head(m)
        head = f"{found[0]}.weight" if found else None
        conv = next((k for k, s in shapes.items() if len(s) == 4), None)
        hit = (shapes, head, conv)
        with _META_LOCK:
            _META[arch] = hit
    return hit


def _alias(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename keys spelled as in other code bases (``STATE_KEY_ALIASES``): a pattern starting
    with '.' is replaced anywhere, one without only as the key's prefix."""
    out = state
    for old, new in STATE_KEY_ALIASES.get(arch, []):
        if old.startswith("."):
            out = {k.replace(old, new): v for k, v in out.items()}
        else:
            out = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in out.items()}
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


def match_architectures(state: dict[str, torch.Tensor], candidates: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """Architectures ranked by how well ``state``'s keys and shapes fit them: ``[(arch, problems)]``."""
    state = _strip_prefixes(state)
    out = []
    for arch in candidates or ARCHITECTURES:
        best = min(_mismatch(s, arch)[0] for s in (state, _alias(state, arch)))
        out.append((arch, best))
    return sorted(out, key=lambda t: t[1])


def state_dict_into(state: dict[str, torch.Tensor], arch: str, name: str = "state_dict") -> tuple[nn.Module, int, int]:
    """Build ``arch`` with the class count read from the head weight and load ``state`` strictly.

    Returns ``(model, num_classes, in_channels)``.
    """
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; available: {', '.join(sorted(ARCHITECTURES))}")
    state = _strip_prefixes(state)
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
        best = [a for a, p in match_architectures(state) if p == 0]
        hint = f"it fits {', '.join(best)}" if best else "pick the architecture it was saved from"
        raise ModelError(f"{name} does not fit {arch}: {'; '.join(parts)} — {hint}")
    _, head, conv = _arch_meta(arch)
    num_classes = int(state[head].shape[0]) if head and head in state else 0
    in_channels = int(state[conv].shape[1]) if conv and conv in state else 3
    if num_classes < 1:
        raise ModelError(f"could not read the class count from {name}: no head weight {head!r}")
    try:
        model = _build_assigned(arch, num_classes, in_channels, state)
    except RuntimeError as exc:
        raise ModelError(f"{name} does not fit {arch}: {first_line(exc, 200)}") from None
    return model.eval(), num_classes, in_channels


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


# --- torch.export archives ---------------------------------------------------------

_PT2_ALLOWED = re.compile(
    r"^(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id|"
    r"models/[^/]+\.json|data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+|extra/[^/]+)$"
)


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that ``torch.export.load`` would unpickle objects or load native code from.

    ``torch.export.load`` reads weights flagged ``use_pickle`` with ``weights_only=False``,
    opaque constants with ``pickle.loads`` and AOTInductor packages as shared libraries;
    we allow only plain tensor payloads and pickled payloads that pass ``weights_only=True``.
    """
    name = Path(path).name
    with zipfile.ZipFile(path) as z:
        entries = z.namelist()
        tails = {}
        for e in entries:
            tail = e.split("/", 1)[1] if "/" in e else e
            if tail.endswith("/") or not tail:
                continue
            tails[tail] = e
        bad = [t for t in tails if not _PT2_ALLOWED.match(t)]
        if bad:
            raise ModelError(f"refused {name}: the archive carries files a model exchange file does not need "
                             f"({', '.join(sorted(bad)[:3])}), e.g. compiled code; export it again with "
                             "torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')")
        for cfg_name, folder in (("data/weights/model_weights_config.json", "data/weights/"),
                                 ("data/constants/model_constants_config.json", "data/constants/")):
            if cfg_name not in tails:
                continue
            try:
                cfg = json.loads(z.read(tails[cfg_name]))
            except ValueError:
                raise ModelError(f"refused {name}: {cfg_name} is not valid JSON") from None
            for fqn, meta in (cfg.get("config") or {}).items():
                path_name = str(meta.get("path_name", ""))
                if path_name.startswith(("custom_obj", "opaque_obj")):
                    raise ModelError(f"refused {name}: constant {fqn!r} is a pickled Python object; "
                                     "export a model whose constants are tensors")
                if meta.get("use_pickle"):
                    member = tails.get(folder + path_name)
                    if member is None:
                        continue
                    _weights_only_bytes(z.read(member), name, fqn)
        for t, e in tails.items():
            if t.startswith("data/sample_inputs/") or (t.startswith(("data/weights/", "data/constants/")) and t.endswith(".pt")):
                _weights_only_bytes(z.read(e), name, t)


def _weights_only_bytes(data: bytes, name: str, what: str) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise ModelError(f"refused {name}: its payload {what!r} is a pickled Python object, not tensors; "
                         "export the model again with torch.export.save") from None


def _cpu_devices(obj: Any) -> Any:
    """Rewrite every serialised device in an export archive's JSON to the CPU."""
    if isinstance(obj, dict):
        if set(obj) <= {"type", "index"} and obj.get("type") in ("cuda", "mps", "xpu", "hip"):
            return {"type": "cpu", "index": None} if "index" in obj else {"type": "cpu"}
        return {k: _cpu_devices(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_devices(v) for v in obj]
    if isinstance(obj, str) and re.fullmatch(r"(cuda|mps|xpu)(:\d+)?", obj):
        return "cpu"
    return obj


def _pt2_on_cpu(path: Path) -> io.BytesIO | Path:
    """A GPU-exported archive rewritten so its tensors and ops live on the CPU (map_location for .pt2)."""
    if torch.cuda.is_available():
        return path
    with zipfile.ZipFile(path) as z:
        needs = False
        blobs = {}
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith(".json") and (b'"cuda' in data or b'"mps' in data or b'"xpu' in data):
                try:
                    data = json.dumps(_cpu_devices(json.loads(data))).encode()
                    needs = True
                except ValueError:
                    pass
            blobs[info] = data
    if not needs:
        return path
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info, data in blobs.items():
            out.writestr(info, data)
    buf.seek(0)
    return buf


class _Exported(nn.Module):
    """An ExportedProgram's module, usable like any model.

    ``ep.module()`` refuses ``.eval()``/``.train()``; the graph's behaviour was fixed at
    export time, so this wrapper records the mode without recursing. When the batch size
    was fixed at export, inputs run in chunks of that size (the last one padded).
    """

    def __init__(self, gm: nn.Module, batch: int | None):
        super().__init__()
        self.gm = gm
        self.batch = batch

    def train(self, mode: bool = True) -> "_Exported":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch
        if not b or x.shape[0] == b:
            return self.gm(x)
        outs = []
        for i in range(0, x.shape[0], b):
            chunk = x[i: i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            outs.append(self.gm(chunk)[:n])
        return torch.cat(outs)


class _Split(nn.Module):
    """``head(body(x))`` as one module so ``.to(device)`` moves both halves together."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h.flatten(1) if h.ndim > 2 else h)


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear sharing ``weight``/``bias`` storage (no copy)."""
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    head.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(), requires_grad=True)
    if bias is not None:
        head.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach(), requires_grad=True)
    return head


def _pt2_linear_nodes(gm: Any) -> list[tuple[Any, str, str | None]]:
    """``(node, weight_target, bias_target)`` of every linear op reading parameters, in graph order."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        tgt = str(node.target)
        if tgt.startswith("aten.linear") and len(node.args) >= 2 and getattr(node.args[1], "op", "") == "get_attr":
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            out.append((node, node.args[1].target, b.target if getattr(b, "op", "") == "get_attr" else None))
    return out


def _module_of(target: str) -> str:
    return target.rpartition(".")[0]


def _pt2_split(gm: Any, head: str | None) -> tuple[nn.Module, nn.Linear, str] | str:
    """Cut the export graph at the final linear op: (body graph module, head Linear, head name) or a reason."""
    import torch.fx as fx

    linears = _pt2_linear_nodes(gm)
    if not linears:
        return "the exported graph has no linear layer reading its own weights"
    if head:
        chosen = [t for t in linears if _module_of(t[1]) == head]
        if not chosen:
            return f"no linear layer named {head!r} in the exported graph (found: {', '.join(_module_of(t[1]) for t in linears)})"
        node, wt, bt = chosen[-1]
    else:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        flat = out.args[0]
        while isinstance(flat, (tuple, list)) and len(flat) == 1:
            flat = flat[0]
        match = [t for t in linears if t[0] is flat]
        if not match:
            return "the model's output is not produced by a linear layer (something follows the last one)"
        node, wt, bt = match[0]
    ng = fx.Graph()
    vm: dict = {}
    ng.graph_copy(gm.graph, vm, return_output_node=True)
    ng._codegen = copy.deepcopy(gm.graph._codegen)  # noqa: SLF001 - keeps the pytree calling convention
    ng.output((vm[node.args[0]],))
    body = fx.GraphModule(gm, ng)  # shares gm's parameters
    body.graph.eliminate_dead_code()
    body.recompile()
    # Drop the tensors the cut graph no longer reads (the head's, at least): a Parameter held by
    # both halves would be listed once, under body.*, and the head would seem to have none.
    used = {n.target for n in body.graph.nodes if n.op == "get_attr"}
    for pname, _ in list(body.named_parameters(remove_duplicate=False)) + list(body.named_buffers(remove_duplicate=False)):
        if pname not in used:
            owner, _, leaf = pname.rpartition(".")
            mod = body.get_submodule(owner) if owner else body
            if leaf in mod._parameters:  # noqa: SLF001
                del mod._parameters[leaf]  # noqa: SLF001
            elif leaf in mod._buffers:  # noqa: SLF001
                del mod._buffers[leaf]  # noqa: SLF001
    weight = attrgetter(wt)(gm)
    bias = attrgetter(bt)(gm) if bt else None
    return body, _linear_from(weight, bias), _module_of(wt)


def load_pt2(path: Path) -> tuple[_Exported, dict]:
    """``torch.export.load`` after the safety check; returns the wrapped module and what the graph says."""
    check_pt2_archive(path)
    src = _pt2_on_cpu(path)
    try:
        ep = torch.export.load(src)
        gm = ep.module()
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"could not load the torch.export archive {Path(path).name}: "
                         f"{type(exc).__name__}: {first_line(exc, 200)}") from None
    # torch.export.load hands parameters back frozen; gradient-based detectors need them trainable
    for p in gm.parameters():
        p.requires_grad_(True)
    facts: dict[str, Any] = {}
    shapes = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    if len(shapes) != 1 or not hasattr(shapes[0], "shape"):
        raise ModelError(f"{Path(path).name} takes {len(shapes)} inputs; the workbench needs a model of one image batch")
    shp = shapes[0].shape
    if len(shp) != 4:
        raise ModelError(f"{Path(path).name} takes inputs of rank {len(shp)}; expected images (N, C, H, W)")
    static = [d if isinstance(d, int) else None for d in shp]
    facts["batch"] = static[0]
    facts["channels"] = static[1]
    facts["input_size"] = (static[2], static[3]) if static[2] and static[3] else None
    facts["trained_mode"] = any(
        (str(n.target).startswith("aten.batch_norm") and len(n.args) > 5 and n.args[5] is True)
        or (str(n.target).startswith("aten.dropout") and len(n.args) > 2 and n.args[2] is True)
        for n in gm.graph.nodes if n.op == "call_function")
    return _Exported(gm, static[0]), facts


# --- TorchScript -----------------------------------------------------------------------

def _script_linears(sm: torch.jit.ScriptModule) -> list[str]:
    return [n for n, m in sm.named_modules() if n and getattr(m, "original_name", "") == "Linear"]


def _script_split(sm: torch.jit.ScriptModule, head: str | None) -> tuple[nn.Module, nn.Linear, str] | str:
    """Split a scripted/traced model by giving a copy an identity head.

    A TorchScript submodule cannot be swapped for ``nn.Identity`` (its type is fixed), but
    its weight can be replaced: with ``W = I`` and ``b = 0`` the copy returns the head's
    input. All other parameters are shared with the original, so nothing is duplicated.
    """
    names = _script_linears(sm)
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
    return body, _linear_from(w, b), name


# --- preprocessing defaults ----------------------------------------------------------

def guess_preprocess(first_conv: tuple[int, ...] | None, channels: int | None = None,
                     input_size: tuple[int, int] | None = None) -> tuple[Preprocess, str]:
    """Defaults from the first convolution's weight shape ``(out, in, kh, kw)``.

    A large stem kernel (7x7) or a patch embedding (16x16) means ImageNet-style input
    (224, ImageNet mean/std); a 3x3 RGB stem means CIFAR (32); one channel means MNIST (28).
    """
    c = channels or (first_conv[1] if first_conv else 3)
    if c not in (1, 3):
        c = 3
    k = first_conv[2] if first_conv else 3
    if c == 1:
        pp, why = Preprocess(input_size or (28, 28), 1, MNIST_MEAN, MNIST_STD), "1-channel stem: MNIST-style"
    elif k >= 7:
        pp, why = Preprocess(input_size or (224, 224), 3, IMAGENET_MEAN, IMAGENET_STD), f"{k}x{k} stem: ImageNet-style"
    else:
        pp, why = Preprocess(input_size or (32, 32), 3, CIFAR_MEAN, CIFAR_STD), f"{k}x{k} RGB stem: CIFAR-style"
    return pp, why


def _override(pp: Preprocess, input_size: Sequence[int] | int | None, mean: Sequence[float] | float | None,
              std: Sequence[float] | float | None, channels: int | None) -> Preprocess:
    size = pp.input_size
    if input_size is not None:
        vals = [int(input_size)] if isinstance(input_size, (int, np.integer)) else [int(v) for v in input_size]
        if len(vals) not in (1, 2):
            raise ModelError(f"input size needs 1 or 2 integers (H [W]), got {len(vals)}")
        size = (vals[0], vals[-1])
    c = int(channels) if channels is not None else pp.channels
    m = mean if mean is not None else (pp.mean if c == pp.channels else (sum(pp.mean) / len(pp.mean),))
    s = std if std is not None else (pp.std if c == pp.channels else (sum(pp.std) / len(pp.std),))
    return Preprocess(size, c, m, s)


def dry_run(model: nn.Module, pp: Preprocess, batch: int = 2) -> torch.Tensor:
    """One forward pass on a small random batch; refuses with a short message on failure."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, pp.channels, *pp.input_size, generator=gen)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's model can raise anything
        line = first_line(exc, 200)
        if not line.startswith(type(exc).__name__):
            line = f"{type(exc).__name__}: {line}"
        raise ModelError(f"the model failed a dry run on a batch of shape {tuple(x.shape)}: "
                         f"{line} — check the input size and channels "
                         "(or the architecture)") from None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        raise ModelError(f"the model returns a {type(out).__name__} of {len(out)} tensors; "
                         "export a model whose forward returns the logits tensor only")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model's output has shape {shape} for {batch} inputs; expected logits (N, classes)")
    if out.shape[1] < 2:
        raise ModelError("the model outputs one value per sample; the workbench needs one logit per class (2 or more)")
    if not torch.isfinite(out).all():
        raise ModelError("the model's dry-run output contains NaN or inf; check the weights and the preprocessing")
    return out


def _check_classes(out_classes: int, expected: int | None, what: str = "the model") -> None:
    if expected is not None and int(expected) != out_classes:
        raise ModelError(f"{what} outputs {out_classes} logits per sample but {expected} classes were expected; "
                         "load the matching model or pick the matching ID dataset")


def _verify_split(model: nn.Module, body: nn.Module, head: nn.Linear, pp: Preprocess) -> str:
    """'' if ``head(body(x)) == model(x)`` on a random batch, else why not."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, pp.channels, *pp.input_size, generator=gen)
    try:
        with torch.no_grad():
            ref = model(x)
            h = body(x)
            got = head(h.flatten(1) if h.ndim > 2 else h)
    except Exception as exc:  # noqa: BLE001
        return f"splitting at the head failed ({first_line(exc, 120)})"
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
        return "the chosen layer is not the final one: head(features) differs from the model's output"
    return ""


# --- the entry point -------------------------------------------------------------------

def load_model_file(path: Path | str, arch: str | None = None, input_size: Sequence[int] | int | None = None,
                    mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                    channels: int | None = None, head: str | None = None, max_bytes: int | None = None,
                    num_classes: int | None = None, name: str | None = None,
                    size_hint: Sequence[int] | None = None) -> ModelBundle:
    """Load any accepted model file as a :class:`ModelBundle` (see the module docstring).

    ``input_size``/``mean``/``std``/``channels`` override the detected preprocessing,
    ``head`` names the final linear layer when it is not found automatically,
    ``num_classes`` (optional) is checked against the model's output, ``size_hint`` is
    the input size to try first when the file does not fix one (e.g. the ID images' size).
    """
    path = Path(path)
    if not path.exists() or not path.is_file():
        raise ModelError(f"no model file at {str(path)!r}")
    check_size(path.stat().st_size, max_bytes, f"{path.name}")
    fmt = detect_format(path)
    label = name or path.stem
    if fmt == "unknown":
        raise ModelError(f"{path.name} is not a model file this workbench reads; expected a .pt2 (torch.export), "
                         "a TorchScript archive (torch.jit.save) or a state_dict (torch.save(model.state_dict()))")
    if fmt == "checkpoint":
        return _load_checkpoint(path, input_size, mean, std, channels, head, num_classes)
    sha = _file_sha(path)  # after the checkpoint branch, which has its own fingerprint
    if fmt == "state_dict":
        return _load_state_dict(path, sha, label, arch, input_size, mean, std, channels, head, num_classes)
    if arch:
        log.info("architecture %s ignored for a %s archive", arch, fmt)
    return _load_archive(path, fmt, sha, label, input_size, mean, std, channels, head, num_classes, size_hint)


def _load_checkpoint(path, input_size, mean, std, channels, head, num_classes) -> ModelBundle:
    from .checkpoints import load_checkpoint

    b = load_checkpoint(path)
    pp = _override(b.preprocess, input_size, mean, std, channels)
    if pp != b.preprocess or head:
        b = ModelBundle(model=b.model, preprocess=pp, name=b.name, arch=b.arch, head_name=head,
                        class_names=b.class_names, info=b.info)
    dry_run(b.model, b.preprocess)
    _check_classes(b.num_classes, num_classes)
    b.info.setdefault("format", "workbench checkpoint")
    return b


def _load_state_dict(path, sha, label, arch, input_size, mean, std, channels, head, num_classes) -> ModelBundle:
    state = read_state_dict(path)
    notes = []
    if not arch:
        ranked = match_architectures(state)
        exact = [a for a, p in ranked if p == 0]
        if not exact:
            close = ", ".join(f"{a} ({p} differences)" for a, p in ranked[:3])
            raise ModelError(f"{path.name} is a state_dict of no known architecture (closest: {close}); "
                             "pick its architecture, or export the whole model as .pt2 / TorchScript")
        arch = exact[0]
        notes.append(f"architecture detected from the weights: {arch}"
                     + (f" (also fits {', '.join(exact[1:])})" if len(exact) > 1 else ""))
    model, n_cls, in_ch = state_dict_into(state, arch, path.name)
    if channels is not None and int(channels) != in_ch:
        raise ModelError(f"the weights' first layer takes {in_ch} channels, not {channels}; leave channels empty")
    info = arch_info(arch)
    pp = _override(info.preprocess(in_ch), input_size, mean, std, channels)
    out = dry_run(model, pp)
    if out.shape[1] != n_cls:
        raise ModelError(f"the model outputs {out.shape[1]} logits but its head weight has {n_cls} rows")
    _check_classes(n_cls, num_classes)
    fp = hashlib.sha256(f"{sha}:{arch}:{head}".encode()).hexdigest()[:20]
    bundle = ModelBundle(model=model, preprocess=pp, name=label, head_name=head, arch=arch, num_classes=n_cls,
                         fingerprint=fp)
    bundle.info.update({
        "format": "state_dict", "path": str(path), "sha256": sha, "notes": notes,
        "preprocess_source": f"defaults of {arch} ({info.label})" + (", overridden" if _overridden(input_size, mean, std, channels) else ""),
        "linear_layers": [n for n, m in model.named_modules() if isinstance(m, nn.Linear)],
    })
    return bundle


def _overridden(*vals: Any) -> bool:
    return any(v is not None for v in vals)


def _load_archive(path, fmt, sha, label, input_size, mean, std, channels, head, num_classes, size_hint) -> ModelBundle:
    notes: list[str] = []
    if fmt == "pt2":
        model, facts = load_pt2(path)
        params = list(model.gm.named_parameters())
        if facts["batch"]:
            notes.append(f"batch size fixed to {facts['batch']} at export: inputs run in chunks of {facts['batch']} "
                         "(export with a dynamic batch dimension for speed)")
        if facts["trained_mode"]:
            notes.append("exported in training mode (batch norm uses batch statistics, dropout is on); "
                         "export after model.eval() for reproducible scores")
        fixed_size, fixed_ch = facts["input_size"], facts["channels"]
        linears = [_module_of(t[1]) for t in _pt2_linear_nodes(model.gm)]
    else:
        try:
            with warnings.catch_warnings():  # torch's "jit is deprecated" notice is not the user's problem
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"could not load the TorchScript archive {path.name}: {first_line(exc, 200)}") from None
        model.eval()
        params = list(model.named_parameters())
        fixed_size, fixed_ch = None, None
        linears = _script_linears(model)
    conv = next((tuple(p.shape) for _, p in params if p.ndim == 4), None)
    if fixed_ch and channels is not None and int(channels) != fixed_ch:
        raise ModelError(f"the archive was exported for {fixed_ch}-channel inputs, not {channels}")
    if fixed_size and input_size is not None:
        want = [int(input_size)] if isinstance(input_size, int) else [int(v) for v in input_size]
        if (want[0], want[-1]) != tuple(fixed_size):
            raise ModelError(f"the archive was exported for {fixed_size[0]}x{fixed_size[1]} inputs; "
                             f"it cannot take {want[0]}x{want[-1]} (resize happens in preprocessing)")
    base, why = guess_preprocess(conv, fixed_ch or (conv[1] if conv else None), tuple(fixed_size) if fixed_size else None)
    pp = _override(base, input_size, mean, std, channels)
    source = ("input shape recorded in the archive" if fixed_size else why)
    if input_size is None and not fixed_size:
        # Nothing fixes the size: try the stem's guess, then the ID images' size, then common
        # sizes, until a dry run passes. (The guess comes first: the ID set chosen while
        # uploading is often still the default MNIST, not the model's data.)
        tried = []
        hint = [tuple(size_hint)[:2] if len(size_hint) > 1 else (size_hint[0], size_hint[0])] if size_hint else []
        sizes = [pp.input_size] + hint + [(s, s) for s in CANDIDATE_SIZES]
        out, err = None, None
        for sz in dict.fromkeys(tuple(int(v) for v in s) for s in sizes):
            cand = Preprocess(sz, pp.channels, pp.mean, pp.std)
            try:
                out = dry_run(model, cand)
                pp = cand
                break
            except ModelError as exc:
                tried.append(f"{sz[0]}x{sz[1]}")
                err = err or exc
        if out is None:
            raise ModelError(f"{err} (also tried input sizes {', '.join(tried)})")
        if tried:
            notes.append(f"input size {pp.input_size[0]}x{pp.input_size[1]} is the first that ran (tried {', '.join(tried)})")
            source += ("; input size of the ID images" if hint and tuple(pp.input_size) == tuple(hint[0])
                       else "; input size found by trying common sizes")
    else:
        out = dry_run(model, pp)
    n_cls = int(out.shape[1])
    _check_classes(n_cls, num_classes)
    split = _pt2_split(model.gm, head) if fmt == "pt2" else _script_split(model, head)
    reason = ""
    if isinstance(split, str):
        reason = split
    else:
        inner_body, head_lin, head_name = split
        body = _Exported(inner_body, model.batch) if fmt == "pt2" else inner_body
        if head_lin.weight.shape[0] != n_cls:
            reason = f"layer {head_name!r} has {head_lin.weight.shape[0]} outputs, not the model's {n_cls} logits"
        else:
            reason = _verify_split(model, body, head_lin, pp)
    if reason and head:
        raise ModelError(f"cannot use {head!r} as the feature layer: {reason}")
    fp = hashlib.sha256(f"{sha}:{head}".encode()).hexdigest()[:20]
    arch_label = "torch.export" if fmt == "pt2" else "torchscript"
    if reason:
        bundle = ModelBundle(model=model, preprocess=pp, name=label, arch=arch_label, num_classes=n_cls, fingerprint=fp,
                             body=None, head=None)
        bundle.body = bundle.head = None
        bundle.head_name = None
        bundle.feature_reason = (f"logits only: {reason}; detectors that need features or the head are disabled"
                                 + (f" — pick the final layer among: {', '.join(linears)}" if linears else ""))
    else:
        whole = _Split(body, head_lin)
        # head_name names the head inside bundle.model (gradients select parameters by it);
        # the layer's name in the user's model is kept in info["head_layer"].
        bundle = ModelBundle(model=whole, preprocess=pp, name=label, arch=arch_label, num_classes=n_cls,
                             fingerprint=fp, body=whole.body, head=whole.head, head_name="head")
        bundle.info["head_layer"] = head_name
    bundle.info.update({
        "format": "torch.export archive" if fmt == "pt2" else "TorchScript archive",
        "path": str(path), "sha256": sha, "notes": notes, "preprocess_source": source,
        "linear_layers": linears,
    })
    return bundle


# --- helpers for the page -----------------------------------------------------------

def inspect_model_file(path: Path | str, max_bytes: int | None = None) -> dict[str, Any]:
    """Cheap facts for the upload form: format, size and, for a state_dict, the architectures it fits."""
    path = Path(path)
    check_size(path.stat().st_size, max_bytes, path.name)
    fmt = detect_format(path)
    out: dict[str, Any] = {"format": fmt, "bytes": path.stat().st_size, "fits": []}
    if fmt == "state_dict":
        state = read_state_dict(path)
        ranked = match_architectures(state)
        out["fits"] = [a for a, p in ranked if p == 0]
        out["closest"] = ranked[:3]
        conv = next((tuple(v.shape) for v in _strip_prefixes(state).values() if v.ndim == 4), None)
        out["channels"] = conv[1] if conv else None
    return out


def preview_input(pp: Preprocess, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """What the model sees for one uint8 image: the preprocessed input mapped back to pixels
    (``x * std + mean``, uint8 ``(H, W, C)``) and the normalised value range."""
    x = pp(np.asarray(image)[None])
    mean = torch.tensor(pp.mean).view(1, -1, 1, 1)
    std = torch.tensor(pp.std).view(1, -1, 1, 1)
    pix = (x * std + mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    img = (pix * 255).round().astype(np.uint8)
    return (img[..., 0] if img.shape[-1] == 1 else img), {"min": float(x.min()), "max": float(x.max()),
                                                          "mean": float(x.mean())}


# --- uploads: saved under the cache so they survive a restart -------------------------

def uploads_dir() -> Path:
    from .. import cache
    d = cache.cache_dir() / "uploads" / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _safe_filename(name: str) -> str:
    base = Path(str(name)).name or "model"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"
    return base[:100]


def save_upload(data: bytes, filename: str, max_bytes: int | None = None) -> Path:
    """Store uploaded bytes under the cache (content-addressed); the size limit is checked first."""
    from .. import cache

    check_size(len(data), max_bytes, f"the upload {Path(str(filename)).name}")
    sha = hashlib.sha256(data).hexdigest()[:16]
    p = uploads_dir() / sha / _safe_filename(filename)
    if not p.exists():
        cache.atomic_write_bytes(p, data)
    return p


def _registry_path() -> Path:
    return uploads_dir() / "registry.json"


def _read_registry() -> dict[str, dict]:
    from .. import cache
    return cache.read_json_dict(_registry_path())


def saved_uploads() -> dict[str, dict]:
    """The remembered uploads, ``{key: {"path", "options"}}`` (as ``folders.saved_datasets`` for data)."""
    return _read_registry()


def upload_key(bundle: ModelBundle) -> str:
    return f"upload:{bundle.name}@{bundle.fingerprint[:8]}"


def register_upload(path: Path | str, **options: Any) -> tuple[str, ModelBundle]:
    """Load a model file, register it with the workbench under ``upload:NAME@HASH`` and remember
    it (path + options) so :func:`restore_uploads` brings it back after a restart."""
    from .. import cache
    from .. import workbench as wb

    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v is not None}
    bundle = load_model_file(Path(path), **opts)
    key = upload_key(bundle)
    bundle.info["spec"] = key
    wb.register_model(bundle, key)
    reg = _read_registry()
    reg[key] = {"path": str(Path(path).resolve()), "options": opts}
    cache.write_json_dict(_registry_path(), reg)
    return key, bundle


def restore_upload(key: str) -> ModelBundle:
    """Reload one remembered upload (for ``workbench.load_model('upload:…')`` after a restart)."""
    from .. import workbench as wb

    entry = _read_registry().get(key)
    if not entry:
        raise ModelError(f"no uploaded model {key!r}; upload it again on the Models & Data page")
    if not Path(entry["path"]).exists():
        raise ModelError(f"the file of {key!r} is gone from the cache; upload it again")
    bundle = load_model_file(Path(entry["path"]), **entry.get("options", {}))
    bundle.info["spec"] = key
    wb.register_model(bundle, key)
    return bundle


def restore_uploads() -> list[str]:
    """Re-register every remembered upload not yet in memory; returns the keys restored."""
    from .. import workbench as wb

    done = []
    for key in _read_registry():
        if wb.has_model(key):
            continue
        try:
            restore_upload(key)
            done.append(key)
        except ModelError as exc:
            log.warning("upload %s not restored: %s", key, exc)
    return done


def forget_upload(key: str) -> None:
    """Drop a remembered upload (the file stays in the content-addressed store)."""
    from .. import cache
    from .. import workbench as wb

    reg = _read_registry()
    reg.pop(key, None)
    cache.write_json_dict(_registry_path(), reg)
    wb.forget_model(key)
