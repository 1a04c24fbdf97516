"""The app-facing front door: one function per user action the pages take, plain typed results.

Pages (``pages/*.py``, ``home.py``, ``app.py``) and ``ui/`` import only this module,
``ood_core.figures``, ``ood_core.errors`` and ``ood_core.knobs`` (``tests/core/test_import_graph.py``).
Everything here is thin: it validates what the user set, once, into value objects
(``knobs.Resolved``, :data:`~ood_core.models.load_options.LOAD_OPTIONS`' values) and delegates to
``workbench``, ``compare``, ``tuning``, ``maps``, ``saliency``, ``export``, ``persist`` and
``training``, which take those values as validated (docs/architecture.md, "Layers" and "Knobs").
Each action checks the freshness of the user's dataset files once (:func:`action`), not once per set.
A few names are re-exported as they are (labels, constants, the table helpers of a comparison):
they are part of the action's result, and writing them again here would only duplicate them.
"""
from __future__ import annotations

from .resources import configure_threads

# The app's first import of the backend: set the thread policy before anything below imports torch
# (OpenMP threads that sleep rather than spin, as many as the CPUs we may use; a value the user set
# is kept; docs/architecture.md, "Threads").
configure_threads()

import functools  # everything from here on comes after the thread policy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from . import benchmarks as _bench
from . import cache as _cache
from . import compare as _compare
from . import export as _export
from . import maps as _maps
from . import persist as _persist
from . import saliency as _saliency
from . import scoring as _scoring
from . import tuning as _tuning
from . import workbench as _wb
from .data import DEFAULT_OOD, get_dataset, get_spec, list_datasets, sample_info, train_name_for
from .data.readers import FORMATS
from .data.registry import one_check
from .detectors import detector_classes, get_detector
from .errors import UserError
from .experiment import Experiment, ExperimentError
from .gradients import DEFAULT_PARAMS as _GRAD_DEFAULTS
from .jobs import JOBS
from .knobs import Resolved
from .metrics import METRICS
from .models.archs import arch_info, list_architectures
from .models import files as _files
from .models.formats import human_bytes, max_model_bytes
from .models.load_options import LOAD_OPTIONS, load_kwargs
from .training import DEFAULT_EPOCHS, METHODS, TrainConfig, job_fn, knob_view

Progress = Callable[[float, str], None]
F = TypeVar("F", bound=Callable[..., Any])

__all__ = [  # re-exported as they are (see the module docstring)
    "DEFAULT_OOD", "DEFAULT_EPOCHS", "Experiment", "ExperimentError", "FORMATS", "JOBS", "LOAD_OPTIONS", "METHODS",
    "METRICS", "TrainConfig", "arch_info", "human_bytes", "knob_view", "max_model_bytes",
]


