"""AppTest: the landing page and the Scores page, as a user drives them."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / name), default_timeout=300)


def _table(at):
    return at.dataframe[0].value


def test_scores_page_knob_moves_the_table(default_bundle):
    at = _page("pages/1_Scores.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    before = _table(at)
    assert list(before["OOD set"]) == ["letters", "textures", "faces", "gaussian", "uniform", "mean"]
    T = at.select_slider(key="scores.energy.T")
    T.set_value(20.0).run()
    after = _table(at)
    assert not at.exception
    assert (before["AUROC %"] != after["AUROC %"]).any()
    assert at.session_state["detector_knobs"]["energy"]["T"] == 20.0


def test_scores_page_switch_detector_builds_its_knobs(default_bundle):
    at = _page("pages/1_Scores.py").run()
    at.selectbox(key="detector").set_value("rg").run()
    assert not at.exception, at.exception
    labels = [s.label for s in at.slider]
    assert "q" in labels
    before = _table(at)
    at.slider(key="scores.rg.q").set_value(60.0).run()
    assert (before["AUROC %"] != _table(at)["AUROC %"]).any()
    assert any("k (absolute)" in c.value for c in at.caption)


def test_threshold_counts_update(default_bundle):
    at = _page("pages/1_Scores.py").run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["TPR (ID kept)"] == "95.0%"
    at.slider(key="thr_tpr").set_value(0.8).run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["TPR (ID kept)"] == "80.0%"
    assert metric["ID called OOD"] == "200 / 1000"


def test_no_ood_sets_gives_a_hint(default_bundle):
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = []
    at.run()
    assert not at.exception
    assert any("at least one OOD" in i.value for i in at.info)


def test_landing_page(default_bundle):
    at = _page("app.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Gradient-OOD workbench"
    assert any(m.label == "Model" for m in at.metric)


def test_figures_label_curves_with_the_table_metrics():
    import numpy as np

    from ood_core import metrics
    from ood_core.figures.scores import pr_figure, roc_figure

    rng = np.random.default_rng(0)
    a, ood = rng.normal(1, 1, 200), {"x": rng.normal(0, 1, 150), "y": rng.normal(-1, 1, 100)}
    table = metrics.metrics_table(a, ood)
    for fig, key, label in [(roc_figure(a, ood, 0.0, table), "auroc", "AUROC"), (pr_figure(a, ood, table), "aupr_in", "AUPR-In")]:
        names = [t.name for t in fig.data if t.name]
        for n in ood:
            want = f"{n} ({label} {100 * metrics.ood_metrics(a, ood[n])[key]:.1f})"
            assert want in names


def test_model_time_detector_runs_as_a_job_then_reads_the_cache(default_bundle):
    """ODIN needs the model: the first run scores in a background job, the table appears when it ends."""
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = ["faces"]
    at.session_state["detector"] = "odin"
    at.session_state["detector_knobs"] = {"odin": {"T": 10.0, "eps": 0.0007}}
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    first = _table(at)
    assert list(first["OOD set"]) == ["faces"] and first["AUROC %"].iloc[0] > 90
    from ood_core import workbench as wb
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert wb.is_cached(default_bundle, det, "faces", {"T": 10.0, "eps": 0.0007})


def test_a_long_model_time_job_says_its_cost_and_waits_for_a_click(default_bundle, monkeypatch):
    """Over LONG_JOB_S the page shows the dry run's estimate and a Run button instead of starting."""
    from ood_core import workbench as wb

    calls = []
    monkeypatch.setattr(wb, "model_time_estimate", lambda *a, **k: calls.append(a) or {
        "seconds": 600.0, "bytes": 3 * 2**30, "n_images": 2000, "pending": ["faces"], "detail": "dry run"})
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = ["faces"]
    at.session_state["detector"] = "odin"
    at.session_state["detector_knobs"] = {"odin": {"T": 12.5, "eps": 0.0003}}
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert calls and any("≈ 10 min 00 s, ≈ 3.00 GB peak, 2,000 images (dry run)" in c.value for c in at.caption)
    assert [b.label for b in at.button if b.key == "scores.run_mt"] == ["Run odin as a job"]
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert not wb.is_cached(default_bundle, det, "faces", {"T": 12.5, "eps": 0.0003})  # nothing ran
