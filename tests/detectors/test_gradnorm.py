"""The GradNorm family (ood_core/detectors/gradnorm.py: gradnorm, rg, rg_add, uv) against
independent computations: autograd through a real nn.Linear, pytorch-ood's GradNorm, and
the formulas written out on small arrays. GradNorm by autograd on any layer:
tests/detectors/test_gradnorm_exact.py."""
import numpy as np
import pytest
import torch
from scipy.special import logsumexp as sp_lse

from ood_core.detectors import DetectorError, get_detector, logsumexp
from ood_core.detectors.gradnorm import gradnorm_closed_form, rg_score
from ood_core.extract import Extraction
from tests.conftest import make_extraction


@pytest.fixture(scope="module")
def data():
    return make_extraction(400, seed=1), make_extraction(120, seed=2)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def _linear64(W, b) -> torch.nn.Linear:
    lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(t64(W))
        lin.bias.copy_(t64(b))
    return lin


def _autograd_gradnorm(h, W, b, T, include_bias):
    """Reference: per-sample backward of KL(u || softmax(f/T)) through a real nn.Linear."""
    lin = _linear64(W, b)
    out = []
    C = W.shape[0]
    for x in t64(h):
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


# --- GradNorm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("include_bias", [False, True])
def test_gradnorm_closed_form_equals_autograd(data, T, include_bias):
    _, ext = data
    ref = _autograd_gradnorm(ext.features, ext.head_weight, ext.head_bias, T, include_bias)
    got = get_detector("gradnorm").fit(None).score(ext, T=T, include_bias=include_bias)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(gradnorm_closed_form(ext.logits, ext.features, T, include_bias), got, rtol=1e-12)


def test_installed_pytorch_ood_gradnorm_is_huang_et_al(data):
    """The installed pytorch-ood's GradNorm is Huang et al.'s (KL to uniform, L1 of the chosen
    parameters' gradient), so our closed-form ``gradnorm`` agrees with it on the head weight."""
    pood = pytest.importorskip("pytorch_ood.detector")
    _, ext = data
    lg = ext.features.astype(np.float64) @ ext.head_weight.T.astype(np.float64) + ext.head_bias
    exact = Extraction(lg, ext.features, ext.labels, ext.head_weight, ext.head_bias)
    exact.logits = lg  # float64: pytorch-ood and the closed form see the same logits
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # pytorch-ood allocates some buffers with the default dtype
    try:
        for T in (1.0, 2.0):
            ref = pood.GradNorm(_linear64(ext.head_weight, ext.head_bias), param_filter=lambda n: n == "weight",
                                temperature=T)
            want = -ref.predict(t64(ext.features)).numpy()
            np.testing.assert_allclose(get_detector("gradnorm").fit(None).score(exact, T=T), want, rtol=1e-5)
    finally:
        torch.set_default_dtype(old)


# --- RG, multiplicative ---------------------------------------------------------------------------

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


def test_rg_k_mode_is_a_choice():
    with pytest.raises(DetectorError, match="must be one of"):
        get_detector("rg").resolve({"k_mode": "median"})


# --- RG, additive, and the U×V ablation -----------------------------------------------------------

def test_rg_add_hand_formula(data):
    train, test = data
    det = get_detector("rg_add").fit(train)  # 400 training samples < 1,000: alpha uses all of them
    for k_mode, q, k, c in [("absolute", 90, 1.0, 0.5), ("percentile", 80, 1.0, 1.2), ("absolute", 90, 0.0, 0.5)]:
        kv = k if k_mode == "absolute" else np.percentile(train.features.astype(np.float64), q)
        lse_tr = sp_lse(train.logits.astype(np.float64), axis=1)
        v_tr = np.minimum(train.features.astype(np.float64), kv).sum(1)
        a_s = lse_tr.std() / v_tr.std() if v_tr.std() > 0 else 0.0
        hand = sp_lse(test.logits.astype(np.float64), axis=1) + c * a_s * np.minimum(
            test.features.astype(np.float64), kv).sum(1)
        np.testing.assert_allclose(det.score(test, c=c, k_mode=k_mode, q=q, k=k), hand, rtol=1e-7)  # k clipped in float32


def test_rg_add_alpha_uses_a_fixed_subsample_of_1000():
    big = make_extraction(1500, seed=6)
    a = get_detector("rg_add").fit(big)
    b = get_detector("rg_add").fit(big)
    assert a.train_info["alpha samples"] == 1000
    assert a.alpha_s(1.0) == b.alpha_s(1.0)


def test_uv_reproduces_rg_gradnorm_and_autograd(data):
    train, test = data
    det = get_detector("uv").fit(train)
    for T in (1.0, 3.0):
        np.testing.assert_allclose(det.score(test, U="energy", V="clipped", k_mode="absolute", k=1.0, T=T),
                                   rg_score(test.logits, test.features, 1.0, T), rtol=1e-12)
        np.testing.assert_allclose(det.score(test, U="gradnorm", V="l1", T=T),
                                   T * gradnorm_closed_form(test.logits, test.features, T), rtol=1e-12)
    # autograd: ‖∂L/∂W‖₁ of L = −(1/C) Σ log softmax(W h + b) equals U(gradnorm)·V(l1) at T = 1
    W = t64(test.head_weight).requires_grad_(True)
    ref = []
    for h in t64(test.features):
        (g,) = torch.autograd.grad(-torch.log_softmax(W @ h + t64(test.head_bias), 0).mean(), W)
        ref.append(g.abs().sum().item())
    np.testing.assert_allclose(det.score(test, U="gradnorm", V="l1"), ref, rtol=1e-6)
    np.testing.assert_allclose(det.score(test, U="one", V="one"), 1.0)
    np.testing.assert_allclose(det.score(test, U="energy", V="one"), logsumexp(test.logits), rtol=1e-12)


def test_uv_diagnostics_count_non_positive_energies(data):
    train, test = data
    det = get_detector("uv").fit(train)
    for T in (0.5, 4.0):
        # LSE((f − c)/T) = LSE(f/T) − c/T: shift by T·median so samples lie on both sides of 0
        c = T * np.median(sp_lse(test.logits.astype(np.float64) / T, axis=1))
        shifted = Extraction(test.logits - c, test.features, test.labels, test.head_weight, test.head_bias)
        want = int((sp_lse(shifted.logits.astype(np.float64) / T, axis=1) <= 0).sum())
        assert 0 < want < len(shifted)  # the shift puts samples on both sides
        assert det.diagnostics(shifted, T=T, U="energy") == {"samples with LSE(f/T) ≤ 0": want}
    assert det.diagnostics(shifted, U="gradnorm") == {}
