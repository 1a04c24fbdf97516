"""Figures for the Train page: live loss-term curves and per-epoch accuracy / OOD AUROC.

Both builders take the rows a training job logs (``job.snapshot()["rows"]``) or a
checkpoint's ``meta["history"]["steps"] + meta["history"]["epochs"]``: step rows carry
``kind='step'`` and one value per loss term, epoch rows ``kind='epoch'`` with
``accuracy`` and ``auroc``.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import plain

TERM_LABELS = {
    "total": "total loss", "ce": "cross-entropy L_CE", "oe": "outlier exposure (CE to uniform)",
    "ls": "energy margins L_S", "grad": "gradient penalty L_∇S", "gq": "Gradient Quotient L_GQ",
}
EXTRA_LABELS = {"frac_in": "ID penalised (E ≤ m_in)", "frac_aux": "aux penalised (E ≥ m_out)"}


def _rows(rows: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == kind]


def loss_curves(rows: Sequence[dict[str, Any]], terms: Sequence[str] | None = None, smooth: int = 1,
                title: str = "Loss terms per step") -> go.Figure:
    """One line per loss term against the step (log y when the terms span decades).

    ``smooth`` > 1 overlays a trailing moving average of that many steps (the raw values stay faint).
    """
    steps = _rows(rows, "step")
    if terms is None:
        terms = [t for t in TERM_LABELS if any(t in r for r in steps)]
    has_frac = any("frac_in" in r for r in steps)
    fig = make_subplots(specs=[[{"secondary_y": has_frac}]])
    x = [r["step"] for r in steps]
    for t in terms:
        y = [r.get(t) for r in steps]
        label = TERM_LABELS.get(t, t)
        if smooth > 1 and len(y) > 1:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, opacity=0.25, legendgroup=t,
                                     showlegend=False, line=dict(width=1)), secondary_y=False)
            fig.add_trace(go.Scatter(x=x, y=_moving_average(y, smooth), mode="lines", name=label, legendgroup=t),
                          secondary_y=False)
        else:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=label),
                          secondary_y=False)
    if has_frac:
        for t, label in EXTRA_LABELS.items():
            fig.add_trace(go.Scatter(x=x, y=[r.get(t) for r in steps], mode="lines", name=label,
                                     line=dict(dash="dot", width=1)), secondary_y=True)
        fig.update_yaxes(title_text="fraction penalised", range=[0, 1], secondary_y=True)
    vals = [r[t] for r in steps for t in terms if isinstance(r.get(t), (int, float)) and r[t] > 0]
    if vals and max(vals) / max(min(vals), 1e-12) > 100:
        fig.update_yaxes(type="log", secondary_y=False)
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_layout(title=title, xaxis_title="step", template="plotly_white", height=420,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), margin=dict(t=80))
    return fig


def epoch_metrics(rows: Sequence[dict[str, Any]], val_name: str = "aux_val",
                  title: str = "ID accuracy and held-out OOD AUROC per epoch") -> go.Figure:
    """ID test accuracy and the Energy score's AUROC (ID test vs ``val_name``) after every epoch (0 = the init)."""
    eps = _rows(rows, "epoch")
    x = [r["epoch"] for r in eps]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r.get("accuracy") for r in eps], mode="lines+markers", name="ID accuracy"))
    fig.add_trace(go.Scatter(x=x, y=[r.get("auroc") for r in eps], mode="lines+markers",
                             name=f"Energy AUROC vs {plain(val_name)}"))
    if any("fpr95" in r for r in eps):
        fig.add_trace(go.Scatter(x=x, y=[r.get("fpr95") for r in eps], mode="lines+markers", name="FPR@95TPR",
                                 line=dict(dash="dot")))
    fig.update_layout(title=title, xaxis_title="epoch (0 = before training)", yaxis_title="fraction",
                      yaxis=dict(range=[0, 1.02]), xaxis=dict(dtick=1), template="plotly_white", height=360,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), margin=dict(t=80))
    return fig


def _moving_average(y: Sequence[float | None], n: int) -> list[float | None]:
    out: list[float | None] = []
    window: list[float] = []
    for v in y:
        if v is not None:
            window.append(float(v))
        if len(window) > n:
            window.pop(0)
        out.append(sum(window) / len(window) if window else None)
    return out
