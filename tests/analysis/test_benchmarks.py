"""OpenOOD v1.5 benchmarks from a local root (docs/architecture.md, "Benchmarks").

A tiny OpenOOD-layout tree in tmp_path: ``benchmark_imglist/cifar10/*.txt`` with the real file
names and lines shaped like the real ones (``cifar10/test/<class>/<n>.png <label>``, paths relative
to ``images_classic/``), 28×28 grayscale PNGs so the embedded default model reads them (the ID
images are real MNIST digits, the OOD ones noise, letters-like strokes and flat fields). Every
test runs in a private cache holding a copy of the default model, so registrations never leak.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ood_core import benchmarks as B
from ood_core import cache, cli
from ood_core.data import registry
from ood_core.metrics import METRICS
from ood_core.models.checkpoints import default_model_path, load_checkpoint, save_checkpoint

OOD_SETS = {"cifar100": "near", "tin": "near", "mnist": "far", "svhn": "far", "texture": "far", "places365": "far"}


def _png(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def make_tree(root, skip=("places365",), n_id=6, n_ood=12):
    """OpenOOD's layout for openood-cifar10, without the lists named in ``skip``."""
    from ood_core.data.embedded import mnist_split

    rng = np.random.default_rng(0)
    lists = root / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    for split, n in (("train", n_id * 2), ("test", n_id)):
        ds = mnist_split(split)
        lines = []
        for c in range(10):
            for j, i in enumerate(np.flatnonzero(ds.labels == c)[:n]):
                rel = f"cifar10/{split}/class{c}/{j:04d}.png"
                _png(root / "images_classic" / rel, ds.images[i, ..., 0])
                lines.append(f"{rel} {c}")
        (lists / f"{split}_cifar10.txt").write_text("\n".join(lines) + "\n")
    for key in ("val_tin", *(f"test_{k}" for k in OOD_SETS)):
        name = key.split("_", 1)[1]
        if name in skip:
            continue
        lines = []
        for j in range(n_ood):
            kind = j % 3
            img = (rng.uniform(0, 255, (28, 28)) if kind == 0 else
                   np.full((28, 28), rng.uniform(0, 255)) if kind == 1 else
                   np.kron(rng.integers(0, 2, (4, 4)) * 255, np.ones((7, 7))))
            rel = f"{name}/{key.split('_')[0]}/{j:04d}.png"
            _png(root / "images_classic" / rel, img)
            lines.append(f"{rel} -1" if j % 2 else f"{rel} 0")  # OpenOOD's OOD lists carry 0 or -1
        (lists / f"{key}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def bench_cache(tmp_path, monkeypatch, default_bundle):
    """A private cache with a copy of the default model; benchmark datasets unregistered after."""
    src = default_model_path()
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    cache.reset()
    dst = default_model_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    yield tmp_path
    b = B.BENCHMARKS["openood-cifar10"]
    for s in b.sets:
        registry.unregister(b.dataset_name(s))
    cache.reset()


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    got = capsys.readouterr()
    return code, got.out, got.err


def test_add_registers_reports_missing_and_is_idempotent(bench_cache, capsys):
    root = make_tree(bench_cache / "data")
    code, out, err = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root))
    assert code == 0, err
    lines = [ln.split("\t") for ln in out.splitlines()]
    missing = [ln for ln in lines if ln[0] == "missing"]
    assert [m[1] for m in missing] == ["cifar10-places365"]
    assert "test_places365.txt" in missing[0][3]
    registered = {ln[1]: ln for ln in lines if ln[0] == "registered"}
    assert set(registered) == {"cifar10", "cifar10:train", "cifar10-val-tin", "cifar10-cifar100", "cifar10-tin",
                               "cifar10-mnist", "cifar10-svhn", "cifar10-texture"}
    assert registered["cifar10"][3] == "60 images" and registered["cifar10:train"][3] == "120 images"
    from ood_core.data import get_dataset, get_spec
    assert get_spec("cifar10").role == "id_test" and get_spec("cifar10-val-tin").role == "ood_val"
    assert get_spec("cifar10-tin").role == "ood_test" and "near" in get_spec("cifar10-tin").description
    ds = get_dataset("cifar10")
    assert len(ds) == 60 and sorted(set(ds.labels.tolist())) == list(range(10))
    assert len(get_dataset("cifar10:train")) == 120
    assert (get_dataset("cifar10-svhn").labels == -1).all()  # OOD lists' 0/-1 labels are not class labels
    # A second run changes nothing; a list that appears later is added.
    code, out, _ = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root))
    assert code == 0 and "0 registered, 8 unchanged, 1 missing" in out and "registered\t" not in out
    make_tree(bench_cache / "data2", skip=())
    shutil.copy(bench_cache / "data2/benchmark_imglist/cifar10/test_places365.txt",
                root / "benchmark_imglist/cifar10/test_places365.txt")
    shutil.copytree(bench_cache / "data2/images_classic/places365", root / "images_classic/places365")
    code, out, _ = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root))
    assert "registered\tcifar10-places365\tfar" in out and "1 registered, 8 unchanged, 0 missing" in out
    # A wrong root says so in one line.
    code, out, err = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(bench_cache / "nowhere"))
    assert code == 2 and "benchmark_imglist" in err and len(err.strip().splitlines()) == 1


