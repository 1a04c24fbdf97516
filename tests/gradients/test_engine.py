"""The reference preset's G_low against an explicit computation: per-sample autograd, NFK, exact SVD (numpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import C, tiny_bundle, tiny_images
from torch import nn

from ood_core import cache
from ood_core import gradients as G
from ood_core.gradients import hooks
from ood_core.jobs import Cancelled, Job
from ood_core.models import ModelBundle, Preprocess


def explicit_grads(bundle: ModelBundle, ds, loss: str = "lse") -> np.ndarray:
    """loss.backward() one sample at a time, every parameter, y = log Σ exp(f) written out (float64)."""
    x = bundle.preprocess(ds.images)
    params = list(bundle.model.parameters())
    rows = []
    for i in range(len(x)):
        bundle.model.zero_grad(set_to_none=True)
        f = bundle.model(x[i:i + 1]).double()
        y = torch.log(torch.exp(f).sum()) if loss == "lse" else -torch.log_softmax(f, 1).mean()
        y.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in params]).double().clone())
    bundle.model.zero_grad(set_to_none=True)
    return torch.stack(rows).numpy()


def explicit_nfk(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zbar = g.mean(0)
    L = ((g - zbar) ** 2).mean(0)
    s = np.zeros_like(L)
    s[L > 0] = 1 / np.sqrt(L[L > 0])
    s[L == 0] = s[L > 0].max()
    return zbar, s


def principal_angles(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    qu, qv = np.linalg.qr(U)[0], np.linalg.qr(V)[0]
    return np.arccos(np.clip(np.linalg.svd(qu.T @ qv, compute_uv=False), -1, 1))


def test_reference_defaults_equal_methods_md():
    assert G.REFERENCE == {"loss": "lse", "param_set": "all", "kernel": "nfk", "subspace": "pca", "r": 200, "T": 1.0,
                           "power_iters": G.DEFAULT_POWER_ITERS, "precision": "auto"}
    from ood_core.detectors import get_detector
    assert get_detector("lowdim_knn").defaults()["k"] == 5
    for name in ("lowdim_knn", "lowdim_maha", "lowdim_probe_energy", "lowdim_probe_feat_react"):
        d = get_detector(name).defaults()
        assert {k: d[k] for k in G.GRAD_KNOB_NAMES} == G.REFERENCE, name
    p = get_detector("lowdim_probe_odin").defaults()
    assert (p["epochs"], p["lr"], p["T_probe"], p["eps"]) == (10, 0.1, 100.0, 50.0)
    assert get_detector("lowdim_probe_react").defaults()["p"] == 90.0


def test_hook_engine_equals_per_sample_autograd():
    torch.manual_seed(0)
    # ResNet-style: Conv → BatchNorm (eval, non-trivial running stats) → in-place ReLU, a strided
    # and a grouped conv, a module called twice: the hooks must see the pre-ReLU gradient
    shared = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          shared, nn.ReLU(inplace=True), shared, nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6),
                          nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(6 * 3 * 3, 8), nn.BatchNorm1d(8),
                          nn.ReLU(), nn.Linear(8, C))
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    b = ModelBundle(model, Preprocess((8, 8), 3, (0.5,) * 3, (0.25,) * 3), name="resnetish", arch="resnetish")
    ds = tiny_images(7)
    ds.images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    pl = hooks.plan(b, "all", chunk=3)
    assert pl.engine == "hooks"
    for loss in ("lse", "kl_uniform"):
        got = np.concatenate([torch.cat([g for _, g in blocks()], 1).numpy()
                              for _, _, blocks in hooks.iter_chunks(b, ds, pl, loss, 1.0)])
        ref = explicit_grads(b, ds, loss)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("q", [10])
def test_preset_glow_equals_explicit_computation(tmp_cache, q):
    b = tiny_bundle()
    train, test = tiny_images(150, seed=1), tiny_images(25, seed=2)
    r = 6
    p = {"r": r, "power_iters": q}
    g = explicit_grads(b, train)
    zbar, s = explicit_nfk(g)
    _, sig, vt = np.linalg.svd((g - zbar) * s, full_matrices=False)
    assert sig[r - 1] / sig[r] > 1.02  # a gap: the top-r subspace is well defined
    sub = G.fit_subspace(b, train, p)
    assert principal_angles(vt[:r].T, sub.V.astype(np.float64)).max() < 1e-4
    np.testing.assert_allclose(sub.sigma, sig[:r], rtol=1e-4)
    # G_low of a test set: the explicit normalised gradients times the exact singular vectors, up to column signs
    ref = ((explicit_grads(b, test) - zbar) * s) @ vt[:r].T
    low = G.lowdim_for_dataset(b, test, train, p)
    signs = np.sign((low * ref).sum(0))
    np.testing.assert_allclose(low * signs, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # the fit set's G_low comes from the last pass, no extra pass
    tr = G.lowdim_for_dataset(b, train, train, p)
    ref_tr = ((g - zbar) * s) @ vt[:r].T
    np.testing.assert_allclose(tr * signs, ref_tr, rtol=1e-3, atol=1e-3 * np.abs(ref_tr).max())


def test_nfk_zero_variance_gets_the_largest_finite_scale():
    from ood_core.gradients.engine import nfk_stats

    g = np.array([[1.0, 2.0, 0.0, 5.0], [3.0, 2.0, 0.0, 5.0], [2.0, 2.0, 0.0, 7.0]])  # cols 1, 2 constant
    st = nfk_stats([torch.tensor(g.sum(0))], [torch.tensor((g ** 2).sum(0))], 3)
    zbar, s = explicit_nfk(g)
    np.testing.assert_allclose(st.mean[0].numpy(), zbar, rtol=1e-6)
    np.testing.assert_allclose(st.scale[0].numpy(), s, rtol=1e-6)
    assert st.n_zero == 2 and np.isfinite(st.scale[0].numpy()).all()
    # a genuine scale of exactly 1 is kept (the reference would overwrite it with the maximum)
    g1 = np.array([[0.0, 0.0], [2.0, 0.0]])  # var 1 -> s = 1; constant column
    st1 = nfk_stats([torch.tensor(g1.sum(0))], [torch.tensor((g1 ** 2).sum(0))], 2)
    np.testing.assert_allclose(st1.scale[0].numpy(), [1.0, 1.0])


def test_avg_subspace_is_unit_norm_class_means(tmp_cache):
    b = tiny_bundle()
    train = tiny_images(90, seed=3)
    sub = G.fit_subspace(b, train, {"subspace": "avg", "r": 77})  # r is ignored: r = C
    g = explicit_grads(b, train)
    zbar, s = explicit_nfk(g)
    means = np.stack([((g[train.labels == c] - zbar) * s).mean(0) for c in range(C)]).T
    np.testing.assert_allclose(sub.V, means / np.linalg.norm(means, axis=0), rtol=1e-4, atol=3e-5)
    assert sub.r == C and abs(float((sub.V[:, 0] * sub.V[:, 1]).sum())) > 1e-6  # not orthogonalised


def test_bf16_precision_stays_close(tmp_cache):
    b = tiny_bundle()
    train, test = tiny_images(100, seed=4), tiny_images(20, seed=5)
    a = G.lowdim_for_dataset(b, test, train, {"r": 4, "precision": "fp32"})
    h = G.lowdim_for_dataset(b, test, train, {"r": 4, "precision": "bf16"})
    signs = np.sign((a * h).sum(0))
    assert np.abs(h * signs - a).max() < 0.05 * np.abs(a).max()


# --- bad input ---------------------------------------------------------------------------------

def test_r_larger_than_training_set_is_a_user_error(tmp_cache):
    with pytest.raises(G.GradientError, match="r=31 is larger than the 30 training samples"):
        G.fit_subspace(tiny_bundle(), tiny_images(30), {"r": 31})


def test_memory_refusal_before_any_work(tmp_cache, monkeypatch):
    b = tiny_bundle()
    calls = []
    monkeypatch.setattr(hooks, "iter_chunks", lambda *a, **k: calls.append(1) or iter(()))
    with pytest.raises(G.MemoryBudgetError, match=r"needs ≈ .* available; lower r.*param_set='last_block'"):
        G.fit_subspace(b, tiny_images(40), {"r": 20}, budget_bytes=10_000)
    assert not calls
    monkeypatch.setenv("OOD_MEM_GRAD_FIT_MB", "0.01")
    with pytest.raises(G.MemoryBudgetError, match="OOD_MEM_GRAD_FIT_MB"):
        G.fit_subspace(b, tiny_images(40), {"r": 20})


def test_frozen_or_missing_parameters(tmp_cache):
    b = tiny_bundle()
    for prm in b.model.parameters():
        prm.requires_grad_(False)
    with pytest.raises(G.GradientError, match="no trainable parameters"):
        G.fit_subspace(b, tiny_images(20), {"r": 3})
    b = tiny_bundle()
    with pytest.raises(G.GradientError, match="unknown parameter names"):
        G.fit_subspace(b, tiny_images(20), {"r": 3, "param_set": ["nope.weight"]})
    assert issubclass(G.GradientError, __import__("ood_core.errors", fromlist=["UserError"]).UserError)


def test_cancel_mid_fit_leaves_no_cache_entry(tmp_cache):
    b = tiny_bundle()
    train = tiny_images(64, seed=7)
    p = {"r": 3, "power_iters": 2}
    seen = []

    def progress(f, msg):
        seen.append(msg)
        if len(seen) == 3:  # in the middle of the second pass
            raise Cancelled()

    with pytest.raises(G.FitCancelled, match="cancelled; nothing was cached"):
        G.fit_subspace(b, train, p, progress=progress)
    assert not cache.has(G.subspace_key(b, train, p))
    assert any("ETA" in m for m in seen)
    # as a job: the state is 'cancelled', not 'failed'
    job = Job(lambda ctx: G.fit_subspace(b, train, p, progress=lambda f, m: (_ for _ in ()).throw(Cancelled())))
    job.start().wait(60)
    assert job.state == "cancelled" and not cache.has(G.subspace_key(b, train, p))
    G.fit_subspace(b, train, p)  # then a full fit is cached
    assert cache.has(G.subspace_key(b, train, p))


def test_unsupported_layers_fall_back_to_vmap(tmp_cache):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(128, C))
    b = ModelBundle(model, Preprocess((8, 8), 1, (0.5,), (0.5,)), name="gn", arch="gn")
    pl = hooks.plan(b, "all")
    assert pl.engine == "vmap" and "GroupNorm" in pl.reason
    ds = tiny_images(9)
    got = np.concatenate([torch.cat([g for _, g in blocks()], 1).numpy()
                          for _, _, blocks in hooks.iter_chunks(b, ds, pl, "lse", 1.0)])
    np.testing.assert_allclose(got, explicit_grads(b, ds), rtol=1e-4, atol=1e-6)


def test_a_large_subspace_round_trips_through_its_side_file(tmp_cache, monkeypatch):
    """V over the inline limit goes to a .npy beside the cache (plain writes, no memmap) and loads back
    straight into S·V; a damaged file is refitted, not served."""
    monkeypatch.setattr(G.subspace, "_INLINE_V_BYTES", 0)
    b = tiny_bundle()
    train, test = tiny_images(60, seed=7), tiny_images(12, seed=8)
    p = {"r": 5, "precision": "fp32"}
    sub = G.fit_subspace(b, train, p)
    want_V, want_g = sub.V, G.project(b, test, sub, p)
    path = G.subspace._side_path(sub.key)
    assert path.exists() and np.load(path).shape == want_V.shape
    np.testing.assert_array_equal(np.load(path), want_V)
    G.subspace._subspaces.clear()
    again = G.fit_subspace(b, train, p)
    assert again.blocks is None and again.sv is not None  # loaded as S·V only
    np.testing.assert_allclose(again.V, want_V, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(G.project(b, test, again, p), want_g, rtol=1e-5, atol=1e-6)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # damaged: the digest no longer matches
    G.subspace._subspaces.clear()
    refit = G.fit_subspace(b, train, p)
    np.testing.assert_allclose(np.abs((refit.V * want_V).sum(0)), 1.0, atol=1e-4)


def test_held_gradients_give_the_same_subspace_with_one_gradient_pass(tmp_cache, monkeypatch):
    """With the gradient matrix under the ``grad_hold`` budget only the first pass computes gradients;
    the subspace, σ and G_low are bitwise those of a fit that recomputes every pass."""
    from ood_core.gradients import engine

    b = tiny_bundle()
    train = tiny_images(150, seed=1)
    pl = hooks.plan(b, "all", device="cpu")
    computed = []
    real = hooks.iter_chunks

    def counting(*a, **k):
        computed.append(a[5] if len(a) > 5 else k.get("progress"))
        return real(*a, **k)

    monkeypatch.setattr(hooks, "iter_chunks", counting)
    runs = {}
    for name, limit_mb in (("recomputed", 1e-3), ("held", 1e4)):
        monkeypatch.setenv("OOD_MEM_GRAD_HOLD_MB", str(limit_mb))
        computed.clear()
        seen = []
        res, _ = engine.randomized_svd(b, train, pl, "lse", 1.0, 6, len(train), "nfk", 2, torch.float32,
                                       stage=lambda i, t: (lambda f, m: seen.append((i, m))))
        runs[name] = (res, len(computed), {i for i, _ in seen})
    (rec, n_rec, st_rec), (held, n_held, st_held) = runs["recomputed"], runs["held"]
    assert n_rec == 6 and n_held == 1  # 1 + 2q + 1 passes, of which only the first computes when held
    assert st_rec == st_held == set(range(6))  # every pass still reports its progress
    np.testing.assert_array_equal(held.sigma, rec.sigma)
    np.testing.assert_array_equal(held.g_low, rec.g_low)
    for a, c in zip(held.SV, rec.SV):
        assert torch.equal(a, c)


def test_a_held_pass_over_the_budget_falls_back_to_recomputing(tmp_cache, monkeypatch):
    """A budget the estimate passes but the blocks exceed (the last chunk) drops what was kept."""
    from ood_core.gradients import engine

    b = tiny_bundle()
    pl = hooks.plan(b, "all", device="cpu")
    per_sample = 4 * sum(pl.sizes)
    held = engine.Held(limit=per_sample * 10)  # room for 10 samples of 40
    x = tiny_images(40, seed=3)
    first = [(s, B, [g.clone() for _, g in blk()]) for s, B, blk in held.iter_chunks(
        b, x, pl, "lse", 1.0, None, "t", torch.float32)]
    assert held.chunks is None and sum(B for _, B, _ in first) == 40
    plain = [torch.cat([g for _, g in blk()], 1) for _, _, blk in hooks.iter_chunks(b, x, pl, "lse", 1.0)]
    torch.testing.assert_close(torch.cat([torch.cat(g, 1) for _, _, g in first]), torch.cat(plain))  # same gradients
    again = [B for _, B, blk in held.iter_chunks(b, x, pl, "lse", 1.0, None, "t", torch.float32) if list(blk())]
    assert sum(again) == 40 and held.chunks is None and held.over  # recomputed, and no second try at holding


# --- issue 27, item 4: two sessions' gradient passes on one shared model ---------------------

def _hook_norms(bundle, ds):
    pl = hooks.plan(bundle, "all", chunk=8)
    out = []
    for _s, _B, blocks in hooks.iter_chunks(bundle, ds, pl, "lse", 1.0):
        out.append(sum(g.double().abs().sum(1) for _, g in blocks()).numpy())
    return np.concatenate(out)


def _vmap_norms(bundle, ds):
    from ood_core.detectors.gradnorm_exact import gradnorm_exact_scores

    return gradnorm_exact_scores(bundle, ds, 1.0, "all")


@pytest.mark.hostile
@pytest.mark.parametrize("engine", [_hook_norms, _vmap_norms], ids=["hooks", "vmap"])
def test_two_threads_score_gradients_on_one_model(engine):
    """Two threads (two app sessions) run gradient passes on the same model object at once: each gets
    exactly its sequential result (today the hook engine mixes the threads' activations and the
    torch.func engine fails inside the other thread's functional_call)."""
    import threading

    torch.set_num_threads(1)
    bundle = tiny_bundle()
    sets = [tiny_images(200, seed=1), tiny_images(200, seed=2)]
    want = [engine(bundle, ds) for ds in sets]
    for _ in range(3):
        got, err = {}, {}

        def run(i):
            try:
                got[i] = engine(bundle, sets[i])
            except Exception as exc:  # noqa: BLE001 - reported below
                err[i] = repr(exc)

        ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert err == {}
        for i in range(2):
            np.testing.assert_array_equal(got[i], want[i])


@pytest.mark.hostile
def test_call_hooks_ignore_other_threads():
    """A call-scoped hook sees this thread's forward passes only, also while another thread runs the model."""
    import threading

    from ood_core.concurrency import call_hooks

    model = nn.Linear(3, 2)
    seen, go, done = [], threading.Event(), threading.Event()

    def other():
        go.wait(5)
        model(torch.zeros(7, 3))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with call_hooks([model], lambda m, i, o: seen.append(o.shape[0])):
        go.set()
        done.wait(5)
        model(torch.zeros(2, 3))
    t.join(5)
    model(torch.zeros(4, 3))  # after the call: removed
    assert seen == [2]


def test_the_fit_cap_takes_a_seeded_subset_and_enters_the_key(monkeypatch):
    """``$OOD_GRAD_MAX_FIT`` caps the training samples a subspace is fitted on (the product's cap is
    ``MAX_FIT``): a seeded subset, the same for every run, and a key that records the number."""
    from ood_core.gradients import settings
    from ood_core.gradients.subspace import fit_subset, subspace_key
    from ood_core.resources import EnvValueError

    b, train = tiny_bundle(), tiny_images(150, seed=1)
    monkeypatch.delenv("OOD_GRAD_MAX_FIT", raising=False)
    assert settings.max_fit() == settings.MAX_FIT and fit_subset(train) is train
    full = subspace_key(b, train)
    monkeypatch.setenv("OOD_GRAD_MAX_FIT", "40")
    a, again = fit_subset(train), fit_subset(train)
    want = np.sort(np.random.default_rng(0).choice(150, 40, replace=False))
    assert len(a) == 40 and np.array_equal(a.images, train.images[want]) and np.array_equal(a.images, again.images)
    assert subspace_key(b, train) != full
    # the scores' keys follow the cap too (a capped fit's scores were once served for the uncapped fit)
    from ood_core.detectors import get_detector

    det = get_detector("lowdim_maha").fit_model(b, train, None)
    capped = det.fit_key
    monkeypatch.setenv("OOD_GRAD_MAX_FIT", "150")
    assert det.fit_key != capped and subspace_key(b, train) == full
    monkeypatch.delenv("OOD_GRAD_MAX_FIT")
    assert det.fit_key == get_detector("lowdim_maha").fit_model(b, train, None).fit_key
    uncapped = det.fit_key  # and the gradient code's version: scores of older code are not served
    monkeypatch.setattr(G, "GRAD_VERSION", G.GRAD_VERSION + 1)
    assert det.fit_key != uncapped
    for bad in ("0", "-5", "2.5", "abc", "inf"):
        monkeypatch.setenv("OOD_GRAD_MAX_FIT", bad)
        with pytest.raises(EnvValueError, match="OOD_GRAD_MAX_FIT must be a positive whole number"):
            settings.max_fit()


@pytest.mark.hostile
def test_two_callers_of_one_cold_subspace_fit_share_one_fit(tmp_cache, monkeypatch):
    """Two sessions (threads here; the lock is the cache's per-key file lock, so processes too) fit the
    same subspace at once: one fits, the other waits and loads its entry. Before, both fitted, and a
    process projecting with its own V beside G_low cached by the other mixed two bases (the suite's
    lowdim_maha fell from AUROC 0.97 to 0.46 when two workers met)."""
    import threading
    import time

    from ood_core.gradients import subspace as S

    b, train, p = tiny_bundle(), tiny_images(64, seed=3), {"r": 4, "power_iters": 1}
    real, fits = S._fit, []

    def slow_fit(*a, **k):
        fits.append(threading.get_ident())
        time.sleep(1.5)  # the second caller arrives during the fit, and polls the lock (every 0.5 s) meanwhile
        return real(*a, **k)

    monkeypatch.setattr(S, "_fit", slow_fit)
    got, waits = {}, []

    def call(name, progress=None):
        got[name] = G.fit_subspace(b, train, p, progress=progress)

    t1 = threading.Thread(target=call, args=("first",))
    t1.start()
    deadline = time.monotonic() + 60
    while not fits and t1.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fits, "the first caller never reached the fit"
    t2 = threading.Thread(target=call, args=("second", lambda f, m: waits.append(m)))
    t2.start()
    t1.join(60)
    t2.join(60)
    assert len(fits) == 1
    assert any("waiting for another fit" in m for m in waits)
    np.testing.assert_array_equal(got["first"].sigma, got["second"].sigma)
    np.testing.assert_array_equal(got["first"].g_low_fit, got["second"].g_low_fit)  # one basis
    assert got["second"] is got["first"]  # in one process the waiter takes the fitted subspace, no reload


def test_singular_vector_signs_are_fixed_by_the_data(tmp_cache, monkeypatch):
    """Each column of the fit set's G_low has its largest entry positive (scikit-learn's ``svd_flip``), so
    fits that differ by float noise (another chunk size here) give G_low in the same basis."""
    import dataclasses

    from ood_core.gradients import engine

    b, train = tiny_bundle(), tiny_images(80, seed=5)
    pl = hooks.plan(b, "all", device="cpu")
    res, _ = engine.randomized_svd(b, train, pl, "lse", 1.0, 5, len(train), "nfk", 1, torch.float32, hold=False)
    g = np.asarray(res.g_low)
    top = g[np.abs(g).argmax(0), np.arange(g.shape[1])]
    assert (top > 0).all(), top
    pl_small = dataclasses.replace(pl, chunk=7)  # other batches: other float rounding
    res2, _ = engine.randomized_svd(b, train, pl_small, "lse", 1.0, 5, len(train), "nfk", 1, torch.float32,
                                    hold=False)
    np.testing.assert_allclose(np.asarray(res2.g_low), g, rtol=1e-3, atol=1e-4 * np.abs(g).max())


def test_a_private_module_shares_the_weights_and_carries_no_hooks():
    """``functional_call``'s private copy: the same parameter tensors, none of the shared model's hooks
    (other calls' hooks, whose removal by another thread must not race the copy)."""
    from ood_core.concurrency import call_hooks, private_module

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = []
    with call_hooks([model[0]], lambda m, i, o: seen.append(1)):
        model[0].register_forward_pre_hook(lambda m, i: seen.append(2))
        copy_ = private_module(model)
        copy_(torch.zeros(1, 3))
        assert seen == []  # no hook of the shared model fired on the copy
        assert all(a is b for a, b in zip(copy_.parameters(), model.parameters()))
        assert copy_ is not model and copy_[0] is not model[0]
        model(torch.zeros(1, 3))
    assert seen == [2, 1]  # the shared model keeps its own
