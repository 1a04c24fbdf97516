"""Published numbers, printed beside the workbench's own (``evaluate --paper``; docs/methods.md,
"Published numbers").

The numbers are data, not code: ``ood_core/published_tables/*.csv``, one number per row with its
``citation`` (paper, table) and ``source`` (a URL, pinned to a commit where the table lives in a
repository). ``checked`` says how the number got there: ``read`` (read from ``source`` when the
row was written), ``carried`` (from the workbench's earlier hand-typed table of the seed papers),
``quoted`` (quoted by the issue that asked for it; the paper's text was not at hand to check).

Tables: ``openood`` (OpenOOD v1.5's leaderboard: near/far AUROC and ID accuracy, mean ± std over
its three checkpoints where it gives one), ``gradnorm`` and ``rg`` (the seeds' ImageNet tables,
FPR95 and AUROC), ``learning_odin`` (CE vs GQ training on CIFAR-10), ``architectures`` (the ID
accuracy published for a workbench architecture, ``benchmark`` = the setup checks' dataset key, ``arch``
= the workbench's name; :func:`published_arch_accuracy`, which also reads torchvision's own declared
ImageNet-1K accuracy for its architectures). Percentages throughout.

Not to be confused with :class:`ood_core.knobs.Paper`, the citation a method shows.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

TABLES_DIR = Path(__file__).resolve().parent / "published_tables"
PAPERS = ("gradnorm", "rg", "openood")  # the tables `evaluate --paper` can print beside our rows
COLUMNS = ("table", "benchmark", "arch", "training", "detector", "source_name", "dataset", "metric", "value",
           "std", "note", "citation", "source", "checked")


@dataclass(frozen=True)
class Published:
    """One published number (percent) and where it comes from."""

    table: str
    benchmark: str
    arch: str
    training: str
    detector: str  # the workbench's detector name
    source_name: str  # the name the source uses (OpenOOD's EBO is our energy)
    dataset: str  # an OOD set, a group ("near", "far", "mean") or "id" for the accuracy
    metric: str  # auroc, fpr95, accuracy
    value: float
    std: float | None
    note: str
    citation: str
    source: str
    checked: str


@functools.lru_cache(maxsize=1)
def rows() -> tuple[Published, ...]:
    """Every published number in ``published_tables/*.csv``, in file order."""
    out: list[Published] = []
    for path in sorted(TABLES_DIR.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                out.append(Published(**{**{k: r[k] for k in COLUMNS}, "value": float(r["value"]),
                                        "std": float(r["std"]) if r["std"] else None}))
    return tuple(out)


def published_value(benchmark: str, detector: str, metric: str, dataset_or_group: str, arch: str | None = None,
                    training: str = "CrossEntropy") -> tuple[float, float | None, str] | None:
    """``(value, std or None, citation)`` a source gives for ``detector`` on ``benchmark``, or None.

    ``dataset_or_group``: ``near``/``far`` (OpenOOD's means), ``id`` (accuracy), ``mean`` or a
    set name; ``arch``: None takes the first row in file order (for ``openood-imagenet1k`` that is
    ResNet-50, the leaderboard's headline model)."""
    for r in rows():
        if (r.benchmark == benchmark and r.detector == detector and r.metric == metric
                and r.dataset == dataset_or_group and r.training == training and (arch is None or r.arch == arch)):
            return r.value, r.std, f"{r.citation}; {r.source}"
    return None


def published_accuracy(benchmark: str, arch: str | None = None) -> tuple[float, float | None, str] | None:
    """The ID accuracy a table gives for ``benchmark``'s standard (cross-entropy) model."""
    for r in rows():
        if r.benchmark == benchmark and r.metric == "accuracy" and r.training == "CrossEntropy" \
                and (arch is None or r.arch == arch):
            return r.value, r.std, f"{r.citation}; {r.source}"
    return None


def published_arch_accuracy(arch: str, dataset_key: str) -> tuple[float, float | None, str] | None:
    """``(top-1 %, std or None, "citation; source")`` published for the workbench architecture ``arch``
    trained on ``dataset_key`` (``cifar10``, ``cifar100``, ``imagenet200``, ``imagenet``), or None.

    The ``architectures`` table first; for a torchvision architecture on ``imagenet``, the accuracy its
    ``IMAGENET1K_V1`` weights declare (``meta["_metrics"]``: the library's data, not a number typed
    here), with the weights' training recipe as source."""
    for r in rows():
        if r.table == "architectures" and r.arch == arch and r.benchmark == dataset_key:
            return r.value, r.std, f"{r.citation}; {r.source}"
    return _torchvision_accuracy(arch) if dataset_key == "imagenet" else None


@functools.lru_cache(maxsize=None)
def _torchvision_accuracy(arch: str) -> tuple[float, float | None, str] | None:
    """ImageNet-1K top-1 torchvision's ``IMAGENET1K_V1`` weights of ``arch`` declare, or None (not a
    torchvision model, or weights without that entry)."""
    import torchvision
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(arch)
    except (ValueError, KeyError):  # not a torchvision builder name
        return None
    v1 = getattr(weights, "IMAGENET1K_V1", None)
    acc = (v1.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1") if v1 is not None else None)
    if acc is None:
        return None
    source = v1.meta.get("recipe") or "https://pytorch.org/vision/stable/models.html"
    return float(acc), None, f"torchvision {torchvision.__version__}, {weights.__name__}.IMAGENET1K_V1 (acc@1 its " \
                             f"weights declare); {source}"


def paper_set(name: str) -> str | None:
    """The seed papers' OOD set a dataset name stands for (``inat``, ``SUN``, ``dtd``…), or None."""
    n = name.lower()
    for key, hints in (("inaturalist", ("inat",)), ("sun", ("sun",)), ("places", ("places",)),
                       ("textures", ("texture", "dtd"))):
        if any(h in n for h in hints):
            return key
    return None


def reference(paper: str, detector: str, ood: str) -> tuple[float, float] | None:
    """``(FPR95, AUROC)`` the seed ``paper`` (gradnorm, rg) gives for ``detector`` on ``ood``
    (``"mean"`` for the mean over the four sets), or None."""
    key = "mean" if ood == "mean" else paper_set(ood)
    if key is None:
        return None
    # GradNorm's own table has every set; RG's has the means of GradNorm and the baselines.
    table = "gradnorm" if detector == "gradnorm" else paper if paper == "rg" and key == "mean" else None
    if table is None:
        return None
    got = {r.metric: r.value for r in rows() if r.table == table and r.detector == detector and r.dataset == key}
    return (got["fpr95"], got["auroc"]) if {"fpr95", "auroc"} <= set(got) else None


# The workbench's architecture names -> the ``arch`` column of the OpenOOD leaderboard rows they
# stand for (data, not logic: OpenOOD's CIFAR/ImageNet-200 ResNet18 and its ImageNet-1K models).
PUBLISHED_ARCH = {
    "resnet18_cifar": "ResNet18", "openood_resnet18_32x32": "ResNet18",
    "openood_resnet18_224x224": "ResNet18", "resnet18": "ResNet18",
    "resnet50": "ResNet50", "vit_b_16": "ViT-B/16", "swin_t": "Swin-T",
}


def published_arch(benchmark: str, arch: str) -> str | None:
    """The leaderboard's name for the workbench architecture ``arch`` when ``benchmark``'s table has
    rows for it (the model family matches), else None."""
    name = PUBLISHED_ARCH.get(arch)
    if name is None:
        return None
    return name if any(r.benchmark == benchmark and r.arch == name for r in rows()) else None