def action(fn: F) -> F:
    """One user action: the user's dataset files are re-signed once for all of its sets
    (``data.registry.one_check``), not once per set and call."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with one_check():
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


# =============================================================================== models
def load_model(spec: str = "default", progress: Progress | None = None):
    """The model the pickers name: ``'default'`` (trained on first use), a checkpoint path or an upload key."""
    return _wb.load_model(spec, progress)


def default_model_missing() -> bool:
    """Whether the embedded default still has to be trained: no cached copy and no usable shipped one
    (docs/architecture.md, "First launch")."""
    from .models.checkpoints import default_needs_training
    return default_needs_training()


restore_saved = _wb.restore_saved  # earlier sessions' datasets and uploads, back in memory (once per process)
list_models = _wb.list_models


def architectures() -> list[str]:
    return [n for n, _ in list_architectures()]


@dataclass(frozen=True)
class ModelFileFacts:
    """What the upload form shows before loading: format, size, the architectures a state_dict fits."""

    path: Path
    format: str
    bytes: int
    fits: tuple[str, ...] = ()
    closest: tuple[tuple[str, int], ...] = ()


def inspect_model(path: Path | str) -> ModelFileFacts:
    f = _files.inspect_model_file(path)
    return ModelFileFacts(Path(path), f["format"], int(f["bytes"]), tuple(f.get("fits", ())),
                          tuple(tuple(c) for c in f.get("closest", ())))


def store_upload(data: bytes, name: str) -> Path:
    """An uploaded model file stored under the cache (once per content)."""
    return _persist.save_upload(data, name)


def cache_root() -> str:
    return str(_cache.cache_dir())


def resolve_load_options(values: Mapping[str, Any] | None) -> Resolved:
    """The model-load options the user typed ("auto"/empty = detected), validated once (:data:`LOAD_OPTIONS`)."""
    return LOAD_OPTIONS.resolve(values)


@action
def load_model_file(path: Path | str, options: Mapping[str, Any] | None = None, name: str = "",
                    id_name: str | None = None, check_classes: bool = False) -> tuple[str, Any]:
    """Load a model file as an upload remembered across restarts: ``(key, bundle)``.

    ``options``: :data:`LOAD_OPTIONS` values (resolved here unless already); the ID set's image
    size is tried first when nothing fixes the input size, and with ``check_classes`` its class
    count is checked against the model's.
    """
    opts = load_kwargs(resolve_load_options(options))
    opts["name"] = name.strip() or Path(path).stem
    if id_name:
        try:
            id_ds = get_dataset(id_name)
            opts["size_hint"] = list(id_ds.shape[:2])
            if check_classes and id_ds.has_labels:
                opts["num_classes"] = len(id_ds.class_names or []) or int(id_ds.labels.max()) + 1
        except UserError:
            pass
    return _persist.register_upload(path, **opts)


def reload_with_head(key: str, head: str) -> tuple[str, Any]:
    """A remembered upload loaded again with another final linear layer."""
    entry = _persist.saved_uploads().get(key, {})
    return _persist.register_upload(entry.get("path", ""), **dict(entry.get("options", {}), head=head))


# =============================================================================== datasets
def dataset(name: str, split: str | None = None):
    """A registered dataset (images, labels, sample ids) for previews and thumbnails."""
    return get_dataset(name, split)


def dataset_spec(name: str):
    return get_spec(name)


def datasets(roles: Iterable[str] | None = None) -> list:
    """Registered datasets (specs), optionally only those with one of ``roles``."""
    want = set(roles) if roles is not None else None
    return [s for s in list_datasets() if want is None or s.role in want]


def saved_dataset_names() -> set[str]:
    return set(_persist.saved_datasets())


def statistics_note(id_name: str) -> str:
    """How many ID-train samples fit the statistics (all of them, or a seeded subset)."""
    try:
        info = sample_info(get_dataset(train_name_for(id_name)))
    except UserError:
        return "Statistics: no ID training split."
    if info["used"] < info["of"]:
        return (f"Statistics from {info['used']:,} of {info['of']:,} ID-train samples "
                f"(a fixed random subset, seed {info['seed']}).")
    return f"Statistics from all {info['used']:,} ID-train samples."


@action
def register_dataset(name: str, role: str, path: str | None = None, upload: tuple[bytes, str] | None = None,
                     **kw: Any):
    """Register a dataset from a local path or an upload (``(bytes, filename)``); remembered across restarts."""
    if upload is not None:
        return _persist.register_dataset_upload(upload[0], upload[1], name, role, **kw)
    return _persist.register_local(path or "", name, role, **kw)


def forget_dataset(name: str) -> None:
    _persist.unregister_local(name)


# =============================================================================== detectors and scores
@dataclass(frozen=True)
class DetectorInfo:
    name: str
    title: str
    family: str
    needs_model: bool
    has_knobs: bool
    plugin: str | None = None  # the plugin's source ("my_detector.py", "mypkg 1.0 (entry point)"); None: built-in


def detectors() -> list[DetectorInfo]:
    return [DetectorInfo(n, c.title or n, c.family, c.needs_model, bool(c.knobs), plugin_source(n))
            for n, c in detector_classes().items()]


# --- plugins (docs/architecture.md, "Plugins") --------------------------------------------------
PLUGIN_TRUST = ("Plugins are trusted code you chose to run (OOD_PLUGINS, installed entry points); "
                "the app never runs an uploaded file.")


def load_plugins() -> list[str]:
    """Installed entry points and ``OOD_PLUGINS``, loaded once per process at start-up; returns one
    line per plugin refused (the rest of the workbench works)."""
    from . import plugins as _plugins

    return [i.line for i in _plugins.load_startup() if not i.ok]


def plugin_source(name: str) -> str | None:
    """Where a plugin detector came from, for its badge; None for a built-in."""
    from . import plugins as _plugins

    info = _plugins.source_of(name)
    return info.source if info else None


def detector(name: str):
    """A detector's declaration (knobs, paper, help) for its widgets."""
    return get_detector(name)


def extraction(bundle: Any, name: str, progress: Progress | None = None):
    """The cached extraction of ``name``; a pass that has to run reports to ``progress`` per batch."""
    return _wb.get_extraction(bundle, name, progress=progress)


availability = action(_scoring.availability)  # {detector: why it cannot run, or None}, once per (model, dataset)
fitted_detector = action(_wb.fitted_detector)


def resolve_knobs(det: Any, values: Mapping[str, Any] | None) -> Resolved:
    """A detector's knob values validated once (``knobs.resolve``); everything below takes them as they are."""
    return det.resolve(values)


needs_job, model_time_estimate = _scoring.needs_job, _scoring.model_time_estimate
score_sets = action(_scoring.score_sets)  # one detector's scores on every set
ScoresView, scores_view = _scoring.ScoresView, _scoring.scores_view  # one knob setting sorted once


