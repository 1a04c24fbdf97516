"""Pages declared once, in their own file: ``PAGE = Page(...)`` at the top of ``home.py`` and each
``pages/*.py``. ``app.py`` discovers them (:func:`discover`) and builds the navigation, the
sidebar mode and Home's links from those declarations, so adding a page is adding one file.

The declaration is read from the file's source (``ast``), not by running it: a page's script
draws widgets, so it runs only when the navigation opens it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Page:
    """A page's place in the app: its title, icon, order in the navigation, URL path, the sidebar it
    gets (``"pickers"``, ``"no_ood"`` or ``"none"``; :func:`ui.common.sidebar`) and a line for Home."""

    title: str
    icon: str = ""
    order: int = 100
    url_path: str = ""
    sidebar: str = "pickers"
    what: str = ""


def declaration(path: Path) -> Page | None:
    """The ``PAGE = Page(...)`` a file declares (keyword literals only), or None."""
    tree = ast.parse(Path(path).read_text(), str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PAGE"]
                and isinstance(node.value, ast.Call)):
            return Page(**{kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords if kw.arg})
    return None


def discover(root: Path = ROOT) -> list[tuple[str, Page]]:
    """``(file relative to root, Page)`` for ``home.py`` and every declared ``pages/*.py``, in navigation order."""
    found = []
    for f in [root / "home.py", *sorted((root / "pages").glob("*.py"))]:
        page = declaration(f) if f.exists() else None
        if page is not None:
            found.append((f.relative_to(root).as_posix(), page))
    return sorted(found, key=lambda fp: (fp[1].order, fp[0]))
