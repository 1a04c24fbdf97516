"""docs/architecture.md stays true where a test can tell: every path its "Where to add things" and
"Tests" sections name exists, each extension's test exists and does add one from one file, and the
test folders are the ones the "Tests" table lists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"docs/architecture.md has no section {title!r}"
    return m.group(1)


def _paths(text: str) -> list[str]:
    """Backticked paths (``ood_core/…``, ``tests/…``, ``pages/…``, ``ui/…``)."""
    return [p for p in re.findall(r"`([^`\s]+)`", text) if re.match(r"(ood_core|tests|pages|ui|docs)/", p)]


def _exists(path: str) -> bool:
    """A path with placeholders (``<method>``, ``<N>_<Name>``) exists when its folder does."""
    if "<" in path:
        return (ROOT / path.split("<")[0]).parent.is_dir() if not path.split("<")[0].endswith("/") else \
            (ROOT / path.split("<")[0]).is_dir()
    return (ROOT / path).exists()


def test_every_path_in_where_to_add_things_exists():
    paths = _paths(_section("Where to add things"))
    assert len(paths) >= 14, paths
    missing = [p for p in paths if not _exists(p)]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_each_extension_row_names_a_test_that_adds_one_from_one_file():
    rows = [r for r in _section("Where to add things").splitlines() if r.startswith("| a")]
    assert {r.split("|")[1].strip() for r in rows} >= {"a detector", "a training method", "a dataset format", "a page"}
    for r in rows:
        test = _paths(r.split("|")[-2])
        assert len(test) == 1 and test[0].startswith("tests/"), r
        assert (ROOT / test[0]).is_file(), test[0]
    # the four the design promises are each added from one file in tmp_path by their test
    for name in ("detectors/test_add_detector.py", "training/test_add_method.py", "data/test_formats.py",
                 "app/test_frame.py"):
        src = (ROOT / "tests" / name).read_text()
        assert "tmp_path" in src and ("write_text" in src or "copytree" in src), name


def test_the_tests_table_lists_exactly_the_test_folders():
    listed = {p.rstrip("/") for p in _paths(_section("Tests")) if re.fullmatch(r"tests/\w+/", p)}
    present = {f"tests/{d.name}" for d in (ROOT / "tests").iterdir()
               if d.is_dir() and not d.name.startswith((".", "_")) and any(d.glob("test_*.py"))}
    assert listed == present
    for p in _paths(_section("Tests")):
        assert _exists(p), p
