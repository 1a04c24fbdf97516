"""Download buttons for figures and tables (owned by the export work; pages call these two)."""
from __future__ import annotations

import pandas as pd
import streamlit as st


def figure_downloads(fig, basename: str, key: str | None = None) -> None:
    """Download buttons for one figure: interactive HTML now; PNG/SVG/PDF come with the export work."""
    st.download_button("HTML", fig.to_html(include_plotlyjs="cdn"), f"{basename}.html", "text/html",
                       key=f"dl-{key or basename}-html")


def table_downloads(df: pd.DataFrame, basename: str, key: str | None = None) -> None:
    """CSV download of one table."""
    st.download_button("CSV", df.to_csv(index=False), f"{basename}.csv", "text/csv", key=f"dl-{key or basename}-csv")
