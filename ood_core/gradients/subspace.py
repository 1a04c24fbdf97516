"""Fitted gradient subspaces ``V`` and low-dimensional gradients ``G_low = G̃·V``, cached on disk per setting.

Owns :func:`fit_subspace` (the NFK statistics, then ``pca`` by the matrix-free randomized
SVD of :mod:`ood_core.gradients.engine`, or ``avg`` = unit-norm class means of the
normalised gradients, not orthogonalised, r = C; ``avg_orth`` = the workbench's earlier
orthonormalised class means), the memory estimate that refuses a fit before it starts,
the disk cache (a cancelled fit writes nothing) and :func:`lowdim_for_dataset`. The
reference preset follows the authors' code (``github_main.py``, ``github_PCA.py``,
``github_Average_gradient.py``); see ``docs/methods.md``, section "Low-dimensional gradients".
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import cache
from .. import distributed as D
from ..data import Dataset, get_dataset, train_name_for
from ..jobs import Cancelled
from ..models import ModelBundle
from ..resources import env_var, memory_budget
from . import engine, hooks, linalg
from . import per_sample as ps
from .settings import FitCancelled, GradientError, MemoryBudgetError, Progress, resolve_params, max_fit

log = logging.getLogger(__name__)
GRAD_VERSION = 3  # 3: the singular vectors' signs are fixed from the data (engine.randomized_svd)
OVERSAMPLE = 10
_INLINE_V_BYTES = 256 * 2**20  # larger V go to a side file beside the cache (never one in-memory npz copy)


@dataclass
class Subspace:
    """A fitted subspace ``V (P, r)`` (one block per parameter), the NFK statistics, how it was fitted.

    ``V`` is held as ``blocks`` (fp32), or only as ``sv`` = ``S·V`` in the product dtype:
    the form every projection multiplies by. A large fit keeps just ``sv`` (bf16 on fast
    hardware: P·r·2 bytes, never an fp32 copy beside it); ``V`` is recovered as ``S⁻¹·sv``.
    """

    blocks: list[torch.Tensor] | None
    kind: str
    key: str
    sigma: np.ndarray | None = None
    method: str = ""
    mean: list[torch.Tensor] | None = None
    scale: list[torch.Tensor] | None = None
    g_low_fit: np.ndarray | None = None  # G_low of the fit set, when the fit produced it
    sv: list[torch.Tensor] | None = None

    @property
    def r(self) -> int:
        return int((self.blocks if self.blocks is not None else self.sv)[0].shape[1])  # type: ignore[index]

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for t in (self.blocks or []) + (self.sv or []))

    def v_blocks(self, rows: int = 1 << 18) -> Any:
        """Yield ``(k, a, V_k[a:a+rows])`` as fp32 slices (never one fp32 copy of a large V)."""
        for k, b in enumerate(self.blocks if self.blocks is not None else self.sv):  # type: ignore[arg-type]
            for a in range(0, b.shape[0], rows):
                sl = b[a:a + rows].float()
                if self.blocks is None and self.scale is not None:
                    sl = sl / self.scale[k][a:a + rows, None].to(sl.device)
                yield k, a, sl

    @property
    def V(self) -> np.ndarray:
        """``V`` as one float32 ``(P, r)`` array (small models and tests; large ones use the blocks)."""
        sizes = [b.shape[0] for b in (self.blocks if self.blocks is not None else self.sv)]  # type: ignore[union-attr]
        out = np.empty((sum(sizes), self.r), np.float32)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for k, a, sl in self.v_blocks():
            out[starts[k] + a: starts[k] + a + sl.shape[0]] = sl.cpu().numpy()
        return out

    def scaled(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """``S·V`` in ``dtype`` (computed once and kept)."""
        if self.sv is None or self.sv[0].dtype != dtype:
            if self.blocks is not None:
                self.sv = linalg.row_scale(list(self.blocks), self.scale, dtype)
            else:
                self.sv = [b.to(dtype) for b in self.sv]  # type: ignore[union-attr]
        return self.sv

    @property
    def explained_variance_ratio(self) -> np.ndarray | None:
        return None if self.sigma is None else self.sigma ** 2 / max(float((self.sigma ** 2).sum()), 1e-300)


def compute_dtype(precision: str, P: int, r: int, device: str) -> torch.dtype:
    """bf16 for ``G·V`` where it is fast and V is big (``auto``), else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    big = 4 * P * r > _INLINE_V_BYTES
    return torch.bfloat16 if big and _fast_bf16(device) else torch.float32


