"""Per-sample parameter gradients (torch.func) and low-dimensional gradient subspaces.

The engine differentiates one per-sample loss with respect to one parameter set:

* losses (``f`` the logits, ``p = softmax(f/T)``, ``C`` classes):
  ``kl_uniform`` = GradNorm's ``KL(u ‖ p)``, up to a constant ``−(1/C) Σ_i log p_i``;
  ``ce_pred`` = cross-entropy to the predicted label, ``−log p_ŷ`` with ``ŷ = argmax f``.
  **Default: ``kl_uniform``** everywhere in this module, as METHODS.md's
  "Low-dimensional gradients" section specifies (the issue text suggests ``ce_pred``;
  both are a knob, and METHODS.md is the spec of defaults).
* parameter sets: ``last_weight`` (the head's weight: GradNorm's reference), ``last``
  (head weight + bias), ``last_block`` (the last parametrised block before the head, plus
  the head), ``all``; or an explicit list of parameter names.

Gradients are batched with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) in
chunks whose size is chosen so that an up-front memory estimate fits a budget
(``$OOD_GRAD_MEM_BUDGET_MB``, default 2048 MB on CPU); a set that cannot fit even one
sample at a time is refused with the estimate. When every differentiated parameter is
in the head, the body runs once per chunk without autograd and only the head is
differentiated (the same numbers, much cheaper).

Subspaces ``V ∈ R^{P×r}`` are fitted on ID training gradients: ``pca`` (scikit-learn
PCA when the N×P matrix fits 3/4 of the budget, IncrementalPCA fed chunk by chunk
otherwise, so it is never materialised) or ``avg`` (per-class mean gradients,
orthonormalised, ``r = C``). ``G_low = G·V`` is cached on disk per setting.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import cache
from .data import ImageDataset, get_dataset, train_name_for
from .models import ModelBundle, ModelError

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]

GRAD_VERSION = 1
LOSSES = ("kl_uniform", "ce_pred")
PARAM_SETS = ("last_weight", "last", "last_block", "all")
SUBSPACES = ("pca", "avg")
DEFAULT_PARAMS: dict[str, Any] = {"loss": "kl_uniform", "param_set": "last", "subspace": "pca", "r": 10, "T": 1.0}
MAX_FIT = 5000  # training samples used to fit a subspace (a fixed-seed subset beyond this)
_DEFAULT_BUDGET_MB = 2048
_MAX_CHUNK = 256
_CHUNK_TARGET_BYTES = 128 * 2**20


class GradientError(ModelError):
    """Per-sample gradients cannot be computed as asked; the message says what to change."""


class MemoryBudgetError(GradientError):
    """The chosen parameter set × chunk would not fit the memory budget."""


# --- parameter sets ------------------------------------------------------------

def _containers() -> tuple[type, ...]:
    return (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def last_block_name(model: nn.Module, head_name: str) -> str:
    """The last parametrised block registered before the head.

    Containers (the root, ``Sequential``, ``ModuleList``, ``ModuleDict``) are opened and
    any other module counts as one block, so this is ``layer4.1`` (a BasicBlock) for a
    torchvision ResNet and ``features.12`` (the 576→128 Linear) for the default CNN.
    Registration order is used as a proxy for execution order (true for these models).
    """
    blocks: list[str] = []

    def walk(mod: nn.Module, prefix: str) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if full == head_name:
                return  # stop at the head: only blocks before it count
            if head_name.startswith(full + ".") or isinstance(child, _containers()):
                walk(child, full + ".")
                if head_name.startswith(full + "."):
                    return
            elif any(True for _ in child.parameters()):
                blocks.append(full)

    walk(model, "")
    if not blocks:
        raise GradientError(f"no parametrised block before the head {head_name!r}; use param_set='last' or 'all'")
    return blocks[-1]


def param_names(bundle: ModelBundle, param_set: str | Sequence[str]) -> list[str]:
    """Names (as in ``bundle.model.named_parameters()``) of the trainable parameters in a set.

    Raises GradientError when the set is unknown, needs a head the model lacks, or holds
    no trainable (``requires_grad``) parameter.
    """
    model = bundle.model
    if isinstance(model, torch.jit.ScriptModule):
        raise GradientError("per-sample gradients need an eager model: TorchScript archives cannot go through "
                            "torch.func; load this model as a .pt2 (torch.export) archive or a state_dict instead")
    named = dict(model.named_parameters())
    if isinstance(param_set, str):
        if param_set not in PARAM_SETS:
            raise GradientError(f"param_set must be one of {', '.join(PARAM_SETS)}; got {param_set!r}")
        if param_set == "all":
            wanted = list(named)
        else:
            if bundle.head is None or not bundle.head_name:
                raise GradientError(f"param_set={param_set!r} needs a final linear layer, which this model lacks "
                                    f"({bundle.feature_reason or 'no head found'}); use param_set='all'")
            h = bundle.head_name
            wanted = [f"{h}.weight"] if param_set == "last_weight" else [n for n in named if n.startswith(h + ".")]
            if param_set == "last_block":
                blk = last_block_name(model, h)
                wanted = [n for n in named if n.startswith(blk + ".")] + wanted
    else:
        wanted = list(param_set)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise GradientError(f"unknown parameter names {unknown[:3]}; see model.named_parameters()")
    present = [n for n in wanted if n in named]
    trainable = [n for n in present if named[n].requires_grad]
    if not trainable:
        what = ", ".join(present[:4]) or "none"
        raise GradientError(f"no trainable parameters in param_set {param_set!r} (found: {what}; all frozen or absent): "
                            "unfreeze them (requires_grad=True) or choose another parameter set")
    order = {n: i for i, n in enumerate(named)}
    return sorted(trainable, key=order.__getitem__)


def _head_only(bundle: ModelBundle, names: Sequence[str]) -> bool:
    h = bundle.head_name
    return bool(h) and bundle.body is not None and all(n.startswith(h + ".") for n in names)


def n_params(bundle: ModelBundle, param_set: str | Sequence[str]) -> int:
    named = dict(bundle.model.named_parameters())
    return int(sum(named[n].numel() for n in param_names(bundle, param_set)))


# --- memory estimate -------------------------------------------------------------

def memory_budget_bytes(device: str | torch.device = "cpu") -> int:
    """``$OOD_GRAD_MEM_BUDGET_MB`` or 2048 MB (CPU) / 80% of free GPU memory."""
    env = os.environ.get("OOD_GRAD_MEM_BUDGET_MB")
    if env:
        try:
            return int(float(env) * 2**20)
        except ValueError:
            raise GradientError(f"OOD_GRAD_MEM_BUDGET_MB must be a number of megabytes; got {env!r}") from None
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return int(0.8 * free)
    return _DEFAULT_BUDGET_MB * 2**20


@dataclass
class MemoryEstimate:
    """Bytes a chunked per-sample gradient pass needs (an upper-bound heuristic)."""

    n_params: int
    chunk: int
    per_sample_bytes: int
    fixed_bytes: int
    budget_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.chunk * self.per_sample_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def max_chunk(self) -> int:
        """The largest chunk that fits (0 when not even one sample does)."""
        room = self.budget_bytes - self.fixed_bytes
        return max(0, int(room // max(1, self.per_sample_bytes)))

    def describe(self) -> str:
        return (f"{self.n_params:,} parameters × chunk {self.chunk} ≈ {_mb(self.total_bytes)} "
                f"({_mb(self.per_sample_bytes)} per sample + {_mb(self.fixed_bytes)} fixed) "
                f"against a budget of {_mb(self.budget_bytes)}")


def _mb(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.1f} MB"


def _activation_elems(bundle: ModelBundle) -> int:
    """Elements of every leaf module's output for one sample (forward hooks, no grad)."""
    total = [0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    hs = [m.register_forward_hook(hook) for m in bundle.model.modules()
          if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule)]  # scripted modules take no hooks
    try:
        with torch.no_grad():
            bundle.model(bundle.dummy_input(1).to(bundle.device))
    finally:
        for h in hs:
            h.remove()
    return int(total[0])


