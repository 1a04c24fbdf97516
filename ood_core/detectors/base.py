"""The shared detector API: knobs as data, ``fit`` then ``score``, one registry.

Every detector returns one float per sample, **higher = more in-distribution**
(docs/architecture.md, "Score sign"). A detector declares its paper, what it needs, its knobs (so the
pages build sliders from the declaration) and its sweep grid (as OpenOOD does), and
implements ``score(extraction, **knobs)`` on cached arrays. Detectors that need the
model at scoring time set ``needs_model`` and implement ``score_model`` instead; the
evaluation layer runs those as cached jobs.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from .. import knobs as _knobs
from ..errors import UserError
from ..extract import Extraction
from ..knobs import Knob, KnobError, Paper, Resolved


ProgressFn = Callable[[float, str], None]


class DetectorError(UserError):
    """Bad detector name, knob value or missing requirement; the message says what to do."""


class DetectorKnobError(DetectorError, KnobError):
    """A detector's knob value out of its declared range, or an unknown knob: raised as is by
    :func:`ood_core.knobs.resolve` (both a ``DetectorError`` and a ``KnobError``, never re-wrapped)."""


class Detector:
    """Base class. Subclasses set the class attributes and implement ``_score``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[Paper | None] = None
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})  # logits, features, head, training, model, nonneg_features
    knobs: tuple[Knob, ...] = ()
    grid: ClassVar[dict[str, Sequence[Any]]] = {}
    family: ClassVar[str] = "output"  # output | feature | gradient | input-gradient
    needs_model: ClassVar[bool] = False
    help: ClassVar[str] = ""

    def __init__(self) -> None:
        self.knobs = tuple(type(self).knobs)
        self.fitted = False
        self.train_info: dict[str, Any] = {}

    # --- declaration helpers -------------------------------------------------
    @property
    def needs_training(self) -> bool:
        return "training" in self.needs

    def knob(self, name: str) -> Knob:
        return _knobs.find(self.knobs, name, self.name, DetectorKnobError)

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def resolve(self, params: Mapping[str, Any] | None = None) -> Resolved:
        """Defaults overlaid with ``params``, validated by the one resolver (``knobs.resolve``);
        values it already resolved against these knobs pass through unchecked (``knobs.ensure``)."""
        return _knobs.ensure(self.knobs, params, self.name, DetectorKnobError)

    def unavailable_reason(self, ext: Extraction) -> str | None:
        """Why this detector cannot run on ``ext`` (None when it can)."""
        if {"features", "head"} & self.needs and not ext.has_features:
            return f"{self.name} needs the model's features (input of the final linear layer), which this model does not expose"
        if "head" in self.needs and not ext.has_head:
            return f"{self.name} needs the final linear layer's weights"
        if "nonneg_features" in self.needs and ext.has_features:
            lowest = ext.memo("feature_min", lambda: float(ext.features.min()))  # checked on every page run
            if lowest < -1e-6:
                return (f"{self.name} assumes non-negative (post-ReLU) features; this model's features go down to "
                        f"{lowest:.3g}")
        return None

    # --- fit / score ---------------------------------------------------------
    def fit(self, train: Extraction | None) -> "Detector":
        """Learn training statistics (no-op for detectors that need none)."""
        if self.needs_training:
            if train is None or len(train) == 0:
                raise DetectorError(f"{self.name} needs training statistics: set an ID training split first")
            reason = self.unavailable_reason(train)
            if reason:
                raise DetectorError(reason)
            self._fit(train)
        self.fitted = True
        return self

    def _fit(self, train: Extraction) -> None:  # pragma: no cover - overridden where needed
        pass

    def score(self, ext: Extraction, knobs: Mapping[str, Any] | None = None, /, **params: Any) -> np.ndarray:
        """Scores, higher = more ID. ``knobs`` (a :class:`~ood_core.knobs.Resolved` from the boundary, used
        as is) or ``params`` override knob defaults; raw values are validated here."""
        if self.needs_model:
            raise DetectorError(f"{self.name} needs the model at scoring time; use ood_core.workbench.score")
        reason = self.unavailable_reason(ext)
        if reason:
            raise DetectorError(reason)
        if self.needs_training and not self.fitted:
            raise DetectorError(f"{self.name} needs training statistics: call fit(train_extraction) first")
        kn = self.resolve({**(knobs or {}), **params} if params else knobs)
        s = np.asarray(self._score(ext, **kn), dtype=np.float64).reshape(-1)
        if s.shape[0] != len(ext):
            raise AssertionError(f"{self.name} returned {s.shape[0]} scores for {len(ext)} samples")
        return s

    def _score(self, ext: Extraction, **knobs: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def derived(self, **knobs: Any) -> dict[str, Any]:
        """Quantities worth showing next to the knobs (e.g. a percentile's absolute value)."""
        return {}

    def diagnostics(self, ext: Extraction, **knobs: Any) -> dict[str, Any]:
        """Per-dataset facts worth showing (e.g. how many samples have a negative energy)."""
        return {}

    def describe(self) -> str:
        ref = f" ({self.paper.cite()})" if self.paper else ""
        return f"{self.title or self.name}{ref}"


class ModelDetector(Detector):
    """A detector that needs the model itself at fitting or scoring time (ODIN, gradients).

    The evaluation layer (``workbench.fitted_detector`` / ``workbench.score``) calls
    :meth:`fit_model` once per (model, training set) and caches :meth:`score_model`'s
    result on disk per setting; ``score`` on cached arrays alone is refused.
    """

    needs_model: ClassVar[bool] = True

    def fit_model(self, bundle: Any, train_ds: Any, train_ext: Extraction,
                  progress: ProgressFn | None = None) -> "ModelDetector":
        """Learn what scoring needs from the model and the ID training split (default: nothing)."""
        if self.needs_training:
            self.fit(train_ext)
        self.fitted = True
        return self

    def score_model(self, bundle: Any, ds: Any, ext: Extraction | None = None,
                    progress: ProgressFn | None = None, **knobs: Any) -> np.ndarray:
        """Scores (higher = more ID) of every image in ``ds``, batched, with progress."""
        raise NotImplementedError

    def estimate(self, bundle: Any, probe: Any, n_images: int, **knobs: Any) -> dict[str, Any]:
        """What scoring ``n_images`` images will cost, from a dry run on ``probe`` (a few images, fitted detector).

        Default: :meth:`score_model` timed (nothing cached) on a quarter of the probe and on all
        of it; the difference gives the cost per image, the rest a fixed cost per call (setting
        up a vmap costs more than 32 images). Memory: a batch of 64 images' activations kept for a
        backward pass (from a one-image forward with hooks). Returns ``seconds``, ``bytes``, ``detail``.
        """
        import time

        from ..extract import run_forward
        from ..gradients.per_sample import _activation_elems

        n2 = len(probe)
        n1 = max(1, n2 // 4)
        full = run_forward(bundle, probe)  # one forward; the quarter's arrays are a slice of it
        times = []
        for sub, ext in ((probe.subset(np.arange(n1)), full.subset(np.arange(n1))), (probe, full)):
            t = time.perf_counter()
            self.score_model(bundle, sub, ext, None, **knobs)
            times.append(time.perf_counter() - t)
        per = max((times[1] - times[0]) / max(1, n2 - n1), times[1] / n2 / 10)
        fixed = max(0.0, times[0] - n1 * per)
        mem = 3 * 4 * 64 * _activation_elems(bundle)
        return {"seconds": fixed + per * n_images, "bytes": mem,
                "detail": f"{1000 * per:.2f} ms per image + {fixed:.1f} s setup, measured on {n1} and {n2}"}


_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def get_detector(name: str) -> Detector:
    """A fresh instance of the named detector."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise DetectorError(f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return cls()


def detector_names() -> list[str]:
    return list(_REGISTRY)


def detector_classes() -> dict[str, type[Detector]]:
    return dict(_REGISTRY)


# --- shared numeric helpers (pure functions on arrays) --------------------------

_POOL: ThreadPoolExecutor | None = None
_PARALLEL_MIN = 1_000_000  # elements; below this a thread hand-off costs more than it saves


def row_blocks(n_rows: int, n_elems: int) -> list[tuple[int, int]]:
    """Row ranges for :func:`parallel_rows`: one per core for big arrays, else one."""
    k = (os.cpu_count() or 1) if n_elems >= _PARALLEL_MIN else 1
    step = -(-n_rows // max(1, k))
    return [(a, min(n_rows, a + step)) for a in range(0, n_rows, max(1, step))]


def parallel_rows(fn: Callable[[int, int], None], n_rows: int, n_elems: int) -> None:
    """Run ``fn(start, stop)`` over row blocks on all cores.

    numpy's element-wise loops (exp, minimum, sums) run on one core but release the GIL,
    so threads over row blocks use both cores of a slider's hot path, bit for bit the
    same result as one call.
    """
    global _POOL
    blocks = row_blocks(n_rows, n_elems)
    if len(blocks) == 1:
        fn(*blocks[0])
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="ood-rows")
    for f in [_POOL.submit(fn, a, b) for a, b in blocks]:
        f.result()


def shifted_exp(z: np.ndarray, T: float, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(m, e, s)``: row max ``m`` of ``z/T``, ``e = exp(z/T − m)`` and ``s = Σ e``, in float64."""
    z = np.asarray(z)
    if axis != 1 or z.ndim != 2:
        zt = np.asarray(z, np.float64)
        zt = zt / T if T != 1.0 else zt
        m = zt.max(axis=axis, keepdims=True)
        e = np.exp(zt - m)
        return m, e, e.sum(axis=axis, keepdims=True)
    n = z.shape[0]
    m = np.empty((n, 1))
    e = np.empty(z.shape)
    s = np.empty((n, 1))

    def block(a: int, b: int) -> None:
        zb = np.asarray(z[a:b], np.float64)
        if T != 1.0:
            zb = zb / T
        mb = zb.max(axis=1, keepdims=True)
        m[a:b] = mb
        eb = e[a:b]
        np.subtract(zb, mb, out=eb)
        np.exp(eb, out=eb)
        s[a:b] = eb.sum(axis=1, keepdims=True)

    parallel_rows(block, n, z.size)
    return m, e, s


def logsumexp(z: np.ndarray, axis: int = 1, T: float = 1.0) -> np.ndarray:
    """Stable ``LSE(z/T)`` along ``axis``."""
    m, _, s = shifted_exp(z, T, axis)
    return (m + np.log(s)).squeeze(axis)


def softmax(z: np.ndarray, T: float = 1.0) -> np.ndarray:
    """``softmax(z/T)`` along axis 1 (float64 output)."""
    _, e, s = shifted_exp(z, T, 1)
    return e / s


def max_softmax(z: np.ndarray, T: float = 1.0) -> np.ndarray:
    """``max_i softmax(z/T)_i`` = ``1 / Σ exp(z/T − max)``: no full softmax needed."""
    _, _, s = shifted_exp(z, T, 1)
    return 1.0 / s[:, 0]


def energy(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * LSE(f/T)`` (higher = more ID)."""
    return T * logsumexp(logits, T=T)


def clipped_l1(features: np.ndarray, k: float) -> np.ndarray:
    """``Σ_j min(h_j, k)`` (RG's feature-space factor).

    Clips in the features' own float32 and accumulates in float64: converting an
    (N, D) block to float64 first would double the cost on a slider's hot path.
    """
    h = np.asarray(features)
    if h.dtype not in (np.float32, np.float64):
        h = h.astype(np.float32)
    kk = h.dtype.type(k)
    out = np.empty(len(h))

    def block(a: int, b: int) -> None:
        out[a:b] = np.minimum(h[a:b], kk).sum(axis=1, dtype=np.float64)

    parallel_rows(block, len(h), h.size)
    return out


def head_logits(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(features, np.float64) @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)


@dataclass
class SortedValues:
    """All training feature values sorted once, so any percentile is an index lookup.

    Matches ``np.percentile``'s default linear interpolation exactly; it keeps percentile
    knobs (ReAct, RG's k as a percentile) off the slider's hot path.
    """

    values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def of(cls, x: np.ndarray, max_values: int = 20_000_000, seed: int = 0) -> "SortedValues":
        flat = np.asarray(x, np.float64).ravel()
        if flat.size > max_values:  # subsample huge feature sets; the percentile barely moves
            flat = np.random.default_rng(seed).choice(flat, max_values, replace=False)
        return cls(np.sort(flat))

    def percentile(self, q: float) -> float:
        v = self.values
        if v.size == 0:
            raise DetectorError("no training values to take a percentile of")
        pos = (v.size - 1) * (q / 100.0)
        lo = int(math.floor(pos))
        hi = min(lo + 1, v.size - 1)
        return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))

