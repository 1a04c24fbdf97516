"""The conformance battery: what every detector and training method must do (scikit-learn's ``check_estimator``).

``python -m ood_core check-detector TARGET`` and ``check-method TARGET`` run it on a plugin; the
built-in battery (``tests/detectors/test_battery.py``) is a parametrisation over these same
functions. Each ``check_*`` raises :class:`Fault` (an ``AssertionError``) with a one-line reason;
:func:`check_detector` / :func:`check_method` run them all into a :class:`Report`.
docs/architecture.md, "Plugins".

Detector checks: the declaration; knob defaults inside their ranges; out-of-range knobs refused
naming the knob; scores' shape, dtype, finiteness and determinism (two fits, same scores); each
knob at its edges (finite scores, or a refusal); constant inputs and a NaN row (finite scores,
other rows untouched); cache keys (a knob move changes the scores, and a memo warm with one
setting does not leak into another; for model-time detectors the disk-cache key changes);
orientation on the embedded default (MNIST above uniform noise: AUROC > 0.5); the speed of a
knob move on cached arrays.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .detectors import Detector, DetectorError, detector_classes, get_detector
from .errors import UserError, first_line
from .extract import Extraction
from .knobs import Knob, Paper
from .metrics import ood_metrics
from .plugins import source_of, validate_detector_class

ID_SET, FAR_OOD = "mnist", "uniform"
N_TINY = 24  # images per set for model-time detectors
KNOB_MOVE_SECONDS = 3.0  # a slider move on the default's cached arrays; knn at k=3999 took 1.0 s on a loaded 2-core box


class Fault(AssertionError):
    """A failed check; the message names the fault."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    target: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def lines(self) -> list[str]:
        return [f"{'ok  ' if r.ok else 'FAIL'} {r.name}" + (f": {r.reason}" if r.reason else "") for r in self.results]


# --- the data the checks run on ------------------------------------------------------------------

def _synthetic(n: int, seed: int, D: int = 12, C: int = 4) -> Extraction:
    g = np.random.default_rng(99)
    W, b, centres = g.normal(0, 0.5, (C, D)), g.normal(0, 0.1, C), g.normal(0, 2.0, (C, D))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    h = np.abs(centres[y] + rng.normal(0, 1.0, (n, D))).astype(np.float32)
    return Extraction((h @ W.T + b).astype(np.float32), h, y, W.astype(np.float32), b.astype(np.float32), f"syn{seed}")


def synthetic_arrays() -> tuple[Extraction, Extraction]:
    """(train, test) arrays every cached-array check runs on: 4 classes, 12 non-negative features."""
    return _synthetic(300, 1), _synthetic(60, 2)


def _copy(ext: Extraction, logits: np.ndarray | None = None, features: np.ndarray | None = None) -> Extraction:
    """A fresh Extraction (empty memo) with the same or replaced arrays."""
    return Extraction(np.array(ext.logits if logits is None else logits, np.float32),
                      np.array(ext.features if features is None else features, np.float32), ext.labels.copy(),
                      ext.head_weight, ext.head_bias, ext.dataset)


class Context:
    """What the checks share, built on first use: synthetic arrays, the default model, a few of its images."""

    def __init__(self, bundle: Any = None):
        self._bundle = bundle
        self._arrays: tuple[Extraction, Extraction] | None = None
        self._tiny: list | None = None
        self._trainers: dict[str, Any] = {}

    def method_trainer(self, name: str) -> Any:
        if name not in self._trainers:
            self._trainers[name] = _trainer(name)
        return self._trainers[name]

    @property
    def arrays(self) -> tuple[Extraction, Extraction]:
        if self._arrays is None:
            self._arrays = synthetic_arrays()
        return self._arrays

    @property
    def bundle(self) -> Any:
        if self._bundle is None:
            from . import workbench as wb
            self._bundle = wb.load_model("default")
        return self._bundle

    @property
    def tiny(self) -> list:
        """(dataset, extraction) of the ID training split (64 images), ID test and far-OOD (N_TINY each)."""
        if self._tiny is None:
            from . import workbench as wb
            from .data import get_dataset
            self._tiny = []
            for name, n in ((f"{ID_SET}:train", 64), (ID_SET, N_TINY), (FAR_OOD, N_TINY)):
                full = get_dataset(name)
                ext = wb.get_extraction(self.bundle, full).subset(np.arange(n))
                self._tiny.append((full.subset(np.arange(n)), ext))
        return self._tiny


