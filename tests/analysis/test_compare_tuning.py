"""compare_table, the fast bootstrap behind it, the tuning sweep and their figures."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_core import compare as cmp
from ood_core import metrics, tuning
from ood_core import workbench as wb
from ood_core.data import DEFAULT_OOD
from ood_core.detectors import DetectorError
from ood_core.detectors.activation import ASH
from ood_core.figures.compare import compare_chart
from ood_core.figures.tuning import tuning_curve

# --- bootstrap: every resample equals a direct loop ------------------------------------------

@pytest.mark.parametrize("na,nb,ties", [(50, 70, True), (40, 3, False), (5, 200, True), (3000, 2900, True)])
def test_bootstrap_draws_equal_sklearn_and_numpy_per_resample(na, nb, ties):
    """Small sizes use float32 counts (exact below 2^24), the last one float64."""
    rng = np.random.default_rng(na)
    a, b = rng.normal(1, 1, na), rng.normal(0, 1, nb)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    n_boot = 150 if na * nb < 10 ** 6 else 10
    d = metrics.bootstrap_draws(a, b, n_boot=n_boot, seed=7)
    r = np.random.default_rng(7)
    ia, ib = r.integers(0, na, (n_boot, na)), r.integers(0, nb, (n_boot, nb))
    y = np.r_[np.ones(na), np.zeros(nb)]
    auc = [roc_auc_score(y, np.r_[a[i], b[j]]) for i, j in zip(ia, ib)]
    fpr = [metrics.fpr_at_tpr(a[i], b[j]) for i, j in zip(ia, ib)]
    np.testing.assert_allclose(d["auroc"], auc, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d["fpr95"], fpr)


def test_bootstrap_rejects_bad_requests():
    with pytest.raises(metrics.MetricError, match="n_boot"):
        metrics.bootstrap_draws([1.0, 2.0], [0.0], n_boot=0)
    with pytest.raises(metrics.MetricError, match="auroc and fpr95"):
        metrics.bootstrap_draws([1.0, 2.0], [0.0], metrics=("aupr_in",))


# --- compare_table ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table(default_bundle):
    return cmp.compare_table(default_bundle, "mnist", ["letters", "uniform"], ["energy", "knn", "odin", "nope"],
                             params={"energy": {"T": 2.0}}, n_boot=200)


def test_compare_rows_metrics_and_mean(table):
    ok = cmp.ok_rows(table)
    assert list(ok["detector"].unique()) == ["energy", "knn"]
    e = ok[ok["detector"] == "energy"].set_index("ood_dataset")
    assert list(e.index) == ["letters", "uniform", "mean"]
    for m in metrics.METRICS:
        assert e.loc["mean", m] == pytest.approx(e.loc[["letters", "uniform"], m].mean())
    for k in ("auroc", "fpr95"):
        assert (e[f"{k}_lo"] <= e[f"{k}_hi"]).all()
    assert (e["auroc_lo"] <= e["auroc"] + 1e-12).all() and (e["auroc"] <= e["auroc_hi"] + 1e-12).all()
    assert '"T": 2.0' in e.loc["letters", "params"]


def test_compare_matches_evaluate(default_bundle, table):
    ref = wb.evaluate(default_bundle, "mnist", ["letters"], ["energy"], {"energy": {"T": 2.0}})["results"][0]
    row = table[(table["detector"] == "energy") & (table["ood_dataset"] == "letters")].iloc[0]
    for m in metrics.METRICS:
        assert row[m] == pytest.approx(ref[m], abs=1e-12)
    ci = metrics.bootstrap_ci(wb.score(default_bundle, "energy", "mnist", params={"T": 2.0}),
                              wb.score(default_bundle, "energy", "letters", params={"T": 2.0}), n_boot=200)
    assert (row["auroc_lo"], row["auroc_hi"]) == pytest.approx(ci["auroc"])


def test_compare_lists_what_could_not_run(default_bundle, table, monkeypatch):
    bad = cmp.unavailable(table).set_index("detector")
    assert bad.loc["odin", "status"] == "not computed" and "model at scoring time" in bad.loc["odin", "reason"]
    assert bad.loc["nope", "status"] == "error" and "unknown detector" in bad.loc["nope", "reason"]
    monkeypatch.setattr(ASH, "unavailable_reason", lambda self, ext: "ash assumes non-negative features")
    df = cmp.compare_table(default_bundle, "mnist", ["letters"], ["ash", "knn"], {"knn": {"k": 10 ** 5}}, n_boot=0)
    bad = cmp.unavailable(df).set_index("detector")
    assert bad.loc["ash", "status"] == "unavailable" and "non-negative" in bad.loc["ash", "reason"]
    assert bad.loc["knn", "status"] == "error" and "N_train" in bad.loc["knn", "reason"]
    with pytest.raises(wb.WorkbenchError, match="OOD"):
        cmp.compare_table(default_bundle, "mnist", [], ["energy"])


def test_compare_runs_model_time_detectors_on_request(default_bundle):
    seen = []
    df = cmp.compare_table(default_bundle, "mnist", ["uniform"], ["odin"], {"odin": {"T": 10.0, "eps": 0.0}},
                           n_boot=20, run_model_time=True, progress=lambda f, m: seen.append(m))
    assert cmp.ok_rows(df)["auroc"].iloc[0] > 0.5 and seen
    again = cmp.compare_table(default_bundle, "mnist", ["uniform"], ["odin"], {"odin": {"T": 10.0, "eps": 0.0}},
                              n_boot=20)
    assert cmp.ok_rows(again)["auroc"].iloc[0] == cmp.ok_rows(df)["auroc"].iloc[0]  # found in the cache


def test_wide_best_and_ci_text(table):
    w = cmp.wide(table, "fpr95")
    assert list(w.columns) == ["letters", "uniform", "mean"] and list(w.index) == ["energy", "knn"]
    best = cmp.best_mask(w, "fpr95")
    assert (w[best].min() == w.min()).all()
    assert best.sum().min() >= 1
    t = cmp.ci_text(table, "auroc")
    assert list(t.columns) == ["letters", "uniform", "mean"] and list(t.index) == ["energy", "knn"]
    r = table[(table["detector"] == "knn") & (table["ood_dataset"] == "mean")].iloc[0]
    assert t.loc["knn", "mean"] == f"{r['auroc']:.3f} [{r['auroc_lo']:.3f}, {r['auroc_hi']:.3f}]"
    assert cmp.ci_text(table, "aupr_in").loc["knn", "mean"] == f"{r['aupr_in']:.3f}"  # no interval for AUPR
    assert "knn" in cmp.format_table(table) and "odin" in cmp.format_table(table)


def test_compare_chart_has_error_bars(table):
    fig = compare_chart(table, "auroc")
    names = [t.name for t in fig.data]
    assert names == ["letters", "uniform", "mean"]
    assert fig.data[0].error_y.array is not None and len(fig.data[0].x) == 2


@pytest.mark.slow
def test_full_default_table(default_bundle, monkeypatch):
    """All cached-array detectors × 5 OOD sets × 1,000 resamples score cleanly, training statistics
    fitted afresh (the in-process fit cache is emptied). Its time is measured by
    bench/compare_speed.py, not asserted here: a shared core makes any bound flaky."""
    for n in ["mnist", "mnist:train", *DEFAULT_OOD]:
        wb.get_extraction(default_bundle, n)
    monkeypatch.setattr(wb, "_fitted", {})
    df = cmp.compare_table(default_bundle, "mnist", DEFAULT_OOD, n_boot=1000)
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["detector", "reason"]].to_string()


# --- tuning -----------------------------------------------------------------------------------

def test_sweep_refuses_ood_test_sets(default_bundle):
    with pytest.raises(tuning.TuningError, match="ood_val"):
        tuning.sweep(default_bundle, "energy", {"T": [1, 2]}, "mnist", ["letters"])
    with pytest.raises(tuning.TuningError, match="at least one"):
        tuning.sweep(default_bundle, "energy", {"T": [1, 2]}, "mnist", [])


def test_sweep_energy_grid(default_bundle):
    df, best = tuning.sweep(default_bundle, "energy", {"T": [0.5, 1, 8]}, "mnist", ["aux_val"], metric="fpr95")
    assert list(df["T"]) == [0.5, 1, 8] and df["best"].sum() == 1
    assert df.loc[df["best"], "fpr95"].iloc[0] == df["fpr95"].min()
    assert best == {"T": float(df.loc[df["best"], "T"].iloc[0])}
    assert "800 held-out samples of mnist" in df.attrs["id_validation"]


def test_sweep_validates_the_grid_before_work(default_bundle):
    with pytest.raises(DetectorError, match=r"energy\.T must be in"):
        tuning.sweep(default_bundle, "energy", {"T": [1, 1e6]}, "mnist", ["aux_val"])
    with pytest.raises(DetectorError, match="no knob"):
        tuning.sweep(default_bundle, "energy", {"nope": [1]}, "mnist", ["aux_val"])
    with pytest.raises(tuning.TuningError, match="metric"):
        tuning.sweep(default_bundle, "energy", {"T": [1]}, "mnist", ["aux_val"], metric="accuracy")


def test_sweep_without_an_id_training_split_says_so(default_bundle):
    with pytest.raises(tuning.TuningError, match="'letters' has no training split"):
        tuning.sweep(default_bundle, "energy", {"T": [1]}, "letters", ["aux_val"])


def test_holdout_is_fixed_disjoint_and_never_fitted_on(default_bundle):
    fit, hold = tuning.holdout_split(4000)
    assert len(hold) == 800 and not set(fit) & set(hold)
    np.testing.assert_array_equal(hold, tuning.holdout_split(4000)[1])
    det, _, train_ext = tuning._fit_on_part("knn", default_bundle, "mnist", fit, tuning.HOLDOUT, tuning.SEED, None)
    assert det.train_info["n_train"] == 3200
    # had the held-out samples been in the fit, their 1st neighbour would be themselves (distance 0)
    assert (det.score(train_ext.subset(hold), k=1) < 0).all()


def test_sweep_declared_grid_sets_the_mode_and_drops_out_of_range(default_bundle):
    df, best = tuning.sweep(default_bundle, "rg", {"k": [0.5, 1, 2]}, "mnist", ["aux_val"])
    assert best["k_mode"] == "absolute" and best["k"] in (0.5, 1, 2)
    assert any("k_mode set to absolute" in n for n in df.attrs["notes"])
    df, best = tuning.sweep(default_bundle, "uv", None, "mnist", ["aux_val"])  # the 3×3 ablation
    assert len(df) == 9 and set(df["U"]) == {"gradnorm", "energy", "one"}
    assert df.loc[(df["U"] == "one") & (df["V"] == "one"), "auroc"].iloc[0] == pytest.approx(0.5)


def test_model_time_sweep_with_progress(default_bundle):
    seen = []
    df, best = tuning.sweep(default_bundle, "odin", {"T": [1, 1000], "eps": [0.0]}, "mnist", ["aux_val"],
                            progress=lambda f, m: seen.append(f))
    assert len(df) == 2 and best["eps"] == 0.0 and best["T"] in (1, 1000)
    assert seen[-1] == 1.0 and 0 < len(seen)


def test_parse_values():
    assert tuning.parse_values("rg", "k", "0.5, 1,1, 2") == [0.5, 1.0, 2.0]
    assert tuning.parse_values("ash", "variant", "P, S") == ["P", "S"]
    with pytest.raises(tuning.TuningError, match="not a number"):
        tuning.parse_values("rg", "k", "0.5, big")
    with pytest.raises(DetectorError, match=r"ash\.variant"):
        tuning.parse_values("ash", "variant", "Q")


def test_tuning_curve_marks_the_best():
    import pandas as pd

    df = pd.DataFrame({"T": [1, 10, 100], "auroc": [0.8, 0.9, 0.85], "best": [False, True, False]})
    fig = tuning_curve(df, "T", "auroc")
    assert fig.data[-1].name == "best" and list(fig.data[-1].x) == [10]
    assert fig.layout.xaxis.type == "log"
