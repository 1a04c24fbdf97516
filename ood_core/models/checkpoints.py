"""Workbench checkpoints: a ``state_dict`` file plus a JSON sidecar, and the default model.

A checkpoint written here is ``NAME.pt`` (``torch.save(state_dict)``, safe to read with
``weights_only=True``) next to ``NAME.json`` holding the architecture, class count,
preprocessing and the training config that produced it. ``--model PATH`` accepts it.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import cache, stores
from ..errors import first_line
from .archs import build_arch
from .bundle import ModelBundle, ModelError, Preprocess

log = logging.getLogger(__name__)

DEFAULT_PREPROCESS = Preprocess((28, 28), 1, (0.1307,), (0.3081,))
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 12
# Bump when train_default (or what it calls) changes the weights it produces; the shipped copy
# records it, and tests/models/test_checkpoints.py fails until the copy is regenerated.
DEFAULT_TRAINING_VERSION = 1
# The deterministic default weights, shipped so a first launch need not train (docs/architecture.md,
# "First launch"); bench/regenerate_default_model.py writes them with train_default.
SHIPPED_DEFAULT = Path(__file__).resolve().parent.parent / "assets" / "default_small_cnn.pt"

Progress = Callable[[float, str], None]


def models_dir() -> Path:
    return cache.subdir("models")


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> Path:
    """Write state_dict + sidecar atomically; returns the ``.pt`` path."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    stores.write_json_dict(path.with_suffix(".json"), meta)  # locked, atomic, standard JSON
    stores.atomic_write_bytes(path, buf.getvalue())
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


def _training_source_digest() -> str | None:
    """A short sha256 of the source of the code that produces the default weights (``train_default``,
    ``shift_augment``, ``SmallCNN``), or None where the source is not installed."""
    from .archs import SmallCNN

    try:
        src = "".join(inspect.getsource(o) for o in (*_PRODUCES_DEFAULT, SmallCNN))
    except (OSError, TypeError):
        return None
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def default_training_config(epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED) -> dict:
    """What :func:`train_default` records about how it trains: the part of the default's sidecar that
    the shipped weights must match (the source digest is None where the source is not installed)."""
    config = {
        "arch": "small_cnn", "num_classes": 10, "in_channels": 1, "preprocess": DEFAULT_PREPROCESS.to_dict(),
        "trained_on": "mnist:train", "epochs": epochs, "seed": seed, "method": "ce",
        "training_version": DEFAULT_TRAINING_VERSION, "training_source": _training_source_digest(),
    }
    return json.loads(json.dumps(config))  # as a sidecar holds it (tuples become lists), so the two compare


def train_default(progress: Progress | None = None, epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED) -> ModelBundle:
    """Train the embedded default CNN on ``mnist:train`` (about 36 s on 2 quiet CPU cores).

    The code that produced the shipped weights (:data:`SHIPPED_DEFAULT`); the app trains only when
    that copy is missing, damaged or stale. Deterministic: the same machine gives the same bytes.
    """
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
        **default_training_config(epochs, seed), "name": "default", "class_names": [str(i) for i in range(10)],
        "id_test_accuracy": acc, "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }
    path = save_checkpoint(model, models_dir() / "default.pt", meta)
    log.info("default model trained: accuracy %.4f in %.1fs", acc, time.time() - t0)
    return load_checkpoint(path)


_PRODUCES_DEFAULT = (train_default, shift_augment)  # the code whose source the shipped sidecar records


def default_model_path() -> Path:
    return models_dir() / "default.pt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_default_problem(shipped: Path | None = None) -> str | None:
    """Why the shipped default weights cannot be used (missing, damaged, or made by other training
    code than this one), or None when they can."""
    shipped = Path(shipped or SHIPPED_DEFAULT)
    side = shipped.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        data = shipped.read_bytes()
    except (OSError, ValueError) as exc:
        return f"the shipped default model is unreadable ({first_line(exc)})"
    if not isinstance(meta, dict) or meta.get("sha256") != _sha256(data):
        return f"the shipped default model {shipped.name} is damaged (its sha256 does not match {side.name})"
    want = default_training_config()
    if want["training_source"] is None:  # no source installed to compare with: trust the version tag
        want.pop("training_source")
    differs = sorted(k for k, v in want.items() if meta.get(k) != v)
    if differs:
        return f"the shipped default model was trained with other settings ({', '.join(differs)})"
    return None


def install_shipped_default(shipped: Path | None = None) -> ModelBundle | None:
    """Copy the shipped default weights into ``cache/models`` and load them; None (with the reason
    logged) when they are missing, damaged or stale, so the caller trains instead."""
    shipped = Path(shipped or SHIPPED_DEFAULT)
    problem = shipped_default_problem(shipped)
    if problem is None:
        try:
            meta = json.loads(shipped.with_suffix(".json").read_text())
            path = default_model_path()
            stores.write_json_dict(path.with_suffix(".json"), {**meta, "source": "shipped with the package"})
            stores.atomic_write_bytes(path, shipped.read_bytes())
            return load_checkpoint(path)
        except (OSError, ValueError, ModelError) as exc:
            problem = first_line(exc)
    log.warning("%s; training the default model instead", problem)
    return None


def write_shipped_default(bundle_path: Path, shipped: Path | None = None) -> Path:
    """Write a checkpoint made by :func:`train_default` as the shipped default (its sidecar without
    the wall-clock ``train_seconds``, with the sha256 of the weights); returns the ``.pt`` path."""
    shipped = Path(shipped or SHIPPED_DEFAULT)
    data = Path(bundle_path).read_bytes()
    meta = json.loads(Path(bundle_path).with_suffix(".json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("train_seconds", "source")}
    shipped.parent.mkdir(parents=True, exist_ok=True)
    stores.atomic_write_bytes(shipped, data)
    stores.atomic_write_bytes(shipped.with_suffix(".json"),
                             (json.dumps({**meta, "sha256": _sha256(data)}, indent=2, sort_keys=True) + "\n").encode())
    return shipped


def default_needs_training() -> bool:
    """Whether loading the default will train it (no cached copy and no usable shipped one)."""
    return not default_model_path().exists() and shipped_default_problem() is not None


def load_default(progress: Progress | None = None) -> ModelBundle:
    """The embedded default model: from ``cache/models``, else the shipped copy, else trained."""
    path = default_model_path()
    if path.exists() and path.with_suffix(".json").exists():
        try:
            return load_checkpoint(path)
        except ModelError as exc:  # a damaged checkpoint is replaced, not fatal
            log.warning("default checkpoint unusable (%s); replacing it", exc)
    return install_shipped_default() or train_default(progress)
