"""Sweep a detector's knobs on validation data, never on the OOD test sets.

The ID side is a held-out part of the ID **training** split (20% by default, drawn
with a fixed seed); the detector's training statistics are fitted on the other 80%, so
no validation sample is ever in the fit (KNN would otherwise find each one at distance
0). The OOD side must be sets whose registry role is ``ood_val`` (``aux_val`` in the
embedded default); an OOD *test* set is refused. The ID test split is not used either.

Model-time detectors (ODIN, ...) sweep too: each setting is scored with progress and
cached on disk like any model-time score.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from . import cache
from . import workbench as wb
from .errors import jsonable
from .data import DataError, Dataset, get_dataset, get_spec, split_name, train_name_for
from .detectors import Detector, DetectorError, get_detector
from .extract import Extraction
from .metrics import HIGHER_IS_BETTER, METRICS, ood_metrics

Progress = Callable[[float, str], None]
HOLDOUT = 0.2
SEED = 0
SWEEP_VERSION = 1
_lock = threading.Lock()
_fitted: dict[tuple, Detector] = {}


class TuningError(wb.WorkbenchError):
    """A sweep that cannot run as asked; the message says what to pick instead."""


def default_grid(detector: str | Detector) -> dict[str, list[Any]]:
    """The detector's declared sweep grid (OpenOOD-style), restricted to its knobs."""
    det = get_detector(detector) if isinstance(detector, str) else detector
    names = {k.name for k in det.knobs}
    return {k: list(v) for k, v in det.grid.items() if k in names}


def validation_sets() -> list[str]:
    """Registered sets marked as validation OOD (role ``ood_val``)."""
    from .data import list_datasets
    return [s.name for s in list_datasets() if s.role == "ood_val"]


def check_validation(val_ood: Iterable[str]) -> list[str]:
    val = list(val_ood)
    if not val:
        raise TuningError("name at least one validation OOD set (role ood_val, e.g. aux_val)")
    for name in val:
        role = get_spec(name).role
        if role != "ood_val":
            allowed = ", ".join(validation_sets()) or "none registered"
            raise TuningError(f"{name!r} has role {role}, not ood_val: tuning on it would leak test data into the "
                              f"choice of knobs; use a validation OOD set ({allowed})")
    return val


