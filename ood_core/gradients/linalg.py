"""Block-wise linear algebra on P×ℓ matrices kept as one block per parameter (never one P×ℓ copy).

Owns the streamed products of the normalised gradient matrix ``A = (G − 1 z̄ᵀ) S``
(``S = diag(s)``; for the ``ntk`` kernel ``z̄ = 0`` and ``S = I``) with thin matrices,
computed from raw per-sample gradient blocks without ever forming ``A``:

* ``A·Z = G·(S Z) − 1 (z̄ᵀ S Z)``: per chunk, ``Σ_k G_k (S Z)_k`` (the ``G·V`` products);
* ``Aᵀ·Y = S (Gᵀ Y − z̄ (1ᵀ Y))``: ``Gᵀ Y`` accumulated chunk by chunk, corrected at the end;

and orthonormalisation of block matrices from their ℓ×ℓ Gram matrix. The reference
(``github_main.py``, ``github_PCA.py``) forms the same products by JVPs and VJPs. See
``docs/methods.md``, section "Low-dimensional gradients".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Blocks = list  # list[torch.Tensor], one (P_k, ℓ) block per parameter


ROWS = _ROWS = 1 << 18  # rows per slice: transients stay under ~200 MB even for a 2.4M-row block


def _slices(n: int) -> range:
    return range(0, n, _ROWS)


def gram(blocks: Sequence[torch.Tensor]) -> np.ndarray:
    """``Σ_k Z_kᵀ Z_k`` accumulated in float64 (ℓ×ℓ), row slice by row slice."""
    g = None
    for z in blocks:
        for a in _slices(z.shape[0]):
            zz = z[a:a + _ROWS].float()
            part = (zz.T @ zz).double().cpu()
            g = part if g is None else g + part
    return g.numpy()


def right_mul(blocks: list[torch.Tensor], M: np.ndarray, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``Z·M`` block by block, row slice by row slice; ``blocks`` (a list) is updated in place and returned."""
    out = blocks
    for i, z in enumerate(out):
        m = torch.as_tensor(np.ascontiguousarray(M), dtype=torch.float32, device=z.device)
        k = m.shape[1]
        if (dtype is None or dtype == z.dtype) and k <= z.shape[1] and z.is_contiguous():
            # rows are independent: overwrite each slice in place (no second P_k×ℓ block: ~2 GB for a ResNet-18 layer)
            for a in _slices(z.shape[0]):
                z[a:a + _ROWS, :k] = (z[a:a + _ROWS].float() @ m).to(z.dtype)
            # fewer columns: a contiguous copy, so later products do not repack a strided operand each chunk
            out[i] = z if k == z.shape[1] else z[:, :k].contiguous()
            del z
            continue
        res = torch.empty(z.shape[0], k, dtype=dtype or z.dtype, device=z.device)
        for a in _slices(z.shape[0]):
            res[a:a + _ROWS] = (z[a:a + _ROWS].float() @ m).to(res.dtype)
        out[i] = res
        del z
    return out


def orthonormalise(blocks: list[torch.Tensor], rel_tol: float = 1e-12, rounds: int = 2) -> list[torch.Tensor]:
    """An orthonormal basis of the blocks' column span (``rounds`` rounds of Gram eigendecomposition).

    Columns whose Gram eigenvalue falls below ``rel_tol`` of the largest are dropped (the
    span has lower rank than ℓ, e.g. fewer samples than columns). The second round
    repairs the loss of orthogonality of the first, as in CholeskyQR2; a basis that only
    feeds another power iteration needs one (each round reads and rewrites all P×ℓ: ~13 s
    for ResNet-18 at ℓ = 210 on 2 cores).
    """
    for _ in range(rounds):
        g = gram(blocks)
        lam, U = np.linalg.eigh(g)
        keep = lam > rel_tol * max(lam.max(), 1e-300)
        M = U[:, keep] / np.sqrt(lam[keep])
        blocks = right_mul(blocks, M[:, ::-1])  # largest first
    return blocks


def row_scale(blocks: list[torch.Tensor], scale: Sequence[torch.Tensor] | None, dtype: torch.dtype) -> list[torch.Tensor]:
    """``S·Z`` converted to ``dtype``; ``blocks`` is updated in place (the originals are released as they go)."""
    out = blocks
    for i, z in enumerate(out):
        res = torch.empty(z.shape, dtype=dtype, device=z.device)
        for a in _slices(z.shape[0]):
            zz = z[a:a + _ROWS]
            res[a:a + _ROWS] = (zz if scale is None else zz * scale[i][a:a + _ROWS, None].to(zz.dtype)).to(dtype)
        out[i] = res
        del z
    return out


def offset(mean: Sequence[torch.Tensor] | None, SZ: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """``z̄ᵀ (S Z)`` (ℓ,), float64; None for the ntk kernel (no centring)."""
    if mean is None:
        return None
    acc = None
    for m, z in zip(mean, SZ):
        for a in _slices(z.shape[0]):
            part = (m[a:a + _ROWS].float() @ z[a:a + _ROWS].float()).double()
            acc = part if acc is None else acc + part
    return acc
