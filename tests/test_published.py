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
    assert {f.name for f in files} == {"openood_v15.csv", "seeds.csv"}
    n_lines = sum(len(list(csv.DictReader(f.open(encoding="utf-8")))) for f in files)
    assert n_lines == len(rows)  # every row of every table is loaded
    known = set(detector_classes())
    for r in rows:
        assert r.citation.strip() and r.source.startswith("https://"), r
        assert r.checked in ("read", "carried", "quoted"), r
        assert r.detector in known, r  # only detectors the workbench has
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
