"""Figures of the Scores page: histograms, ROC and PR curves with a live threshold.

Each figure comes in two pieces, as plain-dict specs that ``st.plotly_chart`` takes as they are (docs/architecture.md, "The flow": a slider touches only
cached arrays): a *base* built once per knob setting from :class:`ood_core.metrics.ScoreSets`
(histogram bars from binary searches on the sorted scores; ROC/PR curves from at most
``CURVE_POINTS`` exact vertices per set, while the labelled metrics stay exact), and a cheap
*overlay* for the threshold (a vertical line, markers on the ROC curves) added to the base's
plain-dict spec without copying its arrays, which is all a threshold move rebuilds. ``score_histogram`` / ``roc_figure`` / ``pr_figure`` compose the two
for callers that just want a figure from arrays.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .. import metrics
from . import plain

ID_COLOR = "#1f77b4"
PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
CURVE_POINTS = 1000  # per set: the curves look the same and the payload stays small at 50k samples
_LEGEND = dict(orientation="h", yanchor="top", y=-0.2, x=0)
_MARGIN = dict(l=40, r=10, t=50, b=40)


def color_for(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _sets(id_scores, ood: dict, id_name: str = "ID") -> metrics.ScoreSets:
    return metrics.ScoreSets.from_arrays(id_scores, ood, id_name)


def histogram_base(sets: metrics.ScoreSets, bins: int = 60, title: str = "", log_y: bool = False) -> dict:
    """Overlaid normalised histograms on shared bins, ID first (no threshold line), as a figure spec.

    Specs are plain dicts (``go.Figure(spec)`` makes a figure of one): building plotly objects
    validates every property, which cost more than the whole knob move.
    """
    lo, hi = sets.lo, sets.hi
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    series = [(f"{plain(sets.id_name)} (ID)", sets.id, ID_COLOR)] + [(plain(k), v, color_for(i))
                                                                   for i, (k, v) in enumerate(sets.ood.items())]
    data = []
    for name, s, c in series:
        counts = metrics.histogram_counts(s, edges)
        data.append(dict(type="bar", x=centers, y=counts / max(1, counts.sum()), name=f"{name} (n={len(s)})",
                         marker=dict(color=c), opacity=0.55, width=float(edges[1] - edges[0]),
                         hovertemplate="score %{x:.4g}<br>fraction %{y:.3f}<extra>" + name + "</extra>"))
    layout = dict(barmode="overlay", title=dict(text=title or "Score distributions (higher = more in-distribution)"),
                  xaxis=dict(title=dict(text="score")),
                  yaxis=dict(title=dict(text="fraction of samples"), **({"type": "log"} if log_y else {})),
                  legend=dict(_LEGEND, title=dict(text="")), margin=_MARGIN, height=420)
    return {"data": data, "layout": layout}


def spec(fig: go.Figure | dict) -> dict:
    """A figure as a plain dict (arrays kept as numpy), cheap to copy and extend; ``st.plotly_chart`` takes it."""
    return fig if isinstance(fig, dict) else fig.to_plotly_json()


def with_threshold_line(base: go.Figure | dict, threshold: float | None) -> dict:
    """A histogram base (its spec) with a dashed vertical line at ``threshold``; the base is not copied or changed."""
    d = spec(base)
    if threshold is None:
        return d
    layout = dict(d.get("layout", {}))
    layout["shapes"] = [*layout.get("shapes", ()), dict(
        type="line", x0=threshold, x1=threshold, xref="x", y0=0, y1=1, yref="y domain",
        line=dict(color="black", dash="dash"))]
    layout["annotations"] = [*layout.get("annotations", ()), dict(
        x=threshold, xref="x", y=1, yref="y domain", text=f"threshold {threshold:.4g}", showarrow=False,
        yanchor="bottom")]
    return {"data": d["data"], "layout": layout}


def _metric(table, name: str, key: str, sets: metrics.ScoreSets) -> float:
    """A metric from the page's table when given (no recomputation on a slider move), else computed."""
    if table is not None:
        row = table.loc[table["ood_dataset"] == name]
        if len(row):
            return float(row[key].iloc[0])
    return metrics.fast_ood_metrics(sets.id, sets.ood[name])[key]


