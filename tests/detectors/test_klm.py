"""ood_core/detectors/klm.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401


def test_klm_matches_pytorch_ood_and_hand(train, test):
    det = fitted("klm", train)
    ref = pood.KLMatching(None).fit_logits(t64(train.logits)).predict_logits(t64(test.logits)).numpy()
    np.testing.assert_allclose(det.score(test), -ref, rtol=1e-5)
    # hand: KL to the mean posterior of the training samples predicted as each class
    pt = torch.softmax(t64(train.logits), 1).numpy()
    pred = pt.argmax(1)
    tmpl = np.stack([pt[pred == c].mean(0) for c in np.unique(pred)])
    q = torch.softmax(t64(test.logits), 1).numpy()
    kl = np.array([[np.sum(qi * np.log(qi / d)) for d in tmpl] for qi in q])
    np.testing.assert_allclose(det.score(test), -kl.min(1), rtol=1e-9)

