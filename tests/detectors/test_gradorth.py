"""ood_core/detectors/gradorth.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError, get_detector


@pytest.mark.parametrize("k", [1, 4, D])
def test_gradorth_equals_autograd_projection(train, test, k):
    det = get_detector("gradorth").fit(train)
    ext = exact(test)
    for T in (1.0, 2.0):
        got = det.score(ext, k_mode="absolute", k=k, T=T)
        # independent subspace: the SVD of R (training features, not centred)
        _, _, Vt = torch.linalg.svd(t64(train.features), full_matrices=False)
        Uk = Vt[:k].T
        G = head_grads(ext, lambda z: -torch.log_softmax(z, 0).mean(), T)  # KL(u‖p) up to a constant
        ref = torch.linalg.matrix_norm(G @ Uk @ Uk.T).numpy()
        np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_gradorth_energy_rule_picks_the_smallest_k(train, test):
    det = get_detector("gradorth").fit(train)
    s = np.linalg.svd(train.features.astype(np.float64), compute_uv=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)
    for eps in (0.5, 0.9, 0.97, 0.999):
        k = int(np.argmax(share >= eps)) + 1
        assert det.derived(k_mode="energy", energy=eps)["k"] == k
        np.testing.assert_allclose(det.score(test, energy=eps), det.score(test, k_mode="absolute", k=k), rtol=1e-12)
    assert det.knob("k").high == D
    with pytest.raises(DetectorError, match=r"gradorth\.k"):
        det.score(test, k_mode="absolute", k=D + 1)