# =============================================================================== compare and tune
cached_array_detectors = _compare.cached_array_detectors
ok_rows, wide, best_mask, ci_text, unavailable = (_compare.ok_rows, _compare.wide, _compare.best_mask,
                                                  _compare.ci_text, _compare.unavailable)


@action
def compare(bundle: Any, id_name: str, ood: Sequence[str], dets: Sequence[str], params: Mapping[str, Any],
            n_boot: int = 1000, progress: Progress | None = None, run_model_time: bool = False):
    """Every chosen detector on every OOD set (``compare.compare_table``): a long table."""
    return _compare.compare_table(bundle, id_name, list(ood), list(dets), dict(params), n_boot=n_boot,
                                  progress=progress, run_model_time=run_model_time)


@action
def model_time_cached(bundle: Any, det: str, sets: Sequence[str], params: Mapping[str, Any] | None) -> bool:
    return _compare.model_time_cached(bundle, det, list(sets), params)


BenchmarkView = _bench.BenchmarkView
benchmark_view = action(_bench.benchmark_view)  # Compare's near/far view of a benchmark's ID set, or None


TUNING_HOLDOUT = _tuning.HOLDOUT
validation_sets = _tuning.validation_sets
default_grid = _tuning.default_grid
parse_grid_values = _tuning.parse_values


@action
def tune(bundle: Any, det: str, grid: Mapping[str, list], id_name: str, val: Sequence[str], metric: str,
         fixed: Mapping[str, Any] | None = None, progress: Progress | None = None):
    """A sweep of ``grid`` on validation data: ``(table, best knob values)``."""
    return _tuning.sweep(bundle, det, dict(grid), id_name, list(val), metric, fixed=dict(fixed or {}),
                         progress=progress)


# =============================================================================== maps
MAP_METHODS, MAP_METHOD_LABELS, MAP_KNOBS, MAP_GRADIENT_KNOBS = (_maps.METHODS, _maps.METHOD_LABELS, _maps.KNOBS,
                                                                 _maps.GRADIENT_KNOBS)


def map_gradient_params(values: Mapping[str, Any]) -> Resolved:
    """The Maps page's gradient settings (a subset of the gradient knobs) completed with the defaults of
    the rest (the reference's T) and validated once."""
    from .gradients import resolve_params
    return resolve_params({**values, "T": float(_GRAD_DEFAULTS["T"])})


@action
def map_points_total(names: Sequence[str], n_per_set: int) -> int:
    return sum(min(len(get_dataset(n)), n_per_set) for n in names)


@action
def compute_map(bundle: Any, id_name: str, ood: Sequence[str], space: str, method: str, n_per_set: int, seed: int,
                grad_params: Mapping[str, Any] | None, knobs: Mapping[str, Any], progress: Progress | None = None):
    """A 2-D map of the features or the low-dimensional gradients (``maps.compute_map``)."""
    return _maps.compute_map(bundle, id_name, list(ood), space, method, n_per_set, seed,
                             dict(grad_params) if grad_params is not None else None, progress=progress, **knobs)


def map_score_choices(bundle: Any, id_name: str) -> dict[str, str]:
    """``{detector: label}`` of every score a map can be coloured (and its gallery ranked) by: the
    detectors that can score this model, built-in and plugin (labelled with the plugin's source),
    the scores every map carries (``maps.SCORE_COLUMNS``) first."""
    avail = availability(bundle, id_name)
    infos = {d.name: d for d in detectors() if avail.get(d.name) is None}
    order = [n for n in _maps.SCORE_COLUMNS if n in infos] + [n for n in infos if n not in _maps.SCORE_COLUMNS]
    return {n: infos[n].title + (f" · plugin ({infos[n].plugin})" if infos[n].plugin else "") for n in order}


@action
def add_map_score(res: Any, bundle: Any, id_name: str, detector: str, progress: Progress | None = None) -> None:
    """Add one detector's scores to a map's points (``maps.add_score``), for colouring by a score the map
    was not computed with (a plugin's, or any other available detector's)."""
    _maps.add_score(res, bundle, id_name, detector, progress=progress)


@action
def gradients_ready(bundle: Any, id_name: str, ood: Sequence[str], grad_params: Mapping[str, Any]) -> bool:
    return _maps.gradients_ready(bundle, id_name, list(ood), grad_params)


# =============================================================================== saliency
SALIENCY_KNOBS, SALIENCY_TARGETS, SALIENCY_TARGET_LABELS = _saliency.KNOBS, _saliency.TARGETS, _saliency.TARGET_LABELS
SALIENCY_METHODS, SALIENCY_METHOD_LABELS = _saliency.METHODS, _saliency.METHOD_LABELS


@dataclass(frozen=True)
class Explained:
    """A sample, its ID twin (the nearest ID example with the same prediction) and their facts."""

    image: np.ndarray
    info: dict
    twin: int
    twin_image: np.ndarray
    twin_info: dict