def estimate_memory(bundle: ModelBundle, param_set: str | Sequence[str] = "last", chunk: int = 64, r: int = 0,
                    budget_bytes: int | None = None, device: str | None = None) -> MemoryEstimate:
    """Estimate the bytes of one chunk of per-sample gradients before running it.

    Per sample: the gradient, vmap's per-sample weight-gradient intermediates and copies
    (4·P floats) plus saved activations, their gradients and the batching rules' copies
    (6·A floats, A = activation elements of one forward); calibrated against measured
    peaks in bench/per_sample_grads.py. Fixed: the parameters and a P×r subspace if projecting.
    """
    names = param_names(bundle, param_set)
    named = dict(bundle.model.named_parameters())
    p = int(sum(named[n].numel() for n in names))
    if _head_only(bundle, names):
        a = int(bundle.head.in_features + bundle.num_classes)  # type: ignore[union-attr]
        # the body's forward runs without autograd: only its largest activation is alive
        a += _activation_elems(bundle) // 4
    else:
        a = _activation_elems(bundle)
    per = 4 * (4 * p + 6 * a) + 4096
    fixed = 4 * (sum(t.numel() for t in bundle.model.parameters()) + p * max(0, int(r)))
    budget = memory_budget_bytes(device or "cpu") if budget_bytes is None else int(budget_bytes)
    return MemoryEstimate(p, int(chunk), per, fixed, budget)


