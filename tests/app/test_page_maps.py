"""AppTest: the Maps and Saliency pages, driven through the app's entry point (so page switches resolve)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from ood_core.figures.maps import decode_map

ROOT = Path(__file__).resolve().parents[2]


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


def _maps_payloads(at: AppTest) -> dict[str, tuple[dict, dict]]:
    """The decoded payload of each map component, by its key (AppTest cannot render the component itself)."""
    out = {}
    for el in at.get("bidi_component"):
        if el.proto.component_name == "ood_workbench.scatter_map":
            out[el.proto.id.rsplit("-", 1)[-1]] = decode_map(el.proto.bytes)
    return out


def _ringed(payload: tuple[dict, dict]) -> list[tuple[str, int]]:
    """(dataset, index) of the ringed points of a payload, read the way the browser reads them."""
    header, arrays = payload
    out = []
    for p in arrays["ring"].tolist():
        t = next(t for t in header["traces"] if t["start"] <= p < t["start"] + t["count"])
        out.append((t["dataset"], int(arrays["index"][p])))
    return sorted(out)


def test_maps_page_draws_both_maps_and_separability(default_bundle):
    at = _maps().run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 1  # the separability bars; the maps are components
    payloads = _maps_payloads(at)
    assert set(payloads) == {"map_features", "map_gradients"}
    for header, arrays in payloads.values():
        assert header["n"] == 120 and arrays["x"].dtype == np.float32 and arrays["x"].size == 120
        assert [t["dataset"] for t in header["traces"]] == ["mnist", "letters", "gaussian"]
        assert arrays["ring"].size == 0
    loader = [e for e in at.get("bidi_component") if e.proto.component_name == "ood_workbench.plotly_loader"]
    assert len(loader) == 1 and b"window.Plotly" in loader[0].proto.bytes  # plotly.js until the browser has it
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


def test_a_selection_rings_both_maps_fills_the_gallery_and_clear_sticks(default_bundle):
    """A selection (what the map component's callback stores) rings the same samples in both maps' payloads
    and fills the gallery in the same run; Clear empties both, and stays cleared on the next run."""
    at = _maps().run()
    _ok(at)
    res = next(r for r in at.session_state["maps_results"].values() if r.space == "features")
    picked = [(str(d), int(i)) for d, i in res.frame[["dataset", "index"]].iloc[[0, 45, 110]].itertuples(index=False)]
    at.session_state["maps_selected_points"] = picked
    at.run()
    _ok(at)
    payloads = _maps_payloads(at)
    assert _ringed(payloads["map_features"]) == sorted(picked)
    assert _ringed(payloads["map_gradients"]) == sorted(picked)
    assert [b.label for b in at.button].count("Saliency →") == 3  # the gallery shows the three images
    assert len(at.get("image")) == 3
    at.button(key="maps_clear").click().run()
    _ok(at)
    assert at.session_state["maps_selected_points"] == []
    assert all(p[1]["ring"].size == 0 for p in _maps_payloads(at).values())
    at.run()
    assert at.session_state["maps_selected_points"] == []
    assert [b.label for b in at.button].count("Saliency →") == 0


def test_a_map_selection_event_leads_to_samples(default_bundle, monkeypatch):
    """The component's trigger value (payload positions and the digest of the points it drew) becomes
    frame rows, then (dataset, index); a selection made on other points (a stale digest) is ignored."""
    from ood_core.figures.maps import keys_of_rows, map_points
    from ui import map_component, state

    at = _maps().run()
    res = next(r for r in at.session_state["maps_results"].values() if r.space == "gradients")
    pts = map_points(res.frame, "pred", "mnist")
    header, arrays = decode_map(map_component.encode_map(pts))
    positions = [0, 7, 64, 119]
    event = {"selected": {"digest": pts.digest, "positions": positions}}
    monkeypatch.setattr(state, "widget", lambda key, default=None: event if key == "map_x" else default)
    rows = map_component.selection_event("map_x", pts)
    got = keys_of_rows(res.frame, rows)
    want = []
    for p in positions:  # what the browser drew at those positions: the trace's set, the point's index
        t = next(t for t in header["traces"] if t["start"] <= p < t["start"] + t["count"])
        want.append((t["dataset"], int(arrays["index"][p])))
    assert got == want
    assert np.allclose(res.frame["x"].to_numpy()[rows], arrays["x"][positions])
    event["selected"]["digest"] = "0" * 16
    assert map_component.selection_event("map_x", pts) is None
    event["selected"] = {"digest": pts.digest, "positions": "not a list"}
    assert map_component.selection_event("map_x", pts) is None


MAP_PLUGIN = '''
import numpy as np
from ood_core.api import Detector, Knob, register_detector

@register_detector
class HalfMaxLogit(Detector):
    name, title = "half_maxlogit_map", "Half max logit"
    knobs = (Knob("a", 0.5, 0.1, 2.0, help="scale"),)
    def _score(self, ext, a):
        return a * np.asarray(ext.logits, np.float64).max(1)
'''


def test_maps_colour_by_a_plugin_detector(default_bundle, tmp_path):
    """A detector from a plugin file is offered as a colour (labelled with its plugin) and colours both maps
    by its score, added to the points on demand; the gallery can rank by it too."""
    from ood_core import plugins

    f = tmp_path / "map_plugin.py"
    f.write_text(MAP_PLUGIN)
    info = plugins.load(str(f))
    try:
        assert info.ok, info.line
        at = _maps().run()
        _ok(at)
        label = "score: Half max logit · plugin (map_plugin.py)"
        assert label in at.selectbox(key="maps_color").options
        assert "score: Energy score" in at.selectbox(key="maps_color").options  # the built-ins stay
        at.selectbox(key="maps_color").set_value("half_maxlogit_map").run()
        _ok(at)
        res = {r.space: r for r in at.session_state["maps_results"].values()}
        payloads = _maps_payloads(at)
        assert set(payloads) == {"map_features", "map_gradients"}
        for key, space in (("map_features", "features"), ("map_gradients", "gradients")):
            header, arrays = payloads[key]
            assert header["color"] == "half_maxlogit_map" and "half_maxlogit_map" in header["scale"]["title"]
            frame = res[space].frame
            np.testing.assert_allclose(frame["half_maxlogit_map"], 0.5 * frame["maxlogit"], rtol=1e-6)
            np.testing.assert_allclose(np.sort(arrays["value"]), np.sort(0.5 * frame["maxlogit"].to_numpy()),
                                       rtol=1e-5)
        assert "Half max logit · plugin (map_plugin.py)" in at.selectbox(key="maps_rank_by").options
    finally:
        plugins.forget(info)
