"""The detector library against independent computations.

References: pytorch-ood's implementations on the same arrays (it returns outlier scores,
ours are higher = more ID, so we compare to the negation), hand formulas on tiny arrays,
and autograd. Bad input: a clear DetectorError, or a documented fallback that is tested.
"""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ood_core.detectors import DetectorError, get_detector, logsumexp
from ood_core.detectors.activation import ash, scale_features
from ood_core.extract import Extraction

pood = pytest.importorskip("pytorch_ood.detector")

D, C = 16, 5


def _data(n: int, seed: int, nonneg: bool = True, shift: float = 0.0, ties: bool = False) -> Extraction:
    """Structured features around shared class centres and a shared head (fixed by seed 123)."""
    g = np.random.default_rng(123)
    W = g.normal(0, 0.5, (C, D))
    b = g.normal(0, 0.1, C)
    centres = g.normal(0, 1.5, (C, D))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    h = centres[y] + rng.normal(0, 1.0, (n, D)) + shift
    if nonneg:
        h = np.abs(h) + (0.0 if ties else 0.01)  # strictly positive: no ties among activations
    h = h.astype(np.float32)
    logits = (h.astype(np.float64) @ W.T + b).astype(np.float32)
    return Extraction(logits, h, y, W.astype(np.float32), b.astype(np.float32), f"synthetic{seed}")


@pytest.fixture(scope="module")
def train():
    return _data(400, seed=1)


@pytest.fixture(scope="module")
def test():
    return _data(120, seed=2)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


