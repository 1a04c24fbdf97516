"""ood_core/detectors/activation.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError, get_detector
from ood_core.detectors.activation import ash, scale_features


def test_ash_hand_formula_on_a_tiny_vector():
    h = np.array([[3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_allclose(ash(h, 50, "P"), [[3, 0, 2, 0]])
    np.testing.assert_allclose(ash(h, 50, "B"), [[3, 0, 3, 0]])  # s1 = 6 over 2 kept
    np.testing.assert_allclose(ash(h, 50, "S"), [[3 * np.exp(6 / 5), 0, 2 * np.exp(6 / 5), 0]])
    np.testing.assert_allclose(scale_features(h, 50), h * np.exp(6 / 5))


@pytest.mark.parametrize("variant,fn", [("P", "ash_p"), ("B", "ash_b"), ("S", "ash_s")])
@pytest.mark.parametrize("p", [60.0, 90.0])
def test_ash_matches_pytorch_ood(test, variant, fn, p):
    from pytorch_ood.detector import ash as pood_ash

    got = get_detector("ash").fit(None).score(test, p=p, variant=variant)
    shaped = getattr(pood_ash, fn)(t64(test.features)[:, :, None, None], p / 100.0)[:, :, 0, 0]
    logits = shaped @ t64(test.head_weight).T + t64(test.head_bias)
    np.testing.assert_allclose(got, -pood.EnergyBased.score(logits).numpy(), rtol=1e-5)


@pytest.mark.parametrize("p", [60.0, 85.0])
def test_scale_matches_pytorch_ood(test, p):
    from pytorch_ood.detector.scale import scale as pood_scale

    got = get_detector("scale").fit(None).score(test, p=p)
    shaped = pood_scale(t64(test.features)[:, :, None, None], p / 100.0)[:, :, 0, 0]
    logits = shaped @ t64(test.head_weight).T + t64(test.head_bias)
    np.testing.assert_allclose(got, -pood.EnergyBased.score(logits).numpy(), rtol=1e-5)


def test_ash_and_scale_refuse_negative_features():
    neg = synthetic(50, seed=4, nonneg=False)
    assert neg.features.min() < 0
    for name in ("ash", "scale"):
        det = get_detector(name).fit(None)
        assert "non-negative" in det.unavailable_reason(neg)
        with pytest.raises(DetectorError, match="non-negative"):
            det.score(neg)


def test_ash_b_ties_are_deterministic():
    ext = synthetic(40, seed=5, ties=True)
    ext.features[:, :8] = 0.0  # many zeros: kept zeros in ASH-B depend on the tie rule
    a = get_detector("ash").fit(None).score(ext, p=50, variant="B")
    b = get_detector("ash").fit(None).score(ext, p=50, variant="B")
    np.testing.assert_array_equal(a, b)
    # the rule itself: of the tied zeros, the lowest index is kept (and binarised to s1/n_kept)
    np.testing.assert_allclose(ash(np.array([[0.0, 2.0, 0.0, 0.0]]), 50, "B"), [[1, 1, 0, 0]])
    np.testing.assert_allclose(ash(np.array([[0.0, 0.0, 2.0, 0.0]]), 50, "B"), [[1, 0, 1, 0]])


def test_ash_and_scale_memoised_order_follows_p():
    """The descending order is memoised per extraction; every p must still prune afresh."""
    ext = synthetic(60, seed=6)
    for name in ("ash", "scale"):
        det = get_detector(name).fit(None)
        for p in (50.0, 90.0, 60.0):
            fresh = ext.subset(np.arange(len(ext)))  # a new object: no memo yet
            np.testing.assert_array_equal(det.score(ext, p=p), det.score(fresh, p=p))
        assert "feature_order_desc" in ext._memo


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_dice_matches_pytorch_ood(train, test, p):
    det = fitted("dice", train)
    ref = pood.DICE(None, w=t64(train.head_weight), b=t64(train.head_bias), p=p / 100.0)
    ref.fit_features(t64(train.features), torch.tensor(train.labels))
    np.testing.assert_allclose(det.score(test, p=p), -ref.predict_features(t64(test.features)).numpy(), rtol=1e-5)

