"""docs/architecture.md, "Where to add things": a detector is one file. This test writes one (a
top-k logit margin) in a temporary folder, imports it, and checks that the registry, the
``detectors`` command, the shared battery and ``workbench.evaluate`` all pick it up, and that its
scores on the embedded default equal the formula computed here from the cached logits."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ood_core.detectors import base, detector_classes, detector_names, get_detector
from tests.detectors.test_battery import (
    check_declaration,
    check_knob_defaults_in_range,
    check_out_of_range_knob_raises,
    check_shape_finite_deterministic,
    check_sign_on_the_default,
    synthetic_arrays,
)

NAME = "topk_margin_added_by_test"
MODULE = textwrap.dedent(f'''
    """Top-k logit margin: S = f_(1) - f_(k), the largest logit minus the k-th largest (higher = more ID)."""
    import numpy as np

    from ood_core.detectors import Detector, Knob, Paper, register


    @register
    class TopKMargin(Detector):
        name = "{NAME}"
        title = "Top-k logit margin"
        paper = Paper("A margin between the two largest logits", "the workbench tests", "tests", 2024)
        needs = frozenset({{"logits"}})
        knobs = (Knob("k", 2, 2, 1000, kind="int", help="subtract the k-th largest logit (k > C: the smallest)"),)
        grid = {{"k": [2, 3, 5]}}

        def _score(self, ext, k):
            z = -np.sort(-np.asarray(ext.logits, np.float64), axis=1)  # descending
            return z[:, 0] - z[:, min(k, z.shape[1]) - 1]
''')


@contextlib.contextmanager
def added_module(tmp_path):
    """The module written to tmp_path and imported; unregistered and forgotten on the way out."""
    path = tmp_path / "topk_margin.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("topk_margin_added_by_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        base._REGISTRY.pop(NAME, None)  # noqa: SLF001 - the registry has no public unregister
        sys.modules.pop(spec.name, None)


@pytest.fixture()
def added(tmp_path):
    with added_module(tmp_path) as mod:
        yield mod


def _margin(logits: np.ndarray, k: int) -> np.ndarray:
    """The formula, independently: torch.topk's largest minus its k-th largest."""
    top = torch.topk(torch.tensor(logits, dtype=torch.float64), min(k, logits.shape[1]), dim=1).values
    return (top[:, 0] - top[:, -1]).numpy()


def test_one_file_adds_a_detector(added, capsys):
    from ood_core import cli

    assert NAME in detector_names() and detector_classes()[NAME] is added.TopKMargin
    assert cli.cmd_detectors(SimpleNamespace()) == 0  # `python -m ood_core detectors`
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(NAME + "\t"))
    assert "Top-k logit margin" in line and "needs: logits" in line and "knobs: k=2" in line

    arrays = synthetic_arrays()
    check_declaration(NAME)
    check_knob_defaults_in_range(NAME, arrays)
    check_out_of_range_knob_raises(NAME, arrays)
    check_shape_finite_deterministic(NAME, arrays)
    np.testing.assert_allclose(get_detector(NAME).score(arrays[1], k=3), _margin(arrays[1].logits, 3), rtol=1e-12)


def test_added_detector_through_the_workbench(added, default_bundle):
    from ood_core import workbench as wb

    check_sign_on_the_default(NAME, default_bundle)
    ids = wb.get_extraction(default_bundle, "mnist").logits
    ood = wb.get_extraction(default_bundle, "uniform").logits
    for k in (2, 4):
        np.testing.assert_allclose(wb.score(default_bundle, NAME, "mnist", params={"k": k}), _margin(ids, k), rtol=1e-12)
    out = wb.evaluate(default_bundle, "mnist", ["uniform"], [NAME], {NAME: {"k": 4}})
    (row,) = out["results"]
    assert row["detector"] == NAME and row["params"] == {"k": 4}
    want = roc_auc_score(np.r_[np.ones(len(ids)), np.zeros(len(ood))], np.r_[_margin(ids, 4), _margin(ood, 4)])
    assert row["auroc"] == pytest.approx(want, abs=1e-12)


def test_leaving_restores_the_registry(tmp_path):
    before = detector_names()
    with added_module(tmp_path):
        assert detector_names() == before + [NAME]
    assert detector_names() == before and "topk_margin_added_by_test" not in sys.modules
