"""The app's frame: app.py draws the sidebar once, the session keys are the documented ones,
and knob widgets (the Maps page's included) come from the declarations."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
UI_FILES = [ROOT / "app.py", ROOT / "home.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]


def _app(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if page:
        at.switch_page(page)
    for k, v in state.items():
        at.session_state[k] = v
    return at


def _pickers(at: AppTest) -> tuple[int, int, int]:
    """How many model, ID and OOD pickers the sidebar shows."""
    return (len([s for s in at.sidebar.selectbox if s.label == "Model"]),
            len([s for s in at.sidebar.selectbox if s.label == "ID dataset"]),
            len([m for m in at.sidebar.multiselect if m.label == "OOD datasets"]))


def test_the_sidebar_is_drawn_once_per_run(default_bundle):
    # AppTest runs app.py itself only for its default page (a switched page runs alone), so Home it is.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Gradient-OOD workbench"]
    assert _pickers(at) == (1, 1, 1)
    at.sidebar.multiselect[0].set_value(["letters"]).run()  # a rerun draws it once again, not twice
    assert not at.exception, at.exception
    assert _pickers(at) == (1, 1, 1)
    assert [m.value for m in at.metric if m.label == "OOD datasets"] == ["1"]  # the page read what it set
    for page in [*sorted((ROOT / "pages").glob("*.py")), ROOT / "home.py"]:
        assert "sidebar(" not in page.read_text(), f"{page.name} draws the sidebar itself"


def _modes():
    import streamlit as st

    from ui import common

    mode = st.session_state.get("mode_under_test", "pickers")
    common.sidebar(mode)
    if mode == "none":
        common.sidebar_summary()


def test_sidebar_modes():
    at = AppTest.from_function(_modes, default_timeout=120)
    assert _pickers(at.run()) == (1, 1, 1)
    at.session_state["mode_under_test"] = "no_ood"
    assert _pickers(at.run()) == (1, 1, 0)
    assert at.session_state["ood_datasets"]  # kept although its picker is not drawn
    at.session_state["mode_under_test"] = "none"
    at.run()
    assert not at.exception, at.exception
    assert _pickers(at) == (0, 0, 0)
    assert [s.value for s in at.sidebar.subheader] == ["Current experiment"]
    assert any(c.value == "Model: default" for c in at.sidebar.caption)  # user text as text (ui.common.text)


def test_a_page_is_one_file_that_declares_itself(tmp_path):
    """Adding a page is adding one file: its PAGE declaration puts it in app.py's navigation and sets its sidebar."""
    import shutil

    for f in ("app.py", "home.py"):
        shutil.copy(ROOT / f, tmp_path / f)
    shutil.copytree(ROOT / "pages", tmp_path / "pages")
    (tmp_path / "pages" / "9_Extra.py").write_text(
        "import streamlit as st\n\nfrom ui import common\nfrom ui.pages import Page\n\n"
        "PAGE = Page(title=\"Extra\", icon=\":material/star:\", order=5, url_path=\"Extra\", sidebar=\"no_ood\")\n"
        "common.frame(PAGE.sidebar)\nst.title(\"Extra page\")\n")
    from ui import pages

    found = pages.discover(tmp_path)
    assert [p.title for _, p in found][:3] == ["Home", "Extra", "Scores"]  # ordered by PAGE.order
    assert dict(found)["pages/9_Extra.py"].sidebar == "no_ood"
    every = {f.relative_to(ROOT).as_posix() for f in [ROOT / "home.py", *(ROOT / "pages").glob("*.py")]}
    assert {f for f, _ in pages.discover()} == every  # every page file in the app declares itself

    at = AppTest.from_file(str(tmp_path / "app.py"), default_timeout=300).run()  # the copy's own pages
    assert not at.exception, at.exception
    at.switch_page(str(tmp_path / "pages" / "9_Extra.py")).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Extra page"]
    assert _pickers(at) == (1, 1, 0)  # its declared sidebar


def test_documented_session_keys_are_exactly_the_keys_in_use():
    from ui import state

    used: set[str] = set()
    for f in UI_FILES:
        text = f.read_text()
        if f.name != "state.py":
            # Only ui/state.py touches st.session_state; pages go through its accessors.
            assert "session_state" not in text, f"{f.relative_to(ROOT)} touches st.session_state directly"
        used |= set(re.findall(r"\bstate\.(?:get|put|pop|setdefault)\(\s*\"([^\"]+)\"", text))
        used |= set(re.findall(r"(?<![\w.])(?:get|put|pop|setdefault)\(\s*\"([^\"]+)\"", text)) if f.name == "state.py" else set()
    # The pickers are widget-bound: keep() and the sidebar's keys name them.
    used |= {"model", "id_dataset", "ood_datasets"}
    assert used == set(state.KEYS), (sorted(used - set(state.KEYS)), sorted(set(state.KEYS) - used))
    for k in state.KEYS.values():
        assert k.type and k.meaning and k.written_by, k.name


def test_state_refuses_an_undocumented_key():
    import pytest

    from ui import state

    with pytest.raises(KeyError, match="not a documented session key"):
        state.get("params")


HISTORY = re.compile(r"the seeds?\b|seeds'|seed paper|seed \d{3}|DESIGN\.md|METHODS\.md|contract \d", re.I)


def test_no_project_history_in_user_facing_text():
    from ood_core import maps
    from ood_core.detectors import detector_classes

    for f in UI_FILES:
        for s in re.findall(r"\"([^\"\n]*)\"", f.read_text()):
            if not s.startswith(("ui/", "pages/")):
                assert not HISTORY.search(s), (f.name, s)
    from ood_core import saliency
    from ood_core.training import METHODS

    texts = [k.help for ks in [*maps.KNOBS.values(), maps.GRADIENT_KNOBS, saliency.KNOBS] for k in ks.knobs]
    for m in METHODS.values():
        texts += [m.help, m.title, *(k.help for k in m.all_knobs)]
    for cls in detector_classes().values():
        texts += [cls.help, cls.title, *(k.help for k in cls.knobs)] + ([cls.paper.cite()] if cls.paper else [])
    assert not [t for t in texts if HISTORY.search(t)]


def test_maps_knob_widgets_follow_the_declarations(default_bundle, monkeypatch):
    from ood_core import maps

    def redeclare(method: str, knob: str, default):
        ks = maps.KNOBS[method]
        new = tuple(dataclasses.replace(k, default=default) if k.name == knob else k for k in ks.knobs)
        monkeypatch.setitem(maps.KNOBS, method, dataclasses.replace(ks, knobs=new))

    redeclare("pca", "standardize", False)
    redeclare("tsne", "perplexity", 7.0)
    at = _app("pages/4_Maps.py", maps_method="pca", maps_n=40, ood_datasets=["letters", "gaussian"]).run()
    assert not at.exception, at.exception
    assert at.checkbox(key="maps.pca.standardize").value is False
    assert at.checkbox(key="maps.pca.standardize").label == "Standardise columns"
    assert at.selectbox(key="maps.gradients.loss").value == maps.GRADIENT_KNOBS.defaults()["loss"]
    at.radio(key="maps_method").set_value("tsne").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.slider(key="maps.tsne.perplexity").value == 7.0
    assert {s.key for s in at.slider if s.key.startswith("maps.tsne.")} == {"maps.tsne.perplexity", "maps.tsne.max_iter"}