def _fit(name: str, train: Extraction) -> Detector:
    det = get_detector(name)
    return det.fit(train if det.needs_training else None)


def _edge_values(k: Knob) -> list:
    if k.kind == "bool":
        return [False, True]
    if k.kind == "choice":
        return list(k.choices)
    return [v for v in (k.low, k.high) if v is not None]


def _bad_values(k: Knob) -> list:
    if k.kind == "choice":
        return ["__not_a_choice__"]
    if k.kind == "bool":
        return ["maybe"]
    bad = []
    if k.high is not None:
        bad.append(k.high + max(1.0, abs(k.high)))
    if k.low is not None:
        bad.append(k.low - max(1.0, abs(k.low)))
    return bad


def _moves(det: Detector) -> list[tuple[str, Any]]:
    """(knob, value) pairs away from the defaults: the edges and the sweep grid."""
    out = []
    for k in det.knobs:
        for v in [*_edge_values(k), *det.grid.get(k.name, ())]:
            if v != k.default and (k.name, v) not in out:
                out.append((k.name, v))
    return out


def _scores_or_refusal(det: Detector, ext: Extraction, **knobs: Any) -> np.ndarray | None:
    try:
        return det.score(ext, **knobs)
    except UserError:
        return None  # a refusal with a message is a fine answer to an edge


def _finite(name: str, s: np.ndarray, n: int, what: str) -> None:
    if s.shape != (n,):
        raise Fault(f"{what}: {name} returned shape {s.shape}, expected ({n},)")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise Fault(f"{what}: {name} gives {bad} non-finite score(s) of {n}")


# --- detector checks (each: name, ctx; raises Fault) -----------------------------------------------

def check_declaration(name: str, ctx: Context, require_paper: bool = False) -> None:
    cls = detector_classes()[name]
    try:
        validate_detector_class(cls)
    except UserError as exc:
        raise Fault(first_line(exc)) from None
    det = get_detector(name)
    if det.name != name or not det.title:
        raise Fault(f"{name} needs a title (shown in the app and the CLI)")
    if det.paper is not None and not isinstance(det.paper, Paper):
        raise Fault(f"{name}.paper must be a Paper(title, authors, venue, year), got {type(det.paper).__name__}")
    if require_paper and det.paper is None:
        raise Fault(f"{name} declares no paper")


def check_knob_defaults(name: str, ctx: Context) -> None:
    dets = [get_detector(name)]
    if not dets[0].needs_model:
        dets.append(_fit(name, ctx.arrays[0]))  # ranges adapted to the data (knn's k, vim's d) too
    for det in dets:
        for k in det.knobs:
            try:
                v = k.validate(k.default, name)
            except UserError as exc:
                raise Fault(f"knob {k.name}'s default is refused: {first_line(exc)}") from None
            if k.kind in ("float", "int") and not math.isclose(float(v), float(k.default)):
                raise Fault(f"knob {k.name}'s default {k.default} validates to {v}")


