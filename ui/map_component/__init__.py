"""The Maps page's scatter-map component: plotly.js ``scattergl`` fed one binary payload per map.

Why a component rather than ``st.plotly_chart`` (docs/architecture.md, "The app"): in Streamlit
1.67 a plotly chart's identity includes its figure spec, so the browser re-created both
100,000-point maps (JSON parse and WebGL draw) on every rerun, a selection included. A
``st.components.v2`` component keyed by a stable key keeps its DOM across reruns; its script is
called again with each rerun's payload and redraws only when the points' digest changes (a new
selection only moves the rings). The points travel as raw bytes (``ood_core.figures.maps.encode_map``:
float32 x/y, the sample index, an optional score), never as per-point Python objects, and only
until the browser reports (component state ``has``) that it drew them: later reruns send the rings.

plotly.js (the copy inside the plotly package: no CDN, the app runs offline) reaches the browser
once per page visit as the bytes of a small loader component, which reports back through its
state so later reruns send nothing; an inline script would travel with every rerun.

A lasso or box selection comes back as a trigger value (payload positions) whose callback maps
it to samples before the rerun starts, so the gallery of that same rerun shows the images.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import streamlit as st

from ood_core.figures.maps import MapPoints, encode_map, rows_of_positions
from ui import state

log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
PLOTLY_KEY = "maps_plotly"

# isolate_styles=False: plotly.js injects its CSS (modebar, drag layers) into the document head,
# which does not reach inside a shadow root.
_MAP = st.components.v2.component("ood_workbench.scatter_map", js=(_HERE / "map.js").read_text(),
                                  css=(_HERE / "map.css").read_text(), isolate_styles=False)
_LOADER = st.components.v2.component("ood_workbench.plotly_loader", js=(_HERE / "loader.js").read_text(),
                                     isolate_styles=False)


@functools.cache
def plotly_js() -> bytes:
    """plotly.min.js as shipped inside the plotly Python package (read once per process)."""
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


def load_plotly(key: str = PLOTLY_KEY) -> None:
    """Mount the loader: plotly.js goes with it until the browser says it has evaluated it."""
    loaded = bool((state.widget(key) or {}).get("loaded"))
    _LOADER(key=key, data=None if loaded else plotly_js(), on_loaded_change=lambda: None, height="content")


def selection_event(key: str, points: MapPoints) -> np.ndarray | None:
    """Frame rows of the selection the map ``key`` just sent, or None (no event, or one for other points).

    Read in the component's callback, before the rerun: a trigger value lives for one run only.
    """
    value = state.widget(key)
    ev = value.get("selected") if isinstance(value, dict) else None
    if not isinstance(ev, dict) or ev.get("digest") != points.digest:
        return None  # none, or a lasso on points the map no longer shows
    try:
        return rows_of_positions(points, ev.get("positions") or [])
    except (TypeError, ValueError):
        log.warning("map %s sent a selection that is not a list of positions", key)
        return None


def scatter_map(points: MapPoints, key: str, selected_rows: np.ndarray | Sequence[int] = (),
                on_select: Callable[[np.ndarray], None] | None = None) -> None:
    """Draw one map (kept alive across reruns under ``key``); ``on_select(rows)`` runs on a lasso/box selection.

    ``selected_rows`` (frame rows) are ringed. ``on_select`` runs as a widget callback, before the
    rerun the selection starts, with the frame rows of the selected points (never empty).
    """
    def _changed() -> None:
        rows = selection_event(key, points)
        if rows is not None and rows.size and on_select is not None:
            on_select(rows)

    # The browser reports the digest of the points it has drawn (state "has"); while that is these
    # points, a rerun sends only the rings. A map re-created without them reports None and gets all.
    value = state.widget(key)
    has = value.get("has") if isinstance(value, dict) else None
    _MAP(key=key, data=encode_map(points, selected_rows, with_points=has != points.digest),
         on_selected_change=_changed, on_has_change=lambda: None, height="content")


