"""AppTest: the Compare page renders the table; the Tuning page runs a sweep and applies it.

AppTest does not expose dataframe keys, so tables are found by position (first = main table).
"""
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=300)


def test_compare_page_renders_the_table(default_bundle):
    at = _page("2_Compare.py")
    at.session_state["ood_datasets"] = ["letters", "gaussian"]
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table.columns) == ["letters", "gaussian", "mean"]
    assert {"energy", "knn", "mahalanobis", "vim", "ash", "rg_add", "uv"} <= set(table.index)
    assert ((table >= 0) & (table <= 1)).all().all()
    ci = at.dataframe[1].value
    assert ci.loc["energy", "letters"].count("[") == 1
    # a model-time detector is listed, greyed, with its reason, and offered as a job
    at.multiselect(key="compare.detectors").set_value(["energy", "odin"]).run()
    assert not at.exception, at.exception
    assert any("odin" in m.value and "model at scoring time" in m.value for m in at.markdown)
    assert any("odin" in b.label for b in at.button)
    assert any(c.value.startswith("Before running: odin: ≈ ") and "GB peak" in c.value for c in at.caption)  # a dry run
    at.radio(key="compare.metric").set_value("fpr95").run()
    assert not at.exception
    assert list(at.dataframe[0].value.index) == ["energy"]


def test_tuning_page_runs_a_sweep_and_applies_the_best(default_bundle):
    at = _page("3_Tuning.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="tuning.detector").set_value("energy").run()
    at.text_input(key="tuning.grid.energy.T").set_value("0.5, 1, 4").run()
    assert at.multiselect(key="tuning.val").value == ["aux_val"]
    at.button(key="tuning.run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    df = at.dataframe[0].value
    assert sorted(df["T"]) == [0.5, 1.0, 4.0] and df["best"].sum() == 1
    best_T = float(df.loc[df["best"], "T"].iloc[0])
    at.button(key="tuning.apply").click().run()
    assert not at.exception, at.exception
    assert at.session_state["detector_knobs"]["energy"]["T"] == best_T


def test_tuning_page_rejects_a_bad_grid_value(default_bundle):
    at = _page("3_Tuning.py").run()
    at.selectbox(key="tuning.detector").set_value("energy").run()
    at.text_input(key="tuning.grid.energy.T").set_value("1, 5000").run()
    assert not at.exception, at.exception
    assert any("energy.T must be in" in e.value for e in at.error)


def test_scores_page_builds_knobs_for_the_library_detectors(default_bundle):
    """Every cached-array detector of the library renders on the Scores page from its declared knobs."""
    at = AppTest.from_file(str(ROOT / "pages" / "1_Scores.py"), default_timeout=300)
    at.session_state["ood_datasets"] = ["letters"]
    at.run()
    for name in ["gen", "klm", "mahalanobis", "rmd", "knn", "vim", "ash", "scale", "dice", "rg_add", "uv"]:
        at.selectbox(key="detector").set_value(name).run()
        assert not at.exception, (name, at.exception)
        assert not at.error, (name, [e.value for e in at.error])
        assert 0.5 < at.dataframe[0].value["AUROC %"].iloc[0] / 100 <= 1.0, name
