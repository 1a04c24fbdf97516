"""Figures of the Saliency page: images with attribution heatmaps overlaid at adjustable opacity.

Each panel draws the image (``go.Image``) and the attribution (``go.Heatmap``) on the same
axes. Signed maps (Integrated Gradients, Input × Gradient, or gradients with ``abs=False``)
use a diverging scale centred at 0 (red: the pixel pushes the target up, i.e. more ID for
an OOD score; blue: down); unsigned maps a sequential one. Scales are shared between the
images passed to :func:`shared_scales`, so a sample and its ID twin are comparable.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a.astype(np.uint8)


def shared_scales(attrs: dict[tuple[str, str], np.ndarray], q: float = 99.0) -> dict[tuple[str, str], float]:
    """Per (target, method): the q-th percentile of |attribution| over every image in the batch."""
    out = {}
    for k, a in attrs.items():
        v = float(np.percentile(np.abs(a), q)) if np.size(a) else 0.0
        out[k] = v if v > 0 else float(np.abs(a).max() or 1.0)
    return out


def is_signed(a: np.ndarray) -> bool:
    return bool((np.asarray(a) < 0).any())


def image_figure(img: np.ndarray, title: str = "", height: int = 260) -> go.Figure:
    """One image, square pixels, no axes."""
    fig = go.Figure(go.Image(z=_rgb(img), hoverinfo="skip"))
    fig.update_layout(title=title, height=height, margin=dict(l=5, r=5, t=35 if title else 5, b=5))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return fig


def attribution_figure(img: np.ndarray, attrs: dict[tuple[str, str], np.ndarray], sample: int,
                       targets: Sequence[str], methods: Sequence[str], opacity: float = 0.6,
                       scales: dict[tuple[str, str], float] | None = None,
                       target_labels: dict[str, str] | None = None, method_labels: dict[str, str] | None = None,
                       title: str = "", panel_px: int = 170) -> go.Figure:
    """A grid: one row per target, one column per method, ``img`` under each attribution of ``sample``."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    targets, methods = list(targets), list(methods)
    tl, ml = target_labels or {}, method_labels or {}
    scales = scales or shared_scales(attrs)
    titles = [f"{tl.get(t, t)} · {ml.get(m, m)}" if len(methods) == 1 else
              (f"{ml.get(m, m)}" if r == 0 else "") for r, t in enumerate(targets) for m in methods]
    fig = make_subplots(rows=len(targets), cols=len(methods), subplot_titles=titles,
                        horizontal_spacing=0.02, vertical_spacing=0.06 if len(targets) > 1 else 0.0,
                        row_titles=[tl.get(t, t) for t in targets] if len(methods) > 1 else None)
    rgb = _rgb(img)
    for r, t in enumerate(targets, start=1):
        for c, m in enumerate(methods, start=1):
            a = attrs[(t, m)][sample]
            s = scales.get((t, m), float(np.abs(a).max() or 1.0))
            signed = is_signed(attrs[(t, m)])
            fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=r, col=c)
            fig.add_trace(go.Heatmap(
                z=a, zmin=-s if signed else 0.0, zmax=s, zmid=0.0 if signed else None,
                colorscale="RdBu_r" if signed else "Inferno", opacity=opacity, showscale=False,
                hovertemplate="x %{x}, y %{y}<br>attribution %{z:.3g}<extra>" + f"{t} · {m}</extra>",
            ), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for i in range(1, len(targets) * len(methods) + 1):
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=(i - 1) // len(methods) + 1,
                         col=(i - 1) % len(methods) + 1)
    fig.update_layout(title=title, height=panel_px * len(targets) + (60 if title else 30),
                      width=None, margin=dict(l=5, r=30, t=60 if title else 30, b=5))
    return fig
