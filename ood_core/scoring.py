"""The Scores page's backend (docs/architecture.md, "Layers"): which detectors can score a model,
one detector's scores on every set, what a model-time run will cost, and one knob setting's
scores sorted once into the view the page draws (table, extremes, figures)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import workbench as wb
from .data import get_dataset
from .detectors import detector_names, get_detector
from .metrics import ScoreSets

Progress = Callable[[float, str], None]
MISSES = 12  # the extremes kept per set: the misses shown at any threshold

_avail_lock = threading.Lock()
_avail: dict[tuple, dict[str, str | None]] = {}


def availability(bundle: Any, id_name: str) -> dict[str, str | None]:
    """``{detector: why it cannot run, or None}`` for every detector, once per (model, dataset)."""
    ds = get_dataset(id_name)
    key = (bundle.fingerprint, bundle.head_name, ds.fingerprint)
    with _avail_lock:
        hit = dict(_avail.get(key, {}))
    missing = [n for n in detector_names() if n not in hit]  # a plugin loaded since is checked too
    if missing:
        ext = wb.get_extraction(bundle, ds)
        hit.update({n: get_detector(n).unavailable_reason(ext) for n in missing})
        with _avail_lock:
            _avail[key] = hit
    return hit


def needs_job(bundle: Any, det: Any, sets: Sequence[str], knobs: Mapping[str, Any]) -> bool:
    """Whether scoring these sets would run the model (a model-time detector not cached for these knobs)."""
    return det.needs_model and not all(wb.is_cached(bundle, det, n, knobs) for n in sets)


def model_time_estimate(bundle: Any, detector: str, id_name: str, sets: Sequence[str],
                        params: Mapping[str, Any] | None) -> tuple[float, str]:
    """``(seconds, one line)``: what a model-time detector will cost on ``sets`` (a dry run)."""
    est = wb.model_time_estimate(bundle, detector, id_name, list(sets), dict(params or {}))
    return float(est["seconds"]), wb.describe_cost(est)


def score_sets(bundle: Any, det: Any, sets: Sequence[str], id_name: str, knobs: Mapping[str, Any],
               progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Scores of one detector on every set (cached arrays or model-time: ``workbench.score`` picks)."""
    knobs = det.resolve(knobs)
    out = {}
    for i, n in enumerate(sets):
        step = (lambda f, m, i=i: progress((i + f) / len(sets), m)) if progress else None
        out[n] = wb.score(bundle, det, n, id_name, knobs, progress=step)
    return out


@dataclass
class ScoresView:
    """One knob setting's scores sorted once, its exact table and extremes; base figures are added as drawn."""

    key: str
    sets: ScoreSets
    table: Any
    scores: dict[str, np.ndarray]
    extremes: dict[str, np.ndarray]
    figures: dict[str, Any] = field(default_factory=dict)


def scores_view(key: str, id_name: str, scores: dict[str, np.ndarray]) -> ScoresView:
    """The view of one knob setting: ``ScoreSets`` (sorted once), its table, and per set the
    :data:`MISSES` highest-scored OOD (or lowest-scored ID) samples, most confident miss first."""
    sv = ScoreSets.from_arrays(scores[id_name], {n: v for n, v in scores.items() if n != id_name}, id_name)
    extremes = {}
    for n, s in scores.items():
        k = min(MISSES, s.size)
        top = np.argpartition(-s, k - 1)[:k] if n != id_name else np.argpartition(s, k - 1)[:k]
        extremes[n] = top[np.argsort(-s[top] if n != id_name else s[top], kind="stable")]
    return ScoresView(key, sv, sv.table(), scores, extremes)
