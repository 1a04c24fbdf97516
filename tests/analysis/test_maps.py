"""ood_core.maps: embeddings, their cache, separability against a hand-rolled kNN, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import maps
from ood_core.maps import MapError


def _blobs(n: int = 40, d: int = 6, gap: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, d))
    b = rng.normal(0, 1, (n, d)) + gap
    return a.astype(np.float32), b.astype(np.float32)


def test_pca_map_matches_sklearn_on_standardised_data(tmp_cache):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 5)) * np.array([5.0, 1.0, 0.2, 3.0, 0.5])
    xy = maps.embed(X, "pca")
    # Independent: z-score by hand, then the two leading right-singular vectors by numpy's SVD.
    Z = (X - X.mean(0)) / X.std(0)
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    ref = Z @ vt[:2].T
    for j in range(2):  # principal axes are defined up to sign
        assert abs(np.corrcoef(xy[:, j], ref[:, j])[0, 1]) > 1 - 1e-6
    assert PCA(2).fit_transform(Z).shape == xy.shape


@pytest.mark.parametrize("method,knobs", [("tsne", {"perplexity": 5.0, "max_iter": 250}),
                                          ("umap", {"n_neighbors": 5, "n_epochs": 20})])
def test_tsne_umap_shape_determinism_and_cache(tmp_cache, monkeypatch, method, knobs):
    a, b = _blobs(30)
    X = np.vstack([a, b])
    xy = maps.embed(X, method, seed=3, **knobs)
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    assert maps.is_embedded(X, method, seed=3, **knobs)

    def boom(*_a, **_k):
        raise AssertionError("recomputed a cached map")

    monkeypatch.setattr(maps, "_embed", boom)
    assert np.array_equal(maps.embed(X, method, seed=3, **knobs), xy)  # served from the disk cache
    assert not maps.is_embedded(X + 1e-3, method, seed=3, **knobs)  # another X, another key
    assert not maps.is_embedded(X, method, seed=4, **knobs)


def test_embedding_keeps_blobs_apart(tmp_cache):
    a, b = _blobs(30)
    xy = maps.embed(np.vstack([a, b]), "tsne", perplexity=8.0, max_iter=250)
    assert maps.separability(xy[:30], xy[30:], k=5) > 0.99


def _knn_auroc_by_hand(X_id, X_ood, k, folds, seed):
    """Independent reference: the same folds, z-scoring and k-NN vote written with numpy."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    X = np.vstack([X_id, X_ood]).astype(np.float32).astype(np.float64)
    y = np.r_[np.ones(len(X_id)), np.zeros(len(X_ood))]
    p = np.zeros(len(X))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        mu, sd = X[tr].mean(0), X[tr].std(0)
        sd[sd == 0] = 1
        A, B = (X[tr] - mu) / sd, (X[te] - mu) / sd
        d = ((B[:, None, :] - A[None, :, :]) ** 2).sum(-1)
        nn = np.argsort(d, axis=1)[:, :k]
        p[te] = y[tr][nn].mean(1)
    return roc_auc_score(y, p)


def test_separability_equals_hand_rolled_knn():
    rng = np.random.default_rng(5)
    X_id = rng.normal(0, 1, (45, 4))
    X_ood = rng.normal(0.6, 1.3, (35, 4))
    got = maps.separability(X_id, X_ood, k=7, folds=5, seed=2)
    assert got == pytest.approx(_knn_auroc_by_hand(X_id, X_ood, 7, 5, 2), abs=1e-9)


def test_separability_extremes():
    a, b = _blobs(50, gap=10)
    assert maps.separability(a, b) > 0.999
    rng = np.random.default_rng(2)
    same = rng.normal(size=(400, 3))
    assert abs(maps.separability(same[:200], same[200:]) - 0.5) < 0.1


def test_separability_table_rows(tmp_cache):
    a, b = _blobs(30)
    c = np.random.default_rng(9).normal(0, 1, (90, 6)).astype(np.float32)  # drawn like the ID blob, 3× as many
    full = np.vstack([a, b, c])
    xy = full[:, :2]
    ds = ["mnist"] * 30 + ["far"] * 30 + ["near"] * 90
    t = maps.separability_table(xy, full, ds, "mnist", k=5)
    assert list(t["ood"]) == ["far", "near", "all OOD"]
    assert list(t["n_ood"]) == [30, 90, 120]
    far, near = t.set_index("ood").loc["far"], t.set_index("ood").loc["near"]
    # Each set gets its own classifier: the near set swamping the ID blob must not blur ID vs far.
    assert far.auroc_full == pytest.approx(1.0) and far.auroc_2d == pytest.approx(1.0)
    assert near.auroc_full < 0.75
    assert t.set_index("ood").loc["all OOD"].auroc_full == pytest.approx(
        maps.separability(full[:30], full[30:], k=5))


@pytest.mark.parametrize("X,method,knobs,msg", [
    (np.zeros((1, 4)), "pca", {}, "at least 3 points"),
    (np.zeros((2, 4)), "umap", {}, "at least 3 points"),
    (np.zeros((20, 4)), "tsne", {"perplexity": 30.0}, "perplexity 30 is too large for 20 points: use at most 6"),
    (np.zeros((10, 4)), "umap", {"n_neighbors": 15}, "n_neighbors 15 is too large for 10 points"),
    (np.zeros((10, 1)), "pca", {}, "at least 2 dimensions"),
    (np.full((10, 3), np.nan), "pca", {}, "NaN or infinite"),
    (np.zeros((10, 3)), "mds", {}, "must be one of pca, tsne, umap"),
    (np.zeros((10, 3)), "tsne", {"n_neighbors": 5}, "tsne has no knob 'n_neighbors'; knobs: perplexity, max_iter"),
    (np.zeros((10, 3)), "umap", {"n_neighbors": 2.5}, "umap.n_neighbors must be a whole number in [2, 200]; got 2.5"),
    (np.zeros((10, 3)), "umap", {"min_dist": 1.5}, "umap.min_dist must be in [0, 1]; got 1.5"),
    (np.zeros((10, 3)), "tsne", {"max_iter": 100}, "tsne.max_iter must be in [250, 1000]; got 100"),
])
def test_bad_input_is_refused_with_a_message(tmp_cache, X, method, knobs, msg):
    with pytest.raises(MapError) as e:
        maps.embed(X, method, **knobs)
    assert msg in str(e.value)