@pytest.fixture()
def float64_default():
    """pytorch-ood allocates some buffers with the default dtype: compute its reference in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def fitted(name, train):
    return get_detector(name).fit(train)


# --- output space -------------------------------------------------------------------------

def test_gen_hand_formula_and_pytorch_ood(test):
    p = torch.softmax(t64(test.logits), 1).numpy()
    for gamma, M in [(0.1, 100), (0.5, 3), (1.0, 1)]:
        m = min(M, C)
        top = -np.sort(-p, 1)[:, :m]
        hand = -(top ** gamma * (1 - top) ** gamma).sum(1)
        got = get_detector("gen").fit(None).score(test, gamma=gamma, M=M)
        np.testing.assert_allclose(got, hand, rtol=1e-12)
        # pytorch-ood averages over the M classes (a constant factor) and clamps p to
        # [1e-7, 1-1e-7], which is inactive on these logits
        assert p.min() > 1e-7 and p.max() < 1 - 1e-7
        ref = pood.GEN.score(t64(test.logits), gamma=gamma, M=m).numpy()
        np.testing.assert_allclose(got, -m * ref, rtol=1e-5)


def test_klm_matches_pytorch_ood_and_hand(train, test):
    det = fitted("klm", train)
    ref = pood.KLMatching(None).fit_logits(t64(train.logits)).predict_logits(t64(test.logits)).numpy()
    np.testing.assert_allclose(det.score(test), -ref, rtol=1e-5)
    # hand: KL to the mean posterior of the training samples predicted as each class
    pt = torch.softmax(t64(train.logits), 1).numpy()
    pred = pt.argmax(1)
    tmpl = np.stack([pt[pred == c].mean(0) for c in np.unique(pred)])
    q = torch.softmax(t64(test.logits), 1).numpy()
    kl = np.array([[np.sum(qi * np.log(qi / d)) for d in tmpl] for qi in q])
    np.testing.assert_allclose(det.score(test), -kl.min(1), rtol=1e-9)


# --- distances ------------------------------------------------------------------------------

def test_mahalanobis_empirical_matches_pytorch_ood(train, test, float64_default):
    det = fitted("mahalanobis", train)
    ref = pood.Mahalanobis(None).fit_features(t64(train.features), torch.tensor(train.labels)).predict_features(
        t64(test.features)).numpy()
    # pytorch-ood: 0.5·min_c MD on the *unnormalised* scatter matrix (= N·Σ) plus a 1e-6 ridge
    np.testing.assert_allclose(det.score(test, covariance="empirical"), -2 * len(train) * ref, rtol=1e-5)


def test_mahalanobis_ledoit_wolf_matches_hand_formula(train, test):
    from sklearn.covariance import LedoitWolf

    det = fitted("mahalanobis", train)
    h, y = train.features.astype(np.float64), train.labels
    mus = np.stack([h[y == c].mean(0) for c in range(C)])
    lw = LedoitWolf(assume_centered=True).fit(h - mus[y])
    P = np.linalg.inv(lw.covariance_)
    q = test.features.astype(np.float64)
    md = np.stack([np.einsum("ij,jk,ik->i", q - m, P, q - m) for m in mus], 1)
    np.testing.assert_allclose(det.score(test), -md.min(1), rtol=1e-8)
    assert 0 < det.derived(covariance="ledoit_wolf")["Ledoit-Wolf shrinkage"] < 1


def test_rmd_matches_pytorch_ood(train, test, float64_default):
    det = fitted("rmd", train)
    ref = pood.RMD(None).fit_features(t64(train.features), torch.tensor(train.labels)).predict_features(
        t64(test.features)).numpy()
    np.testing.assert_allclose(det.score(test, covariance="empirical"), -len(train) * ref, rtol=1e-5)
    # Ledoit-Wolf: the same structure; a monotone check against the empirical version is not
    # implied, so only sanity: finite and ID-oriented on a shifted set
    far = _data(120, seed=3, shift=4.0)
    assert det.score(test).mean() > det.score(far).mean()


def test_singular_covariance_falls_back_to_pseudo_inverse_with_a_note(train, test):
    dead = Extraction(train.logits, train.features.copy(), train.labels, train.head_weight, train.head_bias)
    dead.features[:, 3] = 0.0  # a dead ReLU unit: the empirical covariance is singular
    det = get_detector("mahalanobis").fit(dead)
    emp = det.derived(covariance="empirical")
    assert "singular" in emp["note"] and emp["covariance rank"].startswith(f"{D - 1} of")
    assert det.derived(covariance="ledoit_wolf")["covariance rank"] == f"{D} of {D}"
    for cov in ("empirical", "ledoit_wolf"):
        assert np.isfinite(det.score(test, covariance=cov)).all()
    zero = Extraction(train.logits, np.zeros_like(train.features), train.labels, train.head_weight, train.head_bias)
    with pytest.raises(DetectorError, match="zero variance"):
        get_detector("mahalanobis").fit(zero)


def test_knn_matches_pytorch_ood_and_brute_force(train, test):
    det = fitted("knn", train)
    for k in (1, 5, 50):
        knn = pood.KNN(None, k=k)
        knn.fit_features(t64(train.features), torch.tensor(train.labels))
        ref = knn.predict_features(t64(test.features)).numpy()
        got = det.score(test, k=k)
        np.testing.assert_allclose(got, -ref, rtol=1e-6)
        zt = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
        zq = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
        d = np.sqrt(((zq[:, None, :] - zt[None]) ** 2).sum(-1))
        np.testing.assert_allclose(got, -np.sort(d, 1)[:, k - 1], rtol=1e-5, atol=1e-6)


def test_knn_k_too_large_says_how_large_it_may_be(train, test):
    det = fitted("knn", train)
    assert det.knob("k").high == len(train) - 1
    with pytest.raises(DetectorError, match=r"knn\.k .*N_train − 1 = 399"):
        det.score(test, k=len(train))


def test_vim_matches_pytorch_ood_and_hand(train, test):
    d = 6
    det = fitted("vim", train)
    assert det.knob("d").high == D - 1 and det.knob("d").default == D // 2
    vim = pood.ViM(None, d=d, w=t64(train.head_weight), b=t64(train.head_bias))
    vim.fit_features(t64(train.features), torch.tensor(train.labels))
    ref = vim.predict_features(t64(test.features)).numpy()  # pytorch-ood computes in float32
    got = det.score(test, d=d)
    np.testing.assert_allclose(got, -ref, rtol=1e-5, atol=2e-5)  # float32 noise near 0
    assert spearmanr(got, -ref).statistic > 0.9999
    # hand, float64: null space of the uncentred second moment about o = -pinv(W) b
    W, b = train.head_weight.astype(np.float64), train.head_bias.astype(np.float64)
    o = -np.linalg.pinv(W) @ b
    X = train.features.astype(np.float64) - o
    ev, V = np.linalg.eigh(X.T @ X / len(X))
    NS = V[:, np.argsort(ev)[::-1][d:]]
    alpha = train.logits.astype(np.float64).max(1).mean() / np.linalg.norm(X @ NS, axis=1).mean()
    hand = logsumexp(test.logits) - alpha * np.linalg.norm((test.features - o) @ NS, axis=1)
    np.testing.assert_allclose(got, hand, rtol=1e-8)


# --- activation shaping -----------------------------------------------------------------------

def test_ash_hand_formula_on_a_tiny_vector():
    h = np.array([[3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_allclose(ash(h, 50, "P"), [[3, 0, 2, 0]])
    np.testing.assert_allclose(ash(h, 50, "B"), [[3, 0, 3, 0]])  # s1 = 6 over 2 kept
    np.testing.assert_allclose(ash(h, 50, "S"), [[3 * np.exp(6 / 5), 0, 2 * np.exp(6 / 5), 0]])
    np.testing.assert_allclose(scale_features(h, 50), h * np.exp(6 / 5))


@pytest.mark.parametrize("variant,fn", [("P", "ash_p"), ("B", "ash_b"), ("S", "ash_s")])
@pytest.mark.parametrize("p", [60.0, 90.0])
def test_ash_matches_pytorch_ood(test, variant, fn, p):
    from pytorch_ood.detector import ash as pood_ash

    got = get_detector("ash").fit(None).score(test, p=p, variant=variant)
    shaped = getattr(pood_ash, fn)(t64(test.features)[:, :, None, None], p / 100.0)[:, :, 0, 0]
    logits = shaped @ t64(test.head_weight).T + t64(test.head_bias)
    np.testing.assert_allclose(got, -pood.EnergyBased.score(logits).numpy(), rtol=1e-5)


@pytest.mark.parametrize("p", [60.0, 85.0])
def test_scale_matches_pytorch_ood(test, p):
    from pytorch_ood.detector.scale import scale as pood_scale

    got = get_detector("scale").fit(None).score(test, p=p)
    shaped = pood_scale(t64(test.features)[:, :, None, None], p / 100.0)[:, :, 0, 0]
    logits = shaped @ t64(test.head_weight).T + t64(test.head_bias)
    np.testing.assert_allclose(got, -pood.EnergyBased.score(logits).numpy(), rtol=1e-5)


def test_ash_and_scale_refuse_negative_features():
    neg = _data(50, seed=4, nonneg=False)
    assert neg.features.min() < 0
    for name in ("ash", "scale"):
        det = get_detector(name).fit(None)
        assert "non-negative" in det.unavailable_reason(neg)
        with pytest.raises(DetectorError, match="non-negative"):
            det.score(neg)


def test_ash_b_ties_are_deterministic():
    ext = _data(40, seed=5, ties=True)
    ext.features[:, :8] = 0.0  # many zeros: kept zeros in ASH-B depend on the tie rule
    a = get_detector("ash").fit(None).score(ext, p=50, variant="B")
    b = get_detector("ash").fit(None).score(ext, p=50, variant="B")
    np.testing.assert_array_equal(a, b)
    # the rule itself: of the tied zeros, the lowest index is kept (and binarised to s1/n_kept)
    np.testing.assert_allclose(ash(np.array([[0.0, 2.0, 0.0, 0.0]]), 50, "B"), [[1, 1, 0, 0]])
    np.testing.assert_allclose(ash(np.array([[0.0, 0.0, 2.0, 0.0]]), 50, "B"), [[1, 0, 1, 0]])


def test_ash_and_scale_memoised_order_follows_p():
    """The descending order is memoised per extraction; every p must still prune afresh."""
    ext = _data(60, seed=6)
    for name in ("ash", "scale"):
        det = get_detector(name).fit(None)
        for p in (50.0, 90.0, 60.0):
            fresh = ext.subset(np.arange(len(ext)))  # a new object: no memo yet
            np.testing.assert_array_equal(det.score(ext, p=p), det.score(fresh, p=p))
        assert "feature_order_desc" in ext._memo


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_dice_matches_pytorch_ood(train, test, p):
    det = fitted("dice", train)
    ref = pood.DICE(None, w=t64(train.head_weight), b=t64(train.head_bias), p=p / 100.0)
    ref.fit_features(t64(train.features), torch.tensor(train.labels))
    np.testing.assert_allclose(det.score(test, p=p), -ref.predict_features(t64(test.features)).numpy(), rtol=1e-5)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["klm", "mahalanobis", "rmd", "knn", "vim", "dice", "rg_add", "uv"])
def test_training_detectors_refuse_to_run_without_training_statistics(name, test):
    with pytest.raises(DetectorError, match="training"):
        get_detector(name).fit(None)
    with pytest.raises(DetectorError, match="training statistics"):
        get_detector(name).score(test)


def test_no_training_split_is_a_clear_message(default_bundle):
    from ood_core import workbench as wb

    with pytest.raises(DetectorError, match="no training split"):
        wb.fitted_detector("knn", default_bundle, "letters")


# --- ODIN (model time) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_sets():
    from ood_core.data import get_dataset

    return get_dataset("mnist").subset(np.arange(24)), get_dataset("uniform").subset(np.arange(24))


@pytest.mark.parametrize("T,eps", [(1000.0, 0.0014), (1.0, 0.005), (10.0, 0.0)])
def test_odin_matches_pytorch_ood(default_bundle, small_sets, T, eps):
    det = get_detector("odin").fit(None)
    for ds in small_sets:
        got = det.score_model(default_bundle, ds, None, T=T, eps=eps)
        x = default_bundle.preprocess(ds.images)
        x_hat = pood.odin_preprocessing(default_bundle.model, x, eps=eps, temperature=T,
                                        norm_std=list(default_bundle.preprocess.std))
        with torch.no_grad():
            ref = torch.softmax(default_bundle.model(x_hat).double() / T, 1).max(1).values.numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_odin_reports_progress(default_bundle, small_sets):
    seen = []
    get_detector("odin").score_model(default_bundle, small_sets[0], None, progress=lambda f, m: seen.append((f, m)))
    assert seen and seen[-1][0] == 1.0 and "ODIN" in seen[-1][1]


def test_odin_eps_out_of_range_and_the_clamp_fallback(default_bundle, small_sets):
    from ood_core.detectors.odin import fraction_out_of_range, odin_perturb

    det = get_detector("odin")
    with pytest.raises(DetectorError, match=r"odin\.eps must be in \[0, 0\.02\]"):
        det.score_model(default_bundle, small_sets[0], None, eps=0.5)
    # MNIST is mostly black: an unclamped step pushes background pixels below 0 (as the
    # reference code does, reported in last_run); clamp keeps every value in range
    x = default_bundle.preprocess(small_sets[0].images)
    assert fraction_out_of_range(default_bundle, odin_perturb(default_bundle, x, 1000.0, 0.01)) > 0.05
    assert fraction_out_of_range(default_bundle, odin_perturb(default_bundle, x, 1000.0, 0.01, clamp=True)) == 0
    det.score_model(default_bundle, small_sets[0], None, eps=0.01)
    assert det.last_run["share of input values outside the valid range"] > 0.05
    det.score_model(default_bundle, small_sets[0], None, eps=0.01, clamp=True)
    assert det.last_run["share of input values outside the valid range"] == 0


def test_odin_reuses_gradient_signs_across_eps(default_bundle, small_sets, monkeypatch):
    from ood_core.detectors import odin as odin_mod

    calls = []
    real = odin_mod.odin_grad_sign
    monkeypatch.setattr(odin_mod, "odin_grad_sign", lambda *a: calls.append(1) or real(*a))
    det = get_detector("odin")
    det.score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.001)
    n_first = len(calls)
    again = det.score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.004)
    assert n_first >= 1 and len(calls) == n_first  # same T: no new backward pass
    fresh = get_detector("odin").score_model(default_bundle, small_sets[0], None, T=100.0, eps=0.004)
    np.testing.assert_allclose(again, fresh, rtol=1e-6)
    det.score_model(default_bundle, small_sets[0], None, T=10.0, eps=0.004)
    assert len(calls) > n_first  # another T: a new backward pass
