"""ood_core/detectors/gen.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


def test_gen_hand_formula_and_pytorch_ood(test):
    p = torch.softmax(t64(test.logits), 1).numpy()
    for gamma, M in [(0.1, 100), (0.5, 3), (1.0, 1)]:
        m = min(M, C)
        top = -np.sort(-p, 1)[:, :m]
        hand = -(top ** gamma * (1 - top) ** gamma).sum(1)
        got = get_detector("gen").fit(None).score(test, gamma=gamma, M=M)
        np.testing.assert_allclose(got, hand, rtol=1e-12)
        # pytorch-ood averages over the M classes (a constant factor) and clamps p to
        # [1e-7, 1-1e-7], which is inactive on these logits
        assert p.min() > 1e-7 and p.max() < 1 - 1e-7
        ref = pood.GEN.score(t64(test.logits), gamma=gamma, M=m).numpy()
        np.testing.assert_allclose(got, -m * ref, rtol=1e-5)

