"""OOD metrics on scikit-learn (docs/architecture.md, "Score sign": ID is the positive class).

- AUROC: ``roc_auc_score`` with ID = 1 (ties count half).
- AUPR-In: average precision, ID positive; AUPR-Out: OOD positive on negated scores.
- FPR@95TPR: ``t`` = the 5th percentile of ID scores (numpy's linear interpolation);
  the fraction of OOD scores ``>= t``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve, precision_recall_curve

from .errors import UserError

METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")
HIGHER_IS_BETTER = {"auroc": True, "fpr95": False, "aupr_in": True, "aupr_out": True}


class MetricError(UserError):
    pass


def _check(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(id_scores, np.float64).ravel()
    b = np.asarray(ood_scores, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise MetricError("metrics need at least one ID and one OOD score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        bad = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
        raise MetricError(f"{bad} scores are NaN or infinite; check the detector's knobs")
    return a, b


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD scores at or above the threshold that keeps ``tpr`` of ID scores."""
    a, b = _check(id_scores, ood_scores)
    t = np.percentile(a, 100.0 - 100.0 * tpr)
    return float((b >= t).mean())


def threshold_at_tpr(id_scores: np.ndarray, tpr: float = 0.95) -> float:
    return float(np.percentile(np.asarray(id_scores, np.float64), 100.0 - 100.0 * tpr))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, FPR@95TPR, AUPR-In and AUPR-Out as fractions in [0, 1]."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    s = np.concatenate([a, b])
    return {
        "auroc": float(roc_auc_score(y, s)),
        "fpr95": fpr_at_tpr(a, b),
        # average_precision_score sums float steps and can land at 1.0000000000000002: clip into [0, 1]
        "aupr_in": float(np.clip(average_precision_score(y, s), 0.0, 1.0)),
        "aupr_out": float(np.clip(average_precision_score(1 - y, -s), 0.0, 1.0)),
    }


def id_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    m = labels >= 0
    if not m.any():
        return float("nan")
    return float((np.asarray(logits)[m].argmax(1) == labels[m]).mean())


def roc(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with ID positive."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return roc_curve(y, np.concatenate([a, b]))


def pr(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) with ID positive."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return precision_recall_curve(y, np.concatenate([a, b]))


@dataclass
class ThresholdStats:
    threshold: float
    tpr: float
    fpr: float
    id_above: int
    id_below: int
    ood_above: int
    ood_below: int


def at_threshold(id_scores: np.ndarray, ood_scores: np.ndarray, t: float) -> ThresholdStats:
    """Counts on each side of ``t``: a sample with score >= t is called ID."""
    a, b = _check(id_scores, ood_scores)
    ia, oa = int((a >= t).sum()), int((b >= t).sum())
    return ThresholdStats(float(t), ia / a.size, oa / b.size, ia, a.size - ia, oa, b.size - oa)


def bootstrap_ci(id_scores: np.ndarray, ood_scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 metrics: tuple[str, ...] = ("auroc", "fpr95"), level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap, ID and OOD resampled separately with replacement.

    The resamples are ``rng.integers`` index draws (ID first, then OOD) from
    ``default_rng(seed)``; see :func:`bootstrap_draws` for how each resample's metric is
    computed without re-sorting (1,000 sklearn calls per cell would be too slow for a table).
    """
    draws = bootstrap_draws(id_scores, ood_scores, n_boot, seed, metrics)
    return {m: percentile_interval(v, level) for m, v in draws.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return float(np.percentile(values, lo_q)), float(np.percentile(values, hi_q))


@functools.lru_cache(maxsize=16)
def _resample_counts(na: int, nb: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each ID / OOD sample occurs in each resample, shape (n, n_boot).

    The draws depend only on the sizes and the seed, so one table's cells (same ID set,
    same OOD sets) share them; cached, and read-only so no caller can corrupt the cache.
    Samples-major layout: the cumulative sums below then run over contiguous rows.
    float32 while every count and sum involved stays below 2^24 (exact integers), float64
    otherwise.
    """
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, na, size=(n_boot, na))
    ib = rng.integers(0, nb, size=(n_boot, nb))
    dt = np.float32 if 2 * na * nb < 2 ** 24 else np.float64
    out = []
    for idx, n in ((ia, na), (ib, nb)):
        flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
        c = np.ascontiguousarray(np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).T, dtype=dt)
        c.setflags(write=False)
        out.append(c)
    return out[0], out[1]


