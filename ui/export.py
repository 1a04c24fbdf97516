"""Download buttons for figures, tables and per-sample scores (pages call these).

Files are produced only when a button is clicked (``st.download_button`` with a callable),
so a page with many figures does not render each one four times on every rerun. When
Chromium is missing the PNG/SVG/PDF buttons are disabled with the reason; HTML and CSV
always work.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import pandas as pd
import streamlit as st

from ood_core import facade as ex

log = logging.getLogger(__name__)


def _logged(fn: Callable[[], bytes], name: str) -> Callable[[], bytes]:
    """Runs on click in Streamlit's worker; a failure shows as "Failed to generate file" in the
    browser, so the reason goes to the server log too."""
    def run() -> bytes:
        try:
            return fn()
        except Exception:
            log.exception("export of %s failed", name)
            raise
    return run


def _as_figure(fig):
    """A figure spec (a plain dict, as ood_core.figures.scores builds them) becomes a plotly Figure on click;
    a callable builds it then (a 100,000-point map costs 0.3 s to build, so it is built for an export only)."""
    if callable(fig) and not hasattr(fig, "to_plotly_json"):
        fig = fig()
    if isinstance(fig, dict):
        import plotly.graph_objects as go
        return go.Figure(fig)
    return fig


def figure_downloads(fig, basename: str, key: str | None = None) -> None:
    """Download buttons for one figure (a plotly Figure, a spec dict, or a function building one on
    click): PNG, SVG, PDF (Chromium via kaleido) and interactive HTML."""
    k = key or basename
    ok, why = ex.static_export_status()
    with st.popover("Download figure", icon=":material/download:"):
        row = st.container(horizontal=True)
        with row:
            for fmt in ex.STATIC_FORMATS:
                st.download_button(
                    fmt.upper(), _logged(lambda f=fmt: ex.figure_bytes(_as_figure(fig), f), f"{basename}.{fmt}"),
                    f"{basename}.{fmt}", ex.MIME[fmt], key=f"dl-{k}-{fmt}", disabled=not ok,
                    help=why or f"{fmt.upper()} rendered by Chromium", on_click="ignore",
                )
            st.download_button("HTML", lambda: ex.figure_html(_as_figure(fig)), f"{basename}.html", ex.MIME["html"],
                               key=f"dl-{k}-html", help="interactive, self-contained (works offline)", on_click="ignore")
        if not ok:
            st.caption(why)


def table_downloads(df: pd.DataFrame, basename: str, key: str | None = None) -> None:
    """CSV and Parquet downloads of one table."""
    k = key or basename
    row = st.container(horizontal=True)
    with row:
        st.download_button("CSV", lambda: ex.table_csv(df), f"{basename}.csv", ex.MIME["csv"], key=f"dl-{k}-csv",
                           on_click="ignore", icon=":material/download:")
        st.download_button("Parquet", _logged(lambda: ex.table_parquet(df), f"{basename}.parquet"), f"{basename}.parquet",
                           ex.MIME["parquet"], key=f"dl-{k}-parquet", on_click="ignore")


def per_sample_downloads(bundle: Any, id_name: str, ood_names: Iterable[str], detectors: Iterable[str],
                         params: dict[str, dict[str, Any]] | None = None, basename: str = "per_sample_scores",
                         key: str | None = None) -> None:
    """CSV/Parquet of every sample's dataset, index, label, prediction and detector scores,
    computed on click (scores come from the disk cache when the page already computed them).
    ``bundle`` may be a model spec (``"default"``, a path, ``"upload:…"``): it is loaded on click."""
    k = key or basename
    ood_names, detectors, params = list(ood_names), list(detectors), dict(params or {})
    cache: dict[str, pd.DataFrame] = {}

    def frame() -> pd.DataFrame:
        if "df" not in cache:
            cache["df"] = ex.per_sample_scores(bundle, id_name, ood_names, detectors, params)
        return cache["df"]

    row = st.container(horizontal=True)
    with row:
        st.download_button("Per-sample scores (CSV)", _logged(lambda: ex.table_csv(frame()), f"{basename}.csv"),
                           f"{basename}.csv", ex.MIME["csv"], key=f"dl-{k}-ps-csv", on_click="ignore",
                           icon=":material/download:")
        st.download_button("Per-sample scores (Parquet)", _logged(lambda: ex.table_parquet(frame()), f"{basename}.parquet"),
                           f"{basename}.parquet", ex.MIME["parquet"], key=f"dl-{k}-ps-parquet", on_click="ignore")
