"""AppTest: the Maps and Saliency pages, driven through the app's entry point (so page switches resolve)."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def _page(path: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page(path)
    for k, v in state.items():
        at.session_state[k] = v
    return at


def _maps(**state) -> AppTest:
    base = {"maps_method": "pca", "maps_n": 40, "ood_datasets": ["letters", "gaussian"]}
    return _page("pages/4_Maps.py", **{**base, **state})


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_maps_page_draws_both_maps_and_separability(default_bundle):
    at = _maps().run()
    _ok(at)
    charts = [c.proto.id for c in at.get("plotly_chart")]
    assert len(charts) >= 3  # features map, gradients map, separability bars
    metrics = {m.label: float(m.value) for m in at.metric}
    assert set(metrics) == {"features · 2-D", "features · full", "gradients · 2-D", "gradients · full"}
    assert all(50.0 <= v <= 100.0 for v in metrics.values())
    sep = at.dataframe[0].value
    assert list(sep["OOD set"]) == ["letters", "gaussian", "all OOD"]
    assert {"features 2-D", "features full", "gradients 2-D", "gradients full"} <= set(sep.columns)
    assert any("120 points in 128 dimensions" in c.value for c in at.caption)


def test_maps_page_colour_and_method_knobs(default_bundle):
    at = _maps(maps_color="energy").run()
    _ok(at)
    at.radio(key="maps_method").set_value("tsne").run()
    _ok(at)
    assert at.slider(key="maps.tsne.perplexity").value == 30.0
    at.slider(key="maps.tsne.perplexity").set_value(10.0).run()
    _ok(at)
    assert any("t-SNE of 120 points" in c.value for c in at.caption)


def test_maps_page_refuses_a_perplexity_too_large(default_bundle):
    at = _maps(maps_method="tsne", maps_n=10, **{"maps.tsne.perplexity": 30.0}).run()
    assert not at.exception, at.exception
    msgs = [e.value for e in at.error]
    assert any("perplexity 30 is too large for 30 points: use at most 9" in m for m in msgs), msgs


def test_maps_gallery_sends_a_sample_to_saliency(default_bundle):
    at = _maps().run()
    at.radio(key="maps_gallery").set_value("ood_most_id").run()
    _ok(at)
    buttons = [b for b in at.button if b.key and b.key.startswith("maps_sal_")]
    assert buttons and len(at.get("image")) >= 1
    first = buttons[0].key  # maps_sal_<dataset>_<index>
    ds, idx = first[len("maps_sal_"):].rsplit("_", 1)
    at.button(key=first).click().run()
    assert not at.exception, at.exception
    assert at.session_state["selected_sample"] == {"dataset": ds, "index": int(idx)}
    assert at.title[0].value == "Saliency"
    assert at.selectbox(key="sal_dataset").value == ds
    assert at.number_input(key="sal_index").value == int(idx)


def test_saliency_page_from_a_selection(default_bundle):
    at = _page("pages/5_Saliency.py", selected_sample={"dataset": "letters", "index": 3}).run()
    _ok(at)
    assert at.selectbox(key="sal_dataset").value == "letters"
    assert at.number_input(key="sal_index").value == 3
    assert any(c.value.startswith("16 attributions of 2 images in") for c in at.caption)
    assert len(at.get("plotly_chart")) == 4  # the sample and its ID twin, each an image and a grid
    assert any("ID, same prediction" in m.value for m in at.markdown)


def test_saliency_page_pickers_gallery_and_settings(default_bundle):
    at = _page("pages/5_Saliency.py", sal_dataset="gaussian", sal_index=5).run()
    _ok(at)
    at.button(key="sal_use_2").click().run()
    _ok(at)
    assert at.number_input(key="sal_index").value == 2
    at.multiselect(key="sal_methods").set_value(["ig"]).run()
    _ok(at)
    assert any(c.value.startswith("4 attributions of 2 images") for c in at.caption)
    at.slider(key="sal_opacity").set_value(0.3).run()
    _ok(at)
    at.multiselect(key="sal_targets").set_value([]).run()
    assert not at.exception
    assert any("at least one" in i.value for i in at.info)


def test_a_lasso_selection_fills_the_gallery_in_one_run_and_clear_sticks(default_bundle):
    """The charts' selection is read before they are drawn (no second rerun), and Clear is not undone
    by the selection the charts still hold."""
    pts = [{"curve_number": 0, "point_number": i, "point_index": i} for i in range(3)]
    at = _maps(map_features={"selection": {"points": pts, "point_indices": [0, 1, 2], "box": [], "lasso": []}})
    at.run()
    _ok(at)
    chosen = at.session_state["maps_selected_points"]
    assert len(chosen) == 3 and all(isinstance(i, int) for _, i in chosen)
    assert [b.label for b in at.button].count("Saliency →") == 3  # the gallery shows the three images
    at.button(key="maps_clear").click().run()
    _ok(at)
    assert at.session_state["maps_selected_points"] == []
    at.run()  # the chart still holds the old lasso: it must not come back
    assert at.session_state["maps_selected_points"] == []
