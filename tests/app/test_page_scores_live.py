"""Live knobs on Scores (issue 15): curves from at most ~1,000 exact vertices, histogram bins from
sorted scores, exact metrics, and a page that rebuilds only the figure pieces a move changes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from streamlit.testing.v1 import AppTest

from ood_core import metrics
from ood_core.figures import scores as figs

ROOT = Path(__file__).resolve().parents[2]


def _sets(ties: bool, n: int = 10_000, m: int = 50_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1, 1, n), rng.normal(0, 1.3, m)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return a, b


@pytest.mark.parametrize("ties", [False, True])
def test_curves_are_exact_vertices_of_sklearns_curves(ties):
    a, b = _sets(ties)
    A, B = metrics.SortedScores(a), metrics.SortedScores(b)
    y, s = np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b]
    fpr, tpr = metrics.roc_points(A, B)
    assert len(fpr) <= 1001 and fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    F, T, _ = roc_curve(y, s, drop_intermediate=False)
    on_curve = set(zip(F.round(12), T.round(12)))
    assert all((round(x, 12), round(z, 12)) in on_curve for x, z in zip(fpr, tpr))
    r, p = metrics.pr_points(A, B)
    P, R, _ = precision_recall_curve(y, s, drop_intermediate=False)
    on_pr = set(zip(R.round(12), P.round(12)))
    assert len(r) <= 1002 and all((round(x, 12), round(z, 12)) in on_pr for x, z in zip(r[1:], p[1:]))
    # the metrics stay exact however few points are drawn
    sv = metrics.ScoreSets.from_arrays(a, {"x": b})
    row = sv.table().iloc[0]
    assert row["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert row["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert row["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert row["fpr95"] == metrics.fpr_at_tpr(a, b)


def test_small_sets_draw_every_vertex():
    a, b = np.array([3.0, 2.0, 2.0, 1.0]), np.array([2.0, 0.0, 0.5])
    fpr, tpr = metrics.roc_points(metrics.SortedScores(a), metrics.SortedScores(b))
    F, T, _ = roc_curve(np.r_[np.ones(4), np.zeros(3)], np.r_[a, b], drop_intermediate=False)
    np.testing.assert_allclose(fpr, F)
    np.testing.assert_allclose(tpr, T)


@pytest.mark.parametrize("ties", [False, True])
def test_histogram_counts_and_threshold_lookups_equal_numpy(ties):
    a, b = _sets(ties, 3000, 5000)
    A = metrics.SortedScores(a)
    for bins in (1, 7, 60):
        edges = np.linspace(a.min(), a.max(), bins + 1)
        np.testing.assert_array_equal(metrics.histogram_counts(A, edges), np.histogram(a, edges)[0])
    sv = metrics.ScoreSets.from_arrays(a, {"x": b})
    for tpr in (0.5, 0.8, 0.95, 0.995, 1.0):
        assert sv.threshold_at_tpr(tpr) == metrics.threshold_at_tpr(a, tpr)
    for t in (-1.0, 0.0, 0.3, 1.0, 5.0):
        assert sv.at_threshold("x", t) == metrics.at_threshold(a, b, t)
    assert sv.lo == min(a.min(), b.min()) and sv.hi == max(a.max(), b.max())


def test_figures_are_a_base_and_a_threshold_overlay():
    a, b = _sets(False, 2000, 60_000)
    sv = metrics.ScoreSets.from_arrays(a, {"x": b, "y": b - 0.5})
    roc = figs.roc_base(sv)
    assert all(len(t["x"]) <= 1001 for t in roc["data"])
    over = figs.with_roc_markers(roc, sv, 0.2)
    assert len(over["data"]) == len(roc["data"]) + 2 and over["data"][0] is roc["data"][0]  # no copy
    hist = figs.spec(figs.histogram_base(sv))
    line = figs.with_threshold_line(hist, 0.2)
    assert line["layout"]["shapes"][-1]["x0"] == 0.2 and "shapes" not in hist["layout"]
    counts = np.histogram(b, np.linspace(sv.lo, sv.hi, 61))[0]
    np.testing.assert_allclose(hist["data"][1]["y"], counts / counts.sum())


def _count_builders(monkeypatch) -> dict[str, int]:
    calls = {"histogram_base": 0, "roc_base": 0, "pr_base": 0}
    for name in calls:
        real = getattr(figs, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(figs, name, counted)
    return calls


def test_a_threshold_move_rebuilds_no_figure_and_a_knob_move_each_once(default_bundle, monkeypatch):
    calls = _count_builders(monkeypatch)
    at = AppTest.from_file(str(ROOT / "pages/1_Scores.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert calls == {"histogram_base": 1, "roc_base": 1, "pr_base": 0}  # PR: drawn when asked for
    at.radio(key="curve_kind").set_value("PR").run()
    assert calls == {"histogram_base": 1, "roc_base": 1, "pr_base": 1}
    at.radio(key="curve_kind").set_value("ROC").run()
    before = {m.label: m.value for m in at.metric}

    at.slider(key="thr_tpr").set_value(0.8).run()  # threshold: counts and overlays only
    assert not at.exception, at.exception
    assert calls == {"histogram_base": 1, "roc_base": 1, "pr_base": 1}
    after = {m.label: m.value for m in at.metric}
    assert after["TPR (ID kept)"] == "80.0%" and after["AUROC (mean)"] == before["AUROC (mean)"]

    at.select_slider(key="scores.energy.T").set_value(20.0).run()  # knob: every piece once, no more
    assert not at.exception, at.exception
    assert calls == {"histogram_base": 2, "roc_base": 2, "pr_base": 1}
    assert {m.label: m.value for m in at.metric}["AUROC (mean)"] != before["AUROC (mean)"]

    at.checkbox(key="hist_log").check().run()  # log axis: the histogram's base only
    assert calls == {"histogram_base": 3, "roc_base": 2, "pr_base": 1}

