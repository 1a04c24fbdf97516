"""Workbench checkpoints: a ``state_dict`` file plus a JSON sidecar, and the default model.

A checkpoint written here is ``NAME.pt`` (``torch.save(state_dict)``, safe to read with
``weights_only=True``) next to ``NAME.json`` holding the architecture, class count,
preprocessing and the training config that produced it. ``--model PATH`` accepts it.
"""
from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import cache
from ..errors import first_line
from .archs import build_arch
from .bundle import ModelBundle, ModelError, Preprocess

log = logging.getLogger(__name__)

DEFAULT_PREPROCESS = Preprocess((28, 28), 1, (0.1307,), (0.3081,))
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 12

Progress = Callable[[float, str], None]


def models_dir() -> Path:
    return cache.subdir("models")


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> Path:
    """Write state_dict + sidecar atomically; returns the ``.pt`` path."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    cache.write_json_dict(path.with_suffix(".json"), meta)  # locked, atomic, standard JSON
    cache.atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: Path, map_location: str = "cpu") -> ModelBundle:
    """Load a workbench checkpoint (``.pt`` with its ``.json`` sidecar)."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not side.exists():
        raise ModelError(f"{path.name} has no {side.name} sidecar; load it as a state_dict with an architecture instead")
    try:
        meta = json.loads(side.read_text())
    except Exception as exc:
        raise ModelError(f"could not read checkpoint {path.name}: {side.name} is not JSON ({first_line(exc)})") from None
    arch, n_cls, in_ch, pp = check_sidecar(meta, side.name)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ModelError(f"could not read checkpoint {path.name}: {first_line(exc)}") from None
    model = build_arch(arch, n_cls, in_ch)
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"checkpoint {path.name} does not match architecture {arch}: {first_line(exc)}") from None
    return ModelBundle(
        model=model, preprocess=pp, name=meta.get("name", path.stem), arch=meta["arch"],
        class_names=meta.get("class_names"), info={"path": str(path), **{k: v for k, v in meta.items() if k not in ("preprocess",)}},
    )


MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a sidecar asking for more is damaged, not ambitious


def check_sidecar(meta: object, what: str) -> tuple[str, int, int, Preprocess]:
    """Validate a checkpoint sidecar like any other input: ``(arch, num_classes, in_channels, preprocess)``,
    or ModelError naming the field (docs/architecture.md, "Errors")."""
    if not isinstance(meta, dict):
        raise ModelError(f"{what} must be a JSON object, not a {type(meta).__name__}")

    def whole(key: str, lo: int, hi: int, default: int | None = None) -> int:
        v = meta.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ModelError(f"{what}: '{key}' must be a whole number in [{lo}, {hi:,}]; got {v!r}")
        return v

    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise ModelError(f"{what}: 'arch' must name an architecture; got {arch!r}")
    n_cls = whole("num_classes", 2, MAX_CLASSES)
    in_ch = whole("in_channels", 1, 3, default=1)
    pre = meta.get("preprocess")
    fields = set(Preprocess.__dataclass_fields__)
    if not isinstance(pre, dict) or set(pre) - fields:
        extra = sorted(set(pre) - fields) if isinstance(pre, dict) else []
        raise ModelError(f"{what}: 'preprocess' must be an object with keys {', '.join(sorted(fields))}"
                         + (f"; unknown: {', '.join(map(str, extra))}" if extra else ""))
    try:
        pp = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
    except ModelError as exc:
        raise ModelError(f"{what}: {first_line(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{what}: 'preprocess' holds a value of the wrong type ({first_line(exc)})") from None
    return arch, n_cls, in_ch, pp


def shift_augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2,
                  draw: tuple[int, int] | None = None) -> torch.Tensor:
    """Random integer translations (pad + crop); cheap augmentation that MNIST CNNs like.

    ``draw=(total, start)``: ``x`` is rows ``[start, start+len(x))`` of a batch of ``total``; the
    shifts of all ``total`` rows are drawn (the generator advances as for the whole batch) and
    this slice's are used (one rank's shard under torchrun, docs/architecture.md, "Distributed passes").
    """
    n, c, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    total, start = draw if draw is not None else (n, 0)
    dy = torch.randint(0, 2 * max_shift + 1, (total,), generator=gen)[start:start + n]
    dx = torch.randint(0, 2 * max_shift + 1, (total,), generator=gen)[start:start + n]
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
    idx_n = torch.arange(n).view(n, 1, 1)
    out = pad.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def train_default(progress: Progress | None = None, epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED) -> ModelBundle:
    """Train the embedded default CNN on ``mnist:train`` (about a minute on 2 CPU cores)."""
    from ..data import get_dataset

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = get_dataset("mnist:train")
    test = get_dataset("mnist")
    pp = DEFAULT_PREPROCESS
    x, y = pp(train.images), torch.as_tensor(train.labels)
    xt, yt = pp(test.images), torch.as_tensor(test.labels)
    model = build_arch("small_cnn", 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    bs = 64
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0, step = time.time(), 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = perm[i: i + bs]
            xb = shift_augment(x[idx], gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress and step % 10 == 0:
                el = time.time() - t0
                eta = el / step * (steps - step)
                progress(step / steps, f"training the default model: epoch {ep + 1}/{epochs}, loss {loss.item():.3f}, ETA {eta:.0f}s")
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    meta = {
        "name": "default", "arch": "small_cnn", "num_classes": 10, "in_channels": 1,
        "preprocess": pp.to_dict(), "class_names": [str(i) for i in range(10)],
        "trained_on": "mnist:train", "epochs": epochs, "seed": seed, "id_test_accuracy": acc,
        "train_seconds": round(time.time() - t0, 1), "method": "ce",
    }
    path = save_checkpoint(model, models_dir() / "default.pt", meta)
    log.info("default model trained: accuracy %.4f in %.1fs", acc, time.time() - t0)
    return load_checkpoint(path)


def default_model_path() -> Path:
    return models_dir() / "default.pt"


def load_default(progress: Progress | None = None) -> ModelBundle:
    """The embedded default model: loaded from ``cache/models`` or trained on first use."""
    path = default_model_path()
    if path.exists() and path.with_suffix(".json").exists():
        try:
            return load_checkpoint(path)
        except ModelError as exc:  # a damaged checkpoint is retrained, not fatal
            log.warning("default checkpoint unusable (%s); retraining", exc)
    return train_default(progress)

