"""Figures of the Maps page: 2-D scatter maps of features or gradients, and their separability.

Plotly's hover cannot show an image, so the hover carries the dataset and the sample index,
and the page shows the images, labels, predictions and scores of selected points in a
gallery. A selection leads back to its samples through its payload positions
(:func:`rows_of_positions`), so no per-point strings or objects travel with a 100,000-point map.

The Maps page draws a map with its own component (``ui.map_component``), which receives the
points as one binary payload (:func:`map_points`, :func:`encode_map`; docs/architecture.md,
"The app"); :func:`map_figure` builds the same map as a plotly figure, for exports only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import plain
from .scores import ID_COLOR, color_for

CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]
SCORE_LABELS = {"energy": "Energy", "gradnorm": "GradNorm", "msp": "MSP", "maxlogit": "MaxLogit", "rg": "RG"}


POINT_COLUMNS = ("x", "y", "dataset", "index", "sample_id", "label", "pred", "is_id")  # the rest are scores


def color_options(df: pd.DataFrame) -> list[str]:
    """What a map can be coloured by: dataset, predicted class, and every score column present (the
    built-ins a map carries and any detector's added since, plugins included)."""
    return ["dataset", "pred"] + [c for c in df.columns if c not in POINT_COLUMNS]


def _hover(df: pd.DataFrame, dataset: str) -> tuple[np.ndarray, str]:
    """The sample index of each point as an int32 array, and a template naming the trace's dataset.

    Only that number travels per point (plotly sends numpy arrays as binary typed arrays);
    label, prediction, scores and the image of a point are looked up when it is selected
    (the page's gallery), not shipped with all 100,000 points.
    """
    return df["index"].to_numpy(np.int32), f"<b>{plain(dataset)}</b> #%{{customdata}}<extra></extra>"


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


def _marker_size(n: int) -> int:
    return 5 if n <= 20_000 else 3 if n <= 60_000 else 2


def _check_color(df: pd.DataFrame, color: str) -> None:
    if color not in ("dataset", "pred") and color not in df.columns:
        raise ValueError(f"cannot colour by {color!r}; choose one of {', '.join(color_options(df))}")


def _score_range(df: pd.DataFrame, color: str) -> tuple[float, float]:
    """The colour scale's ends for a score column: its 2nd and 98th percentiles."""
    v_all = df[color].to_numpy(np.float32)
    lo, hi = (np.nanpercentile(v_all, [2, 98]) if np.isfinite(v_all).any() else (0.0, 1.0))
    return float(lo), float(hi if hi > lo else lo + 1)


def _trace_styles(df: pd.DataFrame, color: str, id_name: str, size: int) -> list[dict[str, Any]]:
    """One style per trace of :func:`_groups`, shared by the plotly figure and the component's payload.

    Each is ``{"name", "dataset", "rows", "legendgroup", "showlegend", "marker"}``; for a score
    colouring the marker has no colour here (it is per point: the score column).
    """
    has_id = bool((df["dataset"] == id_name).any())
    legend_seen: set[str] = set()
    out = []
    for j, (name, k, rows) in enumerate(_groups(df, color, id_name)):
        is_id = name == id_name
        st: dict[str, Any] = {"dataset": name, "rows": rows, "legendgroup": None, "showlegend": True}
        if color == "dataset":
            c = ID_COLOR if is_id else color_for(j - 1 if has_id else j)
            st.update(name=f"{plain(name)}{' (ID)' if is_id else ''} ({rows.size:,})",
                      marker=dict(color=c, size=size, opacity=0.7))
        elif color == "pred":
            label = f"pred {k} · {'ID' if is_id else 'OOD'}"
            st.update(name=label, legendgroup=label, showlegend=label not in legend_seen,
                      marker=dict(color=CLASS_COLORS[int(k) % len(CLASS_COLORS)], size=size + (0 if is_id else 1),
                                  symbol="circle" if is_id else "x", opacity=0.75))
            legend_seen.add(label)
        else:
            st.update(name=plain(name), showlegend=False, marker=dict(size=size, opacity=0.8))
        out.append(st)
    return out


def map_figure(df: pd.DataFrame, color: str = "dataset", id_name: str = "mnist", title: str = "",
               selected: Iterable[tuple[str, int]] = (), height: int = 520, marker_size: int | None = None) -> go.Figure:
    """WebGL scatter of a map's points (columns x, y, dataset, index, label, pred, scores).

    ``color``: ``dataset`` (one legend entry per set, the ID set first), ``pred`` (one legend
    entry per predicted class and ID/OOD; ID points are circles, OOD points crosses) or a score
    column (a continuous scale clipped at the 2nd/98th percentiles, higher = more ID).
    ``selected`` (dataset, index) pairs are ringed, so a selection in one map shows in the other.

    Built for 100,000 points (docs/architecture.md, "The app"): ``Scattergl`` traces, one
    dataset each, whose coordinates and hover numbers are numpy arrays (plotly ships them as
    binary typed arrays); no per-point Python objects or strings. Its traces hold the same rows in
    the same order as :func:`map_points`' payload. The Maps page builds this figure only for an
    export; it draws the map from :func:`encode_map`'s payload, whose selections lead back to rows.
    """
    _check_color(df, color)
    size = marker_size or _marker_size(len(df))
    fig = go.Figure()
    score = color not in ("dataset", "pred")
    lo, hi = _score_range(df, color) if score else (0.0, 1.0)
    for j, st in enumerate(_trace_styles(df, color, id_name, size)):
        sub = df.iloc[st["rows"]]
        custom, tmpl = _hover(sub, st["dataset"])
        x, y = _xy(sub)
        marker = dict(st["marker"])
        if score:
            marker.update(color=sub[color].to_numpy(np.float32), colorscale="Viridis", cmin=lo, cmax=hi,
                          showscale=j == 0,
                          colorbar=dict(title=dict(text=f"{SCORE_LABELS.get(color, color)}<br>(higher = ID)")))
        kw = dict(name=st["name"], showlegend=st["showlegend"], marker=marker)
        if st["legendgroup"]:
            kw["legendgroup"] = st["legendgroup"]
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


# --- the Maps component's payload ---------------------------------------------------------------
# One binary blob per map: a small JSON header (trace names, styles, where each array starts)
# followed by the per-point arrays, little-endian and 4-byte aligned, so the browser reads them
# as typed-array views with no parsing (docs/architecture.md, "The app"). Hand-written because the
# two ready-made binary formats do not fit: plotly's JSON spec (base64 arrays inside a JSON
# document the browser parses whole) and Arrow IPC (no Arrow reader in the browser without a
# bundler or a CDN). The Python reader (:func:`decode_map`) is the format's test.

PAYLOAD_MAGIC = b"OODM"
PAYLOAD_VERSION = 1
_DTYPES = {"f4": np.float32, "u2": np.uint16, "i4": np.int32, "u4": np.uint32}


@dataclass(frozen=True)
class MapPoints:
    """A map's points in payload order, encoded once per (map, colouring) and reused by every rerun.

    ``order[p]`` is the frame row drawn at payload position ``p`` (rows grouped by trace, as
    :func:`_groups` orders them); ``position[r]`` is the inverse. ``header`` and ``blocks`` are the
    JSON header's point part and the arrays' bytes; ``digest`` names the points and their styles, so
    the browser redraws only when it changes (a new selection only moves the rings).
    """

    header: dict[str, Any]
    blocks: list[tuple[str, str, bytes]]
    order: np.ndarray
    position: np.ndarray
    digest: str

    @property
    def n(self) -> int:
        return int(self.order.size)


def map_points(df: pd.DataFrame, color: str = "dataset", id_name: str = "mnist", height: int = 520,
               marker_size: int | None = None) -> MapPoints:
    """The part of a map's payload that does not depend on the selection (see :class:`MapPoints`).

    Per point: x and y as float32, the sample index (uint16 when every index fits, else int32) for
    the hover, and for a score colouring the score as float32; nothing else travels per point (the
    hover's set name comes from the trace, the rest from the gallery when a point is selected).
    """
    _check_color(df, color)
    size = marker_size or _marker_size(len(df))
    styles = _trace_styles(df, color, id_name, size)
    order = np.concatenate([s["rows"] for s in styles]).astype(np.int64) if styles else np.zeros(0, np.int64)
    position = np.empty(len(df), np.int64)
    position[order] = np.arange(order.size)
    x, y = (df[c].to_numpy(np.float32)[order] for c in ("x", "y"))
    idx = df["index"].to_numpy(np.int64)[order]
    idx_kind = "u2" if idx.size == 0 or (idx.min() >= 0 and idx.max() < 2**16) else "i4"
    blocks = [("x", "f4", x.astype("<f4").tobytes()), ("y", "f4", y.astype("<f4").tobytes()),
              ("index", idx_kind, idx.astype("<" + idx_kind).tobytes())]
    traces, start = [], 0
    for s in styles:
        traces.append({"name": s["name"], "dataset": s["dataset"], "start": start, "count": int(s["rows"].size),
                       "legendgroup": s["legendgroup"], "showlegend": s["showlegend"], "marker": s["marker"]})
        start += int(s["rows"].size)
    header: dict[str, Any] = {"n": int(order.size), "color": color, "traces": traces, "height": int(height),
                              "size": size}
    if color not in ("dataset", "pred"):
        lo, hi = _score_range(df, color)
        v = df[color].to_numpy(np.float32)[order]
        blocks.append(("value", "f4", v.astype("<f4").tobytes()))
        header["scale"] = {"cmin": lo, "cmax": hi, "title": f"{SCORE_LABELS.get(color, color)}<br>(higher = ID)"}
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for _, _, b in blocks:
        h.update(b)
    return MapPoints(header, blocks, order, position, h.hexdigest()[:16])


def encode_map(points: MapPoints, selected_rows: np.ndarray | Sequence[int] = (), with_points: bool = True) -> bytes:
    """The component's payload: ``points`` plus the payload positions of ``selected_rows`` (frame rows) as rings.

    ``with_points=False``: the rings alone (header ``rings_only``), for a browser that already drew
    these points (the digest says which): a selection's rerun then sends a few bytes per map, not
    1.6 MB at 100,000 points (docs/architecture.md, "The app")."""
    rows = np.asarray(selected_rows, np.int64).reshape(-1)
    ring = np.sort(points.position[rows]).astype("<u4") if rows.size else np.zeros(0, "<u4")
    blocks = [*(points.blocks if with_points else []), ("ring", "u4", ring.tobytes())]
    arrays, offset = [], 0
    for name, kind, b in blocks:
        arrays.append({"name": name, "dtype": kind, "offset": offset, "length": len(b) // np.dtype(_DTYPES[kind]).itemsize})
        offset += -(-len(b) // 4) * 4
    header = {**(points.header if with_points else {"n": points.n, "rings_only": True}), "v": PAYLOAD_VERSION,
              "digest": points.digest, "arrays": arrays}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(len(head) + 8) % 4)  # the arrays start 4-byte aligned (Float32Array views need it)
    parts = [PAYLOAD_MAGIC, struct.pack("<I", len(head)), head]
    for _, _, b in blocks:
        parts += [b, b"\0" * (-len(b) % 4)]
    return b"".join(parts)


def decode_map(buf: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a payload back: its header and its arrays (what the browser component reads)."""
    if len(buf) < 8 or buf[:4] != PAYLOAD_MAGIC:
        raise ValueError("not a map payload (bad magic)")
    (hlen,) = struct.unpack_from("<I", buf, 4)
    header = json.loads(buf[8:8 + hlen])
    base = 8 + hlen
    arrays = {a["name"]: np.frombuffer(buf, _DTYPES[a["dtype"]], a["length"], base + a["offset"])
              for a in header["arrays"]}
    return header, arrays


def rows_of_positions(points: MapPoints, positions: Iterable[int]) -> np.ndarray:
    """Frame rows of payload positions sent back by the component (out-of-range positions are dropped)."""
    p = np.fromiter((int(i) for i in positions), np.int64)
    p = p[(p >= 0) & (p < points.n)]
    return points.order[p]


def keys_of_rows(df: pd.DataFrame, rows: np.ndarray) -> list[tuple[str, int]]:
    """(dataset, index) of frame rows, in row order (the gallery's keys)."""
    sub = df.iloc[np.asarray(rows, np.int64)]
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
            fig.add_trace(go.Bar(x=[plain(o) for o in t["ood"]], y=100 * t[col], name=f"{plain(name)}, {where}", marker_color=colors[i % 6],
                                 hovertemplate="%{x}: AUROC %{y:.2f}<extra>" + f"{plain(name)}, {where}</extra>"))
            i += 1
    fig.update_layout(barmode="group", height=340, title="How separable is ID from OOD? (kNN AUROC, cross-validated)",
                      yaxis=dict(title="AUROC %", range=[50, 100.5]), margin=dict(l=40, r=10, t=50, b=40))
    return fig
