"""ood_core/detectors/exgrad.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector
from ood_core.extract import Extraction


@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize("ord", [2, 1])
def test_exgrad_equals_autograd_expected_gradient_norm(test, T, ord):
    ext = exact(test)
    got = get_detector("exgrad").fit(None).score(ext, T=T, ord=ord)
    ref = []
    W = t64(ext.head_weight).requires_grad_(True)
    for h in t64(ext.features):
        z = (W @ h + t64(ext.head_bias)) / T
        p = torch.softmax(z, 0).detach()
        e = 0.0
        for y in range(C):
            (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z[None], torch.tensor([y])), W,
                                       retain_graph=True)
            e += p[y].item() * (g.norm().item() if ord == 2 else g.abs().sum().item())
        ref.append(-e)
    np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_exgrad_is_higher_for_confident_samples():
    h = np.ones((2, 3), np.float32)
    W = np.zeros((4, 3), np.float32)
    logits = np.array([[10.0, 0, 0, 0], [0.1, 0, 0, 0]], np.float32)  # confident, then near uniform
    ext = Extraction(logits, h, None, W, np.zeros(4, np.float32))
    s = get_detector("exgrad").fit(None).score(ext)
    assert s[0] > s[1] and s[0] < 0

