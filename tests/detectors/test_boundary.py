"""ood_core/detectors/boundary.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, linear_head, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


def test_fdbd_matches_pytorch_ood_and_openood_normalizer(train, test):
    det = get_detector("fdbd").fit(train)
    ref = pood.fDBD(None, linear_head(train)).fit_features(torch.tensor(train.features))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()  # pytorch-ood works in float32
    np.testing.assert_allclose(det.score(test), want, rtol=RTOL)
    # OpenOOD's other normaliser, ‖h‖ instead of ‖h − μ‖, written out
    f, W = test.logits.astype(np.float64), test.head_weight.astype(np.float64)
    hand = []
    for fi, hi in zip(f, test.features.astype(np.float64)):
        p = fi.argmax()
        hand.append(sum(abs(fi[p] - fi[c]) / np.linalg.norm(W[p] - W[c]) for c in range(C) if c != p)
                    / ((C - 1) * np.linalg.norm(hi)))
    np.testing.assert_allclose(det.score(test, normalizer="origin"), hand, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.1])
def test_nci_matches_pytorch_ood(train, test, alpha):
    det = get_detector("nci").fit(train)
    ref = pood.NCI(None, linear_head(train), alpha=alpha).fit_features(torch.tensor(train.features))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()
    np.testing.assert_allclose(det.score(test, alpha=alpha), want, rtol=RTOL, atol=1e-6)

