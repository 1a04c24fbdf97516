"""Forward batches: how many samples one forward may take, and a model's forward with one-line failures.

docs/architecture.md, "Memory" and "Extraction": :func:`plan_batch` bounds a batch by the
``forward`` memory budget from a one-sample estimate, :func:`tuned_batch_size` measures the best
throughput on this machine once per model (remembered in ``cache/tuning``), and
:func:`model_forward` turns an error from the user's model code into one line naming the batch.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import cache, stores
from .concurrency import call_hooks
from .errors import UserError, first_line
from .jobs import Cancelled
from .models import ModelBundle
from .resources import env_var, memory_budget


class ExtractError(UserError):
    """An extraction cannot run or be written as asked; the message says what to change."""


def forward_budget_bytes(device: str) -> int:
    """Memory one forward batch may use: the ``forward`` budget (docs/architecture.md, "Memory")."""
    return memory_budget("forward", device)


def model_forward(bundle: ModelBundle, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``bundle.forward(x)``; a model that raises on a real batch (one that passed the load-time dry
    run) fails with one line naming the model and the batch shape, not a traceback from its code.
    Running out of memory keeps its own type (the callers size batches and say what to change)."""
    try:
        return bundle.forward(x)
    except (MemoryError, torch.OutOfMemoryError, UserError, Cancelled):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model code: any error is its own
        line = first_line(exc, 200)
        line = line if type(exc).__name__ in line else f"{type(exc).__name__}: {line}"
        raise ExtractError(f"the model {bundle.name!r} failed on a batch of shape {tuple(x.shape)}: {line}") from None


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
    with call_hooks(mods, hook), torch.inference_mode():  # call-scoped: another thread may run the model
        bundle.model(x.to(bundle.device))
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
                           f"(or raise {env_var('forward')})")
    return int(max(1, min(batch_size, fit)))


def _tuning_file() -> Path:
    return cache.subdir("tuning") / "batch_sizes.json"


def tuned_batch_size(bundle: ModelBundle, device: str, cap: int = 512, budget_s: float = 6.0) -> int:
    """The forward batch size with the best measured throughput on this machine (remembered per
    model, input size, device and thread count in ``cache/tuning``).

    A fixed 256 is not the best everywhere: a CIFAR ResNet-18 on 2 CPU cores ran 187 img/s at
    batch 64 and 122-165 img/s at 256. Candidates double from 8 while throughput grows, within
    the memory plan and about ``budget_s`` seconds of measuring; a rate within 3% of the best is a
    tie, won by the larger batch.
    """
    size = "x".join(map(str, bundle.preprocess.input_size))
    tag = f"{bundle.fingerprint}|{bundle.head_name}|{size}|{device}|{torch.get_num_threads()}"
    store = _tuning_file()
    try:
        known = stores.read_json_dict(store)
    except Exception:  # noqa: BLE001 - a damaged store is measured again
        known = {}
    if isinstance(known.get(tag), int) and known[tag] > 0:
        return int(known[tag])
    limit = plan_batch(bundle, cap, device)
    best, best_rate, b, t_total = 1, 0.0, 8, 0.0
    model_dev = bundle.device
    bundle.to(device)
    try:
        with torch.inference_mode():
            while b <= limit:
                x = bundle.dummy_input(b).to(device)
                model_forward(bundle, x)  # warm-up: allocator and kernels at this shape
                _sync(device)
                dt = float("inf")
                for _ in range(2):  # the better of two: one timing on a shared machine picked 16 or 32 at random
                    t0 = time.perf_counter()
                    model_forward(bundle, x)
                    _sync(device)
                    dt = min(dt, time.perf_counter() - t0)
                t_total += 3 * dt
                rate = b / max(dt, 1e-9)
                # Within 3% counts as a tie, and a tie goes to the larger batch: a streamed pass pays a
                # fixed cost per batch (handing the decoded batch over, collation, the chunk
                # bookkeeping), and on 2 cores, with one loader worker, batch 32 ran at 90% of the bare
                # forward where batch 8, as fast bare, ran at 83% (bench/streaming.py).
                if rate >= best_rate * 0.97:
                    best, best_rate = b, max(rate, best_rate)
                elif rate < best_rate * 0.9:
                    break
                if t_total > budget_s:
                    break
                b *= 2
    finally:
        bundle.to(model_dev)
    best = min(best, limit)
    try:
        stores.update_json_dict(store, lambda d: d.__setitem__(tag, best))
    except Exception:  # noqa: BLE001 - not remembering costs the next run a few seconds
        pass
    return best


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
