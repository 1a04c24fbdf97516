"""ood_core/detectors/iodin.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


@pytest.mark.parametrize("T,eps", [(1000.0, 0.0014), (1.0, 0.05), (10.0, 0.0)])
def test_iodin_matches_openood_written_out(default_bundle, small_sets, T, eps):
    """OpenOOD's IODINPostprocessor.postprocess, transcribed (1-channel std), on the same images."""
    det = get_detector("i_odin")
    model = default_bundle.model
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None, T=T, eps=eps)
        data = default_bundle.preprocess(ds.images).requires_grad_(True)
        output = model(data)
        loss = torch.nn.functional.cross_entropy(output / T, output.detach().argmax(1))
        loss.backward()
        grad = data.grad.detach()
        abs_grad = grad.abs().view(len(grad), -1)
        mask = torch.zeros_like(abs_grad).scatter_(1, abs_grad.argmax(1, keepdim=True), 1).view_as(grad)
        gradient = (torch.ge(grad, 0).float() - 0.5) * 2 / default_bundle.preprocess.std[0]
        temp = data.detach() - eps * gradient * mask
        with torch.no_grad():
            ref = torch.softmax(model(temp).double() / T, 1).max(1).values.numpy()
        np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_iodin_moves_one_value_per_image(default_bundle, small_sets):
    from ood_core.detectors.iodin import iodin_perturb

    x = default_bundle.preprocess(small_sets[0].images)
    changed = (iodin_perturb(default_bundle, x, 1000.0, 0.01) != x).reshape(len(x), -1).sum(1)
    assert (changed == 1).all()


def test_iodin_and_rankfeat_report_progress_and_cancel(default_bundle, small_sets):
    class Stop(Exception):
        pass

    for name in ("i_odin", "rankfeat"):
        seen = []
        get_detector(name).score_model(default_bundle, small_sets[0], None, progress=lambda f, m: seen.append(f))
        assert seen and seen[-1] == 1.0

        def cancel(f, m):
            raise Stop()

        with pytest.raises(Stop):
            get_detector(name).score_model(default_bundle, small_sets[0], None, progress=cancel)
    # a cancelled RankFeat leaves no hook behind: plain logits are unchanged
    x = default_bundle.preprocess(small_sets[0].images)
    with torch.no_grad():
        np.testing.assert_array_equal(default_bundle.logits(x).numpy(), default_bundle.model(x).numpy())
        assert not any(m._forward_hooks for m in default_bundle.model.modules())

