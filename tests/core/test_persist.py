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
