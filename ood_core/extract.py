"""One batched forward per (model, dataset, preprocessing) -> cached Extraction arrays."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import cache
from .data import ImageDataset
from .errors import UserError
from .models import ModelBundle

Progress = Callable[[float, str], None]
EXTRACT_VERSION = 1


class ExtractError(UserError):
    """An extraction cannot run or be written as asked; the message says what to change."""


@dataclass
class Extraction:
    """docs/architecture.md, "Extraction": float32 arrays of one model on one dataset.

    ``features`` is the input of the final linear layer, ``(N, 0)`` when the model has
    none we can find; ``labels`` is -1 where unknown.
    """

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray
    dataset: str = ""
    sample_ids: np.ndarray | None = None
    model_fingerprint: str = ""
    dataset_fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, np.float32)
        n = len(self.logits)
        self.features = np.asarray(self.features, np.float32).reshape(n, -1) if self.features is not None else np.zeros((n, 0), np.float32)
        self.labels = np.asarray(self.labels, np.int64) if self.labels is not None else np.full(n, -1, np.int64)
        self.head_weight = np.asarray(self.head_weight, np.float32)
        self.head_bias = np.asarray(self.head_bias, np.float32)
        if self.sample_ids is None:
            self.sample_ids = np.arange(n, dtype=np.int64)
        self._memo: dict = {}

    def memo(self, key: str, compute):
        """Knob-independent derived arrays (norms, sorted values), computed once per object."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def has_features(self) -> bool:
        return self.features.shape[1] > 0

    @property
    def has_head(self) -> bool:
        return self.head_weight.size > 0 and self.head_weight.shape[1] == self.features.shape[1] > 0

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy on the labelled samples (NaN when none is labelled)."""
        from .metrics import id_accuracy

        return id_accuracy(self.logits, self.labels)

    def subset(self, idx: np.ndarray) -> "Extraction":
        idx = np.asarray(idx)
        return Extraction(self.logits[idx], self.features[idx], self.labels[idx], self.head_weight, self.head_bias,
                          self.dataset, self.sample_ids[idx], self.model_fingerprint, self.dataset_fingerprint)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "logits": self.logits, "features": self.features, "labels": self.labels,
            "head_weight": self.head_weight, "head_bias": self.head_bias, "sample_ids": self.sample_ids,
            "dataset": np.array(self.dataset), "model_fingerprint": np.array(self.model_fingerprint),
            "dataset_fingerprint": np.array(self.dataset_fingerprint),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "Extraction":
        return cls(a["logits"], a["features"], a["labels"], a["head_weight"], a["head_bias"],
                   str(a.get("dataset", "")), a.get("sample_ids"), str(a.get("model_fingerprint", "")),
                   str(a.get("dataset_fingerprint", "")))

    def save_npz(self, path: str | Path) -> Path:
        """Write the arrays to ``path``: a regular file is written atomically (a full disk leaves
        nothing half-written); a device or pipe is written in place."""
        path = Path(path)
        if path.is_dir():
            raise ExtractError(f"{path} is a folder; name a file, e.g. {path / 'extraction.npz'}")
        buf = io.BytesIO()
        np.savez(buf, **self.arrays())
        if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: never replace the node itself
            try:
                with open(path, "wb") as f:
                    f.write(buf.getvalue())
            except OSError as exc:
                if cache.storage_failure(exc):
                    raise cache.StorageError(cache.storage_message(exc, str(path))) from None
                raise
            return path
        cache.atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> "Extraction":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def extraction_key(bundle: ModelBundle, ds: ImageDataset) -> str:
    return cache.make_key(
        "extract", v=EXTRACT_VERSION, model=bundle.fingerprint, head=bundle.head_name,
        dataset=ds.fingerprint, preprocess=bundle.preprocess.to_dict(),
    )


def forward_budget_bytes(device: str) -> int:
    """Memory one forward batch may use: ``$OOD_EXTRACT_MEM_BUDGET_MB``, else half the available
    RAM (CPU) or 80% of the free GPU memory."""
    env = os.environ.get("OOD_EXTRACT_MEM_BUDGET_MB")
    if env:
        try:
            return int(float(env) * 2**20)
        except ValueError:
            raise ExtractError(f"OOD_EXTRACT_MEM_BUDGET_MB must be a number of megabytes; got {env!r}") from None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return int(0.8 * torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf: assume 4 GB free
        return 2 << 30


def forward_bytes_per_sample(bundle: ModelBundle) -> int:
    """Peak bytes of one sample in an inference forward (an estimate, measured on one sample).

    Without autograd only a few activations are alive at once, so the peak is about the input
    plus three times the largest activation (a layer's input, its output, a residual branch).
    Compiled archives take no hooks: their largest activation is assumed 16x the input.
    """
    x = bundle.dummy_input(1)
    peak = [0]

    def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            peak[0] = max(peak[0], out.numel())

    mods = [m for m in bundle.model.modules() if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule)]
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with torch.inference_mode():
            bundle.model(x.to(bundle.device))
    finally:
        for h in handles:
            h.remove()
    largest = peak[0] or 16 * x.numel()
    return 4 * (2 * x.numel() + 3 * largest)


def plan_batch(bundle: ModelBundle, batch_size: int, device: str) -> int:
    """The largest batch up to ``batch_size`` whose estimated forward fits the memory budget;
    refuses with the estimate when not even one sample fits (docs/architecture.md, "Errors")."""
    per = forward_bytes_per_sample(bundle)
    budget = forward_budget_bytes(device)
    fit = budget // max(1, per)
    if fit < 1:
        h, w = bundle.preprocess.input_size
        raise ExtractError(f"one {h}x{w} sample needs about {per / 2**20:.0f} MB in the forward pass, over the "
                           f"{budget / 2**20:.0f} MB budget; use a smaller input size "
                           "(or raise OOD_EXTRACT_MEM_BUDGET_MB)")
    return int(max(1, min(batch_size, fit)))


def run_forward(bundle: ModelBundle, ds: ImageDataset, batch_size: int = 256, device: str | None = None,
                progress: Progress | None = None) -> Extraction:
    """The batched forward pass itself (no cache), in batches sized to the memory budget."""
    device = device or default_device()
    model_dev = bundle.device
    batch_size = plan_batch(bundle, batch_size, device)
    bundle.to(device)
    logits, feats = [], []
    n = len(ds)
    try:
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                x = bundle.preprocess(ds.images[i: i + batch_size]).to(device)
                lo, h = bundle.forward(x)
                logits.append(lo.float().cpu().numpy())
                if h is not None:
                    feats.append(h.float().cpu().numpy())
                if progress:
                    progress(min(1.0, (i + batch_size) / n), f"forward pass on {ds.name}: {min(n, i + batch_size)}/{n}")
    finally:
        bundle.to(model_dev)
    w, b = bundle.head_arrays()
    lg = np.concatenate(logits)
    bad = ~np.isfinite(lg).all(1)
    if bad.any():  # the model's fault, not a detector's: say so before anything is cached or scored
        raise ExtractError(f"the model outputs NaN or inf on {int(bad.sum())} of {n} images of {ds.name!r} "
                           f"(first: sample {int(ds.sample_ids[bad.argmax()])}); check its weights and preprocessing")
    ft = np.concatenate(feats) if feats else np.zeros((n, 0), np.float32)
    return Extraction(lg, ft, ds.labels, w, b, ds.name, ds.sample_ids, bundle.fingerprint, ds.fingerprint)


def extract(bundle: ModelBundle, ds: ImageDataset, batch_size: int = 256, device: str | None = None,
            progress: Progress | None = None) -> Extraction:
    """Cached :func:`run_forward`: a second call with the same inputs does no forward pass."""
    key = extraction_key(bundle, ds)
    arrays = cache.cached_arrays(key, lambda: run_forward(bundle, ds, batch_size, device, progress).arrays())
    ext = Extraction.from_arrays(arrays)
    ext.dataset = ds.name  # the same images may be registered under another name
    return ext
