"""``torch.export`` archives (``.pt2``): vetting, loading, and cutting the graph at the head.

Security first (docs/architecture.md, "Uploads are data, not code"): ``torch.export.load``
falls back to plain unpickling for some payloads (weights flagged ``use_pickle``, opaque
constants) and loads AOTInductor packages as native code. :func:`check_pt2_archive` therefore
reads the zip member by member *before* ``torch.export.load`` runs and allows only plain
tensor payloads, plus pickled payloads that pass ``torch.load(weights_only=True)``.

Then :func:`load_pt2` loads the program on the CPU (rewriting serialised CUDA devices),
unfreezes its parameters for gradient detectors, and reports what the graph fixes (batch,
channels, input size, training mode); :func:`pt2_split` cuts the graph at the final linear op
into a body graph module and an ``nn.Linear`` head sharing the same tensors.
"""
from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import first_line
from .bundle import ModelError, linear_from

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


class Exported(nn.Module):
    """An ExportedProgram's module, usable like any model.

    ``ep.module()`` refuses ``.eval()``/``.train()``; the graph's behaviour was fixed at
    export time, so this wrapper records the mode without recursing. When the batch size
    was fixed at export, inputs run in chunks of that size (the last one padded).
    """

    def __init__(self, gm: nn.Module, batch: int | None):
        super().__init__()
        self.gm = gm
        self.batch = batch

    def train(self, mode: bool = True) -> "Exported":
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


def pt2_linear_nodes(gm: Any) -> list[tuple[Any, str, str | None]]:
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


def module_of(target: str) -> str:
    return target.rpartition(".")[0]


def pt2_split(gm: Any, head: str | None) -> tuple[nn.Module, nn.Linear, str] | str:
    """Cut the export graph at the final linear op: (body graph module, head Linear, head name) or a reason."""
    import torch.fx as fx

    linears = pt2_linear_nodes(gm)
    if not linears:
        return "the exported graph has no linear layer reading its own weights"
    if head:
        chosen = [t for t in linears if module_of(t[1]) == head]
        if not chosen:
            return f"no linear layer named {head!r} in the exported graph (found: {', '.join(module_of(t[1]) for t in linears)})"
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
    return body, linear_from(weight, bias), module_of(wt)


def load_pt2(path: Path) -> tuple[Exported, dict]:
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
    return Exported(gm, static[0]), facts