def _fast_bf16(device: str) -> bool:
    if torch.device(device).type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def available_bytes(device: str) -> int:
    """All a fit may hold: the ``grad_fit`` budget (docs/architecture.md, "Memory")."""
    return memory_budget("grad_fit", device)


def fit_memory(P: int, r: int, n: int, kind: str, dtype: torch.dtype, work: int, largest: int = 0) -> dict[str, int]:
    """Bytes a fit holds at its peak: the ℓ-column blocks (fp32, converted block by block), statistics, working set."""
    ell = min(r + OVERSAMPLE, n, P) if kind == "pca" else r
    mats = 4 * P * ell + 4 * largest * ell
    stats = 16 * P + 8 * P  # Σg, Σg² (fp64) then z̄, s (fp32)
    return {"subspace": mats, "stats": stats, "work": work, "total": mats + stats + work}


def check_memory(P: int, r: int, n: int, kind: str, dtype: torch.dtype, work: int, device: str,
                 limit: int | None, param_set: Any, largest: int = 0) -> None:
    """Refuse a fit that cannot fit, before it starts, with the estimate and what to change."""
    est = fit_memory(P, r, n, kind, dtype, work, largest)
    have = available_bytes(device) if limit is None else int(limit)
    if est["total"] > have:
        mb = ps._mb  # noqa: SLF001
        raise MemoryBudgetError(
            f"this fit needs ≈ {mb(est['total'])} ({P:,} parameters × {r + OVERSAMPLE if kind == 'pca' else r} columns: "
            f"{mb(est['subspace'])}; statistics {mb(est['stats'])}; working set {mb(est['work'])}) but "
            f"{mb(have)} is available; lower r, choose param_set='last_block' or 'last' instead of {param_set!r}, "
            f"use precision=bf16, or set {env_var('grad_fit')} / {env_var('grad_chunk')}")


# --- keys and the cache --------------------------------------------------------------------

def _train_dataset(id_name: str | Dataset) -> Dataset:
    return id_name if isinstance(id_name, Dataset) else get_dataset(train_name_for(id_name))


def fit_subset(train: Dataset) -> Dataset:
    cap = max_fit()
    if len(train) <= cap:
        return train
    idx = np.sort(np.random.default_rng(0).choice(len(train), cap, replace=False))
    return train.subset(idx, name=train.name)


def _r_of(bundle: ModelBundle, p: dict[str, Any]) -> int:
    return bundle.num_classes if p["subspace"] != "pca" else p["r"]


def _resolved_dtype(bundle: ModelBundle, p: dict[str, Any], device: str | None = None) -> torch.dtype:
    return compute_dtype(p["precision"], ps.n_params(bundle, p["param_set"]), _r_of(bundle, p),
                         device or ps._default_device())  # noqa: SLF001


def subspace_key(bundle: ModelBundle, id_name: str | Dataset, params: dict[str, Any] | None = None) -> str:
    """The cache key of the subspace fitted for (model, ID training split, settings)."""
    p = resolve_params(params)
    train = _train_dataset(id_name)
    pca = p["subspace"] == "pca"
    return cache.make_key("subspace", v=GRAD_VERSION, model=bundle.fingerprint, head=bundle.head_name,
                          train=train.fingerprint, n_fit=min(len(train), max_fit()),
                          preprocess=bundle.preprocess.cache_key(), loss=p["loss"], param_set=p["param_set"],
                          T=p["T"], kernel=p["kernel"], subspace=p["subspace"], r=_r_of(bundle, p),
                          power_iters=p["power_iters"] if pca else 0, oversample=OVERSAMPLE if pca else 0,
                          dtype=str(_resolved_dtype(bundle, p)) if pca else "")


def lowdim_key(bundle: ModelBundle, ds: Dataset, sub_key: str, params: dict[str, Any]) -> str:
    p = resolve_params(params)
    return cache.make_key("lowdim", v=GRAD_VERSION, model=bundle.fingerprint, dataset=ds.fingerprint,
                          preprocess=bundle.preprocess.cache_key(), dtype=str(_resolved_dtype(bundle, p)), fit=sub_key)


