"""The one entry point the pages, the CLI and notebooks share.

``load_model`` -> ``get_extraction`` (cached forward) -> ``fitted_detector`` (training
statistics, fitted once per model/ID split) -> ``score`` -> ``evaluate``. Detectors that
need the model at scoring time (ODIN, exact gradients, low-dimensional gradients) go
through the same ``score`` call and are cached on disk per setting (docs/architecture.md,
"The flow" and "Cache keys").

:func:`restore_saved` brings back the datasets and uploads of earlier sessions; the app calls
it once per process and the CLI before every command. Nothing is restored on import.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import cache, persist
from .errors import UserError, jsonable
from .data import DataError, Dataset, get_dataset, split_name, train_name_for
from .detectors import Detector, DetectorError, get_detector
from .detectors.base import ModelDetector
from .experiment import check_unique
from .extract import Extraction, extract
from .metrics import ood_metrics
from .models import ModelBundle, ModelError, loaded

Progress = Callable[[float, str], None]
_lock = threading.RLock()
_fitted: dict[tuple, Detector] = {}
SCORE_VERSION = 1


class WorkbenchError(UserError):
    """Bad input anywhere in the pipeline, with a message fit for a user."""


def load_model(spec: str = "default", progress: Progress | None = None, **kwargs: Any) -> ModelBundle:
    """``'default'`` (trained on first use), an ``upload:…`` key, or a path to a checkpoint/archive/state_dict."""
    spec = str(spec)
    key = spec
    if kwargs and (spec == "default" or spec.startswith("upload:") or loaded.has(spec)):
        opts = ", ".join("--" + k.replace("_", "-") for k in sorted(kwargs))
        raise ModelError(f"{opts} apply to a model file; {spec!r} keeps the preprocessing it was loaded with "
                         "(drop the option, or pass the model's file path)")
    hit = loaded.get(spec)  # uploads and other in-memory models are registered by key
    if hit is not None:
        return hit
    if spec != "default" and not spec.startswith("upload:"):
        p = Path(spec)
        if not p.exists():
            raise ModelError(f"no model file at {spec!r}; pass 'default' or the path of a .pt/.pt2/.pth file")
        key = f"{p.resolve()}:{p.stat().st_mtime_ns}:{sorted(kwargs.items())}"
        hit = loaded.get(key)
        if hit is not None:
            return hit
    if spec == "default":
        from .models.checkpoints import load_default
        bundle = load_default(progress)
    elif spec.startswith("upload:"):
        # One restore route, eager: restore_saved() brings uploads back at app start and before every
        # CLI command, because the pickers list only models in memory. A key not in memory now was
        # skipped there (with its reason) or forgotten; loading it here too would be a second route.
        raise ModelError(f"uploaded model {spec!r} is not loaded (gone or forgotten since it was saved); "
                         "upload it again on the Models & data page")
    else:
        from .models.files import load_model_file
        bundle = load_model_file(Path(spec), **kwargs)
    loaded.put(key, bundle)
    return bundle


def forget_model(key: str) -> None:
    """Drop a registered model from this process (its files stay where they are)."""
    loaded.forget(key)


def restore_saved() -> persist.Restored:
    """Register the datasets and reload the uploads remembered by earlier sessions (explicitly, once
    per process in the app; before every command in the CLI). Returns what came back and what was
    skipped, each skip with a one-line reason; a skip never raises."""
    return persist.restore_saved()


_extractions: "OrderedDict[tuple, Extraction]" = OrderedDict()
_MAX_EXTRACTIONS = 64


def get_extraction(bundle: ModelBundle, dataset: str | Dataset, progress: Progress | None = None,
                   device: str | None = None) -> Extraction:
    """The cached Extraction of ``dataset``; the same object is reused within a process so
    per-extraction memos (sorted values, norms) survive a slider move."""
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    key = (bundle.fingerprint, bundle.head_name, ds.fingerprint, ds.name, str(bundle.preprocess.cache_key()))
    with _lock:
        hit = _extractions.get(key)
        if hit is not None:
            _extractions.move_to_end(key)
            return hit
    ext = extract(bundle, ds, device=device, progress=progress)
    with _lock:
        _extractions[key] = ext
        while len(_extractions) > _MAX_EXTRACTIONS:
            _extractions.popitem(last=False)
    return ext


def check_compatible(bundle: ModelBundle, ds: Dataset) -> None:
    """Labelled ID data must fit the model's class count."""
    if ds.has_labels and int(ds.labels.max()) >= bundle.num_classes:
        raise WorkbenchError(
            f"dataset {ds.name!r} has labels up to {int(ds.labels.max())} but the model has {bundle.num_classes} classes"
        )


