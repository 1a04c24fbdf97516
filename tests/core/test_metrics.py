import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_core import metrics


def _rand(seed=0, n=300, m=500, ties=False):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1, 1, n), rng.normal(0, 1, m)
    if ties:
        a, b = np.round(a), np.round(b)
    return a, b


@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn(ties):
    a, b = _rand(ties=ties)
    m = metrics.ood_metrics(a, b)
    y = np.r_[np.ones(a.size), np.zeros(b.size)]
    s = np.r_[a, b]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    t = np.percentile(a, 5)
    assert m["fpr95"] == pytest.approx((b >= t).mean())


def test_hand_worked_tiny_cases():
    # perfect separation
    m = metrics.ood_metrics([3, 4, 5], [0, 1, 2])
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0
    # all tied: AUROC counts ties half; every OOD sample sits at the threshold -> FPR 1
    m = metrics.ood_metrics([1, 1], [1, 1, 1])
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0
    # ID [1,2,3,4], OOD [2.5]: pairs ID>OOD = 2 of 4 -> 0.5; 5th pct of ID = 1.15 -> OOD above -> FPR 1
    m = metrics.ood_metrics([1, 2, 3, 4], [2.5])
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0
    # one tie: ID [1,2], OOD [2,0]: pairs (1>0),(2>0),(2=2 half),(1<2) -> 2.5/4
    assert metrics.ood_metrics([1, 2], [2, 0])["auroc"] == pytest.approx(0.625)
    # reversed orientation gives AUROC 0
    assert metrics.ood_metrics([0, 1], [5, 6])["auroc"] == 0.0


def test_fpr_threshold_uses_linear_percentile():
    a = np.arange(21, dtype=float)  # 5th percentile = 1.0 exactly
    assert metrics.threshold_at_tpr(a) == pytest.approx(1.0)
    assert metrics.fpr_at_tpr(a, [0.5, 1.0, 2.0]) == pytest.approx(2 / 3)


def test_threshold_counts():
    st = metrics.at_threshold([1, 2, 3, 4], [0, 2, 5], 2.0)
    assert (st.id_above, st.id_below, st.ood_above, st.ood_below) == (3, 1, 2, 1)
    assert st.tpr == 0.75 and st.fpr == pytest.approx(2 / 3)


def test_bad_scores_give_a_clear_error():
    with pytest.raises(metrics.MetricError, match="NaN"):
        metrics.ood_metrics([1, np.nan], [0])
    with pytest.raises(metrics.MetricError, match="at least one"):
        metrics.ood_metrics([], [0])


def test_bootstrap_matches_a_direct_sklearn_loop():
    a, b = _rand(1, 60, 80, ties=True)
    ci = metrics.bootstrap_ci(a, b, n_boot=200, seed=3)
    rng = np.random.default_rng(3)
    ia = rng.integers(0, a.size, size=(200, a.size))
    ib = rng.integers(0, b.size, size=(200, b.size))
    aucs = [roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a[i], b[j]]) for i, j in zip(ia, ib)]
    fprs = [metrics.fpr_at_tpr(a[i], b[j]) for i, j in zip(ia, ib)]
    assert ci["auroc"][0] == pytest.approx(np.percentile(aucs, 2.5), abs=1e-9)
    assert ci["auroc"][1] == pytest.approx(np.percentile(aucs, 97.5), abs=1e-9)
    assert ci["fpr95"][0] == pytest.approx(np.percentile(fprs, 2.5), abs=1e-9)
    assert ci["fpr95"][1] == pytest.approx(np.percentile(fprs, 97.5), abs=1e-9)
    point = metrics.ood_metrics(a, b)["auroc"]
    assert ci["auroc"][0] <= point <= ci["auroc"][1]


def test_metrics_table_has_mean_row():
    a, b = _rand()
    df = metrics.metrics_table(a, {"x": b, "y": b + 1})
    assert list(df["ood_dataset"]) == ["x", "y", "mean"]
    assert df.loc[2, "auroc"] == pytest.approx(df.loc[:1, "auroc"].mean())


def test_id_accuracy_ignores_unknown_labels():
    logits = np.array([[1, 0], [0, 1], [1, 0]], float)
    assert metrics.id_accuracy(logits, np.array([0, 0, -1])) == 0.5
    assert np.isnan(metrics.id_accuracy(logits, np.array([-1, -1, -1])))


@pytest.mark.parametrize("seed", range(12))
def test_sorted_fast_path_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 400, 2)
    a, b = rng.normal(1, 1, n), rng.normal(0, 1, m)
    if seed % 2:
        a, b = np.round(a), np.round(b)  # heavy ties
    fast = metrics.fast_ood_metrics(metrics.SortedScores(a), metrics.SortedScores(b))
    ref = metrics.ood_metrics(a, b)
    for k in metrics.METRICS:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k


def test_metrics_table_equals_per_set_sklearn():
    a, b = _rand(ties=True)
    df = metrics.metrics_table(a, {"x": b})
    for k in metrics.METRICS:
        assert df.loc[0, k] == pytest.approx(metrics.ood_metrics(a, b)[k], abs=1e-12)