def roc_base(sets: metrics.ScoreSets, table=None, max_points: int = CURVE_POINTS) -> dict:
    """ROC with ID as the positive class, from at most ``max_points`` exact vertices per set (a spec).

    ``table`` is :func:`ood_core.metrics.metrics_table`'s output for the same scores, if at hand
    (the legend's AUROC is exact either way).
    """
    data = []
    for i, name in enumerate(sets.ood):
        fpr, tpr = metrics.roc_points(sets.id, sets.ood[name], max_points)
        auc = _metric(table, name, "auroc", sets)
        data.append(dict(type="scatter", x=fpr, y=tpr, mode="lines", name=f"{plain(name)} (AUROC {100 * auc:.1f})",
                         line=dict(color=color_for(i)), hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}"))
    data.append(dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"),
                     showlegend=False, hoverinfo="skip"))
    layout = dict(title=dict(text="ROC (ID positive)"), height=420, legend=_LEGEND, margin=_MARGIN,
                  xaxis=dict(range=[0, 1], title=dict(text="false positive rate (OOD called ID)")),
                  yaxis=dict(range=[0, 1.01], title=dict(text="true positive rate (ID kept)")),
                  shapes=[dict(type="line", x0=0, x1=1, xref="x domain", y0=0.95, y1=0.95, yref="y",
                               line=dict(color="gray", dash="dot"))],
                  annotations=[dict(x=1, xref="x domain", y=0.95, yref="y", text="TPR 95%", showarrow=False,
                                    xanchor="right", yanchor="bottom")])
    return {"data": data, "layout": layout}


def with_roc_markers(base: go.Figure | dict, sets: metrics.ScoreSets, threshold: float | None) -> dict:
    """A ROC base (its spec) with a marker where ``threshold`` sits on each set's curve; the base is not changed."""
    d = spec(base)
    if threshold is None:
        return d
    marks = []
    for i, name in enumerate(sets.ood):
        st = sets.at_threshold(name, threshold)
        marks.append(dict(type="scatter", x=[st.fpr], y=[st.tpr], mode="markers", showlegend=False,
                          marker=dict(color=color_for(i), size=10, symbol="x"),
                          hovertemplate=f"{plain(name)} at threshold<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"))
    return {"data": [*d["data"], *marks], "layout": d["layout"]}


def pr_base(sets: metrics.ScoreSets, table=None, max_points: int = CURVE_POINTS) -> dict:
    """Precision-recall with ID as the positive class (AUPR-In), from exact vertices as in :func:`roc_base`."""
    data = []
    for i, name in enumerate(sets.ood):
        r, p = metrics.pr_points(sets.id, sets.ood[name], max_points)
        ap = _metric(table, name, "aupr_in", sets)
        data.append(dict(type="scatter", x=r, y=p, mode="lines", name=f"{plain(name)} (AUPR-In {100 * ap:.1f})",
                         line=dict(color=color_for(i), shape="vh")))  # ascending recall: AP's steps
    layout = dict(title=dict(text="Precision-recall (ID positive)"), height=420, margin=_MARGIN, legend=_LEGEND,
                  xaxis=dict(range=[0, 1], title=dict(text="recall (ID)")),
                  yaxis=dict(range=[0, 1.01], title=dict(text="precision (ID)")))
    return {"data": data, "layout": layout}


# --- from arrays (one call, one figure) ---------------------------------------------------------------

def score_histogram(id_scores: np.ndarray, ood: dict[str, np.ndarray], threshold: float | None = None,
                    bins: int = 60, id_name: str = "ID", title: str = "", log_y: bool = False) -> go.Figure:
    """Overlaid normalised histograms on shared bins, ID first; a vertical line at the threshold."""
    return go.Figure(with_threshold_line(histogram_base(_sets(id_scores, ood, id_name), bins, title, log_y), threshold))


def roc_figure(id_scores: np.ndarray, ood: dict[str, np.ndarray], threshold: float | None = None,
               table=None) -> go.Figure:
    """ROC with ID as the positive class; markers where the threshold sits on each curve."""
    sets = _sets(id_scores, ood)
    return go.Figure(with_roc_markers(roc_base(sets, table), sets, threshold))


def pr_figure(id_scores: np.ndarray, ood: dict[str, np.ndarray], table=None) -> go.Figure:
    """Precision-recall with ID as the positive class (AUPR-In); ``table`` as in :func:`roc_base`."""
    return go.Figure(pr_base(_sets(id_scores, ood), table))
