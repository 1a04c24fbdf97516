"""ood_core.saliency: captum attributions of a logit and of OOD scores, checked against plain autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core import saliency as sal
from ood_core.data import get_dataset
from ood_core.detectors.gradnorm import gradnorm_closed_form, rg_score
from ood_core.models import Preprocess
from ood_core.saliency import SaliencyError


@pytest.fixture(scope="module")
def images():
    return np.concatenate([get_dataset("letters").images[:2], get_dataset("mnist").images[:2]])


def _direct_input_grad(bundle, images, fn):
    """d fn(logits, features)/d pixels with plain autograd: normalisation written out by hand."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255).requires_grad_()
    pre = bundle.preprocess
    assert pre.channels == 1 and pre.input_size == (28, 28)  # the default CNN: no resize, no colour conversion
    z = (x - pre.mean[0]) / pre.std[0]
    h = bundle.body(z)
    f = bundle.head(h)
    (g,) = torch.autograd.grad(fn(f, h).sum(), x)
    return g.sum(1).numpy(), x.detach()


def test_pixels_to_input_mirrors_preprocess(default_bundle, images):
    x = sal.to_pixels(images)
    torch.testing.assert_close(sal.PixelsToInput(default_bundle.preprocess)(x), default_bundle.preprocess(images))
    # RGB input into a grayscale, resized, differently normalised model
    pre = Preprocess(input_size=(16, 16), channels=1, mean=(0.2,), std=(0.7,))
    rgb = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    # Preprocess resizes whole grey levels, the differentiable path floats: at most one level apart
    level = 1 / 255 / 0.7
    torch.testing.assert_close(sal.PixelsToInput(pre)(sal.to_pixels(rgb)), pre(rgb), atol=level + 1e-6, rtol=0)
    same = rgb[:, :16, :16]  # no resize: identical
    torch.testing.assert_close(sal.PixelsToInput(pre)(sal.to_pixels(same)), pre(same), atol=1e-6, rtol=1e-5)
    # an ImageNet-style crop preprocessing, and the gradient reaches every pixel the crop keeps
    crop = Preprocess(input_size=(12, 12), channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), resize="crop")
    big = np.random.default_rng(1).integers(0, 256, (2, 30, 24, 3), dtype=np.uint8)
    px = sal.to_pixels(big).requires_grad_(True)
    out = sal.PixelsToInput(crop)(px)
    torch.testing.assert_close(out, crop(big), atol=1 / 255 / 0.2 + 1e-6, rtol=0)
    (g,) = torch.autograd.grad(out.sum(), px)
    assert g.shape == px.shape and bool((g[..., 8:22, 4:20] != 0).all())


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_saliency_of_energy_equals_autograd(default_bundle, images, T):
    ref, _ = _direct_input_grad(default_bundle, images, lambda f, h: T * torch.logsumexp(f / T, dim=1))
    got = sal.attribute(default_bundle, images, "energy", "saliency", T=T, abs=False)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    got_abs = sal.attribute(default_bundle, images, "energy", "saliency", T=T)  # captum's default |grad|
    np.testing.assert_allclose(got_abs, np.abs(ref), rtol=1e-4, atol=1e-6)


def test_input_x_gradient_and_logit_target(default_bundle, images):
    ref, x = _direct_input_grad(default_bundle, images, lambda f, h: f.max(1).values)  # predicted-class logit
    got = sal.attribute(default_bundle, images, "logit", "saliency", abs=False)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    ixg = sal.attribute(default_bundle, images, "logit", "input_x_gradient")
    np.testing.assert_allclose(ixg, ref * x[:, 0].numpy(), rtol=1e-4, atol=1e-6)
    # an explicit class
    ref3, _ = _direct_input_grad(default_bundle, images, lambda f, h: f[:, 3])
    np.testing.assert_allclose(sal.attribute(default_bundle, images, "logit", "saliency", cls=3, abs=False), ref3,
                               rtol=1e-4, atol=1e-6)


def test_score_modules_equal_the_detectors(default_bundle, images):
    from ood_core import workbench as wb

    x = sal.to_pixels(images)
    with torch.no_grad():
        logits, feats = default_bundle.forward(default_bundle.preprocess(images))
        gn = sal.score_module(default_bundle, "gradnorm", T=2.0)(x).numpy()
        rg = sal.score_module(default_bundle, "rg", T=1.5, k=0.7)(x).numpy()
    np.testing.assert_allclose(gn, gradnorm_closed_form(logits.numpy(), feats.numpy(), 2.0), rtol=1e-4)
    np.testing.assert_allclose(rg, rg_score(logits.numpy(), feats.numpy(), 0.7, 1.5), rtol=1e-4)
    # the differentiable GradNorm is the L1 norm of the head's weight gradient of KL(u‖softmax(f/T)), by autograd
    T = 2.0
    W = default_bundle.head.weight
    for i in range(len(images)):
        h = feats[i:i + 1]
        f = torch.nn.functional.linear(h, W, default_bundle.head.bias)
        loss = -torch.log_softmax(f / T, dim=1).mean()
        (gW,) = torch.autograd.grad(loss, W)
        assert gn[i] == pytest.approx(float(gW.abs().sum()), rel=1e-4)
    # and the RG detector at an absolute k gives the same score on the full dataset
    det = wb.fitted_detector("rg", default_bundle, "mnist")
    s = wb.score(default_bundle, det, "letters", "mnist", {"k_mode": "absolute", "k": 0.7, "T": 1.5})[:2]
    np.testing.assert_allclose(rg[:2], s, rtol=1e-4)


