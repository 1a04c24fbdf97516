"""2-D maps (PCA, t-SNE, UMAP) of features or low-dimensional gradients, and how separable they are.

``embed`` turns an ``(N, D)`` matrix into ``(N, 2)`` coordinates, disk-cached under a
hash of the matrix and the settings. ``separability`` measures how well a kNN classifier
tells ID from OOD points (cross-validated AUROC), so a feature map and a gradient map
can be compared by a number, in 2-D and in the full space. ``compute_map`` builds the
points a page draws: coordinates, dataset, sample index, label, prediction and scores,
so every point leads back to its image.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import cache
from . import gradients as _grad
from .errors import UserError
from .knobs import Knob, KnobError, KnobSet
from .workbench import WorkbenchError

Progress = Callable[[float, str], None]
MAP_VERSION = 3
METHODS = ("pca", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
SPACES = ("features", "gradients")
SCORE_COLUMNS = ("energy", "gradnorm", "msp", "maxlogit", "rg")
_STANDARDIZE = Knob("standardize", True, kind="bool", label="Standardise columns",
                    help="z-score each dimension before embedding (and for separability)")
# Each method's knobs, declared once: the Maps page builds its widgets from these and
# every entry point (embed, is_embedded, compute_map) validates through them.
KNOBS: dict[str, KnobSet] = {
    "pca": KnobSet("pca", (_STANDARDIZE,)),
    "tsne": KnobSet("tsne", (
        Knob("perplexity", 30.0, 2.0, 100.0, step=1.0, label="Perplexity",
             help="the effective number of neighbours; at most (N−1)/3"),
        # 500 iterations (sklearn's default is 1000): the layout has settled by then and it halves the time.
        Knob("max_iter", 500, 250, 1000, kind="int", step=250, label="Iterations"),
        _STANDARDIZE,
    )),
    "umap": KnobSet("umap", (
        Knob("n_neighbors", 15, 2, 200, kind="int", label="n_neighbors", help="larger: more global structure"),
        Knob("min_dist", 0.1, 0.0, 1.0, step=0.01, label="min_dist", help="how tightly points may pack"),
        # 200 epochs is what umap-learn itself uses above 10,000 points; 500 below buys little.
        Knob("n_epochs", 200, 10, 1000, kind="int", step=10, label="n_epochs",
             help="optimisation epochs of the layout"),
        _STANDARDIZE,
    )),
}
# The low-dimensional gradient settings a gradient map exposes: the one declaration in
# ood_core.gradients (its reference preset as defaults), so the Maps page cannot drift from the detectors.
GRADIENT_KNOBS = KnobSet("gradients", tuple(k for k in _grad.GRAD_KNOBS
                                             if k.name in ("loss", "param_set", "kernel", "subspace", "r")))
PRE_PCA_DIMS = 50
MIN_POINTS = 3


class MapError(WorkbenchError):
    """A map cannot be drawn as asked; the message says what to change (a WorkbenchError, so pages show it as one line)."""


# --- embedding -------------------------------------------------------------------------------

def resolve_knobs(method: str, **knobs: Any) -> dict[str, Any]:
    """The method's defaults overlaid with ``knobs``, each validated against its declaration."""
    if method not in METHODS:
        raise MapError(f"map method must be one of {', '.join(METHODS)}; got {method!r}")
    try:
        return KNOBS[method].resolve(knobs)
    except KnobError as exc:
        raise MapError(str(exc)) from None


