"""Figures of the Scores page: histograms, ROC and PR curves with a live threshold."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .. import metrics

ID_COLOR = "#1f77b4"
PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def color_for(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def score_histogram(id_scores: np.ndarray, ood: dict[str, np.ndarray], threshold: float | None = None,
                    bins: int = 60, id_name: str = "ID", title: str = "", log_y: bool = False) -> go.Figure:
    """Overlaid normalised histograms on shared bins, ID first; a vertical line at the threshold."""
    allv = np.concatenate([np.asarray(id_scores, float)] + [np.asarray(v, float) for v in ood.values()])
    lo, hi = float(np.min(allv)), float(np.max(allv))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig = go.Figure()
    series = [(f"{id_name} (ID)", id_scores, ID_COLOR)] + [(k, v, color_for(i)) for i, (k, v) in enumerate(ood.items())]
    centers = (edges[:-1] + edges[1:]) / 2
    for name, s, c in series:
        counts, _ = np.histogram(np.asarray(s, float), bins=edges)
        frac = counts / max(1, counts.sum())
        fig.add_trace(go.Bar(x=centers, y=frac, name=f"{name} (n={len(s)})", marker_color=c, opacity=0.55,
                             width=(edges[1] - edges[0]),
                             hovertemplate="score %{x:.4g}<br>fraction %{y:.3f}<extra>" + name + "</extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top")
    fig.update_layout(barmode="overlay", title=title or "Score distributions (higher = more in-distribution)",
                      xaxis_title="score", yaxis_title="fraction of samples", legend_title_text="",
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
                      margin=dict(l=40, r=10, t=50, b=40), height=420)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _metric(table, name: str, key: str, id_scores: np.ndarray, s: np.ndarray) -> float:
    """A metric from the page's table when given (no recomputation on a slider move), else computed."""
    if table is not None:
        row = table.loc[table["ood_dataset"] == name]
        if len(row):
            return float(row[key].iloc[0])
    return metrics.ood_metrics(id_scores, s)[key]


def roc_figure(id_scores: np.ndarray, ood: dict[str, np.ndarray], threshold: float | None = None,
               table=None) -> go.Figure:
    """ROC with ID as the positive class; markers where the threshold sits on each curve.

    ``table`` is :func:`ood_core.metrics.metrics_table`'s output for the same scores, if at hand.
    """
    fig = go.Figure()
    for i, (name, s) in enumerate(ood.items()):
        fpr, tpr, _ = metrics.roc(id_scores, s)
        auc = _metric(table, name, "auroc", id_scores, s)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {100 * auc:.1f})",
                                 line=dict(color=color_for(i)), hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}"))
        if threshold is not None:
            st = metrics.at_threshold(id_scores, s, threshold)
            fig.add_trace(go.Scatter(x=[st.fpr], y=[st.tpr], mode="markers", showlegend=False,
                                     marker=dict(color=color_for(i), size=10, symbol="x"),
                                     hovertemplate=f"{name} at threshold<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), showlegend=False,
                             hoverinfo="skip"))
    fig.add_hline(y=0.95, line_dash="dot", line_color="gray", annotation_text="TPR 95%")
    fig.update_layout(title="ROC (ID positive)", xaxis_title="false positive rate (OOD called ID)",
                      yaxis_title="true positive rate (ID kept)", height=420,
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), margin=dict(l=40, r=10, t=50, b=40),
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.01]))
    return fig


def pr_figure(id_scores: np.ndarray, ood: dict[str, np.ndarray], table=None) -> go.Figure:
    """Precision-recall with ID as the positive class (AUPR-In); ``table`` as in :func:`roc_figure`."""
    fig = go.Figure()
    for i, (name, s) in enumerate(ood.items()):
        p, r, _ = metrics.pr(id_scores, s)
        ap = _metric(table, name, "aupr_in", id_scores, s)
        fig.add_trace(go.Scatter(x=r, y=p, mode="lines", name=f"{name} (AUPR-In {100 * ap:.1f})",
                                 line=dict(color=color_for(i), shape="hv")))
    fig.update_layout(title="Precision-recall (ID positive)", xaxis_title="recall (ID)", yaxis_title="precision (ID)",
                      height=420, margin=dict(l=40, r=10, t=50, b=40), xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.01]),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return fig
