"""AppTest: every page works when the ID and OOD sets are streamed folders (issue 14).

The ID set is an ImageFolder tree of the embedded digits (``train/`` and ``test/``, PNG), the
OOD set a folder of JPEG photos of varied sizes; both stay on disk (no ``images`` array) and
reach each page by name, as a registration on Models & Data leaves them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import digits_tree, photo_folder
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
ID, OOD = "digits_stream", "photos_stream"


@pytest.fixture(scope="module")
def streamed_sets(tmp_path_factory, default_bundle):
    from ood_core import persist
    from ood_core.data import get_dataset, unregister

    base = tmp_path_factory.mktemp("streamed")
    persist.register_local(digits_tree(base / "digits", 240, 60), ID, "id_test", persist=False)
    persist.register_local(photo_folder(base / "photos", 40), OOD, "ood_test", persist=False)
    assert get_dataset(ID).streamed and get_dataset(f"{ID}:train").streamed and get_dataset(OOD).streamed
    yield ID, OOD
    unregister(ID)
    unregister(OOD)


def _run(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=300)
    at.session_state["id_dataset"] = ID
    at.session_state["ood_datasets"] = [OOD]
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_scores_page_on_streamed_sets_with_mistakes_gallery(streamed_sets):
    at = _run("1_Scores.py", detector="knn")
    table = at.dataframe[0].value
    assert list(table["OOD set"])[0] == OOD
    assert 0 <= float(table["AUROC %"].iloc[0]) <= 100
    # the mistakes expander decodes only the few files it shows
    assert 1 <= len(at.get("image")) <= 24  # the threshold's mistakes: a few files decoded, not the set


def test_compare_and_tuning_pages_on_streamed_sets(streamed_sets):
    at = _run("2_Compare.py")
    assert OOD in list(at.dataframe[0].value.columns)
    _run("3_Tuning.py")


def test_maps_page_on_streamed_sets(streamed_sets):
    at = _run("4_Maps.py", maps_samples=40)
    maps = [e for e in at.get("bidi_component") if e.proto.component_name == "ood_workbench.scatter_map"]
    assert len(maps) == 2 and len(at.get("plotly_chart")) == 1  # features and gradients maps, separability bars


def test_saliency_page_on_a_streamed_photo(streamed_sets):
    at = _run("5_Saliency.py", sal_dataset=OOD, sal_index=3)
    assert len(at.get("plotly_chart")) == 4  # the photo and its ID twin, each an image and a grid


def test_train_page_on_a_streamed_id_set(streamed_sets):
    at = _run("6_Train.py")
    at.selectbox(key="train.method").set_value("ce").run()
    assert not at.exception, at.exception


def test_models_and_data_page_registers_and_previews_a_streamed_folder(streamed_sets, tmp_path):
    from ood_core import persist

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/7_Models_and_Data.py")
    at.run()
    folder = photo_folder(tmp_path / "more", 12, seed=9)
    at.text_input(key="ds_name").set_value("more_photos")
    at.selectbox(key="ds_role").set_value("ood_test")
    at.text_input(key="ds_path").set_value(str(folder))
    at.button(key="ds_register").click().run()
    try:
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert "more_photos" in at.session_state["ood_datasets"]
        assert at.metric[0].value == "12"
        assert any("streamed from disk" in (c.value or "") for c in at.caption)
        at.selectbox(key="ds_preview_pick").set_value(OOD).run()  # the grid decodes 32 files, not the set
        assert not at.exception, at.exception
    finally:
        persist.unregister_local("more_photos")
