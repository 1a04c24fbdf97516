"""The Compare table: every detector × every OOD set, with bootstrap intervals.

One row per (detector, OOD set) plus a ``mean`` row per detector: AUROC, FPR@95TPR,
AUPR-In, AUPR-Out (fractions), and 95% percentile-bootstrap intervals on AUROC and
FPR95 (ID and OOD resampled separately, ``n_boot`` resamples, fixed seed). The mean
row's interval comes from the per-resample mean over OOD sets (the ID resample is
shared across sets because it depends only on the seed and the ID set's size).
Detectors that cannot run are rows with ``status`` and ``reason``, never an exception.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from . import workbench as wb
from .errors import UserError, first_line, jsonable
from .data import DataError, get_dataset, train_name_for
from .detectors import Detector, detector_classes, get_detector
from .metrics import (HIGHER_IS_BETTER, METRICS, MetricError, SortedScores, bootstrap_draws, fast_ood_metrics,
                      percentile_interval)

Progress = Callable[[float, str], None]
MEAN = "mean"
SMALL_WORK = 50_000_000  # feature values (all sets, training included) up to which the table runs on one thread
COLUMNS = ["detector", "ood_dataset", "auroc", "auroc_lo", "auroc_hi", "fpr95", "fpr95_lo", "fpr95_hi",
           "aupr_in", "aupr_out", "status", "reason", "family", "params"]


def cached_array_detectors() -> list[str]:
    """Every registered detector that scores from cached arrays (no model at scoring time)."""
    return [n for n, c in detector_classes().items() if not c.needs_model]


def model_time_cached(bundle: Any, name: str, datasets: Iterable[str], params: dict[str, Any] | None = None) -> bool:
    """Whether detector ``name``'s scores for ``params`` are on disk for every dataset (always True
    for cached-array detectors); bad names or knob values raise as in :func:`compare_table`."""
    det = get_detector(name)
    return all(wb.is_cached(bundle, det, d, params) for d in datasets)


def _params_text(d: dict[str, Any]) -> str:
    return json.dumps(jsonable(d), sort_keys=True)


def _status_rows(name: str, family: str, ood_names: list[str], status: str, reason: str) -> list[dict[str, Any]]:
    return [{"detector": name, "ood_dataset": o, "status": status, "reason": reason, "family": family, "params": ""}
            for o in ood_names + [MEAN]]


def compare_table(bundle: Any, id_name: str, ood_names: Iterable[str], detectors: Iterable[str] | None = None,
                  params: dict[str, dict[str, Any]] | None = None, n_boot: int = 1000, seed: int = 0,
                  progress: Progress | None = None, run_model_time: bool = False) -> pd.DataFrame:
    """The comparison table as a long DataFrame (columns :data:`COLUMNS`).

    ``detectors`` defaults to every cached-array detector. Model-time detectors
    (``needs_model``) are scored only when their scores are already cached or
    ``run_model_time`` is set; otherwise their rows say so. ``status`` is ``ok``,
    ``unavailable`` (the model lacks what the method needs), ``error`` (bad knob values,
    no training split, ...) or ``not computed``. ``df.attrs["seconds"]`` is the wall time.
    """
    t0 = time.perf_counter()
    ood_names = list(ood_names)
    if not ood_names:
        raise wb.WorkbenchError("pick at least one OOD dataset to compare on")
    names = list(detectors) if detectors is not None else cached_array_detectors()
    params = params or {}
    id_ds = get_dataset(id_name)
    for o in ood_names:
        get_dataset(o)
    wb.check_compatible(bundle, id_ds)
    exts = {n: wb.get_extraction(bundle, n) for n in [id_name] + ood_names}
    with threadpool_limits(limits=_threads(exts, id_name)):
        df = _rows(bundle, id_name, ood_names, names, exts, params, n_boot, seed, progress, run_model_time)
    df.attrs["seconds"] = time.perf_counter() - t0
    df.attrs["n_boot"] = n_boot
    return df


def _threads(exts: dict[str, Any], id_name: str) -> int | None:
    """One BLAS/OpenMP thread for workbench-sized arrays, the libraries' default for big ones.

    On arrays this small, thread start-up and barriers cost more than the arithmetic saves,
    and several times more on a shared, busy CPU (measured on the embedded default, 2 busy
    cores: 6.4 s with 2 threads, 1.7 s with 1).
    """
    try:
        n_train = len(get_dataset(train_name_for(id_name)))
    except DataError:
        n_train = 0
    n = n_train + sum(len(e) for e in exts.values())
    width = max(max(e.features.shape[1], e.logits.shape[1]) for e in exts.values())
    return 1 if n * width <= SMALL_WORK else None


def _rows(bundle: Any, id_name: str, ood_names: list[str], names: list[str], exts: dict[str, Any],
          params: dict[str, dict[str, Any]], n_boot: int, seed: int, progress: Progress | None,
          run_model_time: bool) -> pd.DataFrame:
    id_ext = exts[id_name]
    rows: list[dict[str, Any]] = []
    for di, name in enumerate(names):
        if progress:
            progress(di / max(1, len(names)), f"scoring {name}")
        try:
            det = get_detector(name)
        except UserError as exc:
            rows += _status_rows(name, "", ood_names, "error", str(exc))
            continue
        reason = det.unavailable_reason(id_ext)
        if reason:
            rows += _status_rows(name, det.family, ood_names, "unavailable", reason)
            continue
        try:
            rows += _detector_rows(bundle, det, id_name, ood_names, exts, params.get(name), n_boot, seed,
                                   run_model_time, progress)
        except UserError as exc:
            rows += _status_rows(name, det.family, ood_names, "error", first_line(exc))
    if progress:
        progress(1.0, "done")
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _detector_rows(bundle: Any, det: Detector, id_name: str, ood_names: list[str], exts: dict[str, Any],
                   knob_params: dict[str, Any] | None, n_boot: int, seed: int, run_model_time: bool,
                   progress: Progress | None) -> list[dict[str, Any]]:
    name = det.name
    if det.needs_model and not run_model_time:
        if not model_time_cached(bundle, name, [id_name] + ood_names, knob_params):
            return _status_rows(name, det.family, ood_names, "not computed",
                                "needs the model at scoring time: run it as a job (Compare's button or the Scores page)")
    fitted = wb.fitted_detector(name, bundle, id_name)
    knobs = fitted.resolve(knob_params)

    def scores(ds_name: str) -> np.ndarray:
        return wb.score(bundle, fitted, ds_name, id_name, knobs, progress if fitted.needs_model else None)

    id_s = scores(id_name)
    pstr = _params_text(knobs)
    rows, draws = [], []
    id_sorted = None
    for o in ood_names:
        od_s = scores(o)
        if not (np.isfinite(id_s).all() and np.isfinite(od_s).all()):
            raise MetricError("some scores are NaN or infinite; check the detector's knobs")
        if id_sorted is None:
            id_sorted = SortedScores(id_s)  # sorted once, shared by every OOD set
        m = fast_ood_metrics(id_sorted, SortedScores(od_s))  # equal to ood_metrics (scikit-learn) to 1e-12
        row: dict[str, Any] = {"detector": name, "ood_dataset": o, **m, "status": "ok", "reason": "",
                               "family": det.family, "params": pstr}
        if n_boot > 0:
            d = bootstrap_draws(id_s, od_s, n_boot, seed)
            draws.append(d)
            for k in ("auroc", "fpr95"):
                row[f"{k}_lo"], row[f"{k}_hi"] = percentile_interval(d[k])
        rows.append(row)
    mean: dict[str, Any] = {"detector": name, "ood_dataset": MEAN, "status": "ok", "reason": "",
                            "family": det.family, "params": pstr}
    for k in METRICS:
        mean[k] = float(np.mean([r[k] for r in rows]))
    if draws:
        for k in ("auroc", "fpr95"):
            mean[f"{k}_lo"], mean[f"{k}_hi"] = percentile_interval(np.mean([d[k] for d in draws], axis=0))
    return rows + [mean]


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def unavailable(df: pd.DataFrame) -> pd.DataFrame:
    """One row per detector that did not run: detector, status, reason."""
    bad = df[df["status"] != "ok"]
    return bad.drop_duplicates("detector")[["detector", "status", "reason"]].reset_index(drop=True)


def wide(df: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Detectors × OOD sets (plus ``mean``) for one metric, detectors in the table's order."""
    if metric not in METRICS:
        raise wb.WorkbenchError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    return _pivot(df, ok_rows(df), metric)


