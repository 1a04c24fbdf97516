"""The streaming passes over a dataset's per-sample gradients, and the matrix-free randomized SVD.

Owns the passes that :mod:`ood_core.gradients.subspace` chains (each is one forward and
one backward per chunk, see :mod:`ood_core.gradients.hooks`, plus GEMMs on the blocks):

* :func:`first_pass`: the NFK statistics (``Σ g``, ``Σ g²`` per coordinate, float64) and,
  in the same pass, ``Gᵀ M`` for a thin ``M`` (the randomized SVD's start ``Ω``, or the
  one-hot labels for class means);
* :func:`project_pass`: ``A·Z`` (this is ``G_low = G̃·V`` when ``Z = V``);
* :func:`accumulate_pass`: ``Aᵀ·Y``;
* :func:`randomized_svd`: the top-r right singular vectors of ``A`` by subspace
  iteration started from the sample side as the reference does (``github_PCA.py``:
  ``Ω`` is N×ℓ, then ``AᵀΩ``, then ``q`` rounds of ``A``/``Aᵀ`` with an orthonormalisation),
  finished by Rayleigh–Ritz on ``A·Z`` whose left factor gives the fit set's ``G_low`` free.

When the fit set's whole gradient matrix fits the ``grad_hold`` memory budget, the first pass
keeps its blocks and the later passes of :func:`randomized_svd` replay them (:class:`Held`):
the same tensors, so the same results, without recomputing a forward, a backward and the
per-sample blocks 2q + 1 more times (docs/architecture.md, "Memory").

The normalisation ``A = (G − 1 z̄ᵀ) S`` is never applied to a gradient: it is folded into
the thin matrices (see :mod:`ood_core.gradients.linalg`). See ``docs/methods.md``,
section "Low-dimensional gradients".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from sklearn.utils.extmath import svd_flip

from .. import distributed as D
from ..jobs import checkpoint
from ..models import ModelBundle
from ..resources import memory_budget
from . import hooks, linalg
from .settings import Progress

# A coordinate whose variance is below this fraction of its mean square is treated as
# constant: E[g²] − z̄² in float64 leaves rounding residue there, which would otherwise turn
# into an enormous scale 1/√L instead of the "largest finite scale" the reference intends.
_ZERO_VAR = 1e-9


@dataclass
class Stats:
    """NFK statistics: ``mean`` z̄ and ``scale`` s = 1/√L per coordinate, one block per parameter."""

    mean: list[torch.Tensor]
    scale: list[torch.Tensor]
    n: int
    n_zero: int  # coordinates with zero variance (given the largest finite scale)


class Held:
    """The per-sample gradient blocks of one fit set, kept from the first pass for the next ones.

    ``chunks`` is None until a pass has run through the whole set with holding allowed (``limit``
    bytes, the ``grad_hold`` budget); a pass that would go over it drops what it kept and every
    pass recomputes, as without holding. Replayed passes report progress and honour a cancelling
    callback like computed ones.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[tuple[int, int, list[torch.Tensor]]] | None = None
        self.dtype: torch.dtype | None = None
        self.over = False  # a pass went over the limit: later passes recompute without trying again

    def iter_chunks(self, bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float,
                    progress: Progress | None, what: str, dtype: torch.dtype):
        """:func:`hooks.iter_chunks`, from memory when this set's blocks are held in ``dtype``."""
        if self.chunks is not None and self.dtype == dtype:
            import time

            n, t0 = sum(B for _, B, _ in self.chunks), time.time()
            for start, B, mats in self.chunks:
                checkpoint()  # replayed blocks stop for a cancelled job as computed ones do
                yield start, B, (lambda mats=mats: iter(enumerate(mats)))
                hooks._report(progress, start + B, n, t0, what)  # noqa: SLF001
            return
        keep: list[tuple[int, int, list[torch.Tensor]]] | None = [] if self.chunks is None and not self.over else None
        used = 0
        for start, B, blocks in hooks.iter_chunks(bundle, data, pl, loss, T, progress, what, dtype):
            if keep is None:
                yield start, B, blocks
                continue
            mats = [g for _, g in blocks()]
            used += sum(g.numel() * g.element_size() for g in mats)
            if used <= self.limit:
                keep.append((start, B, mats))
            else:
                keep, self.over = None, True
            yield start, B, (lambda mats=mats: iter(enumerate(mats)))
        if keep is not None:
            self.chunks, self.dtype = keep, dtype


def hold_budget_bytes(device: Any) -> int:
    """Bytes a fit may keep its gradient matrix in: the ``grad_hold`` budget (docs/architecture.md, "Memory")."""
    return memory_budget("grad_hold", device)


def hold_for(pl: hooks.Plan, n: int, dtype: torch.dtype) -> Held | None:
    """A :class:`Held` for an ``n``-sample fit when its gradient matrix fits the ``grad_hold`` budget, else None."""
    limit = hold_budget_bytes(pl.device)
    need = n * sum(pl.sizes) * torch.empty(0, dtype=dtype).element_size()
    return Held(limit) if need <= limit else None


