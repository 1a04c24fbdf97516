"""ood_core/detectors/she.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, linear_head, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector
from ood_core.extract import Extraction


def test_she_matches_pytorch_ood_and_openood_metrics(train, test, float64_default):
    det = get_detector("she").fit(train)
    ref = pood.SHE(None, linear_head(train, torch.float64)).fit_features(t64(train.features), torch.tensor(train.labels))
    want = -ref.predict_features(t64(test.features)).detach().numpy()
    np.testing.assert_allclose(det.score(test), want, rtol=RTOL)
    S = ref.patterns.detach().numpy()[test.logits.argmax(1)]
    h = test.features.astype(np.float64)
    np.testing.assert_allclose(det.score(test, metric="euclidean"), -np.linalg.norm(h - S, axis=1), rtol=1e-9)
    cos = (h * S).sum(1) / np.linalg.norm(h, axis=1) / np.linalg.norm(S, axis=1)
    np.testing.assert_allclose(det.score(test, metric="cosine"), cos, rtol=1e-9)


def test_she_falls_back_to_predicted_classes_with_a_note(train, test):
    unl = Extraction(train.logits, train.features, None, train.head_weight, train.head_bias)
    det = get_detector("she").fit(unl)
    assert "labels unknown" in det.train_info["note"]
    pred = train.logits.argmax(1)
    want = np.stack([train.features[pred == c].astype(np.float64).mean(0) for c in range(C)])
    np.testing.assert_allclose(det.patterns, want, rtol=1e-12)
    wrong = Extraction(train.logits, train.features, (pred + 1) % C, train.head_weight, train.head_bias)
    det = get_detector("she").fit(wrong)  # nothing is correct: every class falls back
    assert "class(es) 0, 1, 2, 3, 4" in det.train_info["note"]
    np.testing.assert_allclose(det.patterns, want, rtol=1e-12)
    assert np.isfinite(det.score(test)).all()