def check_input(X: np.ndarray, method: str, knobs: dict[str, Any]) -> np.ndarray:
    """Validate the matrix, and the resolved ``knobs`` against its number of points; a MapError says what to change."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise MapError(f"a map needs a 2-D matrix (points × dimensions); got shape {X.shape}")
    n, d = X.shape
    if n < MIN_POINTS:
        raise MapError(f"a map needs at least {MIN_POINTS} points; got {n}. Pick more samples or more datasets")
    if d < 2 and method == "pca":
        raise MapError(f"PCA to 2-D needs at least 2 dimensions; the data has {d}")
    if d < 1:
        raise MapError("the data has no dimensions (does the model expose features?)")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise MapError(f"{bad} of {n} points have NaN or infinite values; a map needs finite values")
    if method == "tsne":
        perp = knobs["perplexity"]
        top = (n - 1) / 3.0  # each point needs ~3·perplexity neighbours (the Barnes-Hut tree's rule)
        if perp > top:
            raise MapError(f"t-SNE perplexity {perp:g} is too large for {n} points: use at most {max(1, int(top))} "
                           f"(≤ (N−1)/3), or map more points")
    if method == "umap":
        nn_ = knobs["n_neighbors"]
        if nn_ >= n:
            raise MapError(f"UMAP n_neighbors {nn_} is too large for {n} points: use at most {n - 1}, or map more points")
    return X


def _prepare(X: np.ndarray, standardize: bool, reduce_to: int | None, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler(with_std=standardize).fit_transform(np.asarray(X, np.float64))
    if reduce_to is not None and Z.shape[1] > reduce_to and Z.shape[0] > reduce_to:
        Z = PCA(reduce_to, random_state=seed).fit_transform(Z)
    return Z


def _embed(X: np.ndarray, method: str, seed: int, knobs: dict[str, Any]) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA
        Z = _prepare(X, knobs["standardize"], None, seed)
        E = PCA(2, random_state=seed).fit_transform(Z) if Z.shape[1] >= 2 else np.c_[Z, np.zeros(len(Z))]
        return E
    Z = _prepare(X, knobs["standardize"], PRE_PCA_DIMS, seed).astype(np.float32)
    if Z.shape[1] == 1:  # t-SNE/UMAP of a single dimension: give them a constant second column
        Z = np.c_[Z, np.zeros(len(Z), np.float32)]
    if method == "tsne":
        from sklearn.manifold import TSNE
        return TSNE(2, perplexity=knobs["perplexity"], max_iter=knobs["max_iter"], init="pca", learning_rate="auto",
                    random_state=seed, n_jobs=2).fit_transform(Z)
    # UMAP: exact neighbours from scikit-learn are faster here than pynndescent's first (JIT-compiled) call.
    from sklearn.neighbors import NearestNeighbors
    k = knobs["n_neighbors"]
    dist, idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": seeded UMAP is single-threaded
        import umap
        reducer = umap.UMAP(n_neighbors=k, min_dist=knobs["min_dist"], n_epochs=knobs["n_epochs"],
                            random_state=seed, precomputed_knn=(idx, dist, None),
                            init="spectral" if len(Z) > k + 2 else "random")
        return reducer.fit_transform(Z)


def embed_key(X: np.ndarray, method: str, seed: int, knobs: dict[str, Any], digest: str | None = None) -> str:
    """The cache key of an embedding; ``digest`` (``cache.array_sha256(X)``, the same key) saves hashing X again."""
    X = np.ascontiguousarray(X) if digest is None else X
    return cache.make_key("map", v=MAP_VERSION, X=digest or X, shape=list(X.shape), dtype=str(X.dtype), method=method,
                          seed=int(seed), knobs=knobs)


def embed(X: np.ndarray, method: str = "pca", seed: int = 0, **knobs: Any) -> np.ndarray:
    """2-D coordinates ``(N, 2)`` of the rows of ``X``, disk-cached per (X, method, seed, knobs).

    Columns are centred (and standardised unless ``standardize=False``); t-SNE and UMAP
    first reduce to 50 principal components for speed. Knobs: :data:`KNOBS` (t-SNE
    ``perplexity``, ``max_iter``; UMAP ``n_neighbors``, ``min_dist``, ``n_epochs``).
    """
    return _embed_cached(X, method, seed, resolve_knobs(method, **knobs))


def _embed_cached(X: np.ndarray, method: str, seed: int, kn: dict[str, Any], digest: str | None = None) -> np.ndarray:
    """:func:`embed` with knobs already resolved (``digest``: see :func:`embed_key`)."""
    X = check_input(X, method, kn)
    key = embed_key(X, method, seed, kn, digest)
    arr = cache.cached_arrays(key, lambda: {"xy": _embed(X, method, int(seed), kn).astype(np.float32)})
    return arr["xy"]


def is_embedded(X: np.ndarray, method: str = "pca", seed: int = 0, **knobs: Any) -> bool:
    """Whether ``embed`` would answer from the cache."""
    kn = resolve_knobs(method, **knobs)
    return cache.has(embed_key(np.asarray(X), method, seed, kn))


# --- separability ----------------------------------------------------------------------------

def knn_id_probability(X: np.ndarray, is_id: np.ndarray, k: int = 15, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Cross-validated probability of being ID from a kNN classifier on standardised columns.

    Each point's probability comes from a classifier fitted on the other ``folds − 1``
    folds (stratified, shuffled with ``seed``), so no point votes for itself.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # float32: scikit-learn's neighbour search runs about twice as fast, and AUROC does not notice.
    X = np.asarray(X, np.float32)
    y = np.asarray(is_id, bool).astype(int)
    if X.ndim != 2 or len(X) != len(y):
        raise MapError(f"separability needs a points × dimensions matrix and one ID flag per point; got {X.shape}, {y.shape}")
    n_id, n_ood = int(y.sum()), int(len(y) - y.sum())
    if min(n_id, n_ood) < 2:
        raise MapError(f"separability needs at least 2 ID and 2 OOD points; got {n_id} ID and {n_ood} OOD")
    if not np.isfinite(X).all():
        raise MapError("separability needs finite values")
    folds = int(min(folds, n_id, n_ood))
    n_fit = len(X) - (len(X) + folds - 1) // folds  # the smallest training fold
    k = int(max(1, min(k, n_fit)))
    clf = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, X, y, cv=cv, method="predict_proba")[:, 1]


def separability(X_id: np.ndarray, X_ood: np.ndarray, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated kNN AUROC of ID (positive) vs OOD points.

    A kNN classifier (on standardised columns) is fitted on ``folds − 1`` folds and gives
    each held-out point a probability of being ID; the AUROC of those probabilities is
    0.5 when the two sets are mixed and 1.0 when they occupy separate regions.
    """
    from sklearn.metrics import roc_auc_score

    X_id, X_ood = np.asarray(X_id), np.asarray(X_ood)
    if X_id.ndim != 2 or X_ood.ndim != 2 or X_id.shape[1] != X_ood.shape[1]:
        raise MapError(f"ID and OOD points must be matrices with the same columns; got {X_id.shape} and {X_ood.shape}")
    is_id = np.r_[np.ones(len(X_id), bool), np.zeros(len(X_ood), bool)]
    proba = knn_id_probability(np.vstack([X_id, X_ood]), is_id, k, folds, seed)
    return float(roc_auc_score(is_id, proba))


