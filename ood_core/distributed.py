"""torch.distributed under ``torchrun``: who this process is, sharding, gathers and reductions.

docs/architecture.md, "Distributed passes". ``torchrun --nproc_per_node N -m ood_core …`` sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them (one plain process) every function
here is the identity and nothing is initialised, so single-process runs are unchanged. The
process group uses ``nccl`` when CUDA is present and ``gloo`` otherwise, with a timeout so a
rank that waits for a dead peer gives up instead of hanging. Nothing here is home-made
transport: every exchange is a torch.distributed collective.

Layer 1 (no ``ood_core`` imports): the cache, the passes and the trainer all use it. torch is
imported inside the functions, and only once the environment names several ranks, so the cache
(which the pages import) stays free of torch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# How long a collective may wait for a peer before it fails (seconds; $OOD_DIST_TIMEOUT_S).
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int


def world() -> World:
    """Rank, world size and local rank from the standard environment (1 process: ``0, 1, 0``)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return World(0, 1, 0)
    return World(rank, max(1, size), local)


def is_distributed() -> bool:
    """True when launched as one of several ranks and the process group is up."""
    if world().size <= 1:
        return False
    import torch
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def launched() -> bool:
    """True when the environment names more than one rank (torchrun), initialised or not."""
    return world().size > 1


def rank() -> int:
    return world().rank if is_distributed() else 0


def size() -> int:
    return world().size if is_distributed() else 1


def is_writer() -> bool:
    """Only rank 0 writes the cache, checkpoints and output files (always True in one process)."""
    return rank() == 0


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> str:
    """This rank's device: ``cuda:LOCAL_RANK`` under nccl, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{world().local_rank}" if launched() else "cuda"
    return "cpu"


def init(timeout_s: float | None = None) -> bool:
    """Join the process group when launched by torchrun; returns whether this is a distributed run."""
    import torch

    if not launched() or not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return True
    if timeout_s is None:
        from .resources import env_number

        # refused with the variable's name: inf overflowed timedelta with a message naming nothing
        timeout_s = float(env_number("OOD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S, "a positive number of seconds "
                                     "(at most 30 days)") or DEFAULT_TIMEOUT_S)
        if timeout_s > 30 * 86400:
            from .resources import EnvValueError
            raise EnvValueError(f"OOD_DIST_TIMEOUT_S must be a positive number of seconds (at most 30 days); "
                                f"got {timeout_s:g} (fix or unset it)")
    be = backend()
    if be == "nccl":
        torch.cuda.set_device(world().local_rank)
    torch.distributed.init_process_group(be, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def destroy() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    import torch

    if is_distributed():
        torch.distributed.barrier()


def shard_bounds(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """The contiguous rows ``[lo, hi)`` of rank ``r`` among ``w``: sizes differ by at most one, no padding."""
    r = rank() if r is None else r
    w = size() if w is None else w
    base, extra = divmod(int(n), w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def shard(n: int) -> np.ndarray:
    """This rank's row indices of ``n`` rows (all of them in one process)."""
    lo, hi = shard_bounds(n)
    return np.arange(lo, hi)


def _comm_device() -> torch.device:
    import torch

    return torch.device(device()) if backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (returns it); the identity in one process."""
    import torch

    if not is_distributed():
        return t
    dev = _comm_device()
    if t.device == dev:
        torch.distributed.all_reduce(t)
        return t
    tmp = t.to(dev)
    torch.distributed.all_reduce(tmp)
    t.copy_(tmp)
    return t


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a cache miss on any rank)."""
    import torch

    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a small Python object: a batch size, a decision)."""
    import torch

    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(arr: np.ndarray) -> np.ndarray:
    """Every rank's rows concatenated in rank order, on every rank (the identity in one process).

    All ranks need the result (the passes that follow run on each of them), so this is an
    ``all_gather`` of tensors padded to the largest shard, then trimmed by the gathered sizes.
    """
    import torch

    if not is_distributed():
        return arr
    arr = np.ascontiguousarray(arr)
    dev = _comm_device()
    n = torch.tensor([arr.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size())]
    torch.distributed.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    t = torch.from_numpy(arr).to(dev) if arr.dtype != np.bool_ else torch.from_numpy(arr.astype(np.uint8)).to(dev)
    if arr.shape[0] < top:
        t = torch.cat([t, t.new_zeros((top - arr.shape[0],) + tuple(t.shape[1:]))])
    bufs = [torch.empty_like(t) for _ in range(size())]
    torch.distributed.all_gather(bufs, t.contiguous())
    out = torch.cat([b[:c] for b, c in zip(bufs, counts)]).cpu().numpy()
    return out.astype(np.bool_) if arr.dtype == np.bool_ else out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's small Python object, in rank order, on every rank (``[obj]`` in one process)."""
    import torch

    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * size()
    torch.distributed.all_gather_object(out, obj)
    return out