def test_name_registered_elsewhere_needs_replace(bench_cache, capsys):
    root = make_tree(bench_cache / "data")
    other = make_tree(bench_cache / "other")
    from ood_core import persist
    persist.register_local(other / "benchmark_imglist/cifar10/test_tin.txt", "cifar10-tin", "ood_test", "filelist")
    code, _, err = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root))
    assert code == 2 and "--replace" in err
    code, out, _ = run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root), "--replace")
    assert code == 0 and "registered\tcifar10-tin" in out


def test_evaluate_benchmark_groups_and_checkpoints(bench_cache, capsys):
    import torch

    root = make_tree(bench_cache / "data")
    assert run(capsys, "benchmark", "add", "openood-cifar10", "--root", str(root))[0] == 0
    code, out, err = run(capsys, "evaluate", "--benchmark", "openood-cifar10", "--detectors", "msp,energy,mahalanobis",
                         "--json", "--quiet")
    assert code == 0, err
    assert "cifar10-places365" in err  # not registered: said, and left out
    res = json.loads(out)
    assert res["benchmark"] == "openood-cifar10" and res["id_dataset"] == "cifar10"
    assert {r["ood_dataset"] for r in res["results"]} == {"cifar10-cifar100", "cifar10-tin", "cifar10-mnist",
                                                          "cifar10-svhn", "cifar10-texture"}
    assert len(res["groups"]) == 6
    for g in res["groups"]:
        names = {"near": ["cifar10-cifar100", "cifar10-tin"],
                 "far": ["cifar10-mnist", "cifar10-svhn", "cifar10-texture"]}[g["group"]]
        assert g["datasets"] == names
        rows = [r for r in res["results"] if r["detector"] == g["detector"] and r["ood_dataset"] in names]
        for m in METRICS:
            assert g[m] == pytest.approx(np.mean([r[m] for r in rows]), abs=1e-12)

    # A second checkpoint: the default's weights with a little noise, saved as a workbench checkpoint.
    base = load_checkpoint(default_model_path())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    meta = json.loads(default_model_path().with_suffix(".json").read_text())
    s1 = save_checkpoint(base.model, bench_cache / "s1.pt", meta)
    code, out, err = run(capsys, "evaluate", "--benchmark", "openood-cifar10", "--detectors", "energy",
                         "--model", f"default,{s1}", "--json", "--quiet")
    assert code == 0, err
    res2 = json.loads(out)
    assert res2["models"] == ["default", str(s1)] and len(res2["runs"]) == 2
    assert res2["runs"][0]["model_fingerprint"] != res2["runs"][1]["model_fingerprint"]
    for r in res2["results"]:
        per = [next(x for x in run_["results"] if x["ood_dataset"] == r["ood_dataset"]) for run_ in res2["runs"]]
        for m in METRICS:
            vals = np.array([p[m] for p in per])
            assert r["per_model"][m] == pytest.approx(vals.tolist())
            assert r[m] == pytest.approx(np.mean(vals)) and r["std"][m] == pytest.approx(np.std(vals))
    for g in res2["groups"]:
        per = [next(x for x in run_["groups"] if x["group"] == g["group"]) for run_ in res2["runs"]]
        for m in METRICS:
            vals = np.array([p[m] for p in per])
            assert g[m] == pytest.approx(np.mean(vals)) and g["std"][m] == pytest.approx(np.std(vals))
    accs = [run_["id_accuracy"] for run_ in res2["runs"]]
    assert res2["id_accuracy"] == pytest.approx(np.mean(accs)) and res2["id_accuracy_std"] == pytest.approx(np.std(accs))
    # The first run alone is what one checkpoint gives (same sets, same metrics).
    assert res2["runs"][0]["results"] == [r for r in res["results"] if r["detector"] == "energy"]

    # Text: the near/far rows as OpenOOD prints them, mean ± std, and the leaderboard beside energy.
    code, out, err = run(capsys, "evaluate", "--benchmark", "openood-cifar10", "--detectors", "energy",
                         "--model", f"default,{s1}", "--paper", "openood", "--quiet")
    assert code == 0, err
    near = next(ln for ln in out.splitlines() if ln.startswith("energy") and "nearood" in ln)
    g = next(g for g in res2["groups"] if g["group"] == "near")
    assert f"{100 * g['auroc']:.2f} ± {100 * g['std']['auroc']:.2f}" in near
    assert near.rstrip().endswith("87.58 ± 0.46")  # OpenOOD v1.5, CIFAR-10, EBO, near-OOD AUROC
    assert "zjysteven/OpenOOD" in out and "95.06 ± 0.30" in out.splitlines()[0]