def plan_chunk(bundle: ModelBundle, param_set: str | Sequence[str], chunk: int | None = None, r: int = 0,
               budget_bytes: int | None = None, device: str | None = None) -> MemoryEstimate:
    """Pick (``chunk=None``) or check a chunk size against the budget; refuse with the estimate."""
    est = estimate_memory(bundle, param_set, chunk or 1, r, budget_bytes, device)
    fit = est.max_chunk()
    if fit < 1:
        raise MemoryBudgetError(
            f"param_set {param_set!r} does not fit the memory budget even one sample at a time: {est.describe()}; "
            "choose a smaller parameter set (last, last_block) or raise OOD_GRAD_MEM_BUDGET_MB")
    if chunk is None:
        # Past ~128 MB of gradients per chunk, bigger chunks only add memory traffic (measured on
        # CPU: ResNet-18 'all' runs fastest at 1-2 samples a chunk, the default CNN at 64-256).
        by_traffic = max(1, _CHUNK_TARGET_BYTES // max(1, 4 * est.n_params))
        est.chunk = int(min(_MAX_CHUNK, 2 ** int(math.log2(min(fit, by_traffic)))))
        return est
    if chunk < 1:
        raise GradientError(f"chunk must be a positive number of samples; got {chunk}")
    if not est.fits or chunk > fit:
        est.chunk = int(chunk)
        raise MemoryBudgetError(f"per-sample gradients for param_set {param_set!r} would not fit: {est.describe()}; "
                                f"use a chunk of at most {fit} or a smaller parameter set")
    return est


# --- the per-sample loss ------------------------------------------------------------

def sample_loss(logits: torch.Tensor, loss: str = "kl_uniform", T: float = 1.0) -> torch.Tensor:
    """The per-sample loss of one logit vector ``(C,)`` (computed in float64 for accuracy)."""
    z = logits.double() / T
    logp = torch.log_softmax(z, dim=-1)
    if loss == "kl_uniform":
        return -logp.mean()
    if loss == "ce_pred":
        # the predicted label is a constant for the derivative; gather avoids data-dependent control flow under vmap
        idx = torch.argmax(logits.detach(), dim=-1, keepdim=True)
        return -torch.gather(logp, -1, idx).squeeze(-1)
    raise GradientError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")


def _check_loss_T(loss: str, T: float) -> None:
    if loss not in LOSSES:
        raise GradientError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if not (T > 0 and math.isfinite(T)):
        raise GradientError(f"T must be a positive number; got {T!r}")


# --- the engine -------------------------------------------------------------------------

def _as_input(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor) -> tuple[Callable[[int, int], torch.Tensor], int]:
    """A slicer returning preprocessed input batches, and N."""
    if isinstance(data, ImageDataset):
        return (lambda a, b: bundle.preprocess(data.images[a:b])), len(data)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return (lambda a, b: bundle.preprocess(data[a:b])), len(data)
    t = torch.as_tensor(data)
    if t.ndim != 4:
        raise GradientError(f"inputs must be an ImageDataset, uint8 images or a preprocessed (N,C,H,W) tensor; got shape {tuple(t.shape)}")
    return (lambda a, b: t[a:b].float()), int(t.shape[0])


def iter_grad_blocks(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
                     param_set: str | Sequence[str] = "last", T: float = 1.0, chunk: int | None = None,
                     device: str | None = None, budget_bytes: int | None = None, r: int = 0,
                     progress: Progress | None = None) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Yield ``(start, blocks)``: one ``(B, P_k)`` gradient tensor per parameter, in ``param_names`` order.

    The core of the engine. Consumers that reduce (norms, projections) work block by
    block, so the chunk is never concatenated into one ``(B, P)`` copy. The model is moved
    to ``device`` for the pass and moved back afterwards.
    """
    from torch.func import functional_call, grad, vmap

    _check_loss_T(loss, T)
    names = param_names(bundle, param_set)
    device = device or _default_device()
    est = plan_chunk(bundle, param_set, chunk, r, budget_bytes, device)
    B = est.chunk
    slicer, n = _as_input(bundle, data)
    head_only = _head_only(bundle, names)
    model_dev = bundle.device
    bundle.to(device)
    try:
        if head_only:
            module: nn.Module = bundle.head  # type: ignore[assignment]
            prefix = bundle.head_name + "."  # type: ignore[operator]
            local = [n[len(prefix):] for n in names]
        else:
            module, local = bundle.model, list(names)
        all_params = dict(module.named_parameters())
        diff = {k: all_params[k].detach() for k in local}
        rest = {k: v.detach() for k, v in all_params.items() if k not in diff}
        rest.update({k: v.detach() for k, v in module.named_buffers()})

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            out = functional_call(module, (params, rest), (x.unsqueeze(0),))
            return sample_loss(out[0], loss, T)

        per_sample = vmap(grad(one), in_dims=(None, 0))
        for start in range(0, n, B):
            x = slicer(start, min(n, start + B)).to(device)
            if head_only:
                with torch.no_grad():
                    x = bundle.body(x).flatten(1)  # type: ignore[misc]
            g = per_sample(diff, x)
            yield start, [g.pop(k).reshape(x.shape[0], -1) for k in local]
            del g
            if progress:
                done = min(n, start + B)
                progress(done / n, f"per-sample gradients ({est.n_params:,} parameters): {done}/{n}")
    finally:
        bundle.to(model_dev)


def iter_per_sample_grads(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
                          param_set: str | Sequence[str] = "last", T: float = 1.0, chunk: int | None = None,
                          device: str | None = None, budget_bytes: int | None = None, r: int = 0,
                          progress: Progress | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G_chunk)`` with ``G_chunk`` a float32 ``(B, P)`` tensor on ``device``.

    Columns follow ``param_names(bundle, param_set)`` order, each parameter flattened.
    """
    for start, blocks in iter_grad_blocks(bundle, data, loss, param_set, T, chunk, device, budget_bytes, r, progress):
        yield start, (torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]).float()


