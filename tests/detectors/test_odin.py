"""ood_core/detectors/odin.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError, get_detector


@pytest.mark.parametrize("T,eps", [(1000.0, 0.0014), (1.0, 0.005), (10.0, 0.0)])
def test_odin_matches_pytorch_ood(default_bundle, small_sets, T, eps):
    det = get_detector("odin").fit(None)
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None, T=T, eps=eps)
        x = default_bundle.preprocess(ds.images)
        x_hat = pood.odin_preprocessing(default_bundle.model, x, eps=eps, temperature=T,
                                        norm_std=list(default_bundle.preprocess.std))
        with torch.no_grad():
            ref = torch.softmax(default_bundle.model(x_hat).double() / T, 1).max(1).values.numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_odin_reports_progress(default_bundle, small_sets):
    seen = []
    get_detector("odin").score_model(default_bundle, small_sets[0], None, progress=lambda f, m: seen.append((f, m)))
    assert seen and seen[-1][0] == 1.0 and "ODIN" in seen[-1][1]


def test_odin_eps_out_of_range_and_the_clamp_fallback(default_bundle, small_sets):
    from ood_core.detectors.odin import fraction_out_of_range, odin_perturb

    det = get_detector("odin")
    with pytest.raises(DetectorError, match=r"odin\.eps must be in \[0, 0\.02\]"):
        det.score_model(default_bundle, small_sets[0], None, eps=0.5)
    # MNIST is mostly black: an unclamped step pushes background pixels below 0 (as the
    # reference code does, reported in last_run); clamp keeps every value in range
    x = default_bundle.preprocess(small_sets[0].images)
    assert fraction_out_of_range(default_bundle, odin_perturb(default_bundle, x, 1000.0, 0.01)) > 0.05
    assert fraction_out_of_range(default_bundle, odin_perturb(default_bundle, x, 1000.0, 0.01, clamp=True)) == 0
    det.score_model(default_bundle, small_sets[0], None, eps=0.01)
    assert det.last_run["share of input values outside the valid range"] > 0.05
    det.score_model(default_bundle, small_sets[0], None, eps=0.01, clamp=True)
    assert det.last_run["share of input values outside the valid range"] == 0


def test_odin_reuses_gradient_signs_across_eps(default_bundle, small_sets, monkeypatch):
    from ood_core.detectors import odin as odin_mod

    calls = []
    real = odin_mod.odin_grad_sign
    monkeypatch.setattr(odin_mod, "odin_grad_sign", lambda *a: calls.append(1) or real(*a))
    det = get_detector("odin")
    det.score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.001)
    n_first = len(calls)
    again = det.score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.004)
    assert n_first >= 1 and len(calls) == n_first  # same T: no new backward pass
    fresh = get_detector("odin").score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.004)
    np.testing.assert_allclose(again, fresh, rtol=1e-6)
    det.score_model(default_bundle, small_sets[0], None, T=10.0, eps=0.004)
    assert len(calls) > n_first  # another T: a new backward pass

