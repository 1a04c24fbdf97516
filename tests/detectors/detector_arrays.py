"""Arrays and helpers the detector tests share: structured features around shared class centres and a
shared head (seeded), float64 helpers, and pytorch-ood as the reference library."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.detectors import get_detector
from ood_core.extract import Extraction

pood = pytest.importorskip("pytorch_ood.detector")

D, C = 16, 5

RTOL = 1e-5



def synthetic(n: int, seed: int, nonneg: bool = True, shift: float = 0.0, ties: bool = False) -> Extraction:
    """Structured features around shared class centres and a shared head (fixed by seed 123)."""
    g = np.random.default_rng(123)
    W = g.normal(0, 0.5, (C, D))
    b = g.normal(0, 0.1, C)
    centres = g.normal(0, 1.5, (C, D))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    h = centres[y] + rng.normal(0, 1.0, (n, D)) + shift
    if nonneg:
        h = np.abs(h) + (0.0 if ties else 0.01)  # strictly positive: no ties among activations
    h = h.astype(np.float32)
    logits = (h.astype(np.float64) @ W.T + b).astype(np.float32)
    return Extraction(logits, h, y, W.astype(np.float32), b.astype(np.float32), f"synthetic{seed}")



def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)



def fitted(name, train):
    return get_detector(name).fit(train)



def head_grads(ext: Extraction, loss_fn, T: float = 1.0):
    """Per-sample gradients of ``loss_fn(logits/T)`` w.r.t. the head weight, by autograd (float64).

    The logits are recomputed as ``W h + b`` so the gradient flows to ``W``; on these arrays
    they equal the cached float32 logits to float32 precision.
    """
    W = t64(ext.head_weight).requires_grad_(True)
    b = t64(ext.head_bias)
    out = []
    for h in t64(ext.features):
        (g,) = torch.autograd.grad(loss_fn((W @ h + b) / T), W)
        out.append(g)
    return torch.stack(out)



def exact(ext: Extraction) -> Extraction:
    """The same arrays with logits recomputed in float64 from the head (so autograd sees identical logits)."""
    lg = ext.features.astype(np.float64) @ ext.head_weight.astype(np.float64).T + ext.head_bias.astype(np.float64)
    e = Extraction(lg, ext.features, ext.labels, ext.head_weight, ext.head_bias, ext.dataset)
    e.logits = lg  # keep float64: the closed form and autograd then see the same numbers
    return e


def linear_head(ext: Extraction, dtype=torch.float32) -> torch.nn.Linear:
    """The arrays' head as a torch Linear (for the references that run a module)."""
    lin = torch.nn.Linear(D, C).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(ext.head_weight, dtype=dtype))
        lin.bias.copy_(torch.tensor(ext.head_bias, dtype=dtype))
    return lin
