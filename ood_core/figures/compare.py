"""Figures for the Compare and Tuning pages: metric dot chart with CIs, metric-vs-knob curve."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

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
            x=part.index.tolist(), y=part[metric].tolist(), mode="markers", name=s,
            marker=dict(symbol="diamond" if is_mean else "circle", size=11 if is_mean else 8,
                        color="black" if is_mean else None),
            customdata=part[[f"{metric}_lo", f"{metric}_hi"]].to_numpy() if has_ci else None,
            hovertemplate=("%{x} on " + s + ": %{y:.4f}" + (" [%{customdata[0]:.4f}, %{customdata[1]:.4f}]"
                                                               if has_ci else "") + "<extra></extra>"),
            **err,
        ))
    fig.update_layout(
        title=title or f"{LABELS.get(metric, metric)} per detector and OOD set" + (" (95% bootstrap CI)" if has_ci else ""),
        xaxis_title="detector", yaxis_title=LABELS.get(metric, metric), scattermode="group",
        legend_title="OOD set", template="plotly_white", height=480,
    )
    return fig


def tuning_curve(df: pd.DataFrame, knob: str, metric: str = "auroc", color_by: str | None = None,
                 title: str | None = None) -> go.Figure:
    """Metric vs one knob; one line per value of ``color_by`` (another swept knob); the best setting starred."""
    fig = go.Figure()
    numeric = pd.api.types.is_numeric_dtype(df[knob]) and not pd.api.types.is_bool_dtype(df[knob])
    groups = [(None, df)] if not color_by else list(df.groupby(color_by, sort=False))
    for val, part in groups:
        part = part.sort_values(knob) if numeric else part
        fig.add_trace(go.Scatter(x=part[knob].astype(object if not numeric else float).tolist(),
                                 y=part[metric].tolist(), mode="lines+markers",
                                 name=f"{color_by}={val}" if color_by else metric))
    if "best" in df.columns and df["best"].any():
        b = df[df["best"]].iloc[0]
        fig.add_trace(go.Scatter(x=[b[knob]], y=[b[metric]], mode="markers", name="best",
                                 marker=dict(symbol="star", size=16, color="gold", line=dict(width=1, color="black"))))
    if numeric and (df[knob] > 0).all() and df[knob].max() / max(df[knob].min(), 1e-300) >= 100:
        fig.update_xaxes(type="log")
    fig.update_layout(title=title or f"{LABELS.get(metric, metric)} on validation data vs {knob}",
                      xaxis_title=knob, yaxis_title=LABELS.get(metric, metric), template="plotly_white", height=420)
    return fig