def separability_table(xy: np.ndarray, full: np.ndarray, datasets: Sequence[str], id_name: str, k: int = 15,
                       seed: int = 0, full_digest: str | None = None) -> pd.DataFrame:
    """ID-vs-OOD kNN AUROC in 2-D and in the full space, per OOD set and for all OOD sets pooled.

    Each row fits its own cross-validated kNN classifier on the ID points and that OOD
    set's points (for "all OOD", every OOD point), in each space. One pooled classifier
    scored per set would be about 3× cheaper but lets one set's points pull ID points
    away from another's (textures dropped from 1.00 to 0.98 that way), so we pay for
    separate fits: about 4 s of CPU at 6,000 points in 128 dimensions.
    """
    from sklearn.metrics import roc_auc_score

    datasets = np.asarray(datasets).astype(str)
    xy, full = np.asarray(xy), np.asarray(full)
    # full_digest (cache.array_sha256(full), the same key): compute_map has hashed that matrix already.
    key = cache.make_key("separability", v=MAP_VERSION, xy=np.ascontiguousarray(xy),
                         full=full_digest or np.ascontiguousarray(full), shape=[list(xy.shape), list(full.shape)],
                         datasets=datasets, id=id_name, k=k, seed=seed)  # an array: hashed as bytes, not 100,000 list items

    is_id = datasets == id_name
    if min(int(is_id.sum()), int((~is_id).sum())) < 2:  # a tiny map: drawable, but nothing to cross-validate
        return pd.DataFrame({"ood": pd.Series([], dtype=str), "n_ood": pd.Series([], dtype=np.int64),
                             "auroc_2d": pd.Series([], dtype=float), "auroc_full": pd.Series([], dtype=float)})

    def compute() -> dict[str, np.ndarray]:
        oods = [d for d in dict.fromkeys(datasets.tolist()) if d != id_name]
        groups = [(d, datasets == d) for d in oods] + ([("all OOD", ~is_id)] if len(oods) > 1 else [])
        rows = []
        for name, m in groups:
            if m.sum() < 2:
                continue
            sel = is_id | m
            a2, af = (roc_auc_score(is_id[sel], knn_id_probability(X[sel], is_id[sel], k, seed=seed))
                      for X in (xy, full))
            rows.append((name, int(m.sum()), a2, af))
        return {"ood": np.array([r[0] for r in rows], dtype=str), "n": np.array([r[1] for r in rows], np.int64),
                "auroc_2d": np.array([r[2] for r in rows]), "auroc_full": np.array([r[3] for r in rows])}

    arr = cache.cached_arrays(key, compute)
    return pd.DataFrame({"ood": arr["ood"].astype(str), "n_ood": arr["n"], "auroc_2d": arr["auroc_2d"],
                         "auroc_full": arr["auroc_full"]})


