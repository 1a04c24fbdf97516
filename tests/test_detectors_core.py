"""The walking skeleton's detectors against independent computations."""
import numpy as np
import pytest
import torch

from ood_core.detectors import DetectorError, get_detector
from ood_core.detectors.gradnorm import gradnorm_closed_form
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


def _autograd_gradnorm(h, W, b, T, include_bias):
    """Reference: per-sample backward of KL(u || softmax(f/T)) through a real nn.Linear."""
    lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
    out = []
    C = W.shape[0]
    for x in torch.tensor(h, dtype=torch.float64):
        lin.zero_grad()
        logp = torch.log_softmax(lin(x[None]) / T, 1)
        u = torch.full_like(logp, 1.0 / C)
        loss = torch.sum(u * (torch.log(u) - logp))  # KL(u || p)
        loss.backward()
        g = lin.weight.grad.abs().sum()
        if include_bias:
            g = g + lin.bias.grad.abs().sum()
        out.append(g.item())
    return np.array(out)


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("include_bias", [False, True])
def test_gradnorm_closed_form_equals_autograd(data, T, include_bias):
    _, ext = data
    ref = _autograd_gradnorm(ext.features, ext.head_weight, ext.head_bias, T, include_bias)
    got = get_detector("gradnorm").fit(None).score(ext, T=T, include_bias=include_bias)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(gradnorm_closed_form(ext.logits, ext.features, T, include_bias), got, rtol=1e-12)


def test_react_matches_manual_clip(data):
    train, ext = data
    det = get_detector("react").fit(train)
    c = np.percentile(train.features.astype(np.float64), 85)
    h = np.minimum(ext.features.astype(np.float64), c)
    f = torch.tensor(h @ ext.head_weight.T.astype(np.float64) + ext.head_bias)
    np.testing.assert_allclose(det.score(ext, p=85), torch.logsumexp(f, 1).numpy(), rtol=1e-6)  # float32 path
    assert det.derived(p=85)["clip c"] == pytest.approx(c)


@pytest.mark.parametrize("mode", ["percentile", "absolute"])
def test_rg_is_energy_times_clipped_l1(data, mode):
    train, ext = data
    det = get_detector("rg").fit(train)
    k = np.percentile(train.features.astype(np.float64), 70) if mode == "percentile" else 0.8
    T = 2.0
    f = torch.tensor(ext.logits, dtype=torch.float64)
    ref = (T * torch.logsumexp(f / T, 1)).numpy() * np.minimum(ext.features.astype(np.float64), k).sum(1)
    got = det.score(ext, k_mode=mode, q=70.0, k=0.8, T=T)
    np.testing.assert_allclose(got, ref, rtol=1e-7)
    d = det.derived(k_mode=mode, q=70.0, k=0.8)
    assert d["k (absolute)"] == pytest.approx(k)


def test_rg_counts_negative_energy(data):
    train, ext = data
    det = get_detector("rg").fit(train)
    ext2 = ext.subset(np.arange(10))
    ext2.logits = np.full_like(ext2.logits, -10.0)
    assert det.diagnostics(ext2, T=1.0)["samples with LSE(f/T) ≤ 0"] == 10


def test_knob_validation_names_knob_and_range(data):
    _, ext = data
    with pytest.raises(DetectorError, match=r"msp\.T must be in \[0\.1, 1000\]"):
        get_detector("msp").fit(None).score(ext, T=0)
    with pytest.raises(DetectorError, match="no knob 'q'"):
        get_detector("msp").fit(None).score(ext, q=3)
    with pytest.raises(DetectorError, match="must be one of"):
        get_detector("rg").resolve({"k_mode": "median"})
    with pytest.raises(DetectorError, match="unknown detector"):
        get_detector("nope")


def test_training_statistics_required(data):
    _, ext = data
    with pytest.raises(DetectorError, match="needs training statistics"):
        get_detector("react").score(ext)
    with pytest.raises(DetectorError, match="set an ID training split"):
        get_detector("react").fit(None)


def test_feature_detectors_refuse_models_without_features(data):
    _, ext = data
    bare = ext.subset(np.arange(5))
    bare.features = np.zeros((5, 0), np.float32)
    with pytest.raises(DetectorError, match="features"):
        get_detector("gradnorm").fit(None).score(bare)
