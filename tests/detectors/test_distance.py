"""ood_core/detectors/distance.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError, get_detector
from ood_core.extract import Extraction


def test_mahalanobis_empirical_matches_pytorch_ood(train, test, float64_default):
    det = fitted("mahalanobis", train)
    ref = pood.Mahalanobis(None).fit_features(t64(train.features), torch.tensor(train.labels)).predict_features(
        t64(test.features)).numpy()
    # pytorch-ood: 0.5·min_c MD on the *unnormalised* scatter matrix (= N·Σ) plus a 1e-6 ridge
    np.testing.assert_allclose(det.score(test, covariance="empirical"), -2 * len(train) * ref, rtol=1e-5)


def test_mahalanobis_ledoit_wolf_matches_hand_formula(train, test):
    from sklearn.covariance import LedoitWolf

    det = fitted("mahalanobis", train)
    h, y = train.features.astype(np.float64), train.labels
    mus = np.stack([h[y == c].mean(0) for c in range(C)])
    lw = LedoitWolf(assume_centered=True).fit(h - mus[y])
    P = np.linalg.inv(lw.covariance_)
    q = test.features.astype(np.float64)
    md = np.stack([np.einsum("ij,jk,ik->i", q - m, P, q - m) for m in mus], 1)
    np.testing.assert_allclose(det.score(test), -md.min(1), rtol=1e-8)
    assert 0 < det.derived(covariance="ledoit_wolf")["Ledoit-Wolf shrinkage"] < 1


def test_rmd_matches_pytorch_ood(train, test, float64_default):
    det = fitted("rmd", train)
    ref = pood.RMD(None).fit_features(t64(train.features), torch.tensor(train.labels)).predict_features(
        t64(test.features)).numpy()
    np.testing.assert_allclose(det.score(test, covariance="empirical"), -len(train) * ref, rtol=1e-5)
    # Ledoit-Wolf: the same structure; a monotone check against the empirical version is not
    # implied, so only sanity: finite and ID-oriented on a shifted set
    far = synthetic(120, seed=3, shift=4.0)
    assert det.score(test).mean() > det.score(far).mean()


def test_singular_covariance_falls_back_to_pseudo_inverse_with_a_note(train, test):
    dead = Extraction(train.logits, train.features.copy(), train.labels, train.head_weight, train.head_bias)
    dead.features[:, 3] = 0.0  # a dead ReLU unit: the empirical covariance is singular
    det = get_detector("mahalanobis").fit(dead)
    emp = det.derived(covariance="empirical")
    assert "singular" in emp["note"] and emp["covariance rank"].startswith(f"{D - 1} of")
    assert det.derived(covariance="ledoit_wolf")["covariance rank"] == f"{D} of {D}"
    for cov in ("empirical", "ledoit_wolf"):
        assert np.isfinite(det.score(test, covariance=cov)).all()
    zero = Extraction(train.logits, np.zeros_like(train.features), train.labels, train.head_weight, train.head_bias)
    with pytest.raises(DetectorError, match="zero variance"):
        get_detector("mahalanobis").fit(zero)


def test_knn_matches_pytorch_ood_and_brute_force(train, test):
    det = fitted("knn", train)
    for k in (1, 5, 50):
        knn = pood.KNN(None, k=k)
        knn.fit_features(t64(train.features), torch.tensor(train.labels))
        ref = knn.predict_features(t64(test.features)).numpy()
        got = det.score(test, k=k)
        np.testing.assert_allclose(got, -ref, rtol=1e-6)
        zt = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
        zq = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
        d = np.sqrt(((zq[:, None, :] - zt[None]) ** 2).sum(-1))
        np.testing.assert_allclose(got, -np.sort(d, 1)[:, k - 1], rtol=1e-5, atol=1e-6)


def test_knn_k_too_large_says_how_large_it_may_be(train, test):
    det = fitted("knn", train)
    assert det.knob("k").high == len(train) - 1
    with pytest.raises(DetectorError, match=r"knn\.k .*N_train − 1 = 399"):
        det.score(test, k=len(train))

