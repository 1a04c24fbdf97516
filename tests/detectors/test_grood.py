"""ood_core/detectors/grood.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError


def test_grood_gradient_equals_autograd_of_the_prototype_loss(train, test):
    from ood_core.detectors.grood import class_prototypes, noise_gradients

    h = np.asarray(test.features, np.float64)
    protos = class_prototypes(np.asarray(train.features, np.float64), train.labels, C)
    noise = np.asarray(train.features, np.float64).mean(0) * 0.3 + 0.1
    pred = test.logits.argmax(1)
    P = t64(protos).requires_grad_(True)
    mu = t64(noise).requires_grad_(True)
    want = []
    for i in range(len(h)):  # the reference: per-sample autograd of CE(−‖h − μ_j‖, ŷ) w.r.t. the OOD prototype
        allp = torch.cat([P, mu.view(1, -1)])
        s = -torch.norm(t64(h[i]).view(1, -1) - allp, dim=1)
        loss = torch.nn.functional.cross_entropy(s.view(1, -1), torch.tensor([int(pred[i])]))
        (g,) = torch.autograd.grad(loss, mu)
        want.append(g.numpy())
    np.testing.assert_allclose(noise_gradients(h, protos, noise), np.stack(want), rtol=RTOL, atol=1e-12)


def test_grood_scores_are_exact_nearest_training_gradients(default_bundle):
    from ood_core import workbench as wb
    from ood_core.data import get_dataset
    from ood_core.detectors.grood import noise_gradients

    det = wb.fitted_detector("grood", default_bundle, "mnist")
    assert det.train_info["ood_val"] == "aux_val"
    ext = wb.get_extraction(default_bundle, get_dataset("letters").subset(np.arange(50)))
    for proto in ("val_ood", "proto_mean"):
        got = det.score_arrays(ext, k=3, noise_proto=proto, n_noise=100)
        noise = det.noise_prototype(proto, 100)
        g_tr = noise_gradients(det._h[det._ok], det._protos, noise)
        g = noise_gradients(np.asarray(ext.features, np.float64), det._protos, noise)
        d2 = ((g[:, None, :] - g_tr[None, :, :]) ** 2).sum(-1)
        np.testing.assert_allclose(got, -np.sort(d2, axis=1)[:, 2], rtol=1e-6, atol=1e-12)
    val = np.asarray(wb.get_extraction(default_bundle, get_dataset("aux_val")).features, np.float64)
    np.testing.assert_allclose(det.noise_prototype("val_ood", 100), val[:100].mean(0), rtol=1e-12)


def test_grood_without_a_validation_ood_set_says_what_to_do(default_bundle, monkeypatch):
    from ood_core.detectors import grood as grood_mod

    det = grood_mod.GROOD()
    monkeypatch.setattr("ood_core.data.list_datasets", lambda *a, **k: [])
    from ood_core import workbench as wb
    from ood_core.data import get_dataset

    tr = get_dataset("mnist:train")
    det.fit_model(default_bundle, tr, wb.get_extraction(default_bundle, tr))
    with pytest.raises(DetectorError, match="register one with role ood_val, or set grood.noise_proto=proto_mean"):
        det.score_arrays(wb.get_extraction(default_bundle, tr.subset(np.arange(5))), k=1, noise_proto="val_ood", n_noise=100)
    assert det.score_arrays(wb.get_extraction(default_bundle, tr.subset(np.arange(5))), k=1,
                            noise_proto="proto_mean", n_noise=100).shape == (5,)

