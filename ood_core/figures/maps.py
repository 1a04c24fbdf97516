"""Figures of the Maps page: 2-D scatter maps of features or gradients, and their separability.

Plotly's hover cannot show an image, so the hover carries the dataset and the sample index,
and the page shows the images, labels, predictions and scores of selected points in a
gallery. A selection leads back to its samples through its trace and point position
(:func:`picked_rows`), so no per-point strings or objects travel with a 100,000-point map.
"""
from __future__ import annotations

from typing import Any, Iterable

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


def _hover(df: pd.DataFrame, dataset: str) -> tuple[np.ndarray, str]:
    """The sample index of each point as an int32 array, and a template naming the trace's dataset.

    Only that number travels per point (plotly sends numpy arrays as binary typed arrays);
    label, prediction, scores and the image of a point are looked up when it is selected
    (the page's gallery), not shipped with all 100,000 points.
    """
    return df["index"].to_numpy(np.int32), f"<b>{dataset}</b> #%{{customdata}}<extra></extra>"


def _groups(df: pd.DataFrame, color: str, id_name: str) -> list[tuple[str, Any, np.ndarray]]:
    """The traces of a map, in drawing order: (dataset, group, row positions); one dataset per trace.

    ``group`` is ``None`` (colour by dataset or by a score) or the predicted class (colour by ``pred``).
    """
    ds = df["dataset"].astype(str).to_numpy()
    names = [n for n in dict.fromkeys([id_name, *ds.tolist()]) if (ds == n).any()]
    if color != "pred":
        return [(n, None, np.flatnonzero(ds == n)) for n in names]
    pred = df["pred"].to_numpy()
    out = []
    for k in sorted(np.unique(pred).tolist()):
        for n in names:
            rows = np.flatnonzero((pred == k) & (ds == n))
            if rows.size:
                out.append((n, k, rows))
    return out


def _xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df["x"].to_numpy(np.float32), df["y"].to_numpy(np.float32)


def map_figure(df: pd.DataFrame, color: str = "dataset", id_name: str = "mnist", title: str = "",
               selected: Iterable[tuple[str, int]] = (), height: int = 520, marker_size: int | None = None) -> go.Figure:
    """WebGL scatter of a map's points (columns x, y, dataset, index, label, pred, scores).

    ``color``: ``dataset`` (one legend entry per set, the ID set first), ``pred`` (one legend
    entry per predicted class and ID/OOD; ID points are circles, OOD points crosses) or a score
    column (a continuous scale clipped at the 2nd/98th percentiles, higher = more ID).
    ``selected`` (dataset, index) pairs are ringed, so a selection in one map shows in the other.

    Built for 100,000 points (docs/architecture.md, "The app"): ``Scattergl`` traces, one
    dataset each, whose coordinates and hover numbers are numpy arrays (plotly ships them as
    binary typed arrays); no per-point Python objects or strings. :func:`picked_rows` maps a
    selection's ``(curve_number, point_index)`` back to frame rows.
    """
    if color not in ("dataset", "pred") and color not in df.columns:
        raise ValueError(f"cannot colour by {color!r}; choose one of {', '.join(color_options(df))}")
    n = len(df)
    size = marker_size or (5 if n <= 20_000 else 3 if n <= 60_000 else 2)
    fig = go.Figure()
    if color not in ("dataset", "pred"):
        v_all = df[color].to_numpy(np.float32)
        lo, hi = (np.nanpercentile(v_all, [2, 98]) if np.isfinite(v_all).any() else (0.0, 1.0))
        hi = hi if hi > lo else lo + 1
    legend_seen: set[str] = set()
    for j, (name, k, rows) in enumerate(_groups(df, color, id_name)):
        sub = df.iloc[rows]
        custom, tmpl = _hover(sub, name)
        x, y = _xy(sub)
        is_id = name == id_name
        if color == "dataset":
            c = ID_COLOR if is_id else color_for(j - 1 if (df["dataset"] == id_name).any() else j)
            kw = dict(name=f"{name}{' (ID)' if is_id else ''} ({len(sub):,})",
                      marker=dict(color=c, size=size, opacity=0.7))
        elif color == "pred":
            label = f"pred {k} · {'ID' if is_id else 'OOD'}"
            kw = dict(name=label, legendgroup=label, showlegend=label not in legend_seen,
                      marker=dict(color=CLASS_COLORS[int(k) % len(CLASS_COLORS)], size=size + (0 if is_id else 1),
                                  symbol="circle" if is_id else "x", opacity=0.75))
            legend_seen.add(label)
        else:
            kw = dict(name=name, showlegend=False,
                      marker=dict(color=sub[color].to_numpy(np.float32), colorscale="Viridis", cmin=float(lo),
                                  cmax=float(hi), size=size, opacity=0.8, showscale=j == 0,
                                  colorbar=dict(title=dict(text=f"{SCORE_LABELS.get(color, color)}<br>(higher = ID)"))))
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", customdata=custom, hovertemplate=tmpl, **kw))
    m = selected_mask(df, selected)
    if m.any():
        x, y = _xy(df[m])
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name=f"selected ({int(m.sum())})", hoverinfo="skip",
                                   marker=dict(size=size + 7, color="rgba(0,0,0,0)",
                                               line=dict(color="black", width=1.5))))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      legend=dict(itemsizing="constant"), dragmode="lasso", hovermode="closest")
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def picked_rows(df: pd.DataFrame, points: Iterable[dict], color: str = "dataset",
                id_name: str = "mnist") -> list[tuple[str, int]]:
    """(dataset, index) of the points of a plotly selection event, from their trace and position."""
    groups = _groups(df, color, id_name)
    picked = []
    for p in points:
        c, i = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if c is None or i is None or not 0 <= int(c) < len(groups):
            continue  # the ring of selected points, or a stale event
        rows = groups[int(c)][2]
        if 0 <= int(i) < rows.size:
            picked.append(int(rows[int(i)]))
    sub = df.iloc[picked]
    return list(zip(sub["dataset"].astype(str), sub["index"].astype(int)))


def selected_mask(df: pd.DataFrame, selected: Iterable[tuple[str, int]]) -> np.ndarray:
    """Which rows are in ``selected`` (dataset, index) pairs, vectorised (no per-point Python tuples)."""
    sel = list(selected)
    m = np.zeros(len(df), bool)
    if not sel:
        return m
    ds = df["dataset"].astype(str).to_numpy()
    idx = df["index"].to_numpy(np.int64)
    by_set: dict[str, list[int]] = {}
    for d, i in sel:
        by_set.setdefault(str(d), []).append(int(i))
    for d, ii in by_set.items():
        rows = ds == d
        m[rows] = np.isin(idx[rows], ii)
    return m


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
