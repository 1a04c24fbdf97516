"""Imports point one way (docs/architecture.md, "Layout"): the module graph of ``ood_core``, built
from the source, has no cycle and no import from a lower layer into a higher one.

Every ``import`` / ``from … import`` counts, function-level ("lazy") ones included: a lazy
import that goes upward is still an upward dependency. A fresh interpreter then imports every
module, and importing restores nothing (saved datasets and uploads come back only through
``workbench.restore_saved()``).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "ood_core"

# Low -> high. A module may import its own layer (without cycles) and the layers below it.
LAYERS: list[set[str]] = [
    {"ood_core", "errors", "knobs", "published", "distributed", "resources", "stores"},
    {"cache", "jobs", "concurrency", "metrics", "experiment"},
    {"data"},
    {"models"},
    {"extract", "batching"},
    {"gradients"},
    {"detectors"},
    {"training", "api", "plugins"},
    {"figures"},
    {"persist"},
    {"workbench"},
    {"compare", "tuning", "maps", "saliency", "scoring", "export", "benchmarks", "conformance"},
    {"facade"},
    {"cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(mod: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The ``ood_core`` modules one import statement depends on."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "ood_core" or a.name.startswith("ood_core.")]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
        if target != "ood_core" and not target.startswith("ood_core."):
            return []
    # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for mod, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(mod, path, node, modules) if t != mod)
        unknown = deps - set(modules)
        assert not unknown, f"{mod} imports {sorted(unknown)}, which are not modules of ood_core"
        graph[mod] = deps
    return graph


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = sorted({layer(m) for m in _modules()} - set(RANK))
    assert not missing, f"add these to LAYERS in {Path(__file__).name}: {missing}"


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down():
    graph = import_graph()
    upward = sorted(f"{m} ({layer(m)}) imports {d} ({layer(d)})"
                    for m, deps in graph.items() for d in deps if RANK[layer(d)] > RANK[layer(m)])
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_lower_layers_know_nothing_of_workbench_or_cli():
    low = {"data", "models", "extract", "gradients", "detectors", "training"}
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if layer(m) in low
                 for d in deps if layer(d) in {"workbench", "cli", "__main__", "persist"})
    assert not bad, bad


def test_the_check_sees_lazy_imports_and_cycles(tmp_path):
    """The graph builder itself: a function-level import is an edge; a two-module loop is a cycle."""
    src = "def f():\n    from ..workbench import load_model\n    from . import loading\n"
    mods = {"ood_core.models.x": tmp_path / "x.py", "ood_core.workbench": tmp_path / "w.py",
            "ood_core.models.loading": tmp_path / "l.py"}
    node_deps = [t for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)
                 for t in _targets("ood_core.models.x", mods["ood_core.models.x"], n, mods)]
    assert node_deps == ["ood_core.workbench", "ood_core.models.loading"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_fresh_interpreter_imports_everything_and_restores_nothing(tmp_path):
    """Import every module in a new process whose cache remembers a dataset and an upload:
    neither may appear until ``restore_saved()`` is called."""
    cache = tmp_path / "cache"
    data = tmp_path / "noise.npz"
    import numpy as np

    np.savez(data, x=np.zeros((3, 5, 5), np.uint8))
    (cache / "datasets").mkdir(parents=True)
    (cache / "datasets" / "registry.json").write_text(json.dumps({"saved_noise": {
        "role": "ood_test", "format": "npz", "description": "",
        "sources": {"test": {"path": str(data), "fmt": "npz", "split": "test", "limit": None, "labelled": True}}}}))
    (cache / "uploads" / "models").mkdir(parents=True)
    (cache / "uploads" / "models" / "registry.json").write_text(json.dumps({
        "upload:gone@00000000": {"path": str(tmp_path / "gone.pt"), "options": {}}}))
    mods = [m for m in _modules() if m != "ood_core.__main__"]  # __main__ runs the CLI
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "from ood_core.data import list_datasets\n"
        "from ood_core.models import loaded\n"
        "from ood_core import workbench\n"
        "before = [s.name for s in list_datasets() if not s.embedded], [k for k, _ in loaded.items()]\n"
        "r = workbench.restore_saved()\n"
        "after = [s.name for s in list_datasets() if not s.embedded]\n"
        "print(json.dumps({'before': before, 'after': after, 'datasets': r.datasets, 'models': r.models,\n"
        "                  'skipped': r.skipped}))\n"
    )
    env = {**os.environ, "OOD_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["before"] == [[], []]  # importing restored nothing
    assert got["after"] == ["saved_noise"] and got["datasets"] == ["saved_noise"] and got["models"] == []
    assert list(got["skipped"]) == ["upload:gone@00000000"]
    assert "gone" in got["skipped"]["upload:gone@00000000"] and "\n" not in got["skipped"]["upload:gone@00000000"]


# The app's side (docs/architecture.md, "Layers"): pages, ui/ and the entry files talk to the backend
# only through the facade, the figures and the shared types, and never import torch.
APP_FILES = [ROOT / "app.py", ROOT / "home.py", *sorted((ROOT / "pages").glob("*.py")),
             *sorted((ROOT / "ui").rglob("*.py"))]
APP_ALLOWED = ("ood_core.facade", "ood_core.figures", "ood_core.errors", "ood_core.knobs")


def _app_imports(path: Path) -> list[str]:
    """Every module one app file imports (function-level imports included); ``from X import a`` -> ``X.a``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out += [f"{node.module}.{a.name}" if node.module == "ood_core" else node.module for a in node.names]
    return out


def _app_violations(path: Path) -> list[str]:
    bad = []
    for name in _app_imports(path):
        if name == "torch" or name.startswith("torch."):
            bad.append(f"{path.name} imports {name}")
        elif (name == "ood_core" or name.startswith("ood_core.")) and not any(
                name == a or name.startswith(a + ".") for a in APP_ALLOWED):
            bad.append(f"{path.name} imports {name}")
    return bad


def test_app_files_import_only_the_facade_figures_and_shared_types():
    bad = [v for f in APP_FILES for v in _app_violations(f)]
    assert not bad, "pages/ui import the backend past the facade:\n" + "\n".join(bad)


def test_the_app_check_sees_lazy_and_torch_imports(tmp_path):
    f = tmp_path / "page.py"
    f.write_text("from ood_core import facade\nfrom ood_core.figures import scores\n"
                 "def g():\n    from ood_core import workbench\n    import torch.nn\n    from ood_core.data import x\n")
    assert _app_violations(f) == ["page.py imports ood_core.workbench", "page.py imports torch.nn",
                                  "page.py imports ood_core.data"]
