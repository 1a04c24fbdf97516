"""ood_core/detectors/rankfeat.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector


def test_rankfeat_matches_pytorch_ood(default_bundle, small_sets):
    model = default_bundle.model
    det = get_detector("rankfeat")
    seq = model.features
    got = det.score_model(default_bundle, small_sets[0], None)
    layer = det.last_run["feature map"]
    cut = int(layer.split(".")[-1]) + 1  # SmallCNN: features.N is the last feature map
    assert layer.startswith("features.") and isinstance(seq[cut - 1], torch.nn.Module)
    ref = pood.RankFeat(backbone=lambda x: seq[:cut](x).double().contiguous(),
                        head=lambda z: model.fc(seq[cut:](z.float())).double())
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None)
        with torch.no_grad():
            want = -ref.predict(default_bundle.preprocess(ds.images)).numpy()
        np.testing.assert_allclose(got, want, rtol=RTOL)