def per_sample_grads(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
                     param_set: str | Sequence[str] = "last", T: float = 1.0, chunk: int | None = None,
                     device: str | None = None, budget_bytes: int | None = None,
                     progress: Progress | None = None) -> np.ndarray:
    """The full ``(N, P)`` float32 gradient matrix (refused when it would not fit the budget)."""
    _, n = _as_input(bundle, data)
    p = n_params(bundle, param_set)
    budget = memory_budget_bytes(device or _default_device()) if budget_bytes is None else budget_bytes
    if 4 * n * p > budget:
        raise MemoryBudgetError(f"an {n}×{p:,} gradient matrix needs {_mb(4 * n * p)} against a budget of {_mb(budget)}; "
                                "project it (lowdim_for_dataset) or reduce it (per_sample_grad_norms) chunk by chunk")
    out = np.empty((n, p), np.float32)
    for start, blocks in iter_grad_blocks(bundle, data, loss, param_set, T, chunk, device, budget, 0, progress):
        col = 0
        for blk in blocks:
            out[start:start + len(blk), col:col + blk.shape[1]] = blk.cpu().numpy()
            col += blk.shape[1]
    return out


def per_sample_grad_norms(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
                          param_set: str | Sequence[str] = "last", T: float = 1.0, ord: float = 1.0,
                          chunk: int | None = None, device: str | None = None, budget_bytes: int | None = None,
                          progress: Progress | None = None) -> np.ndarray:
    """``‖g(x)‖_ord`` per sample (float64, finite ord ≥ 1), without keeping the gradients."""
    if not (ord >= 1 and math.isfinite(ord)):
        raise GradientError(f"ord must be a finite number ≥ 1; got {ord!r}")
    out = []
    for _, blocks in iter_grad_blocks(bundle, data, loss, param_set, T, chunk, device, budget_bytes, 0, progress):
        acc = sum(blk.double().abs().pow(ord).sum(1) if ord != 1 else blk.double().abs().sum(1) for blk in blocks)
        out.append(acc.pow(1.0 / ord).cpu().numpy())
    return np.concatenate(out)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- subspaces ----------------------------------------------------------------------------

