"""The per-sample gradient engine and the gradient subspaces, against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_models import C, tiny_bundle, tiny_images  # noqa: E402,F401

from ood_core import cache
from ood_core import gradients as G
from ood_core.models import ModelBundle, ModelError, Preprocess


def loop_grads(bundle: ModelBundle, x: torch.Tensor, loss: str, names: list[str], T: float) -> np.ndarray:
    """Independent reference: loss.backward() one sample at a time, losses written out in float32."""
    params = dict(bundle.model.named_parameters())
    rows = []
    for i in range(len(x)):
        bundle.model.zero_grad(set_to_none=True)
        out = bundle.model(x[i:i + 1])
        if loss == "kl_uniform":
            L = -(torch.log_softmax(out / T, dim=1)).sum() / out.shape[1]
        else:
            L = F.cross_entropy(out / T, out.argmax(1))
        L.backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in names]).detach().clone())
    bundle.model.zero_grad(set_to_none=True)
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("param_set", ["last_weight", "last", "last_block", "all"])
@pytest.mark.parametrize("loss", ["kl_uniform", "ce_pred"])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_vmap_equals_backward_loop(param_set, loss, T):
    b = tiny_bundle()
    ds = tiny_images(23)
    names = G.param_names(b, param_set)
    got = G.per_sample_grads(b, ds, loss, param_set, T, chunk=8)  # 23 = 8 + 8 + 7: a ragged last chunk
    ref = loop_grads(b, b.preprocess(ds.images), loss, names, T)
    assert got.shape == ref.shape == (23, G.n_params(b, param_set))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.abs(ref).max() > 0  # the check is not vacuous


def test_param_sets_name_the_right_parameters():
    b = tiny_bundle()
    assert G.param_names(b, "last_weight") == ["6.weight"]
    assert G.param_names(b, "last") == ["6.weight", "6.bias"]
    assert G.param_names(b, "last_block") == ["4.weight", "4.bias", "6.weight", "6.bias"]
    assert len(G.param_names(b, "all")) == 6


def test_last_block_of_known_architectures(default_bundle):
    from torchvision.models import resnet18

    assert G.last_block_name(default_bundle.model, "fc") == "features.12"  # the 576→128 Linear
    assert G.last_block_name(resnet18(num_classes=10), "fc") == "layer4.1"


def test_grad_norms_and_loop_engine_agree():
    b = tiny_bundle()
    ds = tiny_images(10)
    full = G.per_sample_grads(b, ds, "kl_uniform", "all")
    np.testing.assert_allclose(G.per_sample_grad_norms(b, ds, "kl_uniform", "all", ord=1), np.abs(full).sum(1), rtol=1e-5)
    loop = loop_grads(b, b.preprocess(ds.images), "kl_uniform", G.param_names(b, "all"), 1.0)
    np.testing.assert_allclose(full, loop, rtol=1e-5, atol=1e-7)


# --- bad input --------------------------------------------------------------------------

def test_memory_budget_refuses_with_the_estimate():
    b = tiny_bundle()
    est = G.estimate_memory(b, "all", chunk=16, budget_bytes=10**9)
    assert est.n_params == G.n_params(b, "all") and est.fits
    with pytest.raises(G.MemoryBudgetError, match=r"budget.*OOD_MEM_GRAD_CHUNK_MB") as e:
        list(G.iter_per_sample_grads(b, tiny_images(4), param_set="all", budget_bytes=1000))
    assert "parameters" in str(e.value) and "MB" in str(e.value)
    per = est.per_sample_bytes + est.fixed_bytes
    with pytest.raises(G.MemoryBudgetError, match="chunk of at most 2"):
        list(G.iter_per_sample_grads(b, tiny_images(4), param_set="all", chunk=16,
                                     budget_bytes=est.fixed_bytes + 2 * est.per_sample_bytes + 1))
    # chunk=None picks the largest power of two that fits instead of refusing
    assert G.plan_chunk(b, "all", None, budget_bytes=per + 3 * est.per_sample_bytes).chunk == 4
    assert isinstance(G.MemoryBudgetError("x"), ModelError)  # caught as a user error by the CLI and pages


def test_full_matrix_refused_when_it_does_not_fit():
    b = tiny_bundle()
    with pytest.raises(G.MemoryBudgetError, match="gradient matrix"):
        G.per_sample_grads(b, tiny_images(50), param_set="all", budget_bytes=50 * 4 * G.n_params(b, "all") - 1)


def test_frozen_parameters_give_a_clear_error():
    b = tiny_bundle()
    for p in b.head.parameters():
        p.requires_grad_(False)
    with pytest.raises(G.GradientError, match="no trainable parameters"):
        G.param_names(b, "last")
    # 'all' skips the frozen head and differentiates the rest
    assert "6.weight" not in G.param_names(b, "all")
    for p in b.model.parameters():
        p.requires_grad_(False)
    with pytest.raises(G.GradientError, match="requires_grad"):
        G.per_sample_grads(b, tiny_images(3), param_set="all")


def test_unknown_settings_are_refused():
    b = tiny_bundle()
    with pytest.raises(G.GradientError, match="param_set must be one of"):
        G.param_names(b, "everything")
    with pytest.raises(G.GradientError, match="loss must be one of"):
        G.per_sample_grads(b, tiny_images(3), loss="mse")
    with pytest.raises(G.GradientError, match="T must be a positive"):
        G.per_sample_grads(b, tiny_images(3), T=0)
    with pytest.raises(G.GradientError, match="unknown low-dimensional"):
        G.resolve_params({"rank": 3})
    with pytest.raises(G.GradientError, match="r must be a whole number"):
        G.resolve_params({"r": 2.5})


def test_r_larger_than_training_samples_is_refused(tmp_cache):
    b = tiny_bundle()
    with pytest.raises(G.GradientError, match="larger than the 12 training samples"):
        G.fit_subspace(b, tiny_images(12), {"r": 13})
    with pytest.raises(G.GradientError, match="larger than the 4 parameters"):
        G.fit_subspace(b, tiny_images(12), {"r": 5, "param_set": ["6.bias"]})


# --- subspaces ----------------------------------------------------------------------------

def _projector(V: np.ndarray) -> np.ndarray:
    return V @ V.T


def test_pca_subspace_spans_numpy_svd(tmp_cache):
    """The ntk kernel (raw, uncentred gradients) with an earlier-reading loss: the top right singular vectors."""
    b = tiny_bundle()
    train = tiny_images(200, seed=1)
    Gm = G.per_sample_grads(b, train, "kl_uniform", "last_block").astype(np.float64)
    _, s, vt = np.linalg.svd(Gm, full_matrices=False)
    r = int(np.argmax(s[1:8] / s[2:9])) + 2  # the r (2..8) with the widest spectral gap: a stable span
    sub = G.fit_subspace(b, train, {"param_set": "last_block", "r": r, "loss": "kl_uniform", "kernel": "ntk",
                                    "power_iters": 10})
    assert sub.method.startswith("randomized SVD") and sub.V.shape == (Gm.shape[1], r)
    np.testing.assert_allclose(sub.V.T @ sub.V, np.eye(r), atol=1e-5)
    assert np.abs(_projector(sub.V) - _projector(vt[:r].T)).max() < 1e-4


def test_avg_orth_subspace_is_orthonormal_and_spans_class_means(tmp_cache):
    """The earlier reading of avg (orthonormalised class means of raw gradients) stays as ``avg_orth``."""
    b = tiny_bundle()
    train = tiny_images(120, seed=3)
    p = {"subspace": "avg_orth", "r": 99, "loss": "kl_uniform", "param_set": "last", "kernel": "ntk"}
    sub = G.fit_subspace(b, train, p)  # r is ignored: r = C
    assert sub.r == C and sub.kind == "avg_orth"
    np.testing.assert_allclose(sub.V.T @ sub.V, np.eye(C), atol=1e-5)
    Gm = G.per_sample_grads(b, train).astype(np.float64)
    means = np.stack([Gm[train.labels == c].mean(0) for c in range(C)])
    resid = means - means @ sub.V @ sub.V.T
    assert np.abs(resid).max() < 1e-5 * np.abs(means).max()


def test_lowdim_for_dataset_is_G_times_V_and_cached(tmp_cache):
    b = tiny_bundle()
    train, test = tiny_images(80, seed=4), tiny_images(30, seed=5)
    p = {"r": 3, "loss": "ce_pred", "kernel": "ntk", "param_set": "last"}
    low = G.lowdim_for_dataset(b, test, train, p)
    sub = G.fit_subspace(b, train, p)
    expected = G.per_sample_grads(b, test, "ce_pred").astype(np.float64) @ sub.V
    np.testing.assert_allclose(low, expected, rtol=1e-4, atol=1e-6)
    key = G.lowdim_key(b, test, G.subspace_key(b, train, p), p)
    assert cache.has(key)
    # training G_low from the fit's last pass equals a projection pass
    tr_low = G.lowdim_for_dataset(b, train, train, p)
    np.testing.assert_allclose(tr_low, G.project(b, train, sub, p), rtol=1e-4, atol=1e-6)
    # another setting is another entry
    assert G.subspace_key(b, train, {"r": 2}) != G.subspace_key(b, train, {"r": 3})
    assert G.subspace_key(b, train, {"r": 2}) != G.subspace_key(b, train, {"r": 2, "power_iters": 5})
    assert G.subspace_key(b, train, {"subspace": "avg", "r": 2}) == G.subspace_key(b, train, {"subspace": "avg", "r": 7})


def test_torchscript_models_get_a_clear_message(tmp_path):
    """TorchScript archives cannot go through torch.func: a user error, not a traceback."""
    import torch

    from ood_core.gradients import GradientError, per_sample_grads
    from ood_core.models import ModelBundle, SmallCNN

    scripted = torch.jit.script(SmallCNN().eval())
    bundle = ModelBundle(scripted, Preprocess((28, 28), 1, (0.5,), (0.5,)), name="scripted")
    with pytest.raises(GradientError, match="TorchScript"):
        per_sample_grads(bundle, np.zeros((2, 28, 28, 1), np.uint8), param_set="last")