@action
def explain_sample(bundle: Any, ds_name: str, index: int, id_name: str) -> Explained:
    img = _saliency.sample_image(ds_name, index)
    info = _saliency.sample_info(bundle, ds_name, index, id_name)
    twin = _saliency.nearest_id_example(bundle, id_name, info["pred"], ds_name, index)
    return Explained(img, info, twin, _saliency.sample_image(id_name, twin),
                     _saliency.sample_info(bundle, id_name, twin, id_name))


def default_rg_k(bundle: Any, id_name: str) -> float:
    return _saliency.default_rg_k(bundle, id_name) if bundle.has_features else 1.0


@action
def attributions(bundle: Any, ds_name: str, index: int, twin: int, id_name: str, targets: Sequence[str],
                 methods: Sequence[str], knobs: Mapping[str, Any]):
    """Attributions of a sample and its ID twin: ``(maps, seconds)`` (``saliency.attribute_grid``)."""
    images = _saliency.stack_images([_saliency.sample_image(ds_name, index), _saliency.sample_image(id_name, twin)],
                                    bundle.preprocess.input_size)
    return _saliency.attribute_grid(bundle, images, list(targets), list(methods), **dict(knobs))


# =============================================================================== train
def start_training(cfg: TrainConfig, owner_alive: Callable[[], bool] | None = None) -> str:
    """Start a training job (validated before it starts); its job id. With ``owner_alive`` (the
    session's probe) the run stops once its session has gone, keeping its last finished epoch."""
    return JOBS.submit(job_fn(cfg), f"train {cfg.method}", owner_alive=owner_alive).id


def default_epochs(method: str, init: str, recipe: str = "default") -> int:
    """The epochs a run gets when none are given: the paper recipe's, else the workbench's short budget."""
    from .training.recipes import paper_recipe

    epochs = paper_recipe(method).get("epochs") if recipe == "paper" else None
    return int(epochs or DEFAULT_EPOCHS["scratch" if init == "scratch" else "finetune"])


def job(job_id: str | None):
    """A background job by id (None when gone)."""
    return JOBS.get(job_id) if job_id else None


def cancel_job(job_id: str | None) -> bool:
    """Ask a running job to stop at its next batch (docs/architecture.md, "Concurrency and cancellation");
    False when there is no such running job."""
    j = JOBS.get(job_id) if job_id else None
    if j is None or not j.active:
        return False
    j.cancel()
    return True


trainable_models = _wb.trainable_models


def training_init(spec: str) -> dict[str, Any]:
    """``TrainConfig``'s ``init`` and ``load`` for a model a picker names: an upload trains from its file
    with the options it was loaded with (its own preprocessing), so the checkpoint loads back the same way."""
    if not spec.startswith("upload:"):
        return {"init": spec, "load": {}}
    return _persist.upload_init(spec)


# =============================================================================== experiments and export
subsample_of = _wb.subsample_of


def apply_subsample(subsample: Mapping[str, float] | None, id_name: str, ood: Iterable[str], seed: int = 0) -> None:
    _wb.apply_subsample(dict(subsample or {}), id_name, ood, seed)


def experiment_from_json(data: bytes | str) -> Experiment:
    return _export.experiment_from_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def check_experiment(exp: Experiment) -> list[str]:
    """What stops an experiment from applying here (unknown sets, detectors, knobs, load options), one line each."""
    problems = list(_export.check_experiment(exp))
    if exp.preprocess:
        try:
            LOAD_OPTIONS.resolve(exp.preprocess)
        except UserError as exc:
            problems.append(str(exc))
    return problems


model_differences = _wb.model_differences  # one line on how the loaded model differs from the experiment's


def model_record(model: Any) -> dict[str, Any]:
    """What an experiment records of its model (``model_fingerprint``, ``preprocess``), so a later run on
    another checkpoint or other preprocessing is warned; ``model`` is a loaded bundle or a picker spec."""
    return _wb.model_record(model if not isinstance(model, str) else _wb.load_model(model))


experiment_json = _export.experiment_json
MIME, STATIC_FORMATS = _export.MIME, _export.STATIC_FORMATS
static_export_status, figure_bytes, figure_html = (_export.static_export_status, _export.figure_bytes,
                                                   _export.figure_html)
table_csv, table_parquet = _export.table_csv, _export.table_parquet


@action
def per_sample_scores(model: Any, id_name: str, ood: Sequence[str], dets: Sequence[str],
                      params: Mapping[str, Any]):
    """One row per ID-test and OOD sample with each detector's score (``export.per_sample_scores``)."""
    bundle = model if not isinstance(model, str) else _wb.load_model(model)
    return _export.per_sample_scores(bundle, id_name, list(ood), list(dets), dict(params))