@dataclass
class Subspace:
    """An orthonormal basis ``V (P, r)`` of ID training gradients and how it was fitted."""

    V: np.ndarray
    kind: str
    key: str
    explained_variance_ratio: np.ndarray | None = None
    method: str = ""

    @property
    def r(self) -> int:
        return int(self.V.shape[1])


def resolve_params(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULT_PARAMS`` overlaid with ``params``, validated (GradientError on bad values)."""
    p = dict(DEFAULT_PARAMS)
    extra = set(params or {}) - set(DEFAULT_PARAMS)
    if extra:
        raise GradientError(f"unknown low-dimensional gradient setting(s) {sorted(extra)}; known: {', '.join(DEFAULT_PARAMS)}")
    p.update(params or {})
    if p["subspace"] not in SUBSPACES:
        raise GradientError(f"subspace must be one of {', '.join(SUBSPACES)}; got {p['subspace']!r}")
    if isinstance(p["param_set"], str) and p["param_set"] not in PARAM_SETS:
        raise GradientError(f"param_set must be one of {', '.join(PARAM_SETS)}; got {p['param_set']!r}")
    try:
        p["T"] = float(p["T"])
        r = float(p["r"])
    except (TypeError, ValueError):
        raise GradientError(f"T and r must be numbers; got T={p['T']!r}, r={p['r']!r}") from None
    if not r.is_integer() or r < 1:
        raise GradientError(f"r must be a positive whole number; got {p['r']!r}")
    p["r"] = int(r)
    _check_loss_T(p["loss"], p["T"])
    return p


def _train_dataset(id_name: str | ImageDataset) -> ImageDataset:
    return id_name if isinstance(id_name, ImageDataset) else get_dataset(train_name_for(id_name))


def _fit_subset(train: ImageDataset) -> ImageDataset:
    if len(train) <= MAX_FIT:
        return train
    idx = np.sort(np.random.default_rng(0).choice(len(train), MAX_FIT, replace=False))
    return train.subset(idx, name=train.name)


def subspace_key(bundle: ModelBundle, id_name: str | ImageDataset, params: dict[str, Any] | None = None) -> str:
    """The cache key of the subspace fitted for (model, ID training split, settings)."""
    p = resolve_params(params)
    train = _train_dataset(id_name)
    r = bundle.num_classes if p["subspace"] == "avg" else p["r"]  # avg ignores r: one key
    return cache.make_key("subspace", v=GRAD_VERSION, model=bundle.fingerprint, head=bundle.head_name,
                          train=train.fingerprint, n_fit=min(len(train), MAX_FIT),
                          preprocess=bundle.preprocess.to_dict(), loss=p["loss"], param_set=p["param_set"],
                          T=p["T"], subspace=p["subspace"], r=r)


_subspaces: "OrderedDict[str, Subspace]" = OrderedDict()
_sub_lock = threading.Lock()


def fit_subspace(bundle: ModelBundle, id_name: str | ImageDataset = "mnist", params: dict[str, Any] | None = None,
                 progress: Progress | None = None, device: str | None = None,
                 budget_bytes: int | None = None) -> Subspace:
    """Fit (or load from the disk cache) the subspace of ID training gradients.

    ``id_name`` names the ID dataset (its ``:train`` split is used) or is the training
    ImageDataset itself. Raises GradientError when r exceeds the training samples or P.
    """
    p = resolve_params(params)
    key = subspace_key(bundle, id_name, p)
    with _sub_lock:
        if key in _subspaces:
            _subspaces.move_to_end(key)
            return _subspaces[key]
    train = _fit_subset(_train_dataset(id_name))
    P = n_params(bundle, p["param_set"])
    r = bundle.num_classes if p["subspace"] == "avg" else p["r"]
    if p["subspace"] == "pca" and r > len(train):
        raise GradientError(f"r={r} is larger than the {len(train)} training samples the subspace is fitted on; "
                            f"choose r ≤ {len(train)}")
    if p["subspace"] == "pca" and r > P:
        raise GradientError(f"r={r} is larger than the {P:,} parameters in param_set {p['param_set']!r}; choose r ≤ {P}")

    def compute() -> dict[str, np.ndarray]:
        sub, g_low = _fit(bundle, train, p, r, P, progress, device, budget_bytes)
        if g_low is not None:  # the training set's G_low comes free with a materialised fit: cache it
            cache.put_arrays(lowdim_key(bundle, train, key, p), {"g_low": g_low})
        evr = sub.explained_variance_ratio
        return {"V": sub.V, "evr": evr if evr is not None else np.zeros(0), "method": np.array(sub.method)}

    arr = cache.cached_arrays(key, compute)
    sub = Subspace(arr["V"].astype(np.float32), p["subspace"], key,
                   arr["evr"] if arr["evr"].size else None, str(arr["method"]))
    with _sub_lock:
        _subspaces[key] = sub
        while len(_subspaces) > 4:  # V can be large (P×r); keep a few
            _subspaces.popitem(last=False)
    return sub


def _fit(bundle: ModelBundle, train: ImageDataset, p: dict[str, Any], r: int, P: int, progress: Progress | None,
         device: str | None, budget_bytes: int | None) -> tuple[Subspace, np.ndarray | None]:
    """The subspace, and the training set's ``G·V`` when G was held in memory anyway."""
    from sklearn.decomposition import PCA

    budget = memory_budget_bytes(device or _default_device()) if budget_bytes is None else int(budget_bytes)
    n = len(train)
    it = lambda: iter_per_sample_grads(bundle, train, p["loss"], p["param_set"], p["T"], None, device,  # noqa: E731
                                       budget, 0, progress)
    if p["subspace"] == "avg":
        labels = train.labels.copy()
        if (labels < 0).any():  # unlabelled training data: group by the predicted class
            labels = _predicted(bundle, train, device)
        C = bundle.num_classes
        sums = np.zeros((C, P), np.float64)
        counts = np.zeros(C, np.int64)
        for start, g in it():
            y = labels[start:start + len(g)]
            np.add.at(sums, y, g.cpu().double().numpy())
            counts += np.bincount(y, minlength=C)
        present = counts > 0
        means = sums[present] / counts[present, None]
        from scipy.linalg import orth  # orthonormal basis of the span, rank-revealing (SVD)
        V = orth(means.T)
        if V.shape[1] < C:
            log.warning("avg subspace: class-mean gradients span %d of %d dimensions", V.shape[1], C)
        return Subspace(V.astype(np.float32), "avg", "", None, f"class means ({int(present.sum())} classes), orth"), None
    if 4 * n * P <= 0.75 * budget:
        G = np.empty((n, P), np.float32)
        for start, g in it():
            G[start:start + len(g)] = g.cpu().numpy()
        # exact eigh of the P×P covariance while it is small; randomized SVD beyond
        solver = "covariance_eigh" if P <= 4096 else "randomized"
        pca = PCA(n_components=r, svd_solver=solver, random_state=0).fit(G)
        V = pca.components_.T.astype(np.float32)
        return Subspace(V, "pca", "", pca.explained_variance_ratio_, f"PCA ({solver})"), G @ V
    pca = ipca_fit((g.cpu().numpy() for _, g in it()), r)
    return Subspace(pca.components_.T.astype(np.float32), "pca", "", pca.explained_variance_ratio_, "IncrementalPCA"), None


def ipca_fit(chunks: Iterable[np.ndarray], r: int) -> Any:
    """scikit-learn IncrementalPCA fed chunk by chunk, so the full N×P matrix never exists.

    Each ``partial_fit`` needs ≥ r rows and runs an SVD of a (batch + r)×P matrix, so
    chunks are re-cut into small batches (max(32, 2r)) to keep every call cheap; a final
    tail shorter than r rows (fewer than one batch) is left out.
    """
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=r)
    step = max(32, 2 * r)
    tail = np.zeros((0, 0), np.float32)
    fitted = False
    for chunk in chunks:
        pending = np.concatenate([tail, chunk]) if len(tail) else chunk
        full = (len(pending) // step) * step
        for i in range(0, full, step):
            pca.partial_fit(pending[i:i + step])
            fitted = True
        tail = pending[full:]
    if len(tail) >= r:
        pca.partial_fit(tail)
        fitted = True
    if not fitted:
        raise GradientError(f"IncrementalPCA needs at least r={r} samples")
    return pca


def _predicted(bundle: ModelBundle, ds: ImageDataset, device: str | None) -> np.ndarray:
    from .extract import extract
    return extract(bundle, ds, device=device).preds


def project(bundle: ModelBundle, data: ImageDataset | np.ndarray | torch.Tensor, V: np.ndarray, loss: str = "kl_uniform",
            param_set: str | Sequence[str] = "last", T: float = 1.0, device: str | None = None,
            budget_bytes: int | None = None, progress: Progress | None = None) -> np.ndarray:
    """``G·V`` chunk by chunk (the N×P matrix is never held): float32 ``(N, r)``."""
    device = device or _default_device()
    Vt = torch.as_tensor(np.asarray(V, np.float32), device=device)
    out = []
    for _, blocks in iter_grad_blocks(bundle, data, loss, param_set, T, None, device, budget_bytes, Vt.shape[1], progress):
        col, acc = 0, None
        for blk in blocks:  # Σ_k G_k · V[rows of parameter k]: no concatenated copy of the chunk
            part = blk.float() @ Vt[col:col + blk.shape[1]]
            acc = part if acc is None else acc + part
            col += blk.shape[1]
        out.append(acc.cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def lowdim_key(bundle: ModelBundle, ds: ImageDataset, sub_key: str, params: dict[str, Any]) -> str:
    p = resolve_params(params)
    return cache.make_key("lowdim", v=GRAD_VERSION, model=bundle.fingerprint, dataset=ds.fingerprint,
                          preprocess=bundle.preprocess.to_dict(), loss=p["loss"], param_set=p["param_set"],
                          T=p["T"], subspace=p["subspace"], r=p["r"] if p["subspace"] == "pca" else bundle.num_classes,
                          fit=sub_key)


def lowdim_for_dataset(bundle: ModelBundle, ds_name: str | ImageDataset, id_name: str | ImageDataset = "mnist",
                       params: dict[str, Any] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Low-dimensional gradients ``G_low = G·V`` of one dataset, shape ``(N, r)``, disk-cached.

    ``params`` keys: ``loss`` (kl_uniform | ce_pred), ``param_set`` (last_weight | last |
    last_block | all), ``subspace`` (pca | avg), ``r`` (ignored by avg: r = C), ``T``;
    missing keys take ``DEFAULT_PARAMS``. ``V`` is fitted on the ID training split of
    ``id_name`` (or on ``id_name`` itself when it is an ImageDataset).
    """
    p = resolve_params(params)
    ds = get_dataset(ds_name) if isinstance(ds_name, str) else ds_name
    sub = fit_subspace(bundle, id_name, p, _stage(progress, 0.0, 0.5))
    key = lowdim_key(bundle, ds, sub.key, p)
    arr = cache.cached_arrays(key, lambda: {"g_low": project(bundle, ds, sub.V, p["loss"], p["param_set"], p["T"],
                                                             progress=_stage(progress, 0.5, 1.0))})
    if progress:
        progress(1.0, f"low-dimensional gradients of {ds.name}: done")
    return arr["g_low"]


def _stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * f, msg)
