"""ood_core: the UI-free backend of the gradient-OOD workbench.

Usable from a notebook, the CLI (``python -m ood_core``) and the Streamlit pages.
"""
__version__ = "0.1.0"
