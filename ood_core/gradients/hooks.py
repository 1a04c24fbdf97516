"""Per-sample gradients from one batched backward (per-layer hooks), delivered block by block.

Owns :func:`iter_chunks`: for each chunk of inputs, one forward in eval mode records
every differentiated layer's input, one ``autograd.grad`` of ``Σ_i y(x_i)`` gives each
layer's output gradient, and each parameter's per-sample gradient block ``(B, P_k)`` is
formed on demand from those two (the technique of Goodfellow 2015 / Opacus):

* ``Linear``: ``∂y_i/∂W = a_iᵀ x_i`` (summed over any token axis), ``∂y_i/∂b = Σ a_i``;
* ``Conv2d``: the input unfolded to patches ``U_i``, ``∂y_i/∂W = a_i U_iᵀ`` (one bmm whose
  FLOPs equal the batch's weight gradient), ``∂y_i/∂b = Σ_t a_{i,t}``;
* ``BatchNorm`` in eval mode (an affine map per channel): ``∂y_i/∂γ = Σ_t a_{i,t} x̂_{i,t}``,
  ``∂y_i/∂β = Σ_t a_{i,t}``.

In eval mode samples do not interact, so ``∂(Σ_j y_j)/∂out_i = ∂y_i/∂out_i`` and the
blocks equal the per-sample gradients. Blocks come lazily, one parameter at a time, so a
consumer (``G·V``, ``Gᵀ·Y``, sums of squares) never holds a ``(B, P)`` copy, only the
largest layer's ``(B, P_k)``. A model with a differentiated parameter outside these layer
types (or any other reason the hooks cannot be trusted) goes through the ``torch.func``
engine of :mod:`ood_core.gradients.per_sample` instead, with the same interface; the
choice is logged. See ``docs/methods.md``, section "Low-dimensional gradients"; the
reference (``github_main.py``, ``github_PCA.py``) gets the same numbers by ``vmap`` and JVPs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..concurrency import call_hooks
from ..data import Dataset
from ..jobs import checkpoint
from ..models import ModelBundle
from ..resources import env_var
from . import per_sample as ps
from .settings import GradientError, MemoryBudgetError, Progress

log = logging.getLogger(__name__)
_SUPPORTED = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def work_budget_bytes(device: str | torch.device = "cpu") -> int:
    """The working set one chunk may use, besides V and its kin: the ``grad_chunk`` budget
    (docs/architecture.md, "Memory"; the same one :func:`per_sample.memory_budget_bytes` gives)."""
    return ps.memory_budget_bytes(device)


def batched_loss(logits: torch.Tensor, loss: str, T: float) -> torch.Tensor:
    """Per-sample scalars ``y(x_i)`` of a batch of logits ``(B, C)``, shape ``(B,)`` (float32)."""
    z = logits.float() / T
    if loss == "lse":
        return torch.logsumexp(z, dim=1)  # stable, unlike the reference's log(sum(exp(f)))
    logp = torch.log_softmax(z, dim=1)
    if loss == "kl_uniform":
        return -logp.mean(dim=1)
    if loss == "ce_pred":
        return -logp.gather(1, logits.detach().argmax(1, keepdim=True)).squeeze(1)
    raise GradientError(f"loss must be one of lse, kl_uniform, ce_pred; got {loss!r}")


@dataclass
class Plan:
    """How a pass runs: parameter names and sizes, the engine, the chunk size, the device, and the
    working-set budget the chunk was sized for (kept, so the pass does not re-read a budget that
    moves with free memory)."""

    names: list[str]
    sizes: list[int]
    engine: str  # "hooks" | "vmap"
    chunk: int
    device: str
    reason: str = ""
    work: int = 0

    @property
    def P(self) -> int:
        return int(sum(self.sizes))


def _owners(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, tuple[nn.Module, str]], str]:
    """Each parameter's leaf module and local name, or why the hook engine cannot serve them."""
    owners: dict[str, tuple[nn.Module, str]] = {}
    wanted = set(names)
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if full in wanted:
                owners[full] = (mod, pname)
    for n in names:
        if n not in owners:
            return {}, f"parameter {n} has no owning module"
        mod, _ = owners[n]
        if type(mod) not in _SUPPORTED:
            return {}, f"{n} belongs to a {type(mod).__name__}, which has no per-sample rule"
        if isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            return {}, f"{n}: Conv2d with padding {mod.padding!r}/{mod.padding_mode} has no per-sample rule"
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and (mod.training or mod.running_mean is None):
            return {}, f"{n}: BatchNorm without running statistics couples the samples"
    return owners, ""


