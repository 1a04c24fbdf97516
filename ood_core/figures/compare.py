"""Figures for the Compare page: the metric dot chart with CIs (``LABELS`` names the metrics for both pages)."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from . import plain

LABELS = {"auroc": "AUROC", "fpr95": "FPR@95TPR", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}


def compare_chart(df: pd.DataFrame, metric: str = "auroc", title: str | None = None) -> go.Figure:
    """Dots per detector (x) and OOD set (colour), 95% bootstrap CI as error bars; the mean as a diamond."""
    ok = df[df["status"] == "ok"]
    fig = go.Figure()
    sets = list(dict.fromkeys(ok["ood_dataset"]))
    order = list(dict.fromkeys(ok["detector"]))
    has_ci = f"{metric}_lo" in ok.columns and ok[f"{metric}_lo"].notna().any()
    for s in sets:
        part = ok[ok["ood_dataset"] == s].set_index("detector").reindex(order).dropna(subset=[metric])
        err: dict[str, Any] = {}
        if has_ci:
            err = dict(error_y=dict(type="data", symmetric=False, array=(part[f"{metric}_hi"] - part[metric]).tolist(),
                                    arrayminus=(part[metric] - part[f"{metric}_lo"]).tolist(), thickness=1, width=3))
        is_mean = s == "mean"
        fig.add_trace(go.Scatter(
            x=part.index.tolist(), y=part[metric].tolist(), mode="markers", name=plain(s),
            marker=dict(symbol="diamond" if is_mean else "circle", size=11 if is_mean else 8,
                        color="black" if is_mean else None),
            customdata=part[[f"{metric}_lo", f"{metric}_hi"]].to_numpy() if has_ci else None,
            hovertemplate=("%{x} on " + plain(s) + ": %{y:.4f}" + (" [%{customdata[0]:.4f}, %{customdata[1]:.4f}]"
                                                               if has_ci else "") + "<extra></extra>"),
            **err,
        ))
    fig.update_layout(
        title=title or f"{LABELS.get(metric, metric)} per detector and OOD set" + (" (95% bootstrap CI)" if has_ci else ""),
        xaxis_title="detector", yaxis_title=LABELS.get(metric, metric), scattermode="group",
        legend_title="OOD set", template="plotly_white", height=480,
    )
    return fig
