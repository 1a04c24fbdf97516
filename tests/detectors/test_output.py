"""The output-space detectors (MSP, energy, max logit) against torch, and the knob checks every detector
shares. Each other module has its own test file beside this one (test_<module>.py)"""
import numpy as np
import pytest
import torch

from ood_core.detectors import DetectorError, get_detector
from tests.conftest import make_extraction


@pytest.fixture()
def data():
    return make_extraction(300, seed=1), make_extraction(100, seed=2)


@pytest.mark.parametrize("T", [0.5, 1.0, 7.0])
def test_msp_energy_maxlogit_match_torch(data, T):
    _, ext = data
    f = torch.tensor(ext.logits, dtype=torch.float64)
    np.testing.assert_allclose(get_detector("msp").fit(None).score(ext, T=T),
                               torch.softmax(f / T, 1).max(1).values.numpy(), rtol=1e-10)
    np.testing.assert_allclose(get_detector("energy").fit(None).score(ext, T=T),
                               (T * torch.logsumexp(f / T, 1)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(get_detector("maxlogit").fit(None).score(ext), f.max(1).values.numpy(), rtol=1e-10)


def test_knob_validation_names_knob_and_range(data):
    _, ext = data
    with pytest.raises(DetectorError, match=r"msp\.T must be in \[0\.1, 1000\]"):
        get_detector("msp").fit(None).score(ext, T=0)
    with pytest.raises(DetectorError, match="no knob 'q'"):
        get_detector("msp").fit(None).score(ext, q=3)
    with pytest.raises(DetectorError, match="must be one of"):
        get_detector("ash").resolve({"variant": "Q"})
    with pytest.raises(DetectorError, match="unknown detector"):
        get_detector("nope")


def test_feature_detectors_refuse_models_without_features(data):
    _, ext = data
    bare = ext.subset(np.arange(5))
    bare.features = np.zeros((5, 0), np.float32)
    with pytest.raises(DetectorError, match="features"):
        get_detector("gradnorm").fit(None).score(bare)
