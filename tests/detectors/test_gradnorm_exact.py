"""gradnorm_exact: per-sample autograd against GradNorm's closed form and the reference loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import tiny_bundle, tiny_images

from ood_core.detectors import DetectorError, get_detector
from ood_core.detectors.gradnorm import gradnorm_closed_form
from ood_core.detectors.gradnorm_exact import gradnorm_exact_scores


def _forward(bundle, ds):
    with torch.no_grad():
        logits, feats = bundle.forward(bundle.preprocess(ds.images))
    return logits.numpy(), feats.numpy()


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 100.0])
@pytest.mark.parametrize("include_bias", [False, True])
def test_autograd_equals_closed_form(T, include_bias):
    b = tiny_bundle(seed=1)
    ds = tiny_images(40, seed=1)
    logits, feats = _forward(b, ds)
    exact = gradnorm_exact_scores(b, ds, T, "last" if include_bias else "last_weight")
    closed = gradnorm_closed_form(logits, feats, T, include_bias)
    np.testing.assert_allclose(exact, closed, rtol=1e-5)


def test_equals_the_reference_loop():
    """The reference code's method: batch size 1, loss.backward(), L1 of the head weight's .grad."""
    b = tiny_bundle(seed=2)
    ds = tiny_images(12, seed=2)
    x = b.preprocess(ds.images)
    ref = []
    for i in range(len(x)):
        b.model.zero_grad(set_to_none=True)
        out = b.model(x[i:i + 1])
        C = out.shape[1]
        loss = torch.mean(torch.sum(-torch.full_like(out, 1.0 / C) * torch.log_softmax(out / 2.0, dim=-1), dim=-1))
        loss.backward()
        ref.append(float(b.head.weight.grad.abs().sum()))
    np.testing.assert_allclose(gradnorm_exact_scores(b, ds, 2.0, "last_weight"), ref, rtol=1e-5)


def test_larger_sets_have_larger_l1_norms():
    b = tiny_bundle(seed=3)
    ds = tiny_images(16, seed=3)
    norms = {ps: gradnorm_exact_scores(b, ds, 1.0, ps) for ps in ("last_weight", "last", "last_block", "all")}
    assert (norms["last"] > norms["last_weight"]).all()
    assert (norms["last_block"] > norms["last"]).all()
    assert (norms["all"] > norms["last_block"]).all()


def test_detector_on_the_default_matches_closed_form(default_bundle):
    from ood_core import workbench as wb
    from ood_core.data import get_dataset

    det = wb.fitted_detector("gradnorm_exact", default_bundle, "mnist")
    for name in ("mnist", "uniform"):
        full = get_dataset(name)
        idx = np.arange(0, len(full), 25)
        ds, ext = full.subset(idx), wb.get_extraction(default_bundle, full).subset(idx)
        for T in (1.0, 8.0):
            s = det.score_model(default_bundle, ds, ext, **det.resolve({"T": T}))
            np.testing.assert_allclose(s, gradnorm_closed_form(ext.logits, ext.features, T), rtol=1e-5)
    assert det.needs_model and not det.needs_training


def test_bad_knobs_are_refused():
    det = get_detector("gradnorm_exact")
    with pytest.raises(DetectorError, match="gradnorm_exact.param_set"):
        det.resolve({"param_set": "head"})
    with pytest.raises(DetectorError, match="gradnorm_exact.T"):
        det.resolve({"T": 0})
