"""Saved state comes back through one explicit call, ``workbench.restore_saved()``, which the app
makes once per process: datasets and uploads alike, with skips reported, never raised."""
from __future__ import annotations

import json
from pathlib import Path

import fixtures_data as fx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def _upload_tiny(tmp_path) -> tuple[str, object]:
    from ood_core import persist

    torch.manual_seed(0)
    p = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(fx.TinyNet().eval()), p)
    return persist.register_upload(persist.save_upload(p.read_bytes(), "tiny.pt"), name="tiny")


def _restart(key: str, datasets: tuple[str, ...] = ()) -> None:
    """What a new process starts with: no uploads in memory, no user datasets registered."""
    from ood_core.data import unregister
    from ood_core.models import loaded

    loaded.forget(key)
    for name in datasets:
        unregister(name)


def test_restore_saved_brings_back_datasets_and_uploads_and_reports_skips(tmp_cache, tmp_path):
    from ood_core import persist
    from ood_core import workbench as wb
    from ood_core.data import DataError, get_dataset, get_spec

    np.savez(tmp_path / "noise.npz", x=np.zeros((3, 5, 5), np.uint8))
    np.savez(tmp_path / "doomed.npz", x=np.zeros((2, 5, 5), np.uint8))
    persist.register_local(tmp_path / "noise.npz", "noise", "ood_test")
    persist.register_local(tmp_path / "doomed.npz", "doomed", "ood_test")
    key, bundle = _upload_tiny(tmp_path)
    _restart(key, ("noise", "doomed"))
    (tmp_path / "doomed.npz").unlink()
    assert key not in {m["spec"] for m in wb.list_models()}
    try:
        get_spec("noise")
        raise AssertionError("the dataset should be gone after the restart")
    except DataError:
        pass

    got = wb.restore_saved()
    assert got.datasets == ["noise"] and got.models == [key]
    assert list(got.skipped) == ["doomed"] and "doomed.npz is gone" in got.skipped["doomed"]
    assert len(get_dataset("noise")) == 3
    assert wb.load_model(key).fingerprint == bundle.fingerprint
    assert key in {m["spec"] for m in wb.list_models()}
    # a second call reloads no upload already in memory
    assert wb.restore_saved().models == []
    persist.unregister_local("noise")
    persist.unregister_local("doomed")
    persist.forget_upload(key)


def test_experiment_naming_an_upload_survives_a_restart_when_applied_from_home(tmp_cache, tmp_path, default_bundle):
    """The bug this layout fixes: after a restart, an experiment JSON that names an ``upload:…``
    model, applied on Home, was reset to the default model, because the sidebar replaces any
    model it does not list and uploads were restored only when the Models & Data page ran."""
    from streamlit.testing.v1 import AppTest

    from ood_core import persist

    key, _ = _upload_tiny(tmp_path)
    _restart(key)  # the default model stays in memory (a restart would reload it from the cache)
    exp = {"model": key, "id_dataset": "mnist", "ood_datasets": ["gaussian"], "detectors": ["msp"]}
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
        assert not at.exception, at.exception
        at.file_uploader(key="exp_upload").set_value(("e.json", json.dumps(exp).encode(), "application/json"))
        at.run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert at.session_state["model"] == key
        assert at.session_state["ood_datasets"] == ["gaussian"] and at.session_state["detector"] == "msp"
        assert any(m.label == "Model" and m.value == "tiny" for m in at.metric)
    finally:
        persist.forget_upload(key)


def test_an_upload_is_restored_only_by_restore_saved(tmp_cache, tmp_path):
    """One restore route: load_model does not reload a remembered upload behind restore_saved's back."""
    import pytest

    from ood_core import workbench as wb
    from ood_core.models import ModelError

    key, _ = _upload_tiny(tmp_path)
    wb.forget_model(key)  # as after a restart, before restore_saved
    with pytest.raises(ModelError, match="upload it again"):
        wb.load_model(key)
    assert wb.restore_saved().models == [key]
    assert wb.load_model(key).info["spec"] == key


# --- issue 27, item 13: the experiment's recorded model, the subsample rule, duplicate names -------

import pytest  # noqa: E402


@pytest.mark.hostile
def test_experiment_model_differences_are_one_line():
    from ood_core.experiment import Experiment

    exp = Experiment(model_fingerprint="abc123", preprocess={"mean": [0.5], "input_size": [28]})
    same = {"mean": (0.5,), "input_size": (28, 28), "std": (0.5,)}
    assert exp.model_differences("abc123ffff", same) == ""  # a prefix is enough; one value per side is the same
    line = exp.model_differences("fff000", {**same, "mean": (0.1,)})
    assert line == ("the model differs from the experiment's: fingerprint abc123 in the experiment, fff000 loaded; "
                    "mean [0.5] in the experiment, (0.1,) loaded")
    assert Experiment().model_differences("anything", same) == ""  # nothing recorded, nothing to say


@pytest.mark.hostile
@pytest.mark.parametrize("value, expect", [(1, 1), (12811, 12811), (12811.0, 12811), ("500", 500), (0.25, 0.25),
                                           ("0.5", 0.5)])
def test_subsample_counts_and_fractions(value, expect):
    from ood_core.experiment import sample_size

    got = sample_size(value, "id_test")
    assert got == expect and type(got) is type(expect)


@pytest.mark.hostile
@pytest.mark.parametrize("value, msg", [(0, "no samples"), ("0", "no samples"), (1.0, "ambiguous"), ("1.0", "ambiguous"),
                                        (-3, "count or a fraction"), (2.5, "must be whole"), ("nan", "count or a fraction"),
                                        (float("inf"), "count or a fraction"), (True, "count or a fraction"),
                                        ("9" * 5000, "count")])
def test_subsample_refusals(value, msg):
    from ood_core.experiment import ExperimentError, sample_size

    with pytest.raises(ExperimentError, match=msg):
        sample_size(value, "id_test")


@pytest.mark.hostile
def test_duplicate_names_are_refused_everywhere(default_bundle):
    from ood_core import workbench as wb
    from ood_core.experiment import Experiment, ExperimentError

    with pytest.raises(ExperimentError, match="ood_datasets names 'faces' twice"):
        Experiment.from_dict({"ood_datasets": ["faces", "faces"]})
    with pytest.raises(ExperimentError, match="the list of detectors names 'msp' twice"):
        wb.evaluate(default_bundle, "mnist", ["faces"], ["msp", "msp"])
    with pytest.raises(ExperimentError, match="the list of OOD sets names 'faces' twice"):
        wb.evaluate(default_bundle, "mnist", ["faces", "faces"], ["msp"])


@pytest.mark.hostile
def test_a_subsample_count_is_saved_whole():
    """``set_sample`` kept 12811 as 12811.0, so an experiment saved with a count of 1 read back as 1.0."""
    from ood_core import workbench as wb

    wb.apply_subsample({"id_test": 1}, "mnist", ["faces"], 3)
    try:
        sub, seed = wb.subsample_of("mnist", ["faces"])
        assert sub == {"id_test": 1} and type(sub["id_test"]) is int and seed == 3
    finally:
        wb.apply_subsample({}, "mnist", ["faces"])