# --- the points a page draws ------------------------------------------------------------------

@dataclass
class MapResult:
    """One map: its points (``frame``), the full-space matrix, separability and timing."""

    frame: pd.DataFrame
    full: np.ndarray
    separability: pd.DataFrame
    space: str
    method: str
    knobs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dims: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # What pages derive from the frame and keep with it (the Maps page: its encoded points per
    # colouring, ood_core.figures.maps.map_points), so a rerun does not re-encode 100,000 points.
    views: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def summary(self) -> dict[str, float]:
        """Pooled ID-vs-all-OOD separability (the last row), 2-D and full space."""
        if self.separability.empty:
            return {"auroc_2d": float("nan"), "auroc_full": float("nan")}
        row = self.separability.iloc[-1]
        return {"auroc_2d": float(row["auroc_2d"]), "auroc_full": float(row["auroc_full"])}


def sample_indices(n: int, n_per_set: int | None, seed: int) -> np.ndarray:
    """A fixed-seed sorted subset of ``range(n)`` of size ``min(n, n_per_set)``."""
    if n_per_set is None or n_per_set >= n:
        return np.arange(n)
    if n_per_set < 1:
        raise MapError(f"samples per dataset must be at least 1; got {n_per_set}")
    return np.sort(np.random.default_rng(seed).choice(n, int(n_per_set), replace=False))


def _names(id_name: str, ood_names: Sequence[str]) -> list[str]:
    return [id_name] + [n for n in dict.fromkeys(ood_names) if n != id_name]