def check_knob_validation(name: str, ctx: Context) -> None:
    needs_model = detector_classes()[name].needs_model
    det = get_detector(name) if needs_model else _fit(name, ctx.arrays[0])
    for k in det.knobs:
        for bad in _bad_values(k):
            for how, call in (("resolve", lambda: det.resolve({k.name: bad})),
                              ("score", lambda: det.score(ctx.arrays[1], **{k.name: bad}))):
                if how == "score" and needs_model:
                    continue
                try:
                    call()
                except DetectorError as exc:
                    if f"{name}.{k.name}" not in str(exc):
                        raise Fault(f"{k.name}={bad!r} is refused without naming '{name}.{k.name}': {exc}") from None
                else:
                    raise Fault(f"{k.name}={bad!r} is outside its range but {how} accepted it")
    try:
        det.resolve({"__no_such_knob__": 1})
    except DetectorError:
        return
    raise Fault("an unknown knob name is accepted silently")


def check_scores(name: str, ctx: Context) -> None:
    """Shape (N,), float64, finite, and the same for two fits with the same data (determinism)."""
    train, test = ctx.arrays
    s1 = _fit(name, train).score(_copy(test))
    s2 = _fit(name, train).score(_copy(test))
    _finite(name, s1, len(test), "shapes")
    if s1.dtype != np.float64:
        raise Fault(f"dtype: scores are {s1.dtype}, expected float64")
    if not np.array_equal(s1, s2):
        diff = float(np.nanmax(np.abs(s1 - s2)))
        raise Fault(f"determinism: two fits on the same data give different scores (max difference {diff:.3g}); "
                    "seed every random draw")


def check_knob_edges(name: str, ctx: Context) -> None:
    """Each knob at its edges (and each choice) gives finite scores, or is refused with a message."""
    train, test = ctx.arrays
    det = _fit(name, train)
    for k in det.knobs:
        for v in _edge_values(k):
            s = _scores_or_refusal(det, _copy(test), **{k.name: v})
            if s is not None:
                _finite(name, s, len(test), f"knob edge {k.name}={v!r}")


def check_constant_and_nan_inputs(name: str, ctx: Context) -> None:
    """Identical samples with equal logits give finite scores; a NaN row leaves the other rows' scores alone."""
    train, test = ctx.arrays
    det = _fit(name, train)
    n, C = test.logits.shape
    level = float(np.mean(train.features)) if train.features.size else 1.0
    const = _copy(test, logits=np.zeros((n, C)), features=np.full(test.features.shape, level))
    s = _scores_or_refusal(det, const)
    if s is not None:
        _finite(name, s, n, "constant input (equal logits, identical samples)")
    ref = det.score(_copy(test))
    logits, feats = test.logits.copy(), test.features.copy()
    logits[0], feats[0] = np.nan, np.nan
    try:
        s = det.score(_copy(test, logits, feats))
    except (UserError, ValueError):
        s = None  # refusing NaN input with a message (scikit-learn's "Input X contains NaN") is fine
    if s is not None and not np.allclose(s[1:], ref[1:], rtol=1e-6, atol=1e-9, equal_nan=False):
        raise Fault("NaN input: one NaN row changes the scores of the other rows (score rows independently)")


