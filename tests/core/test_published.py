"""Published numbers are data with a citation each (docs/methods.md, "Published numbers")."""
from __future__ import annotations

import csv

import pytest

from ood_core import published as P
from ood_core.detectors import detector_classes


def test_every_number_has_a_citation_and_a_source():
    rows = P.rows()
    assert len(rows) > 300
    files = sorted(P.TABLES_DIR.glob("*.csv"))
    assert {f.name for f in files} == {"architectures.csv", "openood_v15.csv", "seeds.csv"}
    n_lines = sum(len(list(csv.DictReader(f.open(encoding="utf-8")))) for f in files)
    assert n_lines == len(rows)  # every row of every table is loaded
    known = set(detector_classes())
    for r in rows:
        assert r.citation.strip() and r.source.startswith("https://"), r
        assert r.checked in ("read", "carried", "quoted"), r
        # only detectors the workbench has; an architecture's accuracy belongs to no detector
        assert r.detector in known if r.table != "architectures" else r.detector == "", r
        assert 0 <= r.value <= 100 and (r.std is None or 0 <= r.std < 100), r
        assert r.metric in ("auroc", "fpr95", "accuracy"), r
    # The leaderboard rows are pinned to a commit of zjysteven/OpenOOD.
    lb = [r for r in rows if r.table == "openood"]
    assert lb and all("github.com/zjysteven/OpenOOD/blob/" in r.source and r.checked == "read" for r in lb)


@pytest.mark.parametrize("bench,det,group,value,std", [
    ("openood-cifar10", "energy", "near", 87.58, 0.46),  # EBO
    ("openood-cifar10", "knn", "far", 92.96, 0.14),
    ("openood-cifar100", "maxlogit", "near", 81.05, 0.07),  # MLS
    ("openood-imagenet200", "mahalanobis", "far", 74.72, 0.26),  # MDS
    ("openood-imagenet1k", "ash", "far", 95.74, None),  # ResNet-50, no std on that table
])
def test_leaderboard_values(bench, det, group, value, std):
    got = P.published_value(bench, det, "auroc", group)
    assert got is not None and got[0] == value and got[1] == std and "OpenOOD v1.5" in got[2]


def test_archs_and_accuracy():
    assert P.published_value("openood-imagenet1k", "vim", "auroc", "near", arch="ViT-B/16")[0] == 77.03
    assert P.published_value("openood-imagenet1k", "odin", "auroc", "near", arch="ViT-B/16") is None
    assert P.published_accuracy("openood-cifar10")[:2] == (95.06, 0.30)
    assert P.published_value("openood-cifar10", "openmax", "auroc", "near") is None  # not a shared detector


def test_seed_tables_keep_their_numbers():
    assert P.reference("gradnorm", "gradnorm", "iNaturalist") == (50.03, 90.33)
    assert P.reference("gradnorm", "gradnorm", "dtd") == (61.42, 81.07)
    assert P.reference("rg", "rg", "mean") == (36.90, 92.17)
    assert P.reference("rg", "energy", "mean") == (71.03, 82.74)
    assert P.reference("gradnorm", "energy", "mean") is None
    assert P.reference("rg", "rg", "svhn") is None
    lo = {(r.training, r.metric): r.value for r in P.rows() if r.table == "learning_odin"}
    assert lo[("GQ", "auroc")] == 93.55 and lo[("CrossEntropy", "auroc")] == 89.09


def test_architecture_accuracies_are_cited_rows():
    from ood_core.models.archs import arch_info, known_arch

    arch_rows = [r for r in P.rows() if r.table == "architectures"]
    assert len(arch_rows) >= 5
    seen = set()
    for r in arch_rows:
        assert r.metric == "accuracy" and r.dataset == "id" and r.detector == "" and r.checked == "read", r
        assert r.citation.strip() and r.source.startswith("https://github.com/") and "/blob/" in r.source, r
        assert r.benchmark in ("cifar10", "cifar100", "imagenet", "imagenet200"), r  # setup_checks.dataset_key
        assert known_arch(r.arch) and arch_info(r.arch) is not None, r  # a workbench architecture name
        assert (r.arch, r.benchmark) not in seen, r  # one number per architecture and dataset
        seen.add((r.arch, r.benchmark))
        if "zjysteven/OpenOOD" in r.source:  # the same number, citation and source as the leaderboard row
            lb = P.published_accuracy("openood-" + r.benchmark, r.source_name)
            assert lb == (r.value, r.std, f"{r.citation}; {r.source}"), r


def test_setup_check_expects_the_leaderboard_accuracy():
    from ood_core.models.setup_checks import dataset_key

    lb = P.published_accuracy("openood-cifar10", "ResNet18")
    assert lb is not None and lb[:2] == (95.06, 0.30)
    assert P.published_arch_accuracy("resnet18_cifar", dataset_key("CIFAR-10:test")) == lb
    assert P.published_arch_accuracy("openood_resnet18_224x224", "imagenet200")[:2] == \
        P.published_accuracy("openood-imagenet200", "ResNet18")[:2]
    assert P.published_arch_accuracy("resnet18_cifar", "imagenet") is None  # no row, not a torchvision name
    assert P.published_arch_accuracy("small_cnn", "mnist") is None


def test_torchvision_accuracy_is_read_from_its_weights():
    from torchvision.models import get_model_weights

    from ood_core.models.archs import _TORCHVISION

    for name in _TORCHVISION:
        meta = get_model_weights(name).IMAGENET1K_V1.meta
        got = P.published_arch_accuracy(name, "imagenet")
        assert got is not None and got[0] == meta["_metrics"]["ImageNet-1K"]["acc@1"], name
        assert "IMAGENET1K_V1" in got[2] and meta["recipe"] in got[2], name
        assert P.published_arch_accuracy(name, "cifar10") is None
    assert round(P.published_arch_accuracy("resnet50", "imagenet")[0], 2) == 76.13
    # the lookup tries torchvision by name: no other workbench architecture may share a torchvision name
    from ood_core.models.archs import list_architectures

    others = [n for n, _ in list_architectures() if n not in _TORCHVISION]
    assert others and all(P._torchvision_accuracy(n) is None for n in others)
