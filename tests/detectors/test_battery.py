"""The public conformance battery (``ood_core.conformance``, what ``check-detector`` runs) over EVERY
registered detector: the built-ins pass the same checks a plugin must.

The registry is read at collection time, so a detector added later is checked without touching this
file. Cached-array detectors run on small synthetic arrays (declaration, knobs, shapes, determinism,
knob edges, constant and NaN inputs, cache keys) and on the embedded default (orientation, speed of
a knob move); model-time detectors (``needs_model``) on the default model with a few dozen images.
The ``check_*`` wrappers below keep the names tests/detectors/test_add_detector.py imports.
"""
from __future__ import annotations

import pytest

from ood_core import conformance as C
from ood_core.detectors import detector_classes

NAMES = sorted(detector_classes())
CACHED = [n for n in NAMES if not detector_classes()[n].needs_model]
MODEL_TIME = [n for n in NAMES if detector_classes()[n].needs_model]
synthetic_arrays = C.synthetic_arrays


@pytest.fixture(scope="module")
def ctx(default_bundle):
    return C.Context(default_bundle)


@pytest.fixture(scope="module")
def arrays_ctx():
    """Checks on synthetic arrays only: no model is loaded."""
    return C.Context()


def _ctx(arrays=None, bundle=None) -> C.Context:
    c = C.Context(bundle)
    if arrays is not None:
        c._arrays = arrays  # noqa: SLF001 - the caller's arrays
    return c


# --- the names tests/test_add_detector.py uses ---------------------------------------------------
def check_declaration(name: str) -> None:
    C.check_declaration(name, _ctx(), require_paper=True)


def check_knob_defaults_in_range(name: str, arrays) -> None:
    C.check_knob_defaults(name, _ctx(arrays))


def check_out_of_range_knob_raises(name: str, arrays) -> None:
    C.check_knob_validation(name, _ctx(arrays))


def check_shape_finite_deterministic(name: str, arrays) -> None:
    C.check_scores(name, _ctx(arrays))


def check_sign_on_the_default(name: str, default_bundle) -> None:
    C.check_orientation(name, _ctx(bundle=default_bundle))


# --- the battery ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_declaration_with_a_paper(name, arrays_ctx):
    C.check_declaration(name, arrays_ctx, require_paper=True)  # built-ins cite their paper


@pytest.mark.parametrize("name", NAMES)
def test_every_knob_default_is_inside_its_range(name, arrays_ctx):
    C.check_knob_defaults(name, arrays_ctx)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_knob_raises_naming_the_knob(name, arrays_ctx):
    C.check_knob_validation(name, arrays_ctx)


_ARRAY_CHECKS = (C.check_scores, C.check_knob_edges, C.check_constant_and_nan_inputs, C.check_cache_keys)


@pytest.mark.parametrize("check", _ARRAY_CHECKS, ids=C.check_name)
@pytest.mark.parametrize("name", CACHED)
def test_cached_array_checks(name, check, arrays_ctx):
    check(name, arrays_ctx)


@pytest.mark.parametrize("name", CACHED)
def test_orientation_and_knob_speed_on_the_default(name, ctx):
    C.check_orientation(name, ctx)
    C.check_knob_speed(name, ctx)


@pytest.mark.parametrize("name", MODEL_TIME)
def test_model_time_shape_finite_deterministic(name, ctx):
    C.check_model_scores(name, ctx)


@pytest.mark.parametrize("name", MODEL_TIME)
def test_model_time_orientation_and_cache_key(name, ctx):
    C.check_orientation(name, ctx)  # the lowdim probes are exempt inside (conformance.ORIENTATION_EXEMPT_MODULES)
    C.check_cache_keys(name, ctx)


def test_the_battery_is_the_public_one():
    """Every check the CLI runs is run above (so a new check cannot be left out of the built-in battery)."""
    here = {C.check_declaration, C.check_knob_defaults, C.check_knob_validation, *_ARRAY_CHECKS,
            C.check_orientation, C.check_knob_speed, C.check_model_scores}
    assert set(C.CACHED_CHECKS) <= here and set(C.MODEL_CHECKS) <= here
