"""The gradient family and the post-2023 baselines against independent computations.

References: autograd for every closed form; pytorch-ood on the same arrays where it has
the method (it returns outlier scores, ours are higher = more ID, so we compare with its
negation); formulas written out on small tensors elsewhere. Tolerance 1e-5 relative.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.detectors import DetectorError, get_detector
from ood_core.extract import Extraction

# the library tests' arrays (seeded; same head and class centres) and fixtures
from test_detectors_library import C, D, float64_default, small_sets, t64, test, train  # noqa: F401

RTOL = 1e-5


def _head_grads(ext: Extraction, loss_fn, T: float = 1.0):
    """Per-sample gradients of ``loss_fn(logits/T)`` w.r.t. the head weight, by autograd (float64).

    The logits are recomputed as ``W h + b`` so the gradient flows to ``W``; on these arrays
    they equal the cached float32 logits to float32 precision.
    """
    W = t64(ext.head_weight).requires_grad_(True)
    b = t64(ext.head_bias)
    out = []
    for h in t64(ext.features):
        (g,) = torch.autograd.grad(loss_fn((W @ h + b) / T), W)
        out.append(g)
    return torch.stack(out)


def _exact(ext: Extraction) -> Extraction:
    """The same arrays with logits recomputed in float64 from the head (so autograd sees identical logits)."""
    lg = ext.features.astype(np.float64) @ ext.head_weight.astype(np.float64).T + ext.head_bias.astype(np.float64)
    e = Extraction(lg, ext.features, ext.labels, ext.head_weight, ext.head_bias, ext.dataset)
    e.logits = lg  # keep float64: the closed form and autograd then see the same numbers
    return e


# --- ExGrad -----------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize("ord", [2, 1])
def test_exgrad_equals_autograd_expected_gradient_norm(test, T, ord):
    ext = _exact(test)
    got = get_detector("exgrad").fit(None).score(ext, T=T, ord=ord)
    ref = []
    W = t64(ext.head_weight).requires_grad_(True)
    for h in t64(ext.features):
        z = (W @ h + t64(ext.head_bias)) / T
        p = torch.softmax(z, 0).detach()
        e = 0.0
        for y in range(C):
            (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z[None], torch.tensor([y])), W,
                                       retain_graph=True)
            e += p[y].item() * (g.norm().item() if ord == 2 else g.abs().sum().item())
        ref.append(-e)
    np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_exgrad_is_higher_for_confident_samples():
    h = np.ones((2, 3), np.float32)
    W = np.zeros((4, 3), np.float32)
    logits = np.array([[10.0, 0, 0, 0], [0.1, 0, 0, 0]], np.float32)  # confident, then near uniform
    ext = Extraction(logits, h, None, W, np.zeros(4, np.float32))
    s = get_detector("exgrad").fit(None).score(ext)
    assert s[0] > s[1] and s[0] < 0


# --- GradOrth ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4, D])
def test_gradorth_equals_autograd_projection(train, test, k):
    det = get_detector("gradorth").fit(train)
    ext = _exact(test)
    for T in (1.0, 2.0):
        got = det.score(ext, k_mode="absolute", k=k, T=T)
        # independent subspace: the SVD of R (training features, not centred)
        _, _, Vt = torch.linalg.svd(t64(train.features), full_matrices=False)
        Uk = Vt[:k].T
        G = _head_grads(ext, lambda z: -torch.log_softmax(z, 0).mean(), T)  # KL(u‖p) up to a constant
        ref = torch.linalg.matrix_norm(G @ Uk @ Uk.T).numpy()
        np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_gradorth_energy_rule_picks_the_smallest_k(train, test):
    det = get_detector("gradorth").fit(train)
    s = np.linalg.svd(train.features.astype(np.float64), compute_uv=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)
    for eps in (0.5, 0.9, 0.97, 0.999):
        k = int(np.argmax(share >= eps)) + 1
        assert det.derived(k_mode="energy", energy=eps)["k"] == k
        np.testing.assert_allclose(det.score(test, energy=eps), det.score(test, k_mode="absolute", k=k), rtol=1e-12)
    assert det.knob("k").high == D
    with pytest.raises(DetectorError, match=r"gradorth\.k"):
        det.score(test, k_mode="absolute", k=D + 1)


# --- post-2023 baselines against pytorch-ood ----------------------------------------------------

pood = pytest.importorskip("pytorch_ood.detector")


def _linear(ext: Extraction, dtype=torch.float32) -> torch.nn.Linear:
    lin = torch.nn.Linear(D, C).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(ext.head_weight, dtype=dtype))
        lin.bias.copy_(torch.tensor(ext.head_bias, dtype=dtype))
    return lin


def test_fdbd_matches_pytorch_ood_and_openood_normalizer(train, test):
    det = get_detector("fdbd").fit(train)
    ref = pood.fDBD(None, _linear(train)).fit_features(torch.tensor(train.features))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()  # pytorch-ood works in float32
    np.testing.assert_allclose(det.score(test), want, rtol=RTOL)
    # OpenOOD's other normaliser, ‖h‖ instead of ‖h − μ‖, written out
    f, W = test.logits.astype(np.float64), test.head_weight.astype(np.float64)
    hand = []
    for fi, hi in zip(f, test.features.astype(np.float64)):
        p = fi.argmax()
        hand.append(sum(abs(fi[p] - fi[c]) / np.linalg.norm(W[p] - W[c]) for c in range(C) if c != p)
                    / ((C - 1) * np.linalg.norm(hi)))
    np.testing.assert_allclose(det.score(test, normalizer="origin"), hand, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.1])
def test_nci_matches_pytorch_ood(train, test, alpha):
    det = get_detector("nci").fit(train)
    ref = pood.NCI(None, _linear(train), alpha=alpha).fit_features(torch.tensor(train.features))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()
    np.testing.assert_allclose(det.score(test, alpha=alpha), want, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_nnguide_matches_pytorch_ood(train, test, k):
    det = get_detector("nnguide").fit(train)
    ref = pood.NNGuide(None, _linear(train), k=k)  # pytorch-ood casts the bank to float32
    ref.fit_features(torch.tensor(train.features), torch.tensor(train.labels))
    want = -ref.predict_features(torch.tensor(test.features)).double().numpy()
    # pytorch-ood recomputes the logits from the head; ours are the cached logits (equal in float32)
    np.testing.assert_allclose(det.score(test, k=k), want, rtol=RTOL)


def test_she_matches_pytorch_ood_and_openood_metrics(train, test, float64_default):
    det = get_detector("she").fit(train)
    ref = pood.SHE(None, _linear(train, torch.float64)).fit_features(t64(train.features), torch.tensor(train.labels))
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


@pytest.mark.parametrize("low,high", [(1.0, 99.0), (10.0, 90.0)])
def test_vra_matches_pytorch_ood_per_unit_and_hand_formulas(train, test, low, high, float64_default):
    det = get_detector("vra").fit(train)
    lin = _linear(train, torch.float64)
    ref = pood.VRA(backbone=None, head=lambda x: lin(x.flatten(1)), lower_percentile=low / 100,
                   upper_percentile=high / 100)
    ref.fit_feature_maps(t64(train.features)[:, :, None, None], torch.tensor(train.labels))
    want = -ref.predict_feature_maps(t64(test.features)[:, :, None, None]).numpy()
    # pytorch-ood stores its thresholds in float32
    np.testing.assert_allclose(det.score(test, low=low, high=high, scope="per_unit"), want, rtol=RTOL)
    # global thresholds (OpenOOD) and the paper's piecewise operator, written out
    a, b = np.percentile(train.features.astype(np.float64), [low, high])
    h = test.features.astype(np.float64)
    W, bias = test.head_weight.astype(np.float64), test.head_bias.astype(np.float64)

    def lse(g):
        z = g @ W.T + bias
        return np.log(np.exp(z).sum(1))

    np.testing.assert_allclose(det.score(test, low=low, high=high), lse(np.clip(h, a, b)), rtol=1e-9)
    g = np.where(h < a, 0.0, np.where(h > b, b, h + 0.3))
    np.testing.assert_allclose(det.score(test, low=low, high=high, variant="vra", gamma=0.3), lse(g), rtol=1e-9)


# --- model time: I-ODIN and RankFeat ----------------------------------------------------------

@pytest.mark.parametrize("T,eps", [(1000.0, 0.0014), (1.0, 0.05), (10.0, 0.0)])
def test_iodin_matches_openood_written_out(default_bundle, small_sets, T, eps):
    """OpenOOD's IODINPostprocessor.postprocess, transcribed (1-channel std), on the same images."""
    det = get_detector("i_odin")
    model = default_bundle.model
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None, T=T, eps=eps)
        data = default_bundle.preprocess(ds.images).requires_grad_(True)
        output = model(data)
        loss = torch.nn.functional.cross_entropy(output / T, output.detach().argmax(1))
        loss.backward()
        grad = data.grad.detach()
        abs_grad = grad.abs().view(len(grad), -1)
        mask = torch.zeros_like(abs_grad).scatter_(1, abs_grad.argmax(1, keepdim=True), 1).view_as(grad)
        gradient = (torch.ge(grad, 0).float() - 0.5) * 2 / default_bundle.preprocess.std[0]
        temp = data.detach() - eps * gradient * mask
        with torch.no_grad():
            ref = torch.softmax(model(temp).double() / T, 1).max(1).values.numpy()
        np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_iodin_moves_one_value_per_image(default_bundle, small_sets):
    from ood_core.detectors.iodin import iodin_perturb

    x = default_bundle.preprocess(small_sets[0].images)
    changed = (iodin_perturb(default_bundle, x, 1000.0, 0.01) != x).reshape(len(x), -1).sum(1)
    assert (changed == 1).all()


