"""Per-sample parameter gradients by ``torch.func`` (vmap over grad): parameter sets, memory planning.

Owns: the parameter sets (``last_weight``, ``last``, ``last_block``, ``all`` or explicit
names), the per-sample losses, the up-front memory estimate of a chunked pass, and the
general engine :func:`iter_grad_blocks` (``functional_call`` + ``vmap`` + ``grad``) that
works on any eager model. GradNorm-exact uses it directly; the low-dimensional engine
(:mod:`ood_core.gradients.hooks`) falls back on it for models whose layers it cannot
differentiate per sample from one batched backward. See ``docs/methods.md``, sections
"The gradient family" and "Low-dimensional gradients".

Losses (``f`` the logits, ``p = softmax(f/T)``, ``C`` classes): ``lse`` = ``LSE(f/T)``,
the low-dimensional gradients' reference scalar (T = 1 there); ``kl_uniform`` =
GradNorm's ``KL(u ‖ p)`` up to a constant, ``−(1/C) Σ_i log p_i``; ``ce_pred`` =
cross-entropy to the predicted label, ``−log p_ŷ``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..concurrency import call_hooks, model_lock, private_module
from ..data import Dataset
from ..jobs import checkpoint
from ..models import ModelBundle
from ..resources import env_var, memory_budget
from .settings import LOSSES, PARAM_SETS, GradientError, MemoryBudgetError, Progress

log = logging.getLogger(__name__)

_MAX_CHUNK = 256
_CHUNK_TARGET_BYTES = 128 * 2**20


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
    """The per-chunk working set: the ``grad_chunk`` budget (docs/architecture.md, "Memory")."""
    return memory_budget("grad_chunk", device)


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

    dry_run(bundle, [m for m in bundle.model.modules()  # scripted modules take no hooks
                     if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule)], hook)
    return int(total[0])


def dry_run(bundle: ModelBundle, modules: Sequence[nn.Module], hook: Callable[..., None]) -> None:
    """One no-grad forward of a one-sample dummy input with ``hook`` on ``modules`` (shape probing)."""
    with call_hooks(modules, hook), torch.no_grad():  # call-scoped: the model may be shared between threads
        bundle.model(bundle.dummy_input(1).to(bundle.device))


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
            f"choose a smaller parameter set (last, last_block) or raise {env_var('grad_chunk')}")
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
    if loss == "lse":
        return torch.logsumexp(z, dim=-1)  # stable: the reference's log(sum(exp(f))) overflows for large logits
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

def _as_input(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor
              ) -> tuple[Callable[[int], Iterator[torch.Tensor]], int]:
    """``(batches, N)``: ``batches(B)`` yields the preprocessed inputs in order, ``B`` rows at a time
    (a dataset streams through its own loader: docs/architecture.md, "Datasets")."""
    if isinstance(data, Dataset):
        return (lambda b: data.batches(bundle.preprocess, b)), len(data)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return (lambda b: (bundle.preprocess(data[a: a + b]) for a in range(0, len(data), b))), len(data)
    t = torch.as_tensor(data)
    if t.ndim != 4:
        raise GradientError(f"inputs must be a dataset, uint8 images or a preprocessed (N,C,H,W) tensor; got shape {tuple(t.shape)}")
    return (lambda b: (t[a: a + b].float() for a in range(0, len(t), b))), int(t.shape[0])


def iter_grad_blocks(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
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
    batches, n = _as_input(bundle, data)
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
        # functional_call swaps the module's parameters for the call: on the shared model another
        # thread's forward would see them (docs/architecture.md, "Concurrency and cancellation")
        shared, module = module, private_module(module)
        all_params = dict(module.named_parameters())
        diff = {k: all_params[k].detach() for k in local}
        rest = {k: v.detach() for k, v in all_params.items() if k not in diff}
        rest.update({k: v.detach() for k, v in module.named_buffers()})

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            out = functional_call(module, (params, rest), (x.unsqueeze(0),))
            return sample_loss(out[0], loss, T)

        per_sample = vmap(grad(one), in_dims=(None, 0))
        start = 0
        for x in batches(B):
            checkpoint()  # a cancelled job or Ctrl-C stops between chunks
            x = x.to(device)
            if head_only:
                with torch.no_grad():
                    x = bundle.body(x).flatten(1)  # type: ignore[misc]
            if module is shared:  # could not be copied: one call at a time on this model
                with model_lock(shared):
                    g = per_sample(diff, x)
            else:
                g = per_sample(diff, x)
            yield start, [g.pop(k).reshape(x.shape[0], -1) for k in local]
            del g
            start += int(x.shape[0])
            if progress:
                done = start
                progress(done / n, f"per-sample gradients ({est.n_params:,} parameters): {done}/{n}")
    finally:
        bundle.to(model_dev)


def iter_per_sample_grads(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
                          param_set: str | Sequence[str] = "last", T: float = 1.0, chunk: int | None = None,
                          device: str | None = None, budget_bytes: int | None = None, r: int = 0,
                          progress: Progress | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G_chunk)`` with ``G_chunk`` a float32 ``(B, P)`` tensor on ``device``.

    Columns follow ``param_names(bundle, param_set)`` order, each parameter flattened.
    """
    for start, blocks in iter_grad_blocks(bundle, data, loss, param_set, T, chunk, device, budget_bytes, r, progress):
        yield start, (torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]).float()


def per_sample_grads(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
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


def per_sample_grad_norms(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor, loss: str = "kl_uniform",
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