def _side_path(key: str) -> Path:
    d = cache.cache_dir() / "subspaces"
    d.mkdir(parents=True, exist_ok=True)
    return d / (key.replace(":", "_") + ".npy")


def _write_side(path: Path, sub: Subspace, sizes: list[int]) -> str:
    """V (fp32) to a .npy beside the cache, written slice by slice, atomically (temp file + rename); its SHA-256.

    Plain writes, not a memmap: a mapped 8.9 GB file's dirty pages count in the process's
    resident set (the fit of ResNet-18 at r = 200 peaked at 15.1 GB RSS that way).
    """
    P = int(sum(sizes))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                 "fortran_order": False, "shape": (P, sub.r)})
        for _k, _a, sl in sub.v_blocks():  # blocks in order, rows in order: the file's C order
            f.write(np.ascontiguousarray(sl.cpu().numpy(), dtype=np.float32).tobytes())
    digest = cache.file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def _read_side(path: Path, sizes: list[int], scale: list[torch.Tensor] | None, dtype: torch.dtype,
               device: str, rows: int = 1 << 18) -> list[torch.Tensor]:
    """``S·V`` in ``dtype`` from the side file, read slice by slice (no memmap: its pages would count in RSS)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dt = read(f)
        if fortran or dt != np.float32 or shape[0] != sum(sizes):
            raise GradientError(f"subspace file {path.name} has shape {shape} / dtype {dt}; expected ({sum(sizes)}, r) float32")
        r = int(shape[1])
        sv = []
        for k, size in enumerate(sizes):
            blk = torch.empty(size, r, dtype=dtype, device=device)
            for a in range(0, size, rows):
                n = min(rows, size - a)
                sl = torch.from_numpy(np.frombuffer(f.read(4 * n * r), dtype=np.float32).reshape(n, r).copy()).to(device)
                if scale is not None:
                    sl = sl * scale[k][a:a + n, None]
                blk[a:a + n] = sl.to(dtype)
            sv.append(blk)
    return sv


def _split(arr: np.ndarray, sizes: list[int], device: str) -> list[torch.Tensor]:
    out, row = [], 0
    for s in sizes:
        out.append(torch.as_tensor(np.array(arr[row:row + s]), device=device))
        row += s
    return out


def _load(key: str, sizes: list[int], device: str, dtype: torch.dtype) -> dict[str, Any] | None:
    """A cached subspace: a small V as fp32 ``blocks``; a large one (side file) straight into ``sv`` = S·V in ``dtype``."""
    hit = cache.get_arrays(key)
    if hit is None:
        return None
    out = dict(hit)
    for name in ("mean", "scale"):
        out[name] = _split(hit[name], sizes, device) if hit[name].size else None
    out["blocks"], out["sv"] = None, None
    if "V" in hit:
        out["blocks"] = _split(hit["V"], sizes, device)
        return out
    path = _side_path(key)
    if not path.exists() or cache.file_sha256(path) != str(hit["v_sha"]):
        log.warning("subspace side file of %s missing or corrupt; refitting", key)
        return None
    out["sv"] = _read_side(path, sizes, out["scale"], dtype, device)
    return out


# --- fitting ------------------------------------------------------------------------------

_subspaces: "OrderedDict[str, Subspace]" = OrderedDict()
_sub_lock = threading.Lock()


def fit_subspace(bundle: ModelBundle, id_name: str | Dataset = "mnist", params: dict[str, Any] | None = None,
                 progress: Progress | None = None, device: str | None = None,
                 budget_bytes: int | None = None) -> Subspace:
    """Fit (or load from the disk cache) the subspace of the ID training gradients.

    ``id_name`` names the ID dataset (its ``:train`` split is used) or is the training
    Dataset itself. ``budget_bytes`` overrides the memory available for the check.
    Raises GradientError (a UserError) on r > samples or parameters, MemoryBudgetError
    before any work when it cannot fit, and FitCancelled when the progress callback
    cancels (nothing is cached then).
    """
    p = resolve_params(params)
    device = device or ps._default_device()  # noqa: SLF001
    key = subspace_key(bundle, id_name, p)
    with _sub_lock:
        if key in _subspaces:
            _subspaces.move_to_end(key)
            return _subspaces[key]
    train = fit_subset(_train_dataset(id_name))
    pl = hooks.plan(bundle, p["param_set"], device=device)
    P, n, r = pl.P, len(train), _r_of(bundle, p)
    if p["subspace"] == "pca" and r > n:
        raise GradientError(f"r={r} is larger than the {n} training samples the subspace is fitted on; choose r ≤ {n}")
    if p["subspace"] == "pca" and r > P:
        raise GradientError(f"r={r} is larger than the {P:,} parameters in param_set {p['param_set']!r}; choose r ≤ {P}")
    dtype = compute_dtype(p["precision"], P, r, device)
    hit = _load(key, pl.sizes, device, dtype)
    if D.is_distributed() and D.any_true(hit is None):  # every rank joins the sharded fit ("Distributed passes")
        hit = None
    if hit is None:
        # One fit per key at a time across processes and threads (docs/architecture.md, "Concurrency and
        # cancellation"): a second caller waits and loads the first one's entry. Two fits side by side
        # can differ in the signs of V's columns, and a process projecting with its own V beside G_low
        # cached by the other mixed two bases (lowdim_maha fell from AUROC 0.97 to 0.46). Under
        # torchrun the ranks fit together, so no lock.
        def waiting() -> None:  # key_lock stops the wait of a cancelled job itself
            if progress:
                progress(0.0, "waiting for another fit of the same subspace (same model and settings) to finish")

        try:
            with cache.key_lock(key, waiting) if not D.is_distributed() else contextlib.nullcontext():
                with _sub_lock:  # a thread of this process fitted it while we waited: no reload from disk
                    mine = _subspaces.get(key)
                if mine is not None:
                    return mine
                hit = None if D.is_distributed() else _load(key, pl.sizes, device, dtype)
                if hit is None:
                    work = hooks.work_budget_bytes(pl.device)
                    check_memory(P, r, n, p["subspace"], dtype, work, device, budget_bytes, p["param_set"],
                                 max(pl.sizes))
                    sub = _fit(bundle, train, p, pl, r, dtype, progress)
                    _store(key, sub)
                    _remember(key, sub)  # before the lock goes: a waiting thread of this process takes it
        except Cancelled:
            raise FitCancelled("the subspace fit was cancelled; nothing was cached") from None
    if hit is not None:
        sub = Subspace(hit["blocks"], p["subspace"], key, hit["sigma"] if hit["sigma"].size else None,
                       str(hit["method"]), hit["mean"], hit["scale"], hit["g_low"] if hit["g_low"].size else None,
                       hit["sv"])
    return _remember(key, sub)


def _remember(key: str, sub: Subspace) -> Subspace:
    """Keep ``sub`` in memory under ``key``: V can be large (P×r), so at most two, and only the newest
    once they pass 1 GB together."""
    sub.key = key
    with _sub_lock:
        _subspaces[key] = sub
        while len(_subspaces) > 2 or (len(_subspaces) > 1 and sum(s.nbytes for s in _subspaces.values()) > 2**30):
            _subspaces.popitem(last=False)
    return sub


def _store(key: str, sub: Subspace) -> None:
    if not D.is_writer():  # only rank 0 writes the entry and its side file ("Distributed passes")
        return
    arrays: dict[str, np.ndarray] = {
        "sigma": sub.sigma if sub.sigma is not None else np.zeros(0), "method": np.array(sub.method),
        "g_low": sub.g_low_fit if sub.g_low_fit is not None else np.zeros((0, 0), np.float32),
        "mean": torch.cat(sub.mean).cpu().numpy() if sub.mean else np.zeros(0, np.float32),
        "scale": torch.cat(sub.scale).cpu().numpy() if sub.scale else np.zeros(0, np.float32),
    }
    sizes = [b.shape[0] for b in (sub.blocks if sub.blocks is not None else sub.sv)]  # type: ignore[union-attr]
    if 4 * sum(sizes) * sub.r <= _INLINE_V_BYTES:
        arrays["V"] = sub.V
    else:
        arrays["v_sha"] = np.array(_write_side(_side_path(key), sub, sizes))
    cache.put_arrays(key, arrays)


def _fit(bundle: ModelBundle, train: Dataset, p: dict[str, Any], pl: hooks.Plan, r: int, dtype: torch.dtype,
         progress: Progress | None) -> Subspace:
    n = len(train)
    what = f"{p['subspace']} subspace ({pl.P:,} parameters, {pl.engine} engine)"
    if p["subspace"] == "pca":
        def stage(i: int, total: int) -> Progress | None:
            return _stage(progress, i / total, (i + 1) / total, f"{what}, pass {i + 1}/{total}")

        res, stats = engine.randomized_svd(bundle, train, pl, p["loss"], p["T"], r, n, p["kernel"],
                                           p["power_iters"], dtype, OVERSAMPLE, 0, stage)
        method = f"randomized SVD (q={p['power_iters']}, oversample {OVERSAMPLE}, {str(dtype)[6:]}, {pl.engine})"
        return Subspace(None, "pca", "", res.sigma, method, stats.mean if stats else None,
                        stats.scale if stats else None, res.g_low.astype(np.float32), res.SV)
    labels = train.labels.copy()
    if (labels < 0).any():  # unlabelled training data: group by the predicted class
        from ..extract import extract
        labels = extract(bundle, train).preds
    C = bundle.num_classes
    onehot = np.zeros((n, C))
    onehot[np.arange(n), labels] = 1.0
    counts = onehot.sum(0)
    M = onehot / np.maximum(counts, 1)  # Gᵀ M = the class means of the raw gradients
    W, sums, sqs = engine.first_pass(bundle, train, pl, p["loss"], p["T"], M, p["kernel"] == "nfk",
                                     _stage(progress, 0.0, 1.0, what))
    stats = engine.nfk_stats(sums, sqs, n) if p["kernel"] == "nfk" else None
    present = counts > 0
    W = engine.finish_At(W, M, stats)  # type: ignore[arg-type]  # S (mean_c(g) − z̄): the normalised class means
    W = [w[:, torch.as_tensor(present, device=w.device)] for w in W]
    if p["subspace"] == "avg":  # unit-norm columns, not orthogonalised (the reference)
        norms = np.sqrt(np.maximum(np.diag(linalg.gram(W)), 1e-300))
        W = linalg.right_mul(W, np.diag(1.0 / norms))
        method = f"class means ({int(present.sum())} classes), unit norm"
    else:
        W = linalg.orthonormalise(W)
        method = f"class means ({int(present.sum())} classes), orthonormalised (earlier reading)"
    if W[0].shape[1] < C:
        log.warning("%s subspace: %d of %d classes", p["subspace"], W[0].shape[1], C)
    return Subspace(W, p["subspace"], "", None, method, stats.mean if stats else None,
                    stats.scale if stats else None, None)


def _stage(progress: Progress | None, lo: float, hi: float, prefix: str = "") -> Progress | None:
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * f, f"{prefix}: {msg}" if prefix else msg)


# --- projections ----------------------------------------------------------------------------

def project(bundle: ModelBundle, data: Any, sub: Subspace, params: dict[str, Any] | None = None,
            device: str | None = None, progress: Progress | None = None) -> np.ndarray:
    """``G_low = G̃·V`` of ``data`` chunk by chunk (the N×P matrix is never held): float32 ``(N, r)``."""
    p = resolve_params(params)
    device = device or ps._default_device()  # noqa: SLF001
    pl = hooks.plan(bundle, p["param_set"], device=device)
    dtype = compute_dtype(p["precision"], pl.P, sub.r, device)
    SV = [b.to(device) for b in sub.scaled(dtype)]
    off = linalg.offset(sub.mean, SV)
    try:
        g = engine.project_pass(bundle, data, pl, p["loss"], p["T"], SV, off, progress, f"G_low (r={sub.r})")
    except Cancelled:
        raise FitCancelled("the low-dimensional gradient pass was cancelled; nothing was cached") from None
    return g.astype(np.float32)


def lowdim_for_dataset(bundle: ModelBundle, ds_name: str | Dataset, id_name: str | Dataset = "mnist",
                       params: dict[str, Any] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Low-dimensional gradients ``G_low = G̃·V`` of one dataset, shape ``(N, r)``, disk-cached.

    ``params``: the gradient knobs (``loss``, ``param_set``, ``kernel``, ``subspace``, ``r``,
    ``T``, ``power_iters``, ``precision``); missing keys take the reference preset. ``V``
    is fitted on the ID training split of ``id_name`` (or on ``id_name`` itself when it
    is an Dataset).
    """
    p = resolve_params(params)
    ds = get_dataset(ds_name) if isinstance(ds_name, str) else ds_name
    sub = fit_subspace(bundle, id_name, p, _stage(progress, 0.0, 0.7))
    train = fit_subset(_train_dataset(id_name))
    if sub.g_low_fit is not None and ds.fingerprint == train.fingerprint:
        return sub.g_low_fit
    key = lowdim_key(bundle, ds, sub.key, p)
    memo_key = (str(cache.cache_dir()), key)
    hit = _GLOW.get(memo_key)
    if hit is not None:  # a page rerun: no disk read and checksum of (N, r) floats (0.1 s per 40 MB)
        _GLOW.move_to_end(memo_key)
        return hit
    arr = cache.cached_arrays(key, lambda: {"g_low": project(bundle, ds, sub, p, progress=_stage(progress, 0.7, 1.0))})
    if progress:
        progress(1.0, f"low-dimensional gradients of {ds.name}: done")
    g = arr["g_low"]
    g.setflags(write=False)  # shared by every caller in this process
    with _GLOW_LOCK:
        _GLOW[memo_key] = g
        while sum(a.nbytes for a in _GLOW.values()) > GLOW_MEMO_BYTES and len(_GLOW) > 1:
            _GLOW.popitem(last=False)
    return g