def test_iodin_and_rankfeat_report_progress_and_cancel(default_bundle, small_sets):
    class Stop(Exception):
        pass

    for name in ("i_odin", "rankfeat"):
        seen = []
        get_detector(name).score_model(default_bundle, small_sets[0], None, progress=lambda f, m: seen.append(f))
        assert seen and seen[-1] == 1.0

        def cancel(f, m):
            raise Stop()

        with pytest.raises(Stop):
            get_detector(name).score_model(default_bundle, small_sets[0], None, progress=cancel)
    # a cancelled RankFeat leaves no hook behind: plain logits are unchanged
    x = default_bundle.preprocess(small_sets[0].images)
    with torch.no_grad():
        np.testing.assert_array_equal(default_bundle.logits(x).numpy(), default_bundle.model(x).numpy())
        assert not any(m._forward_hooks for m in default_bundle.model.modules())


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


# --- GAIA: the reference's cal_method.py, transcribed with its tensor hooks ----------------------

class _GradHook:
    """hook.py's Grad_all_hook / Grad_feature_hook: keep the output and, on backward, its gradient."""

    def __init__(self, module):
        self.data = None
        self.feature = None
        self.handle = module.register_forward_hook(self._save)

    def _save(self, _m, _i, output):
        self.feature = output

        def store(grad):
            self.data = grad.detach()
        output.register_hook(store)