def _chunks(held: Held | None, bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float,
            progress: Progress | None, what: str, dtype: torch.dtype):
    if held is None:
        return hooks.iter_chunks(bundle, data, pl, loss, T, progress, what, dtype)
    return held.iter_chunks(bundle, data, pl, loss, T, progress, what, dtype)


def nfk_stats(sums: list[torch.Tensor], sqs: list[torch.Tensor], n: int) -> Stats:
    """z̄ = Σg/N, L = Σg²/N − z̄², s = 1/√L; ``L = 0`` gets the largest finite s.

    The reference sets infinite scales to 1 and then replaces every 1 by the maximum,
    which also overwrites genuine scales of exactly 1; here only the zero-variance
    coordinates are replaced.
    """
    means, Ls = [], []
    for s, q in zip(sums, sqs):
        m = s / n
        msq = q / n
        L = (msq - m * m).clamp_min(0.0)
        L = torch.where(L <= _ZERO_VAR * msq, torch.zeros_like(L), L)
        means.append(m)
        Ls.append(L)
    finite = [torch.where(L > 0, L.rsqrt(), torch.zeros_like(L)) for L in Ls]
    smax = max((float(f.max()) for f in finite if f.numel()), default=1.0) or 1.0
    scales = [torch.where(L > 0, f, torch.full_like(f, smax)).float() for L, f in zip(Ls, finite)]
    n_zero = int(sum(int((L == 0).sum()) for L in Ls))
    return Stats([m.float() for m in means], scales, n, n_zero)


def first_pass(bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float, M: np.ndarray | None,
               want_stats: bool, progress: Progress | None = None,
               dtype: torch.dtype = torch.float32,
               held: Held | None = None) -> tuple[list[torch.Tensor] | None, list, list]:
    """One pass: ``Gᵀ M`` (raw gradients, fp32 blocks) and, when asked, ``Σ g`` and ``Σ g²`` (fp64).

    ``dtype`` is the dtype the per-sample blocks are formed in (bf16 where ``G·V`` runs in bf16);
    the sums are accumulated in fp32/fp64 whatever it is.
    """
    if D.is_distributed():  # docs/architecture.md, "Distributed passes": this rank's rows, then a sum
        rows = D.shard(len(data))
        data = _take(data, rows)
        M = M[rows] if M is not None else None
    dev = pl.device
    W = [torch.zeros(p, M.shape[1], device=dev) for p in pl.sizes] if M is not None else None
    sums = [torch.zeros(p, dtype=torch.float64, device=dev) for p in pl.sizes] if want_stats else []
    sqs = [torch.zeros(p, dtype=torch.float64, device=dev) for p in pl.sizes] if want_stats else []
    Mt = torch.as_tensor(M, dtype=torch.float32, device=dev) if M is not None else None
    for start, B, blocks in _chunks(held, bundle, data, pl, loss, T, progress, "gradient statistics", dtype):
        for k, g in blocks():
            if want_stats:
                sums[k] += g.sum(0, dtype=torch.float64)
                sqs[k] += torch.square(g.float()).sum(0, dtype=torch.float64)  # a new tensor: g is used below
            if W is not None:
                m = Mt[start:start + B]
                for a in range(0, g.shape[1], linalg.ROWS):  # row slices: an fp32 transient of B×ROWS only
                    W[k][a:a + linalg.ROWS].addmm_(g[:, a:a + linalg.ROWS].T.float(), m)
    if D.is_distributed():
        for t in (W or []) + sums + sqs:
            D.all_reduce_sum(t)
    return W, sums, sqs


def project_pass(bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float, SZ: list[torch.Tensor],
                 off: torch.Tensor | None, progress: Progress | None = None, what: str = "G·V",
                 held: Held | None = None) -> np.ndarray:
    """``A·Z`` = ``Σ_k G_k (S Z)_k − z̄ᵀ S Z`` per sample, float64 ``(N, ℓ)``; ``SZ`` in the product dtype."""
    out = []
    dtype = SZ[0].dtype
    if D.is_distributed():  # this rank's rows; the rows of all ranks are gathered below
        data = _take(data, D.shard(len(data)))
    for _start, _B, blocks in _chunks(held, bundle, data, pl, loss, T, progress, what, dtype):
        acc = None
        for k, g in blocks():
            part = (g @ SZ[k]).float()
            acc = part if acc is None else acc + part
        y = acc.double()
        if off is not None:
            y = y - off.to(y.device)
        out.append(y.cpu().numpy())
    if D.is_distributed():
        return D.gather_rows(np.concatenate(out) if out else np.zeros((0, SZ[0].shape[1])))
    return np.concatenate(out)