def holdout_split(n: int, holdout: float = HOLDOUT, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of an ``n``-sample training split, sorted, fixed seed."""
    if not 0 < holdout < 1:
        raise TuningError(f"holdout must be a fraction in (0, 1); got {holdout}")
    n_hold = int(round(holdout * n))
    if n_hold < 1 or n - n_hold < 2:
        raise TuningError(f"the ID training split has {n} samples: too few to hold {holdout:.0%} out for validation")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def _mode_fixes(det: Detector, grid: dict[str, list[Any]]) -> tuple[dict[str, Any], list[str]]:
    """Knobs that only act in one mode: sweeping RG's ``k`` needs ``k_mode=absolute``."""
    names = {k.name for k in det.knobs}
    if "k_mode" not in names or "k_mode" in grid:
        return {}, []
    if "k" in grid and "q" not in grid:
        return {"k_mode": "absolute"}, ["k_mode set to absolute so the k grid takes effect"]
    if "q" in grid and "k" not in grid:
        return {"k_mode": "percentile"}, ["k_mode set to percentile so the q grid takes effect"]
    if "k" in grid and "q" in grid:
        raise TuningError("sweep either k (absolute) or q (percentile), not both; or add k_mode to the grid")
    return {}, []


def _train_split(id_name: str) -> Dataset:
    try:
        return get_dataset(train_name_for(id_name))
    except DataError:
        raise TuningError(f"tuning holds out part of the ID training split, but {split_name(id_name)[0]!r} has "
                          "no training split; register one (role: ID train)") from None


def _fit_on_part(name: str, bundle: Any, id_name: str, fit_idx: np.ndarray, holdout: float, seed: int,
                 progress: Progress | None) -> tuple[Detector, Dataset, Extraction]:
    train_ds = _train_split(id_name)
    train_ext = wb.get_extraction(bundle, train_ds, progress)
    key = (name, bundle.fingerprint, train_ds.fingerprint, holdout, seed)
    with _lock:
        hit = _fitted.get(key)
    if hit is None:
        det = get_detector(name)
        part_ds = train_ds.subset(fit_idx, name=f"{train_ds.name}[fit {1 - holdout:.0%}]")
        part_ext = train_ext.subset(fit_idx)
        if det.needs_model and hasattr(det, "fit_model"):
            det.fit_model(bundle, part_ds, part_ext, progress=progress)  # type: ignore[attr-defined]
        else:
            det.fit(part_ext)
        with _lock:
            _fitted[key] = det
        hit = det
    return hit, train_ds, train_ext


def _model_scores(bundle: Any, det: Detector, ds: Dataset, ext: Extraction, knobs: dict[str, Any],
                  progress: Progress | None) -> np.ndarray:
    key = cache.make_key("sweep-score", v=SWEEP_VERSION, detector=det.name, model=bundle.fingerprint,
                         dataset=ds.fingerprint, knobs=knobs, fit=getattr(det, "fit_key", ""),
                         preprocess=bundle.preprocess.cache_key())
    arr = cache.cached_arrays(key, lambda: {"scores": det.score_model(bundle, ds, ext, progress=progress, **knobs)})  # type: ignore[attr-defined]
    return arr["scores"].astype(np.float64)


def sweep(bundle: Any, detector: str, knob_grid: dict[str, list[Any]] | None, id_name: str,
          val_ood: list[str], metric: str = "auroc", fixed: dict[str, Any] | None = None,
          holdout: float = HOLDOUT, seed: int = SEED, progress: Progress | None = None
          ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every combination of ``knob_grid`` and return (table, best knob values).

    ``knob_grid`` maps knob names to candidate values (``None``: the declared grid);
    knobs not in it take ``fixed`` or their defaults. ``val_ood`` must be sets with role
    ``ood_val``. The ID validation samples are the held-out ``holdout`` share of the ID
    training split (fixed ``seed``); the detector is fitted on the rest. The table has
    one row per combination: its knob values, AUROC, FPR95, AUPR-In, AUPR-Out (mean over
    the validation sets) and ``best``; ``table.attrs["notes"]`` says what was adjusted.
    The best row maximises ``metric`` (minimises FPR95); ties go to the first in grid order.
    """
    if metric not in METRICS:
        raise TuningError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    val = check_validation(val_ood)
    probe = get_detector(detector)
    declared = knob_grid is None
    grid = {k: list(v) for k, v in (default_grid(probe) if declared else knob_grid).items()}
    if not grid:
        raise TuningError(f"{detector} has no knobs to sweep" if not probe.knobs else "the grid is empty")
    for k, v in grid.items():
        probe.knob(k)  # unknown knob names fail here, before any work
        if not v:
            raise TuningError(f"the grid for {detector}.{k} has no values")
    mode_fix, notes = _mode_fixes(probe, grid)
    base = {**(fixed or {}), **mode_fix}

    fit_idx, hold_idx = holdout_split(len(_train_split(id_name)), holdout, seed)
    det, train_ds, train_ext = _fit_on_part(detector, bundle, id_name, fit_idx, holdout, seed, progress)
    reason = det.unavailable_reason(train_ext)
    if reason:
        raise DetectorError(reason)
    if declared:  # declared grids may exceed ranges that the fit narrowed (knn's k, vim's d)
        for k in list(grid):
            kn = det.knob(k)
            if kn.kind in ("float", "int"):
                keep = [v for v in grid[k] if (kn.low is None or v >= kn.low) and (kn.high is None or v <= kn.high)]
                if len(keep) < len(grid[k]):
                    notes.append(f"{k}: dropped grid values outside [{kn.low}, {kn.high}] for this model")
                grid[k] = keep or [kn.default]
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())]
    settings = [det.resolve({**base, **c}) for c in combos]  # every value validated before scoring

    hold_ext = train_ext.subset(hold_idx)
    hold_ds = train_ds.subset(hold_idx, name=f"{train_ds.name}[held-out {holdout:.0%}]") if det.needs_model else None
    val_data = [(get_dataset(v), wb.get_extraction(bundle, v)) for v in val]

    rows = []
    n = len(settings)
    for i, knobs in enumerate(settings):
        def sub(frac: float, msg: str, i: int = i) -> None:
            if progress:
                progress((i + frac) / n, f"setting {i + 1}/{n}: {msg}")

        if progress:
            progress(i / n, f"setting {i + 1}/{n}: {_short(combos[i])}")
        if det.needs_model:
            id_s = _model_scores(bundle, det, hold_ds, hold_ext, knobs, sub)
            oods = [_model_scores(bundle, det, ds, ext, knobs, sub) for ds, ext in val_data]
        else:
            id_s = det.score(hold_ext, **knobs)
            oods = [det.score(ext, **knobs) for _, ext in val_data]
        ms = [ood_metrics(id_s, s) for s in oods]
        rows.append({**combos[i], **{m: float(np.mean([x[m] for x in ms])) for m in METRICS}})
    if progress:
        progress(1.0, "sweep done")
    df = pd.DataFrame(rows)
    vals = df[metric].to_numpy()
    best_i = int(np.argmax(vals) if HIGHER_IS_BETTER[metric] else np.argmin(vals))
    df["best"] = False
    df.loc[best_i, "best"] = True
    df.attrs.update({"notes": notes, "metric": metric, "detector": detector, "val_ood": val,
                     "id_validation": f"{len(hold_idx)} held-out samples of {train_ds.name} (seed {seed})",
                     "knobs": list(grid)})
    return df, plain(settings[best_i])


def _short(c: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.items())


def parse_values(detector: str | Detector, knob: str, text: str) -> list[Any]:
    """``"0.5, 1, 2"`` -> validated knob values (the Tuning page's grid editor)."""
    det = get_detector(detector) if isinstance(detector, str) else detector
    kn = det.knob(knob)
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise TuningError(f"give at least one value for {det.name}.{knob}, separated by commas")
    out: list[Any] = []
    for t in items:
        v: Any = t
        if kn.kind in ("float", "int"):
            try:
                v = float(t)
            except ValueError:
                raise TuningError(f"{det.name}.{knob}: {t!r} is not a number") from None
        v = det.resolve({knob: v})[knob]
        if v not in out:
            out.append(v)
    return out


def plain(d: dict[str, Any]) -> dict[str, Any]:
    """Knob values as plain Python scalars (for session state and experiment JSON)."""
    return jsonable(d)
