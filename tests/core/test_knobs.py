"""Knobs are validated once, at the boundary (docs/architecture.md, "Knobs"): the one resolver
(``knobs.resolve``) runs once per user action, and everything below takes its ``Resolved`` as is."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ood_core import knobs as K

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def resolver_calls(monkeypatch):
    """Counts calls of the one resolver, by owner."""
    calls: list[str] = []
    real = K.resolve

    def counting(knobs, params=None, owner="", error=None):
        calls.append(owner)
        return real(knobs, params, owner, error)

    monkeypatch.setattr(K, "resolve", counting)
    return calls


def test_a_react_p_move_on_scores_with_three_ood_sets_resolves_once(default_bundle, resolver_calls):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Scores.py"), default_timeout=300)
    at.session_state["ood_datasets"] = ["letters", "textures", "gaussian"]
    at.session_state["detector"] = "react"
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    before = at.dataframe[0].value
    resolver_calls.clear()
    at.slider(key="scores.react.p").set_value(70.0).run()
    assert not at.exception, at.exception
    assert resolver_calls == ["react"]  # one validation for the ID set and three OOD sets
    assert (before["AUROC %"] != at.dataframe[0].value["AUROC %"]).any()  # and the move did rescore
    assert at.session_state["detector_knobs"]["react"]["p"] == 70.0


def test_resolved_values_pass_through_and_stay_frozen(resolver_calls):
    from ood_core.detectors import DetectorError, get_detector

    det = get_detector("energy")
    r = det.resolve({"T": 2})
    assert r == {"T": 2.0} and isinstance(r, K.Resolved) and r.owner == "energy"
    assert det.resolve(r) is r and K.ensure(det.knobs, r, "energy") is r
    assert resolver_calls == ["energy"]
    with pytest.raises(TypeError):
        r["T"] = 3.0  # type: ignore[index]
    assert pickle.loads(pickle.dumps(r)) == r and isinstance(pickle.loads(pickle.dumps(r)), K.Resolved)
    # values resolved against other knobs are validated again, with the owner's own error class
    other = K.resolve((K.Knob("T", 5000.0, 0.0, 1e4),), {"T": 5000}, "energy")
    with pytest.raises(DetectorError, match=r"energy\.T must be in") as info:
        det.resolve(other)
    assert isinstance(info.value, K.KnobError)  # raised as is by the one resolver, not re-wrapped


def test_load_options_are_declared_once_and_parsed_by_the_resolver():
    from ood_core.cli import build_parser
    from ood_core.models.load_options import LOAD_OPTIONS, load_kwargs

    got = load_kwargs({"mean": "0.5, 0.4,0.3", "std": "0.2", "input_size": "32x32", "channels": 3, "head": "",
                       "resize": "auto"})
    assert got == {"mean": [0.5, 0.4, 0.3], "std": [0.2], "input_size": [32, 32], "channels": 3}
    with pytest.raises(K.KnobError, match="model.mean must be numbers"):
        load_kwargs({"mean": "0.5, a lot"})
    with pytest.raises(K.KnobError, match="model.std"):
        load_kwargs({"std": "0"})
    a = build_parser().parse_args(["evaluate", "--mean", "0.5", "--input-size", "28", "--resize", "crop"])
    for k in LOAD_OPTIONS.knobs:  # every declared option is a CLI option with the declared help
        assert hasattr(a, k.name)
    assert (a.mean, a.input_size, a.resize) == ([0.5], [28], "crop")


def test_one_action_signs_a_user_dataset_once(tmp_cache, tmp_path):
    import numpy as np

    from ood_core import facade, persist
    from ood_core.data import registry

    np.savez(tmp_path / "noise.npz", x=np.zeros((3, 5, 5), np.uint8))
    persist.register_local(tmp_path / "noise.npz", "noise", "ood_test")
    spec = registry.get_spec("noise")
    signed = []
    real = spec.stamp
    spec.stamp = lambda: signed.append(1) or real()
    try:
        facade.map_points_total(["noise", "noise", "noise"], 10)
        assert len(signed) == 1
        registry.get_dataset("noise")
        registry.get_dataset("noise")
        assert len(signed) == 3  # outside an action each use re-signs (files may change between actions)
    finally:
        spec.stamp = real
        persist.unregister_local("noise")
