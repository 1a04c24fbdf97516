"""Plotly figure builders and previews, shared by the pages and by export.

One submodule per area (``scores``, ``compare``, ``maps``, ``training``, ...); pages
import the builders they draw. Every builder returns a ``plotly.graph_objects.Figure``,
except :mod:`.previews`, whose images are uint8 arrays (sample grids, a model's input).
"""

import html as _html


def plain(text: object) -> str:
    """``text`` shown literally in a plotly label (legend, hover, title, tick): plotly reads
    ``<b>``, ``<a href>``, ``<br>`` … in every string it draws and decodes entities, so a dataset
    named ``<b>x</b>`` would render bold and ``<a href=…>`` as a link. Every name that comes from a
    user's files goes through this before it reaches a figure (docs/architecture.md, "The app")."""
    return _html.escape(str(text), quote=False)