def _gaia_reference(bundle, x, method):
    model = bundle.model
    watched = [model.features[i] for i in (0, 2, 5, 8)]  # SmallCNN has no norm layers: its convs
    hooks = [_GradHook(m) for m in watched] + [_GradHook(model.features[10])]
    try:
        model.zero_grad()
        y = model(x)
        if method == "gaia_z":  # cal_zero
            y.max(dim=1).values.sum().backward()
            grads = [(h.data != 0).double().mean(dim=(-1, -2)) for h in hooks[:-1]]
            score = torch.cat(grads, dim=1).pow(2).mean(dim=-1)
        else:  # cal_grad_value
            torch.log_softmax(y, dim=-1).sum().backward(retain_graph=True)
            out_c = hooks[-1].data.double().mean(dim=(-1, -2)).abs().mean(dim=1).sqrt().unsqueeze(1)
            hooks[-1].feature.sum().backward()
            inner = torch.cat([h.data.double().mean(dim=(-1, -2)) for h in hooks[:-1]], dim=1).abs()
            score = (inner / out_c).pow(2).mean(dim=1)
        return -score.detach().numpy()  # methods.py: cal_score = −cal_method(...)
    finally:
        for h in hooks:
            h.handle.remove()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["gaia_z", "gaia_a"])
def test_gaia_matches_the_reference_code(default_bundle, small_sets, name):
    det = get_detector(name)
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None)
        assert det.last_run["watched layers"] == "features.0, features.2, features.5, features.8"
        assert det.last_run["last feature map"] == "features.10"
        want = _gaia_reference(default_bundle, default_bundle.preprocess(ds.images), name)
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_model_time_hooks_act_only_in_their_own_thread(default_bundle, small_sets):
    """The model is shared: a forward on another thread during a GAIA or RankFeat hook is unmodified."""
    import threading

    from ood_core.detectors.rankfeat import remove_rank1, thread_hook

    x = default_bundle.preprocess(small_sets[0].images)
    with torch.no_grad():
        plain = default_bundle.model(x).numpy()
    seen = {}
    with thread_hook(default_bundle.model.features[10], lambda _m, _i, o: remove_rank1(o)):
        t = threading.Thread(target=lambda: seen.setdefault("other", default_bundle.model(x).detach().numpy()))
        t.start()
        t.join()
        with torch.no_grad():
            mine = default_bundle.model(x).numpy()
    np.testing.assert_array_equal(seen["other"], plain)
    assert not np.allclose(mine, plain)


