"""OpenOOD v1.5's benchmarks from a local data root (docs/architecture.md, "Benchmarks").

A benchmark is data (:data:`BENCHMARKS`): its ID set, its OOD validation set and its near/far OOD
sets, each an image list under ``ROOT/benchmark_imglist/<b>/`` whose entries are relative to
``ROOT/images_classic/`` or ``ROOT/images_largescale/``, as OpenOOD's download script leaves them
(the lists and groups of ``openood/evaluation_api/datasets.py``, ``DATA_INFO``, in
``Jingkang50/OpenOOD``). :func:`add` registers what is there through the registry's
``filelist`` reader (:func:`ood_core.persist.register_local`) and says what is missing;
:func:`evaluate` runs :func:`ood_core.workbench.evaluate` once per checkpoint and adds OpenOOD's
near/far means (the plain mean of each metric over the group's sets) and, over several
checkpoints, the mean and population std (numpy, ``ddof=0``, as OpenOOD's ``scripts/eval_ood.py``).

Dataset names: the ID set is named after OpenOOD's ID set (``cifar10``, with ``cifar10:train``);
an OOD set is ``<id>-<set>`` (``cifar10-tin``), the OOD validation set ``<id>-val-<set>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from . import persist
from .data import DataError
from .data.registry import get_spec, restore_entry
from .errors import UserError
from .metrics import METRICS

if TYPE_CHECKING:  # annotations only: pandas is imported where a table is built
    import pandas as pd

GROUPS = ("near", "far")
DATA_INFO_SOURCE = ("Jingkang50/OpenOOD, openood/evaluation_api/datasets.py (DATA_INFO), "
                    "https://github.com/Jingkang50/OpenOOD")


class BenchmarkError(UserError):
    """A benchmark name, root or layout the workbench cannot use."""


@dataclass(frozen=True)
class BenchmarkSet:
    """One image list of a benchmark."""

    key: str  # OpenOOD's name of the set: tin, ssb_hard, …
    group: str  # id_train, id_test, val, near, far
    imglist: str  # relative to ROOT, e.g. benchmark_imglist/cifar10/test_tin.txt

    @property
    def role(self) -> str:
        return {"id_train": "id_train", "id_test": "id_test", "val": "ood_val"}.get(self.group, "ood_test")


@dataclass(frozen=True)
class Benchmark:
    name: str
    id_name: str
    num_classes: int
    sets: tuple[BenchmarkSet, ...]

    def dataset_name(self, s: BenchmarkSet) -> str:
        """The registry name of one set (see the module docstring)."""
        if s.group in ("id_train", "id_test"):
            return self.id_name
        return f"{self.id_name}-val-{s.key}" if s.group == "val" else f"{self.id_name}-{s.key}"

    def group_names(self, group: str) -> list[str]:
        return [self.dataset_name(s) for s in self.sets if s.group == group]


def _bench(name: str, id_name: str, folder: str, n: int, val: str, near: Iterable[str],
           far: Iterable[str]) -> Benchmark:
    d = f"benchmark_imglist/{folder}"
    sets = [BenchmarkSet(id_name, "id_train", f"{d}/train_{folder}.txt"),
            BenchmarkSet(id_name, "id_test", f"{d}/test_{folder}.txt"),
            BenchmarkSet(val, "val", f"{d}/val_{val}.txt")]
    sets += [BenchmarkSet(k, "near", f"{d}/test_{k}.txt") for k in near]
    sets += [BenchmarkSet(k, "far", f"{d}/test_{k}.txt") for k in far]
    return Benchmark(name, id_name, n, tuple(sets))


# OpenOOD v1.5's DATA_INFO (see DATA_INFO_SOURCE): the lists and the near/far groups.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    _bench("openood-cifar10", "cifar10", "cifar10", 10, "tin", ("cifar100", "tin"),
           ("mnist", "svhn", "texture", "places365")),
    _bench("openood-cifar100", "cifar100", "cifar100", 100, "tin", ("cifar10", "tin"),
           ("mnist", "svhn", "texture", "places365")),
    _bench("openood-imagenet200", "imagenet200", "imagenet200", 200, "openimage_o", ("ssb_hard", "ninco"),
           ("inaturalist", "textures", "openimage_o")),
    _bench("openood-imagenet1k", "imagenet1k", "imagenet", 1000, "openimage_o", ("ssb_hard", "ninco"),
           ("inaturalist", "textures", "openimage_o")),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _first_entry(path: Path) -> tuple[int, str | None]:
    """How many entries a list has, and its first path (cheap: the images are not opened)."""
    from .data.image_lists import parse_entry

    n, first = 0, None
    with path.open(encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is not part of the first path
        for line in f:
            entry = parse_entry(line)
            if entry:
                n += 1
                first = first or entry[0]
    return n, first


@dataclass
class Added:
    """What :func:`add` did: one line per set registered, unchanged or missing."""

    registered: list[str]
    unchanged: list[str]
    missing: list[str]
    lines: list[str]


def add(name: str, root: str | Path, replace: bool = False) -> Added:
    """Register every list of benchmark ``name`` present under ``root``; say what is missing.

    Idempotent: a set already registered from the same list is left as is. A name registered
    from elsewhere (your own ``cifar10``) is replaced only with ``replace``. The lists are
    counted, not validated image by image (ImageNet's training list has 1.28 M entries): only
    each list's first image is checked, so a wrong root fails here."""
    from .data.image_lists import list_base

    b = get_benchmark(name)
    root = Path(root).expanduser()
    folder = root / Path(b.sets[0].imglist).parent
    if not folder.is_dir():
        raise BenchmarkError(f"{folder} is not a folder; --root must hold OpenOOD's benchmark_imglist/ "
                             "(and images_classic/ or images_largescale/) as its download script leaves them")
    saved = persist.saved_datasets()
    ours = {str((root / s.imglist).resolve()) for s in b.sets}
    out = Added([], [], [], [])
    for s in b.sets:
        ds = b.dataset_name(s) + (":train" if s.group == "id_train" else "")
        path = root / s.imglist
        if not path.is_file():
            out.missing.append(ds)
            out.lines.append(f"missing\t{ds}\t{s.group}\t{s.imglist} not found")
            continue
        n, first = _first_entry(path)
        base = list_base(path, first=first) if first else None
        if not first or not (base / first).is_file():
            why = f"its first image {first!r} is under neither images_classic/ nor images_largescale/" if first \
                else "it lists no image"
            out.missing.append(ds)
            out.lines.append(f"missing\t{ds}\t{s.group}\t{s.imglist}: {why}")
            continue
        reg = b.dataset_name(s)
        prev = saved.get(reg)
        prev_paths = {src.get("path") for src in (prev or {}).get("sources", {}).values()}
        split = "train" if s.group == "id_train" else "test"
        src = str(path.resolve())
        if prev and (prev.get("sources", {}).get(split) or {}).get("path") == src:
            try:
                get_spec(reg)
            except DataError:  # saved by an earlier session but not restored in this process
                restore_entry(reg, prev)
            out.unchanged.append(ds)
            out.lines.append(f"unchanged\t{ds}\t{s.group}\t{n:,} images\t{s.imglist}")
            continue
        if prev and not prev_paths <= ours and not replace:
            raise BenchmarkError(f"a dataset named {reg!r} is already registered from {sorted(prev_paths)[0]}; "
                                 f"add --replace to register {name}'s list under that name")
        desc = f"OpenOOD v1.5 {name}: {s.group} {s.key} ({s.imglist})"
        # Ours or --replace (checked above); the train split joins the ID test set's entry.
        persist.register_local(path, reg, s.role, fmt="filelist", labelled=s.group in ("id_train", "id_test"),
                               description=desc, validate=False, replace=True)
        saved = persist.saved_datasets()
        out.registered.append(ds)
        out.lines.append(f"registered\t{ds}\t{s.group}\t{n:,} images\t{s.imglist}")
    return out


def registered_sets(name: str) -> tuple[str, list[str], list[str]]:
    """``(id name, OOD names registered, OOD names missing)`` of benchmark ``name`` (near then far)."""
    b = get_benchmark(name)
    try:
        get_spec(b.id_name)
    except DataError:
        raise BenchmarkError(f"{name} is not registered; run `python -m ood_core benchmark add {name} --root DATA`") \
            from None
    have, missing = [], []
    for g in GROUPS:
        for n in b.group_names(g):
            try:
                get_spec(n)
                have.append(n)
            except DataError:
                missing.append(n)
    if not have:
        raise BenchmarkError(f"none of {name}'s OOD sets is registered; run `benchmark add {name} --root DATA`")
    return b.id_name, have, missing


def benchmark_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """``{"near": [...], "far": [...]}``: the OpenOOD groups of the dataset ``names`` that belong to
    one (names that belong to none are left out; a group with none of them is absent)."""
    names = list(names)
    out: dict[str, list[str]] = {}
    for b in BENCHMARKS.values():
        for g in GROUPS:
            for n in b.group_names(g):
                if n in names:
                    out.setdefault(g, []).append(n)
    return out


def benchmark_of(id_name: str) -> Benchmark | None:
    """The benchmark whose ID set is ``id_name``, if any."""
    return next((b for b in BENCHMARKS.values() if b.id_name == id_name), None)


def group_means(results: list[dict[str, Any]], groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """OpenOOD's near/far rows: per detector and group, the plain mean of each metric over the
    group's sets (``openood/evaluation_api/evaluator.py``, ``_eval_ood``)."""
    out = []
    for det in dict.fromkeys(r["detector"] for r in results):
        for g, names in groups.items():
            rows = [r for r in results if r["detector"] == det and r["ood_dataset"] in names]
            if rows:
                out.append({"detector": det, "group": g, "datasets": [r["ood_dataset"] for r in rows],
                            **{m: float(np.mean([r[m] for r in rows])) for m in METRICS}})
    return out


def _aggregate(rows_per_model: list[list[dict[str, Any]]], key: Callable[[dict], tuple]) -> list[dict[str, Any]]:
    """Rows of several checkpoints -> one row each: the mean, ``std`` (ddof=0) and ``per_model``."""
    out = []
    for first in rows_per_model[0]:
        k = key(first)
        same = [next(r for r in rows if key(r) == k) for rows in rows_per_model]
        vals = {m: np.array([r[m] for r in same], np.float64) for m in METRICS}
        out.append({**first, **{m: float(v.mean()) for m, v in vals.items()},
                    "std": {m: float(v.std()) for m, v in vals.items()},
                    "per_model": {m: [float(x) for x in v] for m, v in vals.items()}})
    return out


def evaluate(models: list[Any], id_name: str, ood: list[str], detectors: list[str],
             params: dict[str, dict[str, Any]] | None = None, progress: Any = None,
             subsample: dict[str, float] | None = None, seed: int = 0,
             groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """:func:`ood_core.workbench.evaluate` per model (a spec or a loaded bundle), plus ``groups``.

    One model: workbench's JSON, with ``groups`` (near/far means) when ``groups`` is given.
    Several: ``results``/``groups`` hold the mean over the models with ``std`` and ``per_model``
    per metric; ``id_accuracy`` likewise (``id_accuracy_std``, ``id_accuracy_per_model``);
    ``runs`` keeps each model's own JSON."""
    from . import workbench as wb

    if not models:
        raise BenchmarkError("name at least one model")
    runs = []
    for m in models:
        run = wb.evaluate(m, id_name, ood, detectors, params, progress, subsample=subsample, seed=seed)
        if groups is not None:
            run["groups"] = group_means(run["results"], groups)
        runs.append(run)
    if len(runs) == 1:
        return runs[0]
    out = {k: v for k, v in runs[0].items() if k not in ("model", "model_fingerprint")}
    acc = np.array([r["id_accuracy"] for r in runs], np.float64)
    out.update(models=[r["model"] for r in runs], model_fingerprints=[r["model_fingerprint"] for r in runs],
               id_accuracy=float(acc.mean()), id_accuracy_std=float(acc.std()),
               id_accuracy_per_model=[float(a) for a in acc],
               results=_aggregate([r["results"] for r in runs], lambda r: (r["detector"], r["ood_dataset"])),
               runs=runs)
    if groups is not None:
        out["groups"] = _aggregate([r["groups"] for r in runs], lambda r: (r["detector"], r["group"]))
    return out


# How far a measured value may sit from a published mean before it is marked: the published
# spread is the std over the publisher's checkpoints (three for OpenOOD v1.5), so a further run of
# the same recipe lands within 1.96 std about 95% of the time (normal approximation).
OUTSIDE_Z = 1.96


def grouped_view(df: "pd.DataFrame", id_name: str, metric: str, arch: str | None = None) -> "pd.DataFrame | None":
    """The Compare page's benchmark view of a compare table (``compare.compare_table``'s long rows):
    per detector, the near and far means of ``metric`` over the group's sets that are in the table,
    and, when ``arch``'s family has published rows for this benchmark, the published value
    (fractions, as ours), its std and ``outside`` (|measured − published| > 1.96·std). None when
    ``id_name`` is no benchmark's ID set or no set of the table is in a group."""
    import pandas as pd

    from . import published

    b = benchmark_of(id_name)
    if b is None:
        return None
    ok = df[df["status"] == "ok"]
    groups = {g: [n for n in b.group_names(g) if n in set(ok["ood_dataset"])] for g in GROUPS}
    groups = {g: names for g, names in groups.items() if names}
    if not groups:
        return None
    pub_arch = published.published_arch(b.name, arch) if arch else None
    out = []
    for det in dict.fromkeys(ok["detector"]):
        row: dict[str, Any] = {"detector": det}
        for g, names in groups.items():
            vals = ok[(ok["detector"] == det) & ok["ood_dataset"].isin(names)][metric]
            row[g] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{g} sets"] = len(vals)
            got = published.published_value(b.name, det, metric, g, arch=pub_arch) if pub_arch else None
            if got is not None:
                value, std, _ = got
                row[f"{g} published"] = value / 100
                row[f"{g} published std"] = None if std is None else std / 100
                row[f"{g} outside"] = (std is not None and len(vals) == len(b.group_names(g))
                                       and abs(row[g] - value / 100) > OUTSIDE_Z * std / 100)
        out.append(row)
    view = pd.DataFrame(out).set_index("detector")
    view.attrs.update(benchmark=b.name, groups=groups, published_arch=pub_arch,
                      complete={g: len(n) == len(b.group_names(g)) for g, n in groups.items()})
    return view


@dataclass(frozen=True)
class BenchmarkView:
    """A comparison grouped as its benchmark groups it (near/far means) with published values."""

    benchmark: str
    table: Any  # pandas DataFrame: per detector, <group>, <group> sets, <group> published/std/outside
    groups: dict[str, list[str]]  # the sets of each group that are in the table
    missing: dict[str, list[str]]  # each group's sets that are not
    published_arch: str | None  # the leaderboard's name for this model's family, or None (no match)
    citation: str


def benchmark_view(df: "pd.DataFrame", id_name: str, metric: str, bundle: Any) -> BenchmarkView | None:
    """Compare's near/far view when ``id_name`` is a benchmark's ID set (:func:`grouped_view`), with
    the sets each group lacks and the published rows' citation; None otherwise."""
    from . import published

    view = grouped_view(df, id_name, metric, getattr(bundle, "arch", None))
    if view is None:
        return None
    b = get_benchmark(view.attrs["benchmark"])
    groups = view.attrs["groups"]
    missing = {g: [n for n in b.group_names(g) if n not in groups.get(g, [])] for g in GROUPS}
    cite = ""
    if view.attrs["published_arch"]:
        cite = next((r.citation + "; " + r.source for r in published.rows() if r.benchmark == b.name), "")
    return BenchmarkView(b.name, view, groups, {g: m for g, m in missing.items() if m},
                         view.attrs["published_arch"], cite)
