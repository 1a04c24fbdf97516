"""Entry point (`streamlit run app.py`): the page list, the navigation and the sidebar.

Each page is one file that declares itself (`PAGE = Page(title=…, icon=…, order=…, url_path=…,
sidebar=…)`, `ui.pages`); `home.py` is the landing page. The navigation and each page's sidebar
mode come from those declarations, so adding a page is adding one file under `pages/`. The
experiment sidebar is drawn here, once per run, before the page; pages read what it set
(`ui.common.context()`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# The script thread holds the GIL while it computes; Streamlit's server thread needs it for every
# step of sending a message. At Python's default 5 ms switch interval a knob move's first deltas
# waited 40-60 ms to leave the server (measured: fragment start +30 ms, browser "running" +73-93 ms);
# 1 ms hands the GIL over sooner (docs/architecture.md, "The app").
sys.setswitchinterval(0.001)

from ood_core import facade
from ui import common

st.set_page_config(page_title="Gradient-OOD workbench", layout="wide")


@st.cache_resource(show_spinner=False)
def restore_saved(cache_root: str):
    """Datasets and uploads of earlier sessions, once per process (and cache folder), before any page draws
    (the one restore route: docs/architecture.md, "Saved state")."""
    return facade.restore_saved()


restore_saved(facade.cache_root())


@st.cache_resource(show_spinner=False)
def load_plugins() -> list[str]:
    """OOD_PLUGINS and installed entry points, once per process (docs/architecture.md, "Plugins")."""
    return facade.load_plugins()


for _line in load_plugins():
    st.sidebar.warning(_line, icon=":material/extension_off:")

# The sidebar each page declares (its PAGE.sidebar); Models & data ("none") sets the experiment
# itself, so it gets a summary drawn after the page has run.
HERE = Path(__file__).resolve().parent  # the pages are discovered next to this file
nav = st.navigation(common.app_pages(HERE))
sidebar = common.sidebar_mode(nav.url_path, HERE)
common.sidebar(sidebar)
nav.run()
if sidebar == "none":
    common.sidebar_summary()