def test_benchmark_errors_are_one_line(bench_cache, capsys):
    code, _, err = run(capsys, "evaluate", "--benchmark", "openood-cifar100", "--detectors", "msp", "--quiet")
    assert code == 2 and "benchmark add openood-cifar100" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--paper",
                       "openood", "--quiet")
    assert code == 2 and "--benchmark" in err
    code, _, err = run(capsys, "evaluate", "--benchmark", "nope", "--detectors", "msp", "--quiet")
    assert code == 2 and "openood-cifar10" in err


def test_benchmark_groups_backend():
    got = B.benchmark_groups(["cifar10-tin", "mnist", "cifar10-svhn", "cifar10-cifar100", "imagenet200-ninco"])
    assert got == {"near": ["cifar10-cifar100", "cifar10-tin", "imagenet200-ninco"], "far": ["cifar10-svhn"]}
    assert B.benchmark_groups(["mnist"]) == {}
    # The lists are OpenOOD v1.5's DATA_INFO names (Jingkang50/OpenOOD, openood/evaluation_api/datasets.py).
    b = B.BENCHMARKS["openood-imagenet200"]
    assert [s.imglist for s in b.sets if s.group in ("near", "far")] == [
        f"benchmark_imglist/imagenet200/test_{k}.txt"
        for k in ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o")]
    assert B.BENCHMARKS["openood-imagenet1k"].sets[0].imglist == "benchmark_imglist/imagenet/train_imagenet.txt"


def _long_table(values: dict[tuple[str, str], float]):
    """A compare table (compare.COLUMNS) with the given AUROCs."""
    import pandas as pd

    from ood_core.compare import COLUMNS

    rows = [{"detector": d, "ood_dataset": o, "auroc": v, "fpr95": 1 - v, "aupr_in": v, "aupr_out": v,
             "status": "ok", "reason": "", "family": "", "params": ""} for (d, o), v in values.items()]
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def test_grouped_view_means_and_published_column():
    near = B.BENCHMARKS["openood-cifar10"].group_names("near")
    far = B.BENCHMARKS["openood-cifar10"].group_names("far")
    vals = {("energy", n): 0.87 + 0.01 * i for i, n in enumerate(near)}
    vals.update({("energy", f): 0.90 + 0.01 * i for i, f in enumerate(far)})
    vals.update({("msp", n): 0.50 for n in near})
    df = _long_table(vals)
    view = B.grouped_view(df, "cifar10", "auroc", arch="resnet18_cifar")
    assert view.attrs["published_arch"] == "ResNet18"
    assert view.loc["energy", "near"] == pytest.approx(np.mean([vals["energy", n] for n in near]))
    assert view.loc["energy", "far"] == pytest.approx(np.mean([vals["energy", f] for f in far]))
    # OpenOOD v1.5 leaderboard, CIFAR-10, EBO near AUROC 87.58 ± 0.46 (read from its results/cifar10.csv).
    assert view.loc["energy", "near published"] == pytest.approx(0.8758)
    assert view.loc["energy", "near published std"] == pytest.approx(0.0046)
    assert not view.loc["energy", "near outside"]  # 0.875 is within 1.96 × 0.46 points of 87.58
    assert view.loc["msp", "near outside"]  # 0.50 is far from MSP's published near AUROC
    assert np.isnan(view.loc["msp", "far"]) and view.loc["msp", "far sets"] == 0
    # another family: no published column; not a benchmark's ID set: no view
    assert "near published" not in B.grouped_view(df, "cifar10", "auroc", arch="small_cnn").columns
    assert B.grouped_view(df, "mnist", "auroc", arch="resnet18_cifar") is None


def test_compare_page_groups_a_benchmark(bench_cache):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    root = make_tree(bench_cache / "data")
    B.add("openood-cifar10", root)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "pages" / "2_Compare.py"), default_timeout=300)
    at.session_state["id_dataset"] = "cifar10"
    at.session_state["ood_datasets"] = ["cifar10-tin", "cifar10-svhn", "cifar10-mnist"]
    at.run()
    assert not at.exception, at.exception
    assert any("openood-cifar10: near / far means" in s.value for s in at.subheader)
    bench = next(d.value for d in at.dataframe if "near" in d.value.columns and "far" in d.value.columns)
    long = at.dataframe[0].value
    assert bench.loc["energy", "near"] == pytest.approx(long.loc["energy", "cifar10-tin"], abs=1e-9)
    assert bench.loc["energy", "far"] == pytest.approx(
        np.mean([long.loc["energy", "cifar10-svhn"], long.loc["energy", "cifar10-mnist"]]), abs=1e-9)
    captions = " ".join(c.value for c in at.caption)
    assert "cifar10-cifar100" in captions  # a near set not chosen is named
    assert "No published column" in captions  # the default CNN is not the leaderboard's ResNet18
