"""ReAct (ood_core/detectors/react.py) against independent computations: the clip written out in
float64 and torch's logsumexp."""
import numpy as np
import pytest
import torch

from ood_core.detectors import DetectorError, get_detector
from ood_core.detectors.react import clipped_head_energy
from tests.conftest import make_extraction


@pytest.fixture()
def data():
    return make_extraction(300, seed=1), make_extraction(100, seed=2)


def _clipped_energy64(ext, c):
    h = np.minimum(ext.features.astype(np.float64), c)
    f = torch.tensor(h @ ext.head_weight.T.astype(np.float64) + ext.head_bias)
    return torch.logsumexp(f, 1).numpy()


def test_react_matches_manual_clip(data):
    train, ext = data
    det = get_detector("react").fit(train)
    c = np.percentile(train.features.astype(np.float64), 85)
    np.testing.assert_allclose(det.score(ext, p=85), _clipped_energy64(ext, c), rtol=1e-6)  # float32 path
    assert det.derived(p=85)["clip c"] == pytest.approx(c)
    assert det.derived(p=85) != det.derived(p=95)


@pytest.mark.parametrize("block", [1, 7, 100, 4096])
def test_clipped_head_energy_blocks_agree_with_float64(data, block):
    """Row blocks (one, ragged, exact, larger than N) give the same float32 scores as the formula."""
    _, ext = data
    got = clipped_head_energy(ext.features, ext.head_weight, ext.head_bias, 1.3, block=block)
    assert got.shape == (len(ext),) and got.dtype == np.float64
    np.testing.assert_allclose(got, _clipped_energy64(ext, 1.3), rtol=1e-6)


def test_clip_above_every_feature_is_plain_energy(data):
    _, ext = data
    big = float(ext.features.max()) + 1.0
    np.testing.assert_allclose(clipped_head_energy(ext.features, ext.head_weight, ext.head_bias, big),
                               get_detector("energy").fit(None).score(_with_head_logits(ext)), rtol=1e-6)


def _with_head_logits(ext):
    e = ext.subset(np.arange(len(ext)))
    e.logits = ext.features.astype(np.float64) @ ext.head_weight.T.astype(np.float64) + ext.head_bias
    return e


def test_react_needs_training_statistics(data):
    _, ext = data
    with pytest.raises(DetectorError, match="needs training statistics"):
        get_detector("react").score(ext)
    with pytest.raises(DetectorError, match="set an ID training split"):
        get_detector("react").fit(None)
