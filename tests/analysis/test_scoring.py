"""The Scores page's backend (``ood_core/scoring.py``): the sorted view's extremes against a full sort,
availability computed once per (model, dataset), and per-set scores equal to ``workbench.score``."""
from __future__ import annotations

import numpy as np

from ood_core import scoring
from ood_core import workbench as wb


def test_view_extremes_are_the_most_confident_misses_in_order():
    rng = np.random.default_rng(0)
    scores = {"id": rng.normal(size=300), "ood": rng.normal(size=200), "few": rng.normal(size=5)}
    view = scoring.scores_view("k", "id", scores)
    for name, s in scores.items():
        k = min(scoring.MISSES, s.size)
        want = np.argsort(s if name == "id" else -s)[:k]  # ID: lowest first; OOD: highest first (no ties)
        assert np.array_equal(view.extremes[name], want), name
    assert list(view.table["ood_dataset"]) == ["ood", "few", "mean"]
    assert view.key == "k" and view.figures == {}


def test_availability_is_computed_once_and_matches_each_detector(default_bundle, monkeypatch):
    from ood_core.detectors import base, detector_names, get_detector

    scoring._avail.clear()
    got = scoring.availability(default_bundle, "mnist")
    ext = wb.get_extraction(default_bundle, "mnist")
    assert set(got) == set(detector_names())
    assert got == {n: get_detector(n).unavailable_reason(ext) for n in detector_names()}
    calls = []
    monkeypatch.setattr(base.Detector, "unavailable_reason", lambda self, ext: calls.append(self.name))
    assert scoring.availability(default_bundle, "mnist") == got and calls == []  # remembered


def test_score_sets_equal_the_workbench_scores(default_bundle):
    det = wb.fitted_detector("energy", default_bundle, "mnist")
    got = scoring.score_sets(default_bundle, det, ["mnist", "faces"], "mnist", {"T": 2.0})
    for name in ("mnist", "faces"):
        np.testing.assert_array_equal(got[name], wb.score(default_bundle, det, name, "mnist", det.resolve({"T": 2.0})))
    assert not scoring.needs_job(default_bundle, det, ["mnist", "faces"], det.resolve({"T": 2.0}))
