"""Figures for the Tuning page: a metric against a swept knob, the best setting marked."""
from __future__ import annotations


import pandas as pd
import plotly.graph_objects as go

from .compare import LABELS


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
