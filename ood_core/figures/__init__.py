"""Plotly figure builders and previews, shared by the pages and by export.

One submodule per area (``scores``, ``compare``, ``maps``, ``training``, ...); pages
import the builders they draw. Every builder returns a ``plotly.graph_objects.Figure``,
except :mod:`.previews`, whose images are uint8 arrays (sample grids, a model's input).
"""
