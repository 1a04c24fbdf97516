"""ood_core/detectors/vim.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401
from scipy.stats import spearmanr

from ood_core.detectors import logsumexp


def test_vim_matches_pytorch_ood_and_hand(train, test):
    d = 6
    det = fitted("vim", train)
    assert det.knob("d").high == D - 1 and det.knob("d").default == D // 2
    vim = pood.ViM(None, d=d, w=t64(train.head_weight), b=t64(train.head_bias))
    vim.fit_features(t64(train.features), torch.tensor(train.labels))
    ref = vim.predict_features(t64(test.features)).numpy()  # pytorch-ood computes in float32
    got = det.score(test, d=d)
    np.testing.assert_allclose(got, -ref, rtol=1e-5, atol=2e-5)  # float32 noise near 0
    assert spearmanr(got, -ref).statistic > 0.9999
    # hand, float64: null space of the uncentred second moment about o = -pinv(W) b
    W, b = train.head_weight.astype(np.float64), train.head_bias.astype(np.float64)
    o = -np.linalg.pinv(W) @ b
    X = train.features.astype(np.float64) - o
    ev, V = np.linalg.eigh(X.T @ X / len(X))
    NS = V[:, np.argsort(ev)[::-1][d:]]
    alpha = train.logits.astype(np.float64).max(1).mean() / np.linalg.norm(X @ NS, axis=1).mean()
    hand = logsumexp(test.logits) - alpha * np.linalg.norm((test.features - o) @ NS, axis=1)
    np.testing.assert_allclose(got, hand, rtol=1e-8)