def _act_bytes(bundle: ModelBundle) -> int:
    return 4 * ps._activation_elems(bundle)  # noqa: SLF001


def plan(bundle: ModelBundle, param_set: str | Sequence[str], chunk: int | None = None, device: str | None = None,
         engine: str = "auto", work_bytes: int | None = None) -> Plan:
    """Pick the engine and the chunk so one chunk's working set fits ``work_bytes``; refuse if one sample does not."""
    names = ps.param_names(bundle, param_set)
    named = dict(bundle.model.named_parameters())
    sizes = [int(named[n].numel()) for n in names]
    device = device or ps._default_device()  # noqa: SLF001
    reason = ""
    if engine in ("auto", "hooks"):
        _, reason = _owners(bundle.model, names)
        if reason and engine == "hooks":
            raise GradientError(f"the hook engine cannot differentiate this model per sample: {reason}")
        use = "vmap" if reason else "hooks"
    else:
        use = "vmap"
    work = work_budget_bytes(device) if work_bytes is None else int(work_bytes)
    if use == "vmap":
        est = ps.plan_chunk(bundle, names, chunk, 0, work, device)
        return Plan(names, sizes, "vmap", est.chunk, device, reason, work)
    # per sample: saved activations and their gradients (~4 copies), the largest block twice
    # (the bmm output and a low-precision copy) and the largest unfolded input
    per = 4 * _act_bytes(bundle) + 8 * max(sizes) + 4 * _max_unfold(bundle, names) + 4096
    fit = work // per
    if fit < 1:
        raise MemoryBudgetError(f"one sample's per-sample gradients need ≈ {ps._mb(per)} of working memory against "  # noqa: SLF001
                                f"{ps._mb(work)}; raise {env_var('grad_chunk')} or choose a smaller parameter set")  # noqa: SLF001
    B = int(min(256, fit)) if chunk is None else int(chunk)
    if chunk is not None and chunk > fit:
        raise MemoryBudgetError(f"a chunk of {chunk} needs ≈ {ps._mb(per * chunk)} of working memory against "  # noqa: SLF001
                                f"{ps._mb(work)}; use a chunk of at most {fit}")
    return Plan(names, sizes, "hooks", max(1, B), device, work=work)


