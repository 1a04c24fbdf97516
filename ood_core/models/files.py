"""Loading a user's model file: the one entry point, :func:`load_model_file`.

Accepted, recognised by content rather than extension (docs/architecture.md, "Uploads are
data, not code"):

- ``torch.export`` archives (``.pt2``), vetted member by member before loading (:mod:`.pt2`);
- TorchScript archives (``torch.jit.save``), read with ``torch.jit.load(map_location="cpu")``
  (:mod:`.torchscript`);
- workbench checkpoints (``.pt`` + ``.json`` sidecar), via :func:`.checkpoints.load_checkpoint`;
- ``state_dict`` files read **only** with ``torch.load(weights_only=True, map_location="cpu")``
  into an architecture from :mod:`.archs` (detected from the keys when not given), the class
  count read from the head weight (:mod:`.state_dicts`).

Everything else, pickled whole models first, is refused with a message saying what to save
instead. Every model passes a one-batch dry run (:mod:`.preprocess`) before it is handed out.
Remembering uploads across restarts is :mod:`ood_core.persist`'s job, not this module's.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .. import cache
from .archs import arch_info
from .archs_published import variants_of
from .bundle import ModelBundle, ModelError, Split
from .checkpoints import load_checkpoint
from .formats import check_size, detect_model_format
from .preprocess import check_classes, dry_run, first_size_that_runs, guess_preprocess, override, verify_split
from .pt2 import Exported, load_pt2, module_of, pt2_linear_nodes, pt2_split
from .state_dicts import (as_float32, closest_text, match_architectures, rank_architectures, read_state_dict, state_dict_into,
                          strip_prefixes)
from .torchscript import load_torchscript, script_linears, script_split

log = logging.getLogger(__name__)


def load_model_file(path: Path | str, arch: str | None = None, input_size: Sequence[int] | int | None = None,
                    mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                    channels: int | None = None, head: str | None = None, max_bytes: int | None = None,
                    num_classes: int | None = None, name: str | None = None,
                    size_hint: Sequence[int] | None = None, resize: str | None = None) -> ModelBundle:
    """Load any accepted model file as a :class:`ModelBundle` (see the module docstring).

    ``input_size``/``mean``/``std``/``channels``/``resize`` override the detected preprocessing,
    ``head`` names the final linear layer when it is not found automatically,
    ``num_classes`` (optional) is checked against the model's output, ``size_hint`` is
    the input size to try first when the file does not fix one (e.g. the ID images' size).
    """
    path = Path(path)
    if not path.exists() or not path.is_file():
        raise ModelError(f"no model file at {str(path)!r}")
    check_size(path.stat().st_size, max_bytes, f"{path.name}")
    fmt = detect_model_format(path)
    label = name or path.stem
    if fmt == "unknown":
        raise ModelError(f"{path.name} is not a model file this workbench reads; expected a .pt2 (torch.export), "
                         "a TorchScript archive (torch.jit.save) or a state_dict (torch.save(model.state_dict()))")
    if fmt == "checkpoint":
        return _load_checkpoint(path, input_size, mean, std, channels, head, num_classes, resize)
    sha = cache.file_sha256(path)  # after the checkpoint branch, which has its own fingerprint
    if fmt == "state_dict":
        return _load_state_dict(path, sha, label, arch, input_size, mean, std, channels, head, num_classes, resize)
    if arch:
        log.info("architecture %s ignored for a %s archive", arch, fmt)
    return _load_archive(path, fmt, sha, label, input_size, mean, std, channels, head, num_classes, size_hint, resize)


def _load_checkpoint(path, input_size, mean, std, channels, head, num_classes, resize=None) -> ModelBundle:
    b = load_checkpoint(path)
    pp = override(b.preprocess, input_size, mean, std, channels, resize)
    if pp != b.preprocess or head:
        b = ModelBundle(model=b.model, preprocess=pp, name=b.name, arch=b.arch, head_name=head,
                        class_names=b.class_names, info=b.info)
    dry_run(b.model, b.preprocess)
    check_classes(b.num_classes, num_classes)
    b.info.setdefault("format", "workbench checkpoint")
    return b


def _load_state_dict(path, sha, label, arch, input_size, mean, std, channels, head, num_classes,
                     resize=None) -> ModelBundle:
    state = read_state_dict(path)
    notes = []
    if not arch:
        ranked = rank_architectures(state)
        exact = [a for a, p, _ in ranked if p == 0]
        if not exact:
            raise ModelError(f"{path.name} is a state_dict of no known architecture (closest: {closest_text(ranked)}); "
                             "pick its architecture (`python -m ood_core archs`), or export the whole model "
                             "as .pt2 / TorchScript")
        arch = exact[0]
        notes.append(f"architecture detected from the weights: {arch}"
                     + (f" (also fits {', '.join(exact[1:])})" if len(exact) > 1 else ""))
        variants = variants_of(arch)
        if variants:
            notes.append(f"the same weights layout is published as {', '.join(variants)} with other preprocessing: "
                         f"pass --arch NAME to use its preprocessing (`python -m ood_core archs`)")
    state, cast = as_float32(state, arch, path.name)  # the dtypes of the architecture's weights that were cast
    if cast:
        notes.append(f"weights stored as {', '.join(cast)}, cast to float32 (the model runs in float32)")
        log.info("%s: %s weights cast to float32", path.name, ", ".join(cast))
    model, n_cls, in_ch = state_dict_into(state, arch, path.name)
    if channels is not None and int(channels) != in_ch:
        raise ModelError(f"the weights' first layer takes {in_ch} channels, not {channels}; leave channels empty")
    info = arch_info(arch)
    pp = override(info.preprocess(in_ch), input_size, mean, std, channels, resize)
    out = dry_run(model, pp)
    if out.shape[1] != n_cls:
        raise ModelError(f"the model outputs {out.shape[1]} logits but its head weight has {n_cls} rows")
    check_classes(n_cls, num_classes)
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


def _load_archive(path, fmt, sha, label, input_size, mean, std, channels, head, num_classes, size_hint,
                  resize=None) -> ModelBundle:
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
        linears = [module_of(t[1]) for t in pt2_linear_nodes(model.gm)]
    else:
        model = load_torchscript(path)
        params = list(model.named_parameters())
        fixed_size, fixed_ch = None, None
        linears = script_linears(model)
    conv = next((tuple(p.shape) for _, p in params if p.ndim == 4), None)
    if fixed_ch and channels is not None and int(channels) != fixed_ch:
        raise ModelError(f"the archive was exported for {fixed_ch}-channel inputs, not {channels}")
    if fixed_size and input_size is not None:
        want = [int(input_size)] if isinstance(input_size, int) else [int(v) for v in input_size]
        if (want[0], want[-1]) != tuple(fixed_size):
            raise ModelError(f"the archive was exported for {fixed_size[0]}x{fixed_size[1]} inputs; "
                             f"it cannot take {want[0]}x{want[-1]} (resize happens in preprocessing)")
    base, why = guess_preprocess(conv, fixed_ch or (conv[1] if conv else None), tuple(fixed_size) if fixed_size else None)
    pp = override(base, input_size, mean, std, channels, resize)
    source = ("input shape recorded in the archive" if fixed_size else why)
    if input_size is None and not fixed_size:  # nothing fixes the size: find one that runs
        pp, out, tried, from_hint = first_size_that_runs(model, pp, size_hint)
        if tried:
            notes.append(f"input size {pp.input_size[0]}x{pp.input_size[1]} is the first that ran (tried {', '.join(tried)})")
            source += "; input size of the ID images" if from_hint else "; input size found by trying common sizes"
    else:
        out = dry_run(model, pp)
    n_cls = int(out.shape[1])
    check_classes(n_cls, num_classes)
    split = pt2_split(model.gm, head) if fmt == "pt2" else script_split(model, head)
    reason = ""
    if isinstance(split, str):
        reason = split
    else:
        inner_body, head_lin, head_name = split
        body = Exported(inner_body, model.batch) if fmt == "pt2" else inner_body
        if head_lin.weight.shape[0] != n_cls:
            reason = f"layer {head_name!r} has {head_lin.weight.shape[0]} outputs, not the model's {n_cls} logits"
        else:
            reason = verify_split(model, body, head_lin, pp)
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
        whole = Split(body, head_lin)
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


def inspect_model_file(path: Path | str, max_bytes: int | None = None) -> dict[str, Any]:
    """Cheap facts for the upload form: format, size and, for a state_dict, the architectures it fits."""
    path = Path(path)
    check_size(path.stat().st_size, max_bytes, path.name)
    fmt = detect_model_format(path)
    out: dict[str, Any] = {"format": fmt, "bytes": path.stat().st_size, "fits": []}
    if fmt == "state_dict":
        state = read_state_dict(path)
        ranked = match_architectures(state)
        out["fits"] = [a for a, p in ranked if p == 0]
        out["closest"] = ranked[:3]
        conv = next((tuple(v.shape) for v in strip_prefixes(state).values() if v.ndim == 4), None)
        out["channels"] = conv[1] if conv else None
    return out