def _np_lerp(lo: np.ndarray, hi: np.ndarray, frac: float) -> np.ndarray:
    # numpy's percentile interpolation, bit for bit (it switches formula at frac 0.5)
    d = hi - lo
    return hi - d * (1.0 - frac) if frac >= 0.5 else lo + d * frac


def _cumsum_rows(w: np.ndarray, order: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[i] = Σ_{j ≤ i} w[order[j]]`` row by row (``out`` has ``len(order)`` rows).

    Hand-written: ``np.cumsum(w[order], axis=0)`` walks a (rows × resamples) array column by
    column and measured 3.7–6.5 ms for 1,000 × 1,000 float32 on this CPU; one vector add per
    row takes 1.0 ms, skips the gathered copy and adds in the same order (bit-identical).
    """
    if len(order):
        out[0] = w[order[0]]
    for i in range(1, len(order)):
        np.add(out[i - 1], w[order[i]], out=out[i])
    return out


def _resampled_order_stats(sorted_vals: np.ndarray, w: np.ndarray, order: np.ndarray,
                           ranks: tuple[int, ...]) -> list[np.ndarray]:
    """Per resample, the values at 0-based ``ranks`` of the resample sorted ascending (``w[order]`` sorted weights).

    Only the cumulative weights up to the first row that passes the largest rank in every
    resample are needed; start with a prefix and widen it only if some resample needs more.
    """
    n = w.shape[0]
    top = max(ranks)
    m = min(n, 2 * top + 64)
    while True:
        c = _cumsum_rows(w, order[:m], np.empty((m, w.shape[1]), w.dtype))
        if m == n or c[-1].min() > top:
            return [sorted_vals[np.minimum((c <= r).sum(axis=0), n - 1)] for r in ranks]
        m = min(n, 2 * m)


def bootstrap_draws(id_scores: np.ndarray, ood_scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                    metrics: tuple[str, ...] = ("auroc", "fpr95")) -> dict[str, np.ndarray]:
    """Each resample's AUROC and/or FPR@95TPR, shape ``(n_boot,)`` per metric.

    Hand-written because no library does weighted resampling this fast: a resample is a
    vector of multiplicities ``w`` over the original samples, so with the OOD scores
    sorted once, ``Σ_j w_j·1(b_j < a)`` is a cumulative sum looked up at ``a``'s position.
    AUROC (ties count half) and the 5th-percentile threshold (numpy's linear
    interpolation) then cost O(n_boot·(n_id + n_ood)) instead of a sort per resample.
    Equal to ``roc_auc_score`` / ``np.percentile`` on the explicitly resampled arrays
    (tests/analysis/test_compare_tuning.py and tests/core/test_metrics.py check both against a direct loop).
    """
    a, b = _check(id_scores, ood_scores)
    unknown = set(metrics) - {"auroc", "fpr95"}
    if unknown:
        raise MetricError(f"bootstrap supports auroc and fpr95; got {', '.join(sorted(unknown))}")
    if n_boot < 1:
        raise MetricError(f"n_boot must be at least 1; got {n_boot}")
    wa, wb = _resample_counts(a.size, b.size, int(n_boot), int(seed))
    ob = np.argsort(b, kind="stable")
    bs = b[ob]
    cb = np.empty((b.size + 1, n_boot), wb.dtype)
    cb[0] = 0
    _cumsum_rows(wb, ob, cb[1:])  # cb[j] = resampled weight of the j smallest OOD scores
    out: dict[str, np.ndarray] = {}
    if "auroc" in metrics:
        lt, le = np.searchsorted(bs, a, side="left"), np.searchsorted(bs, a, side="right")
        if np.array_equal(lt, le):  # no ID score equals an OOD score: one lookup instead of two
            u2 = 2.0 * np.einsum("ij,ij->j", wa, cb[lt]).astype(np.float64)
        else:
            two_below_or_tied = cb[lt]
            two_below_or_tied += cb[le]
            u2 = np.einsum("ij,ij->j", wa, two_below_or_tied).astype(np.float64)
        out["auroc"] = u2 / (2.0 * a.size * b.size)
    if "fpr95" in metrics:
        oa = np.argsort(a, kind="stable")
        pos = (a.size - 1) * (5.0 / 100.0)
        lo = int(np.floor(pos))
        frac = float(pos - lo)
        v_lo, v_hi = _resampled_order_stats(a[oa], wa, oa, (lo, min(lo + 1, a.size - 1)))
        t = _np_lerp(v_lo, v_hi, frac)
        below_t = cb[np.searchsorted(bs, t, side="left"), np.arange(n_boot)].astype(np.float64)
        out["fpr95"] = (b.size - below_t) / b.size
    return out

class SortedScores:
    """One set of scores sorted once, so every OOD set is compared by binary search.

    Hand-written because scikit-learn re-sorts and re-validates the concatenated scores on
    every call (three calls per OOD set per slider move); the results equal
    ``roc_auc_score`` / ``average_precision_score`` (tests check it to 1e-12).
    """

    def __init__(self, scores):
        v = np.sort(np.asarray(scores, np.float64).ravel())
        self.values = v
        # Distinct values and their counts from the sorted array (np.unique would sort again).
        first = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if v.size else np.zeros(0, np.int64)
        self.uniq = v[first]
        self.counts = np.diff(np.r_[first, v.size])

    def __len__(self):
        return self.values.size

    def count_ge(self, t):
        return self.values.size - np.searchsorted(self.values, t, side="left")

    def count_gt(self, t):
        return self.values.size - np.searchsorted(self.values, t, side="right")

    def count_le(self, t):
        return np.searchsorted(self.values, t, side="right")


def fast_ood_metrics(A: "SortedScores", B: "SortedScores") -> dict[str, float]:
    """The four metrics of :func:`ood_metrics` from pre-sorted scores (the slider's hot path)."""
    na, nb = len(A), len(B)
    # AUROC = P(ID > OOD) + 0.5 P(ID = OOD): over distinct OOD values with their counts.
    gt = A.count_gt(B.uniq)
    eq = A.count_le(B.uniq) - (na - A.count_ge(B.uniq))  # #ID <= b minus #ID < b
    auroc = float(((gt + 0.5 * eq) * B.counts).sum() / (na * nb))
    # AUPR-In: thresholds at distinct ID values, descending; TP = #ID >= a, FP = #OOD >= a.
    tp = A.count_ge(A.uniq)
    fp = B.count_ge(A.uniq)
    aupr_in = float((A.counts / na * tp / (tp + fp)).sum())
    # AUPR-Out: OOD positive on negated scores: thresholds at distinct OOD values; TP = #OOD <= b, FP = #ID <= b.
    tpo = B.count_le(B.uniq)
    fpo = A.count_le(B.uniq)
    aupr_out = float((B.counts / nb * tpo / (tpo + fpo)).sum())
    t = np.percentile(A.values, 5.0)
    fpr95 = float(B.count_ge(t) / nb)
    return {"auroc": auroc, "fpr95": fpr95, "aupr_in": aupr_in, "aupr_out": aupr_out}


def metrics_table(id_scores: np.ndarray | SortedScores, ood_scores: dict[str, np.ndarray | SortedScores],
                  percent: bool = False):
    """One row per OOD set plus their mean: the table every page shows.

    Returns a pandas DataFrame with columns ood_dataset, n_ood, auroc, fpr95, aupr_in, aupr_out.
    The ID scores are sorted once and shared by every OOD set (:class:`SortedScores`); scores
    already sorted (a :class:`SortedScores`, as in :class:`ScoreSets`) are not sorted again.
    """
    import pandas as pd

    a = id_scores if isinstance(id_scores, SortedScores) else SortedScores(_check(id_scores, [0.0])[0])
    rows = []
    for name, s in ood_scores.items():
        b = s if isinstance(s, SortedScores) else SortedScores(_check(a.values, s)[1])
        rows.append({"ood_dataset": name, "n_ood": len(b), **fast_ood_metrics(a, b)})
    df = pd.DataFrame(rows, columns=["ood_dataset", "n_ood", *METRICS])
    if len(df) > 1:
        mean = {"ood_dataset": "mean", "n_ood": int(df["n_ood"].sum()), **{k: float(df[k].mean()) for k in METRICS}}
        df = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
    if percent:
        df[list(METRICS)] = df[list(METRICS)] * 100.0
    return df


# --- the Scores page's hot path: sort once per knob setting, then everything is a lookup -----------
# (docs/architecture.md, "The flow": a slider touches only cached arrays.)

def curve_thresholds(A: SortedScores, B: SortedScores, max_points: int = 1000) -> np.ndarray:
    """At most about ``max_points`` thresholds, descending, at which ROC/PR points are drawn.

    Every threshold is a score that occurs in ``A`` or ``B``, so every point drawn is a vertex
    of the exact curve (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``); they
    are spread evenly over the pooled scores' ranks, and the extremes are always kept.
    """
    u = np.union1d(A.uniq, B.uniq)
    if u.size > max_points:
        u = u[np.unique(np.linspace(0, u.size - 1, max_points).round().astype(np.int64))]
    return u[::-1]


def roc_points(A: SortedScores, B: SortedScores, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC (ID positive) at :func:`curve_thresholds`, starting at (0, 0)."""
    t = curve_thresholds(A, B, max_points)
    return np.r_[0.0, B.count_ge(t) / len(B)], np.r_[0.0, A.count_ge(t) / len(A)]


def pr_points(A: SortedScores, B: SortedScores, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of the PR curve (ID positive) at :func:`curve_thresholds`, starting at recall 0."""
    t = curve_thresholds(A, B, max_points)
    tp, fp = A.count_ge(t), B.count_ge(t)
    keep = tp + fp > 0
    tp, fp = tp[keep], fp[keep]
    p = tp / (tp + fp)
    return np.r_[0.0, tp / len(A)], np.r_[p[0] if p.size else 1.0, p]


def histogram_counts(A: SortedScores, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(scores, edges)[0]`` from sorted scores: one binary search per edge (last bin closed)."""
    idx = np.searchsorted(A.values, edges, side="left")
    idx[-1] = np.searchsorted(A.values, edges[-1], side="right")
    return np.diff(idx)


@dataclass
class ScoreSets:
    """The ID scores and each OOD set's scores, each sorted once (:class:`SortedScores`).

    Built once per knob setting; the table, a threshold's counts, the histogram counts and
    the curves are then binary searches, so a threshold move costs microseconds.
    """

    id_name: str
    id: SortedScores
    ood: dict[str, SortedScores]

    @classmethod
    def from_arrays(cls, id_scores: np.ndarray, ood_scores: dict[str, np.ndarray], id_name: str = "ID") -> "ScoreSets":
        a = SortedScores(_check(id_scores, [0.0])[0])
        return cls(id_name, a, {n: SortedScores(_check([0.0], s)[1]) for n, s in ood_scores.items()})

    @property
    def lo(self) -> float:
        return float(min([self.id.values[0]] + [b.values[0] for b in self.ood.values()]))

    @property
    def hi(self) -> float:
        return float(max([self.id.values[-1]] + [b.values[-1] for b in self.ood.values()]))

    def table(self):
        """:func:`metrics_table` without sorting again."""
        return metrics_table(self.id, self.ood)

    def threshold_at_tpr(self, tpr: float = 0.95) -> float:
        """As :func:`threshold_at_tpr` (the same numpy call; on sorted input its partition is a single pass)."""
        return threshold_at_tpr(self.id.values, tpr)

    def at_threshold(self, name: str, t: float) -> ThresholdStats:
        """As :func:`at_threshold` for the OOD set ``name``."""
        a, b = self.id, self.ood[name]
        ia, oa = int(a.count_ge(t)), int(b.count_ge(t))
        return ThresholdStats(float(t), ia / len(a), oa / len(b), ia, len(a) - ia, oa, len(b) - oa)