def test_integrated_gradients_completeness(default_bundle, images):
    """IG's attributions add up to S(x) − S(black image) (the axiom captum's delta measures)."""
    x = sal.to_pixels(images)
    for target in ("energy", "gradnorm"):
        mod = sal.score_module(default_bundle, target)
        with torch.no_grad():
            gap = (mod(x) - mod(torch.zeros_like(x))).numpy()
        a = sal.attribute(default_bundle, images, target, "ig", n_steps=128)
        np.testing.assert_allclose(a.sum((1, 2)), gap, rtol=0.03, atol=0.05 * np.abs(gap).max())


def test_smoothgrad_without_noise_is_saliency(default_bundle, images):
    a = sal.attribute(default_bundle, images, "gradnorm", "smoothgrad", stdev=0.0, nt_samples=3)
    np.testing.assert_allclose(a, sal.attribute(default_bundle, images, "gradnorm", "saliency"), rtol=1e-4, atol=1e-6)
    b = sal.attribute(default_bundle, images, "gradnorm", "smoothgrad", stdev=0.2, nt_samples=4)
    assert not np.allclose(a, b)


def test_grid_shapes(default_bundle, images):
    # The time per sample is a measurement (bench/), not an assertion: a shared CI core can take
    # any time, and a timed test fails on load rather than on a regression.
    grid, seconds = sal.attribute_grid(default_bundle, images[:1])
    assert len(grid) == 16 and seconds > 0
    out, _ = sal.attribute_grid(default_bundle, images[:2], ("logit", "rg"), ("ig",))
    assert set(out) == {("logit", "ig"), ("rg", "ig")}
    assert all(v.shape == (2, 28, 28) and np.isfinite(v).all() for v in out.values())


def test_nearest_id_example(default_bundle, images):
    from ood_core import workbench as wb

    ext = wb.get_extraction(default_bundle, "mnist")

    def brute(q, cls, skip=None):  # cosine similarity written out, over every ID sample predicted as cls
        best, arg = -np.inf, None
        for i in np.flatnonzero(ext.preds == cls):
            f = ext.features[i].astype(np.float64)
            c = f @ q / (np.linalg.norm(f) * np.linalg.norm(q))
            if i != skip and c > best:
                best, arg = c, int(i)
        return arg

    pred = int(ext.preds[0])
    j = sal.nearest_id_example(default_bundle, "mnist", pred, "mnist", 0)  # the ID sample itself is left out
    assert j != 0 and ext.preds[j] == pred
    assert j == brute(ext.features[0].astype(np.float64), pred, skip=0)
    # an OOD query: its features come from its own cached extraction (equal to a forward pass of its image)
    let = wb.get_extraction(default_bundle, "letters")
    with torch.no_grad():
        _, h = default_bundle.forward(default_bundle.preprocess(images[1:2]))
    np.testing.assert_allclose(let.features[1], h[0].numpy(), rtol=1e-5, atol=1e-6)
    assert sal.nearest_id_example(default_bundle, "mnist", pred, "letters", 1) == brute(h[0].double().numpy(), pred)
    k = sal.nearest_id_example(default_bundle, "mnist", pred)
    assert ext.preds[k] == pred
    with pytest.raises(SaliencyError, match="no mnist test sample is predicted as class 42"):
        sal.nearest_id_example(default_bundle, "mnist", 42)
    with pytest.raises(SaliencyError, match=r"index must be in \[0, 399\]"):
        sal.nearest_id_example(default_bundle, "mnist", pred, "faces", 400)


@pytest.mark.parametrize("kwargs,msg", [
    ({"target": "entropy"}, "target must be one of"),
    ({"method": "gradcam"}, "method must be one of"),
    ({"n_steps": 1, "method": "ig"}, "saliency.n_steps must be in [2, 256]; got 1"),
    ({"T": 0.0}, "saliency.T must be in [0.1, 1000]; got 0.0"),
    ({"colour": 1}, "saliency has no knob 'colour'"),
    ({"target": "logit", "cls": 10}, "class must be in [0, 9]"),
])
def test_bad_settings_are_refused(default_bundle, images, kwargs, msg):
    with pytest.raises(SaliencyError) as e:
        sal.attribute(default_bundle, images[:1], **kwargs)
    assert msg in str(e.value)


def test_bad_images_and_indices(default_bundle):
    with pytest.raises(SaliencyError, match="uint8"):
        sal.attribute(default_bundle, np.zeros((1, 28, 28), np.float32))
    with pytest.raises(SaliencyError, match="shape"):
        sal.attribute(default_bundle, np.zeros((1, 28, 28, 2), np.uint8))
    with pytest.raises(SaliencyError, match=r"index must be in \[0, 399\]"):
        sal.sample_image("faces", 400)