def _max_unfold(bundle: ModelBundle, names: Sequence[str]) -> int:
    """Elements of the largest unfolded Conv2d input (per sample) among the differentiated convs."""
    owners, _ = _owners(bundle.model, names)
    convs = {id(m): m for m, _ in owners.values() if isinstance(m, nn.Conv2d)}
    if not convs:
        return 0
    sizes: dict[int, int] = {}

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        k = int(np.prod(m.kernel_size))
        sizes[id(m)] = int(m.in_channels // m.groups * k * out.shape[-1] * out.shape[-2] * m.groups)

    ps.dry_run(bundle, list(convs.values()), hook)
    return max(sizes.values(), default=0)


# --- per-layer rules -----------------------------------------------------------------------

def _linear_block(mod: nn.Linear, pname: str, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    B = a.shape[0]
    if pname == "bias":
        return a.reshape(B, -1, a.shape[-1]).sum(1)
    a3, x3 = a.reshape(B, -1, a.shape[-1]), x.reshape(B, -1, x.shape[-1])
    if a3.shape[1] == 1:
        return (a3[:, 0, :, None] * x3[:, 0, None, :]).reshape(B, -1)
    return torch.bmm(a3.transpose(1, 2), x3).reshape(B, -1)


def _unfold(x: torch.Tensor, mod: nn.Conv2d) -> torch.Tensor:
    """``F.unfold`` by k² strided slices of the padded input: the same layout (channel, kh, kw), but
    vectorised copies; torch's CPU im2col runs ~10× slower here (measured: 4.3 s vs 0.4 s per chunk)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = mod.kernel_size, mod.stride, mod.dilation, mod.padding
    B, Cin, H, W = x.shape
    xp = F.pad(x, (pw, pw, ph, ph)) if (ph or pw) else x
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh, j * dw: j * dw + sw * (Wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, 2).reshape(B, Cin * kh * kw, Ho * Wo)


def _conv_block(mod: nn.Conv2d, pname: str, x: torch.Tensor, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample ``∂y_i/∂W`` of a Conv2d as one bmm of the output gradient with the unfolded input, in ``dtype``.

    The bmm's FLOPs equal the batch's weight gradient. Measured on this 2-core CPU (B = 64,
    ResNet-18 layer shapes, fp32): 22–176 ms per layer against 86–728 ms for the earlier
    grouped convolution (batch moved into the channels, one group per sample), which
    oneDNN runs with a Ho×Wo kernel; in bf16 the bmm runs on the AMX units, 3–5× faster again.
    """
    B = a.shape[0]
    a = a.reshape(B, a.shape[1], -1)  # (B, out, T)
    if pname == "bias":
        return a.sum(2).to(dtype)
    g = mod.groups
    u = _unfold(x.to(dtype), mod)  # (B, in·k², T)
    T = a.shape[2]
    a = a.to(dtype).reshape(B * g, -1, T)
    u = u.reshape(B * g, -1, T)
    return torch.bmm(a, u.transpose(1, 2)).reshape(B, -1)


def _bn_block(mod: nn.Module, pname: str, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    B, Cc = a.shape[0], a.shape[1]
    a3 = a.reshape(B, Cc, -1)
    if pname == "bias":
        return a3.sum(2)
    shape = (1, Cc) + (1,) * (x.ndim - 2)
    xhat = (x - mod.running_mean.reshape(shape)) * torch.rsqrt(mod.running_var.reshape(shape) + mod.eps)
    return (a3 * xhat.reshape(B, Cc, -1)).sum(2)


def _block(mod: nn.Module, pname: str, x: torch.Tensor, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(mod, nn.Conv2d):
        return _conv_block(mod, pname, x, a, dtype)
    if isinstance(mod, nn.Linear):
        return _linear_block(mod, pname, x, a).to(dtype)
    return _bn_block(mod, pname, x, a).to(dtype)


# --- the chunk iterator ----------------------------------------------------------------------

Blocks = Callable[[], Iterator[tuple[int, torch.Tensor]]]


def iter_chunks(bundle: ModelBundle, data: Dataset | np.ndarray | torch.Tensor, pl: Plan, loss: str, T: float,
                progress: Progress | None = None, what: str = "per-sample gradients",
                dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, int, Blocks]]:
    """Yield ``(start, B, blocks)``; ``blocks()`` yields ``(k, G_k)`` with ``G_k`` ``(B, P_k)`` in ``dtype`` on the device.

    With ``dtype=bfloat16`` the convolution blocks are formed from bf16 operands (fp32
    accumulation), which is what a bf16 ``G·V`` would round them to anyway.

    ``k`` indexes ``pl.names``. Progress reports the fraction, the samples done and an
    ETA; a progress callback that raises (a cancelled job) stops the pass.
    """
    import time

    batches, n = ps._as_input(bundle, data)  # noqa: SLF001
    model_dev = bundle.device
    bundle.to(pl.device)
    was_training = bundle.model.training
    bundle.model.eval()
    t0 = time.time()
    try:
        if pl.engine == "vmap":
            it = ps.iter_grad_blocks(bundle, data, loss, pl.names, T, pl.chunk, pl.device,
                                     budget_bytes=(pl.work or work_budget_bytes(pl.device)) if pl.chunk else None)
            for start, blks in it:
                B = int(blks[0].shape[0])
                yield start, B, (lambda blks=blks: iter(enumerate(b.to(dtype) for b in blks)))
                _report(progress, start + B, n, t0, what)
            return
        owners, _ = _owners(bundle.model, pl.names)
        mods = {id(m): m for m, _ in owners.values()}
        head_only = ps._head_only(bundle, pl.names)  # noqa: SLF001
        start = 0
        for x in batches(pl.chunk):
            checkpoint()  # a cancelled job or Ctrl-C stops between chunks
            x = x.to(pl.device)
            B = int(x.shape[0])
            acts, taps = _forward_backward(bundle, x, mods, loss, T, head_only)

            def blocks(acts=acts, taps=taps) -> Iterator[tuple[int, torch.Tensor]]:
                for k, name in enumerate(pl.names):
                    mod, pname = owners[name]
                    g = None
                    for xin, a in zip(acts[id(mod)], taps[id(mod)]):  # a module called twice sums its calls
                        part = _block(mod, pname, xin, a, dtype)
                        g = part if g is None else g + part
                    yield k, g

            yield start, B, blocks
            del acts, taps
            start += B
            _report(progress, start, n, t0, what)
    finally:
        bundle.to(model_dev)
        bundle.model.train(was_training)


def _forward_backward(bundle: ModelBundle, x: torch.Tensor, mods: dict[int, nn.Module], loss: str, T: float,
                      head_only: bool) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]]]:
    """One forward recording the layers' inputs, one ``autograd.grad`` whose tensor hooks catch ``∂y/∂out``.

    Tensor hooks registered on a layer's output receive the gradient with respect to the
    value the layer produced, even when a later in-place op (``ReLU(inplace=True)``)
    modifies the tensor; the backward stops at the differentiated layers' inputs, and
    parameter ``.grad`` fields are never touched.
    """
    acts: dict[int, list[torch.Tensor]] = {i: [] for i in mods}
    taps: dict[int, list[torch.Tensor | None]] = {i: [] for i in mods}
    roots: list[torch.Tensor] = []

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        i = id(m)
        acts[i].append(inp[0].detach())
        slot = len(taps[i])
        taps[i].append(None)

        def store(g: torch.Tensor, i: int = i, slot: int = slot) -> None:
            taps[i][slot] = g.detach()

        if out.requires_grad:
            out.register_hook(store)
        if inp[0].requires_grad:
            roots.append(inp[0])

    # call-scoped hooks: the model is shared, and another thread's forward must not feed this call
    with call_hooks(mods.values(), hook), torch.enable_grad():
        if head_only:  # only the head is differentiated: the body runs without a graph
            with torch.no_grad():
                h = bundle.body(x).flatten(1)  # type: ignore[misc]
            logits = bundle.head(h.requires_grad_(True))  # type: ignore[misc]
        else:
            logits = bundle.model(x.detach().clone().requires_grad_(True))
        y = batched_loss(logits, loss, T).sum()
        torch.autograd.grad(y, roots, allow_unused=True)
    done: dict[int, list[torch.Tensor]] = {}
    for i, gs in taps.items():
        done[i] = [g if g is not None else torch.zeros(0) for g in gs]
        if any(g is None for g in gs):  # an output the loss does not depend on: zero gradient
            done[i] = [g if g is not None else torch.zeros_like(_out_like(mods[i], a))
                       for g, a in zip(gs, acts[i])]
    return acts, done


def _out_like(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return mod(x)


def _report(progress: Progress | None, done: int, n: int, t0: float, what: str) -> None:
    if progress is None:
        return
    import time

    el = time.time() - t0
    eta = el * (n - done) / max(done, 1)
    progress(done / max(n, 1), f"{what}: {done:,}/{n:,} samples, {done / max(el, 1e-9):.1f}/s, ETA {_eta(eta)}")


def _eta(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
