"""ood_core/detectors/nnguide.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, linear_head, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


@pytest.mark.parametrize("k", [1, 10, 50])
def test_nnguide_matches_pytorch_ood(train, test, k):
    det = get_detector("nnguide").fit(train)
    ref = pood.NNGuide(None, linear_head(train), k=k)  # pytorch-ood casts the bank to float32
    ref.fit_features(torch.tensor(train.features), torch.tensor(train.labels))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()
    # pytorch-ood recomputes the logits from the head; ours are the cached logits (equal in float32)
    np.testing.assert_allclose(det.score(test, k=k), want, rtol=RTOL)

