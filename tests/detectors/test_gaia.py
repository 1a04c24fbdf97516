"""ood_core/detectors/gaia.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


class _GradHook:
    """hook.py's Grad_all_hook / Grad_feature_hook: keep the output and, on backward, its gradient."""

    def __init__(self, module):
        self.data = None
        self.feature = None
        self.handle = module.register_forward_hook(self._save)

    def _save(self, _m, _i, output):
        self.feature = output

        def store(grad):
            self.data = grad.detach()
        output.register_hook(store)


def _gaia_reference(bundle, x, method):
    model = bundle.model
    watched = [model.features[i] for i in (0, 2, 5, 8)]  # SmallCNN has no norm layers: its convs
    hooks = [_GradHook(m) for m in watched] + [_GradHook(model.features[10])]
    try:
        model.zero_grad()
        y = model(x)
        if method == "gaia_z":  # cal_zero
            y.max(dim=1).values.sum().backward()
            grads = [(h.data != 0).double().mean(dim=(-1, -2)) for h in hooks[:-1]]
            score = torch.cat(grads, dim=1).pow(2).mean(dim=-1)
        else:  # cal_grad_value
            torch.log_softmax(y, dim=-1).sum().backward(retain_graph=True)
            out_c = hooks[-1].data.double().mean(dim=(-1, -2)).abs().mean(dim=1).sqrt().unsqueeze(1)
            hooks[-1].feature.sum().backward()
            inner = torch.cat([h.data.double().mean(dim=(-1, -2)) for h in hooks[:-1]], dim=1).abs()
            score = (inner / out_c).pow(2).mean(dim=1)
        return -score.detach().numpy()  # methods.py: cal_score = −cal_method(...)
    finally:
        for h in hooks:
            h.handle.remove()
        model.zero_grad(set_to_none=True)



@pytest.mark.parametrize("name", ["gaia_z", "gaia_a"])
def test_gaia_matches_the_reference_code(default_bundle, small_sets, name):
    det = get_detector(name)
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None)
        assert det.last_run["watched layers"] == "features.0, features.2, features.5, features.8"
        assert det.last_run["last feature map"] == "features.10"
        want = _gaia_reference(default_bundle, default_bundle.preprocess(ds.images), name)
        np.testing.assert_allclose(got, want, rtol=RTOL)