def fitted_detector(name: str, bundle: ModelBundle, id_name: str, progress: Progress | None = None) -> Detector:
    """A detector fitted on the ID training split of ``id_name`` (cached in-process)."""
    det = get_detector(name)
    train_ds_name = train_name_for(id_name)
    needs_train = det.needs_training
    if not needs_train:
        return det.fit(None)
    try:
        train_ds = get_dataset(train_ds_name)
    except DataError:
        raise DetectorError(f"{name} needs training statistics but {split_name(id_name)[0]!r} has no training split; "
                            "register one (role: ID train) or pick a detector that needs none") from None
    key = (name, bundle.fingerprint, train_ds.fingerprint)
    with _lock:
        hit = _fitted.get(key)
    if hit is not None:
        return hit
    train_ext = get_extraction(bundle, train_ds, progress)
    if isinstance(det, ModelDetector):
        det.fit_model(bundle, train_ds, train_ext, progress=progress)
    else:
        det.fit(train_ext)
    with _lock:
        _fitted[key] = det
    return det


def score(bundle: ModelBundle, detector: str | Detector, dataset: str, id_name: str = "mnist",
          params: dict[str, Any] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Scores (higher = more ID) of one detector on one dataset: from the cached arrays, or for a
    detector that needs the model, its disk-cached model-time run (computed on a miss)."""
    det = fitted_detector(detector, bundle, id_name, progress) if isinstance(detector, str) else detector
    ds = get_dataset(dataset)
    ext = get_extraction(bundle, ds, progress)
    knobs = det.resolve(params)  # values resolved at the boundary pass through (docs/architecture.md, "Knobs")
    if not det.needs_model:  # the one place that picks cached arrays or a model-time run (Scores, compare, evaluate)
        return det.score(ext, knobs)
    reason = det.unavailable_reason(ext)
    if reason:
        raise DetectorError(reason)
    key = _score_key(bundle, det, ds, knobs)
    arr = cache.cached_arrays(key, lambda: {"scores": det.score_model(bundle, ds, ext, progress=progress, **knobs)})
    return arr["scores"].astype(np.float64)


def _score_key(bundle: ModelBundle, det: Detector, ds: Dataset, knobs: dict[str, Any]) -> str:
    """Disk-cache key of a model-time detector's scores: model, data, knobs and the fit."""
    return cache.make_key("score", v=SCORE_VERSION, detector=det.name, model=bundle.fingerprint,
                          dataset=ds.fingerprint, knobs=knobs, fit=getattr(det, "fit_key", ""),
                          preprocess=bundle.preprocess.cache_key())


def model_time_estimate(bundle: ModelBundle, detector: str, id_name: str, datasets: Iterable[str],
                        params: dict[str, Any] | None = None, probe: int = 32) -> dict[str, Any]:
    """What running a model-time detector on the ``datasets`` not yet cached will cost, before it runs.

    A dry run on ``probe`` images of the first pending dataset (:meth:`ModelDetector.estimate`;
    the low-dimensional gradients time their blocks and products without fitting). Returns
    ``seconds``, ``bytes``, ``n_images`` (pending), ``pending`` (names) and ``detail``; zeros when
    everything is cached or the detector needs no model.
    """
    det = fitted_detector(detector, bundle, id_name)
    knobs = det.resolve(params)
    pending = [d for d in datasets if not is_cached(bundle, det, d, knobs)]
    if not det.needs_model or not pending:
        return {"seconds": 0.0, "bytes": 0, "n_images": 0, "pending": [], "detail": "cached"}
    n = sum(len(get_dataset(d)) for d in pending)
    first = get_dataset(pending[0])
    sub = first.subset(np.arange(min(probe, len(first))), name=f"{first.name}#probe")
    est = dict(det.estimate(bundle, sub, n, **knobs))  # type: ignore[attr-defined]
    est.update(n_images=n, pending=pending)
    return est


def describe_cost(est: dict[str, Any]) -> str:
    """``≈ 3 min 10 s, ≈ 1.2 GB peak (detail)`` for :func:`model_time_estimate`'s result."""
    s = float(est["seconds"])
    t = f"{s:.0f} s" if s < 90 else (f"{s // 60:.0f} min {s % 60:02.0f} s" if s < 5400 else f"{s / 3600:.1f} h")
    return f"≈ {t}, ≈ {est['bytes'] / 2**30:.2f} GB peak, {est['n_images']:,} images ({est['detail']})"


def is_cached(bundle: ModelBundle, detector: Detector, dataset: str, params: dict[str, Any] | None = None) -> bool:
    """Whether a model-time detector's scores are already on disk for these knobs."""
    if not detector.needs_model:
        return True
    return cache.has(_score_key(bundle, detector, get_dataset(dataset), detector.resolve(params)))


def parse_params(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``['rg.k=0.5', 'msp.T=2']`` -> ``{'rg': {'k': '0.5'}, 'msp': {'T': '2'}}`` (validated later)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        lhs, eq, value = item.partition("=")
        det, dot, knob = lhs.partition(".")
        if not eq or not dot or not det or not knob:
            raise WorkbenchError(f"--param must look like detector.knob=value; got {item!r}")
        out.setdefault(det.strip(), {})[knob.strip()] = _coerce(value.strip())
    return out


def _coerce(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


SAMPLE_ROLES = ("id_train", "id_test", "ood_test")


def apply_subsample(subsample: dict[str, float] | None, id_name: str, ood: Iterable[str], seed: int = 0) -> None:
    """Subsample by role (docs/architecture.md, "Datasets"): ``{"id_train": 12811}`` fits the
    statistics (KNN, Mahalanobis, ViM, …) on a fixed random subset of the ID training split;
    ``id_test`` and ``ood_test`` thin the evaluation sets. A count, or a fraction when below 1;
    the subset depends on ``seed`` only. Roles not named use every sample."""
    from .data import set_sample

    subsample = dict(subsample or {})
    bad = sorted(set(subsample) - set(SAMPLE_ROLES))
    if bad:
        raise WorkbenchError(f"subsample roles are {', '.join(SAMPLE_ROLES)}; got {', '.join(bad)}")
    set_sample(train_name_for(id_name), subsample.get("id_train"), seed)
    set_sample(id_name, subsample.get("id_test"), seed)
    for name in ood:
        set_sample(name, subsample.get("ood_test"), seed)


def subsample_of(id_name: str, ood: Iterable[str]) -> tuple[dict[str, float], int]:
    """The subsample by role now in force for these sets, and its seed (what an experiment records)."""
    from .data.registry import sample_setting

    out: dict[str, float] = {}
    seed = 0
    for role, names in (("id_train", [train_name_for(id_name)]), ("id_test", [id_name]), ("ood_test", list(ood))):
        got = [sample_setting(n) for n in names]
        if got and got[0] and all(g == got[0] for g in got):
            out[role], seed = got[0][0], got[0][1]
    return out, seed


def samples_used(id_name: str, ood: Iterable[str], detectors: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """How many samples each role used: ``{"id_train": {"used", "of", "seed"}, "id_test": …, "<ood>": …}``
    (``id_train`` only when a detector needs training statistics)."""
    from .data import sample_info

    out: dict[str, dict[str, Any]] = {}
    if any(get_detector(d).needs_training for d in detectors):
        try:
            out["id_train"] = sample_info(get_dataset(train_name_for(id_name)))
        except DataError:
            pass
    out["id_test"] = sample_info(get_dataset(id_name))
    for name in ood:
        out[name] = sample_info(get_dataset(name))
    return out


def evaluate(model: str | ModelBundle = "default", id_name: str = "mnist", ood: Iterable[str] = (),
             detectors: Iterable[str] = ("msp",), params: dict[str, dict[str, Any]] | None = None,
             progress: Progress | None = None, subsample: dict[str, float] | None = None,
             seed: int = 0) -> dict[str, Any]:
    """The JSON of docs/architecture.md, "Command line": ID accuracy and metrics per (detector, OOD set),
    and how many samples each role used (``samples``)."""
    params = params or {}
    ood = list(ood)
    detectors = list(detectors)
    if not ood:
        raise WorkbenchError("name at least one OOD dataset")
    if not detectors:
        raise WorkbenchError("name at least one detector")
    check_unique(ood, "the list of OOD sets")  # each would give a duplicate row
    check_unique(detectors, "the list of detectors")
    for d in params:
        if d not in detectors:
            raise WorkbenchError(f"--param names detector {d!r}, which is not among --detectors")
    # Validate names and knobs before any expensive work.
    dets = {d: get_detector(d) for d in detectors}
    resolved = {d: dets[d].resolve(params.get(d)) for d in detectors}
    apply_subsample(subsample, id_name, ood, seed)
    id_ds = get_dataset(id_name)
    for name in ood:
        get_dataset(name)
    bundle = model if isinstance(model, ModelBundle) else load_model(model, progress)
    check_compatible(bundle, id_ds)
    id_ext = get_extraction(bundle, id_ds, progress)
    results = []
    for d in detectors:
        det = fitted_detector(d, bundle, id_name, progress)
        id_scores = score(bundle, det, id_name, id_name, resolved[d], progress)
        for name in ood:
            s = score(bundle, det, name, id_name, resolved[d], progress)
            results.append({"detector": d, "params": jsonable(resolved[d]), "ood_dataset": name,
                            **ood_metrics(id_scores, s)})
    return {
        "model": bundle.name if isinstance(model, ModelBundle) else str(model),
        "model_fingerprint": bundle.fingerprint,
        "id_dataset": id_name,
        "id_accuracy": id_ext.accuracy,
        "samples": samples_used(id_name, ood, detectors),
        "subsample": {k: v for k, v in (subsample or {}).items() if v},
        "seed": int(seed),
        "results": results,
    }


def model_record(bundle: ModelBundle) -> dict[str, Any]:
    """What an experiment records of its model: ``model_fingerprint`` and ``preprocess`` (the load
    options: architecture, head and preprocessing), the fields :func:`model_differences` checks."""
    opts = jsonable({"arch": bundle.arch, "head": bundle.head_name, **bundle.preprocess.to_dict()})
    return {"model_fingerprint": bundle.fingerprint,
            "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}}  # as JSON reads back


def model_differences(exp: Any, bundle: ModelBundle) -> str:
    """One line on how ``bundle`` differs from the model ``exp`` (an :class:`~ood_core.experiment.Experiment`)
    recorded (fingerprint, load options); "" when nothing recorded differs."""
    rec = model_record(bundle)
    return exp.model_differences(rec["model_fingerprint"], rec["preprocess"])


def list_models() -> list[dict[str, Any]]:
    """Models the pickers offer: the default, checkpoints in ``cache/models``, registered uploads."""
    import json as _json

    from .models.checkpoints import models_dir

    out = [{"spec": "default", "label": "default (small CNN on embedded MNIST)", "meta": {}}]
    for side in sorted(models_dir().glob("*.json")):
        pt = side.with_suffix(".pt")
        if side.stem == "default" or not pt.exists():
            continue
        try:
            meta = _json.loads(side.read_text())
        except Exception:  # noqa: BLE001 - a broken sidecar hides that checkpoint, nothing more
            continue
        out.append({"spec": str(pt), "label": meta.get("label") or f"{side.stem} ({meta.get('method', '?')})", "meta": meta})
    for key, b in loaded.items("upload:"):
        out.append({"spec": key, "label": f"{b.name} (uploaded)", "meta": b.summary()})
    return out


# Formats training can start from (ModelBundle.info["format"]); archives are scored, never fine-tuned.
_FINE_TUNABLE = ("state_dict", "workbench checkpoint")


def trainable_models() -> list[tuple[str, str]]:
    """``(spec, label)`` of models training can start from besides the default: workbench checkpoints
    and the state_dicts and checkpoints uploaded or loaded on Models & data (with their load options)."""
    uploads = persist.saved_uploads()
    out = []
    for m in list_models():
        spec = m["spec"]
        if spec == "default":
            continue
        if spec.startswith("upload:"):
            if spec in uploads and m["meta"].get("format") in _FINE_TUNABLE:
                out.append((spec, m["label"]))
        elif Path(spec).with_suffix(".json").exists():
            out.append((spec, m["label"]))
    return out
