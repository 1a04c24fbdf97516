"""ood_core/detectors/vra.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, linear_head, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


@pytest.mark.parametrize("low,high", [(1.0, 99.0), (10.0, 90.0)])
def test_vra_matches_pytorch_ood_per_unit_and_hand_formulas(train, test, low, high, float64_default):
    det = get_detector("vra").fit(train)
    lin = linear_head(train, torch.float64)
    ref = pood.VRA(backbone=None, head=lambda x: lin(x.flatten(1)), lower_percentile=low / 100,
                   upper_percentile=high / 100)
    ref.fit_feature_maps(t64(train.features)[:, :, None, None], torch.tensor(train.labels))
    want = -ref.predict_feature_maps(t64(test.features)[:, :, None, None]).numpy()
    # pytorch-ood stores its thresholds in float32
    np.testing.assert_allclose(det.score(test, low=low, high=high, scope="per_unit"), want, rtol=RTOL)
    # global thresholds (OpenOOD) and the paper's piecewise operator, written out
    a, b = np.percentile(train.features.astype(np.float64), [low, high])
    h = test.features.astype(np.float64)
    W, bias = test.head_weight.astype(np.float64), test.head_bias.astype(np.float64)

    def lse(g):
        z = g @ W.T + bias
        return np.log(np.exp(z).sum(1))

    np.testing.assert_allclose(det.score(test, low=low, high=high), lse(np.clip(h, a, b)), rtol=1e-9)
    g = np.where(h < a, 0.0, np.where(h > b, b, h + 0.3))
    np.testing.assert_allclose(det.score(test, low=low, high=high, variant="vra", gamma=0.3), lse(g), rtol=1e-9)


@pytest.mark.parametrize("q", [0.0, 1.0, 10.0, 37.5, 90.0, 99.9, 100.0])
def test_vra_per_unit_percentile_equals_numpy(q):
    from ood_core.detectors.vra import _unit_percentile

    x = np.random.default_rng(3).normal(size=(57, 6))
    x[:20, 0] = 0.0  # ties, as post-ReLU features have
    np.testing.assert_allclose(_unit_percentile(np.sort(x, axis=0), q), np.percentile(x, q, axis=0), rtol=1e-12, atol=1e-15)