GLOW_MEMO_BYTES = 1 << 30  # G_low arrays kept in this process, least recently used first out
_GLOW: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_GLOW_LOCK = threading.Lock()


# --- what a fit and a projection will cost -------------------------------------------------------

def estimate_cost(bundle: ModelBundle, id_name: str | Dataset, probe: Dataset, n_images: int,
                  params: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Seconds and bytes of the subspace fit (0 when cached) and of ``G_low`` for ``n_images`` images.

    A dry run, not a fit: the per-sample blocks of the ``probe`` images are formed and dropped
    (forward, backward, blocks), and the two products every pass adds are timed on one
    ``2¹⁸``-row slice (``G·V`` in the product dtype, the fp32 ``Gᵀ·Y`` accumulation) and scaled
    to P. A fit is ``q + 1`` accumulation and ``q + 1`` projection passes over the fit set
    (``avg``: one accumulation, then a projection of the training split).
    """
    import time

    p = resolve_params(params)
    device = device or ps._default_device()  # noqa: SLF001
    train = fit_subset(_train_dataset(id_name))
    pl = hooks.plan(bundle, p["param_set"], device=device)
    P, r, q = pl.P, _r_of(bundle, p), int(p["power_iters"])
    pca = p["subspace"] == "pca"
    ell = min(r + OVERSAMPLE, len(train), P) if pca else r
    dtype = compute_dtype(p["precision"], P, r, device)
    t = time.perf_counter()
    for _s, _B, blocks in hooks.iter_chunks(bundle, probe, pl, p["loss"], p["T"], dtype=dtype):
        for _k, g in blocks():
            g.sum()
    blk = (time.perf_counter() - t) / max(1, len(probe))
    B, m = min(pl.chunk, 64), min(P, 1 << 18)
    g = torch.randn(B, m, device=device).to(dtype)
    V = torch.randn(m, ell, device=device).to(dtype)
    W, M = torch.zeros(m, ell, device=device), torch.randn(B, ell, device=device)
    t = time.perf_counter()
    g @ V
    prod = (time.perf_counter() - t) / B * P / m
    t = time.perf_counter()
    W.addmm_(g.T.float(), M)
    acc = (time.perf_counter() - t) / B * P / m
    del g, V, W, M
    proj_per, acc_per = blk + prod, blk + acc
    fit_cached = cache.has(subspace_key(bundle, id_name, p))
    n_fit = len(train)
    fit_s = 0.0 if fit_cached else (n_fit * (q + 1) * (proj_per + acc_per) if pca else n_fit * (acc_per + proj_per))
    work = hooks.work_budget_bytes(pl.device)
    fit_b = 0 if fit_cached else fit_memory(P, r, n_fit, p["subspace"], dtype, work, max(pl.sizes))["total"]
    score_b = P * r * torch.tensor([], dtype=dtype).element_size() + work
    return {"seconds": fit_s + n_images * proj_per, "fit_seconds": fit_s, "bytes": max(fit_b, score_b),
            "fit_cached": fit_cached,
            "detail": (f"{'subspace cached' if fit_cached else f'subspace fit over {n_fit:,} training images'}; "
                       f"G_low ≈ {1000 * proj_per:.1f} ms per image ({P:,} parameters, r = {r})")}