def check_cache_keys(name: str, ctx: Context) -> None:
    """Cached arrays: a knob move changes the scores, and what a detector memoises on the arrays does not
    carry one setting's result into another's. Model-time: the disk-cache key changes with every knob."""
    det_cls = detector_classes()[name]
    if det_cls.needs_model:
        from . import workbench as wb
        det = get_detector(name)
        ds = ctx.tiny[1][0]
        base = wb._score_key(ctx.bundle, det, ds, det.resolve())  # noqa: SLF001 - the key the workbench uses
        for kname, v in _moves(det):
            if wb._score_key(ctx.bundle, det, ds, det.resolve({kname: v})) == base:  # noqa: SLF001
                raise Fault(f"cache key: moving {kname} to {v!r} leaves the score cache key unchanged")
        return
    train, test = ctx.arrays
    det = _fit(name, train)
    warm = _copy(test)
    base = det.score(warm)
    moved = {k.name: False for k in det.knobs}
    for kname, v in _moves(det):
        s_warm = _scores_or_refusal(det, warm, **{kname: v})
        s_fresh = _scores_or_refusal(_fit(name, train), _copy(test), **{kname: v})
        if s_warm is None or s_fresh is None:
            continue
        if not np.allclose(s_warm, s_fresh, rtol=1e-9, atol=1e-12, equal_nan=True):
            raise Fault(f"cache key: {kname}={v!r} scored on arrays already scored at another setting differs from "
                        f"fresh arrays: a memo or cache key ignores {kname}")
        if not np.allclose(s_warm, base, rtol=1e-9, atol=1e-12, equal_nan=True):
            moved[kname] = True
    # a knob that acts only under another knob's choice (RG's k under k_mode=absolute)
    switches = [{o.name: c} for o in det.knobs if o.kind in ("choice", "bool") for c in _edge_values(o) if c != o.default]
    for kname in [k for k, m in moved.items() if not m]:
        for sw in (sw for sw in switches if kname not in sw):
            ref = _scores_or_refusal(det, _copy(test), **sw)
            if ref is None:
                continue
            for k2, v in _moves(det):
                s = _scores_or_refusal(det, _copy(test), **sw, **{kname: v}) if k2 == kname else None
                if s is not None and not np.allclose(s, ref, rtol=1e-9, atol=1e-12, equal_nan=True):
                    moved[kname] = True
                    break
            if moved[kname]:
                break
    dead = [k for k, m in moved.items() if not m]
    if dead:
        raise Fault(f"cache key: knob(s) {', '.join(dead)} change no score at their edges or grid: "
                    "a knob the score ignores")


# The low-dimensional probes' orientation is fixed by construction (MSP / Energy / ODIN / ReAct of a
# trained probe's logits), but a probe trained on 64 samples (10 SGD steps) does score uniform noise
# above digits, and even on the full default lowdim_probe_energy reaches only AUROC 0.47: a measured
# property of the method on this model, not a sign error. Exempt by module, so no plugin inherits it.
ORIENTATION_EXEMPT_MODULES = frozenset({"ood_core.detectors.lowdim_probe"})


def check_orientation(name: str, ctx: Context) -> None:
    """Higher = more ID: the default's MNIST test digits above uniform noise images (AUROC > 0.5)."""
    if detector_classes()[name].__module__ in ORIENTATION_EXEMPT_MODULES:
        return
    if detector_classes()[name].needs_model:
        ids, ood = (_model_scores(name, ctx, i) for i in (1, 2))
        where = f"{N_TINY} images of each"
    else:
        from . import workbench as wb
        det = wb.fitted_detector(name, ctx.bundle, ID_SET)
        ids = det.score(wb.get_extraction(ctx.bundle, ID_SET))
        ood = det.score(wb.get_extraction(ctx.bundle, FAR_OOD))
        where = "the embedded default"
    auroc = ood_metrics(ids, ood)["auroc"]
    if not auroc > 0.5:
        raise Fault(f"AUROC {auroc:.2f} on {ID_SET} vs {FAR_OOD} ({where}): scores are inverted "
                    "(higher must mean more in-distribution)")


def check_knob_speed(name: str, ctx: Context, limit: float = KNOB_MOVE_SECONDS) -> None:
    """A knob move re-scores the default's cached ID test arrays within ``limit`` seconds."""
    from . import workbench as wb
    det = wb.fitted_detector(name, ctx.bundle, ID_SET)
    ext = wb.get_extraction(ctx.bundle, ID_SET)
    det.score(ext)  # memos warm, as after the page's first draw
    moves = _moves(det)[:3] or [(None, None)]
    worst, which = 0.0, ""
    for kname, v in moves:
        t = time.perf_counter()
        _scores_or_refusal(det, ext, **({kname: v} if kname else {}))
        dt = time.perf_counter() - t
        if dt > worst:
            worst, which = dt, f"{kname}={v!r}"
    if worst > limit:
        raise Fault(f"speed: moving {which} takes {worst:.2f} s on {len(ext)} cached rows (limit {limit:g} s): "
                    "move the knob-independent work into _fit or ext.memo")