def test_separability_needs_two_of_each():
    with pytest.raises(MapError, match="at least 2 ID and 2 OOD"):
        maps.separability(np.zeros((1, 2)), np.ones((5, 2)))


def test_feature_map_points_lead_back_to_images(default_bundle, monkeypatch):
    from ood_core import extract
    from ood_core import workbench as wb

    res = maps.compute_map(default_bundle, "mnist", ["letters", "gaussian"], "features", "pca", n_per_set=25, seed=1)
    df = res.frame
    assert len(df) == 75 and res.full.shape == (75, 128)
    for col in ("x", "y", "dataset", "index", "label", "pred", "energy", "gradnorm", "msp"):
        assert col in df.columns
    for name in ("mnist", "letters"):
        ext = wb.get_extraction(default_bundle, name)
        rows = df[df["dataset"] == name]
        np.testing.assert_array_equal(res.full[rows.index], ext.features[rows["index"]])
        np.testing.assert_array_equal(rows["pred"], ext.preds[rows["index"]])
        np.testing.assert_allclose(rows["energy"], wb.score(default_bundle, "energy", name)[rows["index"]])
    assert list(res.separability["ood"]) == ["letters", "gaussian", "all OOD"]
    assert 0.5 < res.summary()["auroc_full"] <= 1.0

    def boom(*_a, **_k):
        raise AssertionError("a map ran a forward pass the extraction cache holds")

    # another seed: a new subsample and embedding, but features, predictions and scores come from the caches
    monkeypatch.setattr(extract, "run_forward", boom)
    monkeypatch.setattr(default_bundle, "forward", boom)
    again = maps.compute_map(default_bundle, "mnist", ["letters", "gaussian"], "features", "pca", n_per_set=25, seed=2)
    assert len(again.frame) == 75 and not again.frame["index"].equals(df["index"])


def test_three_point_map_draws_without_separability(default_bundle):
    res = maps.compute_map(default_bundle, "mnist", ["letters", "gaussian"], "features", "pca", n_per_set=1)
    assert len(res.frame) == 3 and res.separability.empty
    assert np.isnan(res.summary()["auroc_2d"])


def test_map_refuses_too_few_points_and_bad_perplexity(default_bundle):
    with pytest.raises(MapError, match="at least 3 points"):
        maps.compute_map(default_bundle, "mnist", [], "features", "pca", n_per_set=1)
    with pytest.raises(MapError, match="perplexity"):
        maps.compute_map(default_bundle, "mnist", ["letters"], "features", "tsne", n_per_set=5, perplexity=30)
    with pytest.raises(MapError, match="space must be"):
        maps.compute_map(default_bundle, "mnist", ["letters"], "logits", "pca", n_per_set=5)


def test_gradient_map_uses_lowdim_gradients(default_bundle):
    from ood_core import gradients

    res = maps.compute_map(default_bundle, "mnist", ["letters"], "gradients", "pca", n_per_set=20, seed=0)
    G = gradients.lowdim_for_dataset(default_bundle, "letters", "mnist")
    rows = res.frame[res.frame["dataset"] == "letters"]
    np.testing.assert_array_equal(res.full[rows.index], G[rows["index"]])
    assert res.dims == G.shape[1]
    assert maps.gradients_ready(default_bundle, "mnist", ["letters"])


@pytest.mark.hostile
def test_user_names_are_plain_text_in_plotly():
    """Issue 27, item 2: plotly reads <b>, <a href>, <br> in legends, hovers and ticks; a dataset
    named ``<b>x</b>`` rendered bold in the Maps legend. Every figure now escapes user names."""
    import numpy as np
    import pandas as pd

    from ood_core import metrics
    from ood_core.figures.maps import map_figure, separability_figure
    from ood_core.figures.scores import histogram_base, pr_base, roc_base

    evil, link = "<b>x</b>", '<a href="http://127.0.0.1:9/">y</a>'
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=6), "y": rng.normal(size=6), "dataset": [evil] * 3 + [link] * 3,
                       "index": np.arange(6), "label": 0, "pred": 0})
    sets = metrics.ScoreSets.from_arrays(rng.normal(size=20), {link: rng.normal(size=20)}, id_name=evil)
    seps = {"features": pd.DataFrame({"ood": [link], "auroc_2d": [0.9], "auroc_full": [0.95]})}
    figs = [map_figure(df, id_name=evil).to_dict(), histogram_base(sets), roc_base(sets), pr_base(sets),
            separability_figure(seps).to_dict()]
    texts = []
    for f in figs:
        for tr in f["data"]:
            texts += [str(tr.get("name", "")), str(tr.get("hovertemplate", ""))]
            texts += [str(v) for v in (tr.get("x") if tr.get("type") == "bar" and isinstance(tr.get("x"), list) else [])]
    joined = "\n".join(texts)
    assert "&lt;b&gt;x&lt;/b&gt;" in joined and "&lt;a href" in joined
    assert evil not in joined and "<a href" not in joined