def _take(data: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of a Dataset, an array or a tensor (the inputs :func:`hooks.iter_chunks` takes)."""
    if hasattr(data, "subset"):
        return data.subset(rows)
    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(rows, device=data.device)]
    return data[rows]


def accumulate_pass(bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float, Y: np.ndarray,
                    stats: Stats | None, progress: Progress | None = None,
                    dtype: torch.dtype = torch.float32, held: Held | None = None) -> list[torch.Tensor]:
    """``Aᵀ·Y`` = ``S (Gᵀ Y − z̄ (1ᵀ Y))``, fp32 blocks."""
    W, _, _ = first_pass(bundle, data, pl, loss, T, Y, False, progress, dtype, held)
    return finish_At(W, Y, stats)  # type: ignore[arg-type]


def finish_At(W: list[torch.Tensor], M: np.ndarray, stats: Stats | None) -> list[torch.Tensor]:
    """Turn raw ``Gᵀ M`` blocks into ``Aᵀ M`` in place: subtract ``z̄ (1ᵀ M)``, scale rows by s."""
    if stats is None:
        return W
    colsum = torch.as_tensor(M.sum(0), dtype=torch.float32, device=W[0].device)
    for k, w in enumerate(W):
        for a in range(0, w.shape[0], 1 << 18):
            sl = w[a:a + (1 << 18)]
            sl.sub_(stats.mean[k][a:a + (1 << 18), None] * colsum[None])
            sl.mul_(stats.scale[k][a:a + (1 << 18), None])
    return W


@dataclass
class SVDResult:
    SV: list[torch.Tensor]  # S·V as (P_k, r) blocks in the product dtype (V orthonormal, to that dtype's accuracy)
    sigma: np.ndarray  # (r,) singular values of A on the subspace
    g_low: np.ndarray  # (N, r) = A·V for the fit set


def randomized_svd(bundle: ModelBundle, data: Any, pl: hooks.Plan, loss: str, T: float, r: int, n: int,
                   kernel: str, q: int, dtype: torch.dtype, oversample: int = 10, seed: int = 0,
                   stage: Callable[[int, int], Progress | None] | None = None,
                   hold: bool = True) -> tuple[SVDResult, Stats | None]:
    """Top-r right singular vectors of the normalised training-gradient matrix, matrix-free.

    Passes: 1 (statistics + ``AᵀΩ``) + 2q (power iterations) + 1 (``A·Z``, Rayleigh–Ritz).
    ``stage(i, total)`` gives the progress callback of pass i. With ``hold`` and a gradient
    matrix that fits the ``grad_hold`` budget, only the first pass computes gradients
    (:class:`Held`); the result is the same either way.
    """
    ell = int(min(r + oversample, n, sum(pl.sizes)))
    total = 2 + 2 * q
    st = stage or (lambda i, t: None)
    rng = np.random.default_rng(seed)
    Om = np.linalg.qr(rng.standard_normal((n, ell)))[0]
    rows = len(D.shard(n)) if D.is_distributed() else n  # a rank holds its own shard's rows
    held = hold_for(pl, rows, dtype) if hold else None
    W, sums, sqs = first_pass(bundle, data, pl, loss, T, Om, kernel == "nfk", st(0, total), dtype, held)
    stats = nfk_stats(sums, sqs, n) if kernel == "nfk" else None
    del sums, sqs
    # a basis that feeds another power iteration needs one orthonormalisation round; the last needs two
    Z = linalg.orthonormalise(finish_At(W, Om, stats), rounds=1 if q else 2)  # type: ignore[arg-type]
    del W
    for it in range(q):
        SZ = linalg.row_scale(Z, stats.scale if stats else None, dtype)
        del Z
        off = linalg.offset(stats.mean if stats else None, SZ)
        Y = project_pass(bundle, data, pl, loss, T, SZ, off, st(1 + 2 * it, total), "power iteration (A·Z)", held)
        del SZ
        Y = np.linalg.qr(Y)[0]
        Z = linalg.orthonormalise(accumulate_pass(bundle, data, pl, loss, T, Y, stats, st(2 + 2 * it, total), dtype,
                                                  held),
                                  rounds=2 if it == q - 1 else 1)
    SZ = linalg.row_scale(Z, stats.scale if stats else None, dtype)
    del Z
    off = linalg.offset(stats.mean if stats else None, SZ)
    Bm = project_pass(bundle, data, pl, loss, T, SZ, off, st(total - 1, total), "Rayleigh–Ritz (A·Z)", held)
    del held
    U, sig, Rt = np.linalg.svd(Bm, full_matrices=False)
    # Each singular pair's sign is arbitrary, and two fits differing by float noise (another chunk size,
    # thread count or rank count) could flip it: fix it from the data, as scikit-learn does, so that
    # every fit of the same subspace gives G_low in the same basis.
    U, Rt = svd_flip(U, Rt, u_based_decision=True)
    rr = min(r, len(sig))
    SV = linalg.right_mul(SZ, Rt[:rr].T, dtype)  # S·V, in place of SZ: what every projection multiplies by
    del SZ
    return SVDResult(SV, sig[:rr], U[:, :rr] * sig[:rr]), stats