def compute_map(bundle: Any, id_name: str = "mnist", ood_names: Sequence[str] = (), space: str = "features",
                method: str = "pca", n_per_set: int | None = 1000, seed: int = 0,
                grad_params: dict[str, Any] | None = None, progress: Progress | None = None, sep_k: int = 15,
                **knobs: Any) -> MapResult:
    """Embed the ID test set and the OOD sets jointly in one 2-D map.

    ``space='features'`` maps penultimate features; ``'gradients'`` maps low-dimensional
    gradients ``G_low`` (``ood_core.gradients.lowdim_for_dataset`` with ``grad_params``).
    Each set is subsampled to ``n_per_set`` points with ``seed``. Knobs go to :func:`embed`.
    """
    from . import workbench as wb
    from .data import get_dataset

    if space not in SPACES:
        raise MapError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
    kn = resolve_knobs(method, **knobs)
    names = _names(id_name, ood_names)
    datasets = [get_dataset(n) for n in names]  # unknown names fail here, before any work
    if space == "features" and not bundle.has_features:
        raise MapError(f"this model exposes no features ({bundle.feature_reason}); map its gradients instead")
    t0 = time.time()
    say = progress or (lambda f, m: None)
    total = sum(len(sample_indices(len(ds), n_per_set, seed)) for ds in datasets)
    if total < MIN_POINTS:
        raise MapError(f"a map needs at least {MIN_POINTS} points; these settings give {total}. "
                       "Pick more samples per dataset or more datasets")
    if method in ("tsne", "umap"):  # refuse a bad perplexity / n_neighbors before computing anything
        check_input(np.zeros((total, 2)), method, kn)
    blocks, frames = [], []
    span = 0.8 if space == "gradients" else 0.5
    for i, (name, ds) in enumerate(zip(names, datasets)):
        lo, hi = span * i / len(names), span * (i + 1) / len(names)
        ext = wb.get_extraction(bundle, ds, progress=lambda f, m, lo=lo, hi=hi: say(lo + (hi - lo) * f, m))
        idx = sample_indices(len(ds), n_per_set, seed)
        if space == "features":
            X = ext.features
        else:
            from .gradients import lowdim_for_dataset
            X = lowdim_for_dataset(bundle, name, id_name, grad_params,
                                   progress=lambda f, m, lo=lo, hi=hi: say(lo + (hi - lo) * f, m))
        blocks.append(np.asarray(X, np.float32)[idx])
        df = pd.DataFrame({
            "dataset": name, "index": idx.astype(np.int64), "sample_id": np.asarray(ext.sample_ids)[idx],
            "label": ext.labels[idx], "pred": ext.preds[idx], "is_id": name == id_name,
        })
        for d in SCORE_COLUMNS:
            try:
                df[d] = wb.score(bundle, d, name, id_name)[idx]
            except UserError:  # e.g. a model without features has no GradNorm/RG: leave the column out
                pass
        frames.append(df)
    X_all = np.vstack(blocks)
    frame = pd.concat(frames, ignore_index=True)
    say(span, f"{METHOD_LABELS[method]} of {len(X_all):,} points in {X_all.shape[1]} dimensions…")
    # One hash of the 100,000-row matrix serves both cache keys (embedding and separability).
    digest = cache.array_sha256(X_all)
    xy = _embed_cached(X_all, method, seed, kn, digest)
    frame.insert(0, "y", xy[:, 1])
    frame.insert(0, "x", xy[:, 0])
    say(0.95, "separability (kNN AUROC, 2-D and full space)…")
    sep = separability_table(xy, X_all, frame["dataset"].to_numpy(), id_name, k=sep_k, seed=seed, full_digest=digest)
    say(1.0, "map ready")
    return MapResult(frame, X_all, sep, space, method, kn, time.time() - t0, int(X_all.shape[1]),
                     {"grad_params": dict(grad_params or {}), "n_points": int(len(X_all))})


def add_score(res: MapResult, bundle: Any, id_name: str, detector: str, progress: Progress | None = None) -> None:
    """Add ``detector``'s scores (its default knobs; higher = more ID) to ``res.frame`` as a column named
    after it, each point's score looked up by its dataset and index. Any registered detector serves,
    built-in or plugin (``compute_map`` adds only :data:`SCORE_COLUMNS`); a model-time detector runs
    over each whole set once and is disk-cached, like everywhere else."""
    from . import workbench as wb

    if detector in res.frame.columns:
        return
    ds = res.frame["dataset"].astype(str).to_numpy()
    index = res.frame["index"].to_numpy()
    col = np.full(len(res.frame), np.nan)
    names = list(dict.fromkeys(ds.tolist()))
    say = progress or (lambda f, m: None)
    for i, name in enumerate(names):
        rows = np.flatnonzero(ds == name)
        s = wb.score(bundle, detector, name, id_name,
                     progress=lambda f, m, i=i: say((i + f) / len(names), m))
        col[rows] = np.asarray(s, np.float64)[index[rows]]
    # a new frame, swapped in whole: another session drawing this (memoised) map keeps a consistent one
    res.frame = res.frame.assign(**{detector: col})
    res.views.pop(detector, None)


def gradients_ready(bundle: Any, id_name: str, ood_names: Sequence[str], grad_params: dict[str, Any] | None = None) -> bool:
    """Whether every set's low-dimensional gradients are already on disk (so no job is needed)."""
    from .data import get_dataset
    from .gradients import lowdim_key, resolve_params, subspace_key

    p = resolve_params(grad_params)
    sk = subspace_key(bundle, id_name, p)
    keys = [(str(cache.cache_dir()), lowdim_key(bundle, get_dataset(n), sk, p)) for n in _names(id_name, ood_names)]
    # cache.has reads and checksums an entry (100,000 × 200 floats: ~0.7 s for a 100,000-point map):
    # a key found once in this process is taken as present (compute_map recomputes an evicted one).
    if all(k in _LOWDIM_PRESENT or cache.has(k[1]) for k in keys):
        _LOWDIM_PRESENT.update(keys)
        return True
    return False


_LOWDIM_PRESENT: set[tuple[str, str]] = set()  # (cache dir, lowdim key) found by gradients_ready
