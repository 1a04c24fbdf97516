"""OOD metrics on scikit-learn (DESIGN.md contract 1: ID is the positive class).

- AUROC: ``roc_auc_score`` with ID = 1 (ties count half).
- AUPR-In: average precision, ID positive; AUPR-Out: OOD positive on negated scores.
- FPR@95TPR: ``t`` = the 5th percentile of ID scores (numpy's linear interpolation);
  the fraction of OOD scores ``>= t``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve, precision_recall_curve

METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")
HIGHER_IS_BETTER = {"auroc": True, "fpr95": False, "aupr_in": True, "aupr_out": True}


class MetricError(ValueError):
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
    t = np.percentile(a, 100.0 * (1.0 - tpr))
    return float((b >= t).mean())


def threshold_at_tpr(id_scores: np.ndarray, tpr: float = 0.95) -> float:
    return float(np.percentile(np.asarray(id_scores, np.float64), 100.0 * (1.0 - tpr)))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, FPR@95TPR, AUPR-In and AUPR-Out as fractions in [0, 1]."""
    a, b = _check(id_scores, ood_scores)
    y = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    s = np.concatenate([a, b])
    return {
        "auroc": float(roc_auc_score(y, s)),
        "fpr95": fpr_at_tpr(a, b),
        "aupr_in": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
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

    AUROC is computed from ranks in a vectorised loop (equal to roc_auc_score with
    ties counted half), since 1,000 sklearn calls per cell would be too slow for a table.
    """
    from scipy.stats import rankdata

    a, b = _check(id_scores, ood_scores)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    A, B = a[ia], b[ib]
    out: dict[str, tuple[float, float]] = {}
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    if "auroc" in metrics:
        # Mann-Whitney U per resample, ties averaged (rankdata 'average'), row-wise.
        ranks = rankdata(np.concatenate([A, B], axis=1), axis=1)
        u = ranks[:, : a.size].sum(axis=1) - a.size * (a.size + 1) / 2
        auc = u / (a.size * b.size)
        out["auroc"] = (float(np.percentile(auc, lo_q)), float(np.percentile(auc, hi_q)))
    if "fpr95" in metrics:
        t = np.percentile(A, 5.0, axis=1)
        f = (B >= t[:, None]).mean(axis=1)
        out["fpr95"] = (float(np.percentile(f, lo_q)), float(np.percentile(f, hi_q)))
    return out


def metrics_table(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray], percent: bool = False):
    """One row per OOD set plus their mean: the table every page shows.

    Returns a pandas DataFrame with columns ood_dataset, n_ood, auroc, fpr95, aupr_in, aupr_out.
    """
    import pandas as pd

    rows = []
    for name, s in ood_scores.items():
        m = ood_metrics(id_scores, s)
        rows.append({"ood_dataset": name, "n_ood": int(np.asarray(s).size), **m})
    df = pd.DataFrame(rows, columns=["ood_dataset", "n_ood", *METRICS])
    if len(df) > 1:
        mean = {"ood_dataset": "mean", "n_ood": int(df["n_ood"].sum()), **{k: float(df[k].mean()) for k in METRICS}}
        df = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
    if percent:
        df[list(METRICS)] = df[list(METRICS)] * 100.0
    return df