def _pivot(df: pd.DataFrame, ok: pd.DataFrame, values: str) -> pd.DataFrame:
    """``ok``'s ``values`` as detectors × OOD sets: detectors in table order, OOD sets then ``mean``."""
    cols = [c for c in dict.fromkeys(df["ood_dataset"]) if c != MEAN] + [MEAN]
    w = ok.pivot(index="detector", columns="ood_dataset", values=values)
    return w.reindex(index=list(dict.fromkeys(ok["detector"])), columns=[c for c in cols if c in w.columns])


def best_mask(w: pd.DataFrame, metric: str = "auroc", tol: float = 1e-12) -> pd.DataFrame:
    """True where a cell is the best of its column (ties all marked)."""
    best = w.max() if HIGHER_IS_BETTER[metric] else w.min()
    return (w - best).abs() <= tol


def ci_text(df: pd.DataFrame, metric: str = "auroc", digits: int = 3) -> pd.DataFrame:
    """Detectors × OOD sets as ``value [lo, hi]`` strings (AUROC and FPR95 have intervals)."""
    ok = ok_rows(df).copy()
    f = f"{{:.{digits}f}}"
    if f"{metric}_lo" in ok.columns and ok[f"{metric}_lo"].notna().any():
        ok["_t"] = [f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"
                    for v, lo, hi in zip(ok[metric], ok[f"{metric}_lo"], ok[f"{metric}_hi"])]
    else:
        ok["_t"] = [f.format(v) for v in ok[metric]]
    return _pivot(df, ok, "_t")


def format_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A plain-text rendering of the long table (for reports and the CLI)."""
    ok = ok_rows(df)
    lines = [f"{'detector':<12} {'ood':<10} {'AUROC':>24} {'FPR95':>24} {'AUPR-In':>8} {'AUPR-Out':>8}"]
    for _, r in ok.iterrows():
        def ci(k: str) -> str:
            if pd.isna(r.get(f"{k}_lo")):
                return f"{r[k]:.{digits}f}"
            return f"{r[k]:.{digits}f} [{r[f'{k}_lo']:.{digits}f},{r[f'{k}_hi']:.{digits}f}]"
        lines.append(f"{r['detector']:<12} {r['ood_dataset']:<10} {ci('auroc'):>24} {ci('fpr95'):>24} "
                     f"{r['aupr_in']:>8.{digits}f} {r['aupr_out']:>8.{digits}f}")
    for _, r in unavailable(df).iterrows():
        lines.append(f"{r['detector']:<12} ({r['status']}: {r['reason']})")
    return "\n".join(lines)
