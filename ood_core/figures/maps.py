"""Figures of the Maps page: 2-D scatter maps of features or gradients, and their separability.

Plotly's hover cannot show an image, so the hover carries the dataset, the sample index,
label, prediction and scores, and the page shows the images of selected points in a
gallery. Every point carries ``customdata = [dataset, index]`` so a selection leads back
to its samples.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .scores import ID_COLOR, color_for

CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]
SCORE_LABELS = {"energy": "Energy", "gradnorm": "GradNorm", "msp": "MSP", "maxlogit": "MaxLogit", "rg": "RG"}


def color_options(df: pd.DataFrame) -> list[str]:
    """What a map can be coloured by: dataset, predicted class, and every score column present."""
    return ["dataset", "pred"] + [c for c in SCORE_LABELS if c in df.columns]


def _hover(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    scores = [c for c in SCORE_LABELS if c in df.columns]
    cols = ["dataset", "index", "label", "pred"] + scores
    custom = df[cols].to_numpy(dtype=object)
    lines = ["<b>%{customdata[0]}</b> #%{customdata[1]}", "label %{customdata[2]} · predicted %{customdata[3]}"]
    lines += [f"{SCORE_LABELS[c]} %{{customdata[{4 + i}]:.4g}}" for i, c in enumerate(scores)]
    return custom, "<br>".join(lines) + "<extra></extra>"


def map_figure(df: pd.DataFrame, color: str = "dataset", id_name: str = "mnist", title: str = "",
               selected: Iterable[tuple[str, int]] = (), height: int = 520, marker_size: int = 5) -> go.Figure:
    """Scatter of a map's points (columns x, y, dataset, index, label, pred, scores).

    ``color``: ``dataset`` (one legend entry per set, the ID set first), ``pred`` (one per
    predicted class; ID points are circles, OOD points crosses) or a score column (a
    continuous scale clipped at the 2nd/98th percentiles, higher = more ID).
    ``selected`` (dataset, index) pairs are ringed, so a selection in one map shows in the other.
    """
    fig = go.Figure()
    if color == "dataset":
        names = list(dict.fromkeys([id_name] + df["dataset"].tolist()))
        for i, name in enumerate(n for n in names if (df["dataset"] == n).any()):
            sub = df[df["dataset"] == name]
            custom, tmpl = _hover(sub)
            c = ID_COLOR if name == id_name else color_for(i - 1 if id_name in names else i)
            fig.add_trace(go.Scattergl(x=sub["x"], y=sub["y"], mode="markers", customdata=custom, hovertemplate=tmpl,
                                       name=f"{name}{' (ID)' if name == id_name else ''} ({len(sub)})",
                                       marker=dict(color=c, size=marker_size, opacity=0.7)))
    elif color == "pred":
        for k in sorted(df["pred"].unique()):
            for is_id in (True, False):
                sub = df[(df["pred"] == k) & (df["is_id"] == is_id)]
                if sub.empty:
                    continue
                custom, tmpl = _hover(sub)
                fig.add_trace(go.Scattergl(
                    x=sub["x"], y=sub["y"], mode="markers", customdata=custom, hovertemplate=tmpl,
                    name=f"pred {k} · {'ID' if is_id else 'OOD'}", legendgroup=f"pred{k}",
                    marker=dict(color=CLASS_COLORS[int(k) % len(CLASS_COLORS)], size=marker_size + (0 if is_id else 1),
                                symbol="circle" if is_id else "x", opacity=0.75)))
    elif color in df.columns:
        v = df[color].to_numpy(float)
        lo, hi = (np.nanpercentile(v, [2, 98]) if np.isfinite(v).any() else (0.0, 1.0))
        custom, tmpl = _hover(df)
        fig.add_trace(go.Scattergl(
            x=df["x"], y=df["y"], mode="markers", customdata=custom, hovertemplate=tmpl, name=color, showlegend=False,
            marker=dict(color=v, colorscale="Viridis", cmin=float(lo), cmax=float(hi if hi > lo else lo + 1),
                        size=marker_size, opacity=0.8,
                        colorbar=dict(title=dict(text=f"{SCORE_LABELS.get(color, color)}<br>(higher = ID)"))),
        ))
    else:
        raise ValueError(f"cannot colour by {color!r}; choose one of {', '.join(color_options(df))}")
    sel = set((str(d), int(i)) for d, i in selected)
    if sel:
        keys = list(zip(df["dataset"].astype(str), df["index"].astype(int)))
        m = np.array([k in sel for k in keys])
        if m.any():
            sub = df[m]
            fig.add_trace(go.Scattergl(x=sub["x"], y=sub["y"], mode="markers", name=f"selected ({int(m.sum())})",
                                       hoverinfo="skip",
                                       marker=dict(size=marker_size + 7, color="rgba(0,0,0,0)",
                                                   line=dict(color="black", width=1.5))))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      legend=dict(itemsizing="constant"), dragmode="lasso", hovermode="closest")
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def separability_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``{map name: separability table}`` -> one wide table, one row per OOD set (AUROC in %)."""
    out: pd.DataFrame | None = None
    order: list[str] = []
    for name, t in tables.items():
        order += [o for o in t["ood"] if o not in order]
        part = t.set_index("ood")[["n_ood", "auroc_2d", "auroc_full"]].rename(
            columns={"auroc_2d": f"{name} 2-D", "auroc_full": f"{name} full"})
        part[[f"{name} 2-D", f"{name} full"]] = (100 * part[[f"{name} 2-D", f"{name} full"]]).round(2)
        out = part if out is None else out.join(part.drop(columns="n_ood"), how="outer")
    if out is None:
        return pd.DataFrame()
    order = [o for o in order if o != "all OOD"] + (["all OOD"] if "all OOD" in order else [])
    return out.reindex(order).reset_index().rename(columns={"ood": "OOD set", "n_ood": "n"})


def separability_figure(tables: dict[str, pd.DataFrame]) -> go.Figure:
    """Grouped bars: kNN ID-vs-OOD AUROC per OOD set, for each map in 2-D and in the full space."""
    fig = go.Figure()
    colors = ["#1f77b4", "#aec7e8", "#d62728", "#ff9896", "#2ca02c", "#98df8a"]
    i = 0
    for name, t in tables.items():
        for col, where in (("auroc_2d", "2-D map"), ("auroc_full", "full space")):
            fig.add_trace(go.Bar(x=t["ood"], y=100 * t[col], name=f"{name}, {where}", marker_color=colors[i % 6],
                                 hovertemplate="%{x}: AUROC %{y:.2f}<extra>" + f"{name}, {where}</extra>"))
            i += 1
    fig.update_layout(barmode="group", height=340, title="How separable is ID from OOD? (kNN AUROC, cross-validated)",
                      yaxis=dict(title="AUROC %", range=[50, 100.5]), margin=dict(l=40, r=10, t=50, b=40))
    return fig
