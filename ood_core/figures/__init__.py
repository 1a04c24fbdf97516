"""Plotly figure builders, shared by the pages and by export.

One submodule per area (``scores``, ``compare``, ``maps``, ``training``, ...); pages
import the builders they draw. Every builder returns a ``plotly.graph_objects.Figure``.
"""