def _model_scores(name: str, ctx: Context, which: int, **knobs: Any) -> np.ndarray:
    det = get_detector(name)
    (tr_ds, tr_ext) = ctx.tiny[0]
    det.fit_model(ctx.bundle, tr_ds, tr_ext)
    ds, ext = ctx.tiny[which]
    if any(k.name == "r" for k in det.knobs) and det.defaults()["r"] > len(tr_ds) // 2:
        knobs = {"r": len(tr_ds) // 2, **knobs}  # lowdim's r = 200 exceeds the tiny training split (refused)
    return np.asarray(det.score_model(ctx.bundle, ds, ext, **det.resolve(knobs)), np.float64)


def check_model_scores(name: str, ctx: Context) -> None:
    """Model-time: shape, finiteness and determinism on a few images of the default."""
    s1, s2 = _model_scores(name, ctx, 1), _model_scores(name, ctx, 1)
    _finite(name, s1, N_TINY, "shapes")
    if not np.allclose(s1, s2, rtol=1e-6, atol=1e-9):
        raise Fault(f"determinism: two runs give different scores (max difference {float(np.max(np.abs(s1 - s2))):.3g})")


CACHED_CHECKS: tuple[Callable[[str, Context], None], ...] = (
    check_declaration, check_knob_defaults, check_knob_validation, check_scores, check_knob_edges,
    check_constant_and_nan_inputs, check_cache_keys, check_orientation, check_knob_speed)
MODEL_CHECKS: tuple[Callable[[str, Context], None], ...] = (
    check_declaration, check_knob_defaults, check_knob_validation, check_model_scores, check_cache_keys,
    check_orientation)


def detector_checks(name: str) -> tuple[Callable[[str, Context], None], ...]:
    return MODEL_CHECKS if detector_classes()[name].needs_model else CACHED_CHECKS


def check_name(fn: Callable) -> str:
    return fn.__name__.removeprefix("check_")


def run(checks: Sequence[Callable[[str, Context], None]], name: str, ctx: Context, target: str | None = None) -> Report:
    """Run ``checks`` on ``name`` into a report: a Fault is a failure with its message, any other
    exception a failure naming it (the detector crashed)."""
    rep = Report(target or name)
    for fn in checks:
        t = time.perf_counter()
        try:
            fn(name, ctx)
            rep.results.append(CheckResult(check_name(fn), True, seconds=time.perf_counter() - t))
        except Fault as exc:
            rep.results.append(CheckResult(check_name(fn), False, str(exc), time.perf_counter() - t))
        except Exception as exc:  # noqa: BLE001 - a crash in the checked code is a finding, not a crash of ours
            why = f"raised {type(exc).__name__}: {first_line(exc)}"
            rep.results.append(CheckResult(check_name(fn), False, why, time.perf_counter() - t))
    return rep


def check_detector(name: str, ctx: Context | None = None) -> Report:
    """The whole battery on a registered detector (see :func:`ood_core.plugins.resolve_target` for TARGETs)."""
    src = source_of(name)
    return run(detector_checks(name), name, ctx or Context(), f"{name}" + (f" (plugin {src.source})" if src else ""))


__all__ = ["CACHED_CHECKS", "METHOD_CHECKS", "MODEL_CHECKS", "CheckResult", "Context", "Fault", "Report", "check_detector",
           "check_method", "detector_checks", "run", "synthetic_arrays"]

# --- training methods --------------------------------------------------------------------------

METHOD_BATCH = 16


def _trainer(name: str, params: dict[str, Any] | None = None) -> Any:
    """A Trainer on 32 images of the default's ID training split (the default model as init)."""
    from .training import TrainConfig
    from .training.loop import Trainer
    return Trainer(TrainConfig(name, init="default", epochs=1, seed=0, n_train=32, n_eval=16,
                               params={"batch_size": METHOD_BATCH, "augment": "none", **(params or {})}))


def _loss(trainer: Any, seed: int = 0) -> dict[str, Any]:
    import torch
    torch.manual_seed(seed)
    trainer.np_rng = np.random.default_rng(seed + 1)
    trainer.gen = torch.Generator().manual_seed(seed)
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    return dict(trainer.method.loss(trainer, trainer.x_train[:METHOD_BATCH], trainer.y_train[:METHOD_BATCH]))


def _terms_ok(m: Any, out: dict[str, Any], what: str) -> None:
    import torch
    for t in m.terms:
        v = out.get(t)
        if v is None:
            raise Fault(f"{what}: loss returned no {t!r} term (declared in terms)")
        if not torch.is_tensor(v) or v.dim() != 0:
            raise Fault(f"{what}: term {t!r} must be a scalar tensor, got {getattr(v, 'shape', type(v).__name__)}")
        if not torch.isfinite(v):
            raise Fault(f"{what}: term {t!r} is {float(v)}")


def check_method_declaration(name: str, ctx: Context) -> None:
    from .plugins import validate_method
    from .training import METHODS
    m = METHODS[name]
    try:
        validate_method(m)
        m.resolve()
    except UserError as exc:
        raise Fault(first_line(exc)) from None
    if not m.title or m.terms[:1] != ("total",):
        raise Fault(f"{name} needs a title and terms starting with 'total'")


def check_method_knobs(name: str, ctx: Context) -> None:
    from .knobs import KnobError
    from .training import METHODS
    m = METHODS[name]
    for k in m.knobs:
        for bad in _bad_values(k):
            try:
                m.resolve({k.name: bad})
            except KnobError as exc:
                if f"{name}.{k.name}" not in str(exc):
                    raise Fault(f"{k.name}={bad!r} is refused without naming '{name}.{k.name}'") from None
            else:
                raise Fault(f"{k.name}={bad!r} is outside its range but was accepted")
    tr = ctx.method_trainer(name)
    for k in m.knobs:
        for v in _edge_values(k):
            try:
                tr.k = m.resolve({k.name: v})
            except UserError:
                continue  # refused together with another knob's default: a message, fine
            try:
                _terms_ok(m, _loss(tr), f"knob edge {k.name}={v!r}")
            except UserError:
                continue
    tr.k = m.resolve({"batch_size": METHOD_BATCH, "augment": "none"})


def check_method_loss(name: str, ctx: Context) -> None:
    """Finite scalar ``total`` and declared terms; the gradient reaches the model's parameters."""
    tr = ctx.method_trainer(name)
    out = _loss(tr)
    _terms_ok(tr.method, out, "loss")
    if not out["total"].requires_grad:
        raise Fault("gradient: 'total' does not depend on the model's parameters (was it detached?)")
    out["total"].backward()
    norms = [float(p.grad.norm()) for p in tr.model.parameters() if p.grad is not None]
    if not norms or not all(math.isfinite(n) for n in norms) or sum(norms) == 0:
        raise Fault("gradient: backward of 'total' leaves no finite, non-zero gradient on the parameters")


def check_method_determinism(name: str, ctx: Context) -> None:
    tr = ctx.method_trainer(name)
    a, b = _loss(tr), _loss(tr)
    if float(a["total"]) != float(b["total"]):
        raise Fault(f"determinism: the same seed gives losses {float(a['total'])} and {float(b['total'])}; "
                    "draw randomness from torch's seeded generator or trainer.np_rng")


METHOD_CHECKS = (check_method_declaration, check_method_knobs, check_method_loss, check_method_determinism)


def check_method(name: str, ctx: Context | None = None) -> Report:
    """The training-method battery on a registered method."""
    src = source_of(name, "methods")
    return run(METHOD_CHECKS, name, ctx or Context(), f"{name}" + (f" (plugin {src.source})" if src else ""))