@pytest.mark.parametrize("q", [0.0, 1.0, 10.0, 37.5, 90.0, 99.9, 100.0])
def test_vra_per_unit_percentile_equals_numpy(q):
    from ood_core.detectors.vra import _unit_percentile

    x = np.random.default_rng(3).normal(size=(57, 6))
    x[:20, 0] = 0.0  # ties, as post-ReLU features have
    np.testing.assert_allclose(_unit_percentile(np.sort(x, axis=0), q), np.percentile(x, q, axis=0), rtol=1e-12, atol=1e-15)


# --- NAC ---------------------------------------------------------------------------------------

def _nac_reference(train_ext: Extraction, ext: Extraction, idx, O: int, M: int, alpha: float) -> np.ndarray:
    """The authors' KMNC written out (torch, broadcast comparisons), states from autograd of KL(u‖p)."""
    def states(e):
        h = t64(e.features).requires_grad_(True)
        logits = h @ t64(e.head_weight).T + t64(e.head_bias)
        loss = (-(1.0 / logits.shape[1]) * torch.log_softmax(logits, 1)).sum()
        (g,) = torch.autograd.grad(loss, h)
        return torch.sigmoid(alpha * h.detach() * g)

    half = M // 2
    x = np.linspace(1, np.sqrt(1e3), num=half)
    xl = np.emath.logn(1e3, x)
    th = np.concatenate([xl[:-1], (1 - xl)[::-1]])
    th[-1] += 1e-2
    thresh = torch.from_numpy(np.append(th, 1.2)).view(M, 1).repeat(1, train_ext.features.shape[1])

    def acts(s):
        return (s.unsqueeze(1) >= thresh[:M - 1].unsqueeze(0)) & (s.unsqueeze(1) < thresh[1:M].unsqueeze(0))

    t_act = acts(states(train_ext.subset(idx))).sum(0).double()
    cov = torch.minimum(t_act / O, torch.ones_like(t_act))
    return (acts(states(ext)) * cov.unsqueeze(0)).sum(1).mean(1).numpy()


@pytest.mark.parametrize("O,M,alpha", [(50, 50, 100.0), (10, 20, 1000.0), (5, 500, 1.0)])
def test_nac_matches_the_authors_coverage_code(train, test, O, M, alpha):
    from ood_core.detectors.nac import balanced_subset

    ex_tr, ex_te = _exact(train), _exact(test)
    det = get_detector("nac").fit(ex_tr)
    got = det.score(ex_te, O=O, M=M, alpha=alpha, n_fit=300)
    idx = balanced_subset(ex_tr.labels, 300)
    np.testing.assert_allclose(got, _nac_reference(ex_tr, ex_te, idx, O, M, alpha), rtol=RTOL, atol=1e-12)
    assert len(idx) <= 300 and len(np.unique(np.bincount(ex_tr.labels[idx]))) == 1  # balanced


def test_nac_bin_edges_are_the_references():
    from ood_core.detectors.nac import bin_edges

    e = bin_edges(50)
    assert len(e) == 50 and e[0] == 0.0 and abs(e[-2] - 1.01) < 1e-12 and e[-1] == 1.2
    assert np.all(np.diff(e) > 0) and abs(e[24] - 0.5) < 1e-12


# --- GROOD -------------------------------------------------------------------------------------

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
    from ood_core.detectors.grood import noise_gradients
    from ood_core.data import get_dataset

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


# --- cost estimates of model-time detectors ------------------------------------------------------

def test_model_time_estimate_is_a_dry_run(default_bundle, monkeypatch):
    from ood_core import gradients as G
    from ood_core import workbench as wb

    est = wb.model_time_estimate(default_bundle, "odin", "mnist", ["faces", "letters"], {"T": 3.3, "eps": 0.0001})
    assert est["pending"] == ["faces", "letters"] and est["n_images"] == 400 + 1000
    assert est["seconds"] > 0 and est["bytes"] > 0 and "ms per image" in est["detail"]
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert not wb.is_cached(default_bundle, det, "faces", {"T": 3.3, "eps": 0.0001})  # estimating scored nothing
    assert wb.model_time_estimate(default_bundle, "energy", "mnist", ["faces"])["seconds"] == 0  # no model needed

    # the low-dimensional gradients: blocks and products timed, the subspace never fitted
    monkeypatch.setattr(G.subspace, "_fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fitted")))
    est = wb.model_time_estimate(default_bundle, "lowdim_knn", "mnist", ["faces"], {"r": 37})
    assert est["fit_seconds"] > 0 and not est["fit_cached"] and est["seconds"] > est["fit_seconds"]
    assert "subspace fit over" in est["detail"] and est["bytes"] >= 4 * 140_138 * 47
