"""Dataset formats as one Reader class each (issue 24): detection as before, the registry, and a
format added in one file from outside the package."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pytest
import torch

from ood_core import persist as P
from ood_core.data import (
    FORMATS,
    DataError,
    ImageDataset,
    detect_dataset_format,
    get_dataset,
    load_local,
    unregister_format,
)
from ood_core.data import formats as F


def _mixed(root: Path) -> Path:
    """Loose images beside a sub-folder of images: class folders win over 'flat'."""
    fx.flat_images(root, n=3)
    fx.flat_images(root / "sub", n=2)
    return root


# Each fixture and the format main (before the Reader classes) detected for it: the order of the
# generic readers (zip before lists, trees before flat folders, .npz before zip) matters here.
CASES = {
    "cifar10": (lambda t: fx.cifar10_folder(t / "c10"), "cifar10"),
    "cifar10 batches folder": (lambda t: fx.cifar10_folder(t / "c10") / "cifar-10-batches-py", "cifar10"),
    "cifar100": (lambda t: fx.cifar100_folder(t / "c100"), "cifar100"),
    "svhn folder": (lambda t: fx.svhn_folder(t / "svhn", splits=("train", "test")), "svhn"),
    "svhn .mat": (lambda t: fx.svhn_folder(t / "svhn") / "test_32x32.mat", "svhn"),
    "mnist": (lambda t: fx.mnist_raw_folder(t / "m"), "mnist"),
    "fashion gz": (lambda t: fx.mnist_raw_folder(t / "m", fashion=True, gz=True), "fashion_mnist"),
    "imagefolder": (lambda t: fx.image_tree(t / "tree"), "imagefolder"),
    "split tree": (lambda t: fx.image_tree(t / "s" / "train", corrupt=0).parent, "imagefolder"),
    "flat": (lambda t: fx.flat_images(t / "flat"), "flat"),
    "flat + class folder": (lambda t: _mixed(t / "mixed"), "imagefolder"),
    "images only in a __folder": (lambda t: fx.flat_images(t / "n" / "__imgs").parent, "imagefolder"),
    "list .txt": (lambda t: fx.file_list(t / "l"), "filelist"),
    "list .csv": (lambda t: fx.file_list(t / "l", name="list.csv"), "filelist"),
    "npz (a zip too)": (lambda t: fx.npz_file(t / "a.npz"), "npz"),
    "zip": (lambda t: fx.zip_folder(fx.cifar10_folder(t / "c10") / "cifar-10-batches-py", t / "c.zip"), "zip"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_fixture_is_detected_as_before(tmp_path, case):
    make, want = CASES[case]
    assert detect_dataset_format(make(tmp_path)) == want


def test_unrecognised_sources_keep_their_messages(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="could not recognise .*empty: expected CIFAR-10/100"):
        detect_dataset_format(tmp_path / "empty")
    (tmp_path / "x.bin").write_text("hi")
    with pytest.raises(DataError, match="x.bin: unknown file type"):
        detect_dataset_format(tmp_path / "x.bin")
    img = fx.flat_images(tmp_path / "f", n=1) / "img0.jpg"
    with pytest.raises(DataError, match="img0.jpg is a single image"):
        detect_dataset_format(img)
    with pytest.raises(DataError, match="no such file"):
        detect_dataset_format(tmp_path / "nowhere")


def test_formats_come_from_the_registry():
    # the names and order the CLI's --format and the page's list offered before the registry
    assert tuple(FORMATS) == ("auto", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagefolder", "flat",
                              "filelist", "npz", "zip")
    assert isinstance(FORMATS, list)  # Streamlit's selectbox takes lists and tuples, not any Sequence
    assert len(FORMATS) == 11 and FORMATS[0] == "auto" and "npz" in FORMATS and "tfrecord" not in FORMATS
    for r in F.readers():
        assert r.description and r.safety, r.name
    prio = [r.priority for r in F.readers()]
    assert prio == sorted(prio)
    with pytest.raises(DataError, match="format must be one of auto, cifar10"):
        F.get_reader("tfrecord")
    with pytest.raises(ValueError, match="identifier other than 'auto'"):
        F.register_format(type("Bad", (F.Reader,), {"name": "auto"}))


# ---- a format added in one file ------------------------------------------------------------

PLUGIN = '''
"""A CSV of 8x8 grey images: header 'label,p0,...,p63', then one image a row (0-255)."""
from pathlib import Path

import numpy as np

from ood_core.data import ArrayReader, register_format

HEADER = "label," + ",".join(f"p{i}" for i in range(64))


@register_format
class Pixels8Csv(ArrayReader):
    name = "pixels8_csv"
    description = "a .csv of 8x8 grey images: 'label,p0,...,p63', one image a row"
    safety = "numbers only (np.loadtxt), checked to be 0-255 integers"

    def detect(self, path: Path) -> bool:
        if not (path.is_file() and path.suffix.lower() == ".csv"):
            return False
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == HEADER

    def arrays(self, path: Path, split: str):
        rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
        return rows[:, 1:].reshape(-1, 8, 8), rows[:, 0], None, {"rows": len(rows)}
'''


@pytest.fixture()
def pixels8(tmp_path, tmp_cache):
    """The plugin module written to a file and imported; forgotten (format and datasets) afterwards."""
    mod_path = tmp_path / "pixels8_format.py"
    mod_path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("pixels8_format", mod_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pixels8_format"] = mod
    spec.loader.exec_module(mod)
    yield mod
    for name in list(P.saved_datasets()):
        P.unregister_local(name)
    unregister_format("pixels8_csv")
    sys.modules.pop("pixels8_format", None)


def _write_csv(path: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8))
    y = rng.integers(0, 10, n)
    rows = [",".join(map(str, [int(y[i]), *x[i].reshape(-1)])) for i in range(n)]
    path.write_text("\n".join([f"label,{','.join(f'p{i}' for i in range(64))}", *rows]) + "\n")
    return x.astype(np.uint8), y


def test_a_format_added_in_one_file(default_bundle, pixels8, tmp_path, capsys):
    from ood_core import cli
    from ood_core import workbench as wb

    x, y = _write_csv(tmp_path / "digits.csv")
    assert "pixels8_csv" in FORMATS and FORMATS[-1] == "pixels8_csv"
    assert detect_dataset_format(tmp_path / "digits.csv") == "pixels8_csv"
    # its priority (the default) comes before the generic list reader, which keeps other .csv files
    assert detect_dataset_format(fx.file_list(tmp_path / "l", name="list.csv")) == "filelist"
    for k, (make, want) in enumerate(CASES.values()):  # and no built-in source changes hands
        assert detect_dataset_format(make(tmp_path / f"case{k}")) == want

    spec = P.register_local(tmp_path / "digits.csv", "px8", "ood_test")
    ds = get_dataset("px8")
    assert isinstance(ds, ImageDataset) and ds.images.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(ds.images[..., 0], x)
    np.testing.assert_array_equal(ds.labels, y)
    assert P.saved_datasets()["px8"]["format"] == "pixels8_csv" and spec.splits == ("test",)
    assert ds.meta["format"] == "pixels8_csv" and ds.meta["rows"] == 12
    assert len(load_local(tmp_path / "digits.csv", limit=5)) == 5

    # the command line offers it by name (argparse's choices read the registry when parsing)
    rc = cli.main(["register", "--path", str(tmp_path / "digits.csv"), "--name", "px8cli", "--format",
                   "pixels8_csv"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("px8cli\tood_test\t12 images 8x8x1") and ds.fingerprint in out

    # extracted with the default model: the same logits as a forward of the written pixels
    ext = wb.get_extraction(default_bundle, ds)
    with torch.no_grad():
        want_logits, _ = default_bundle.forward(default_bundle.preprocess(x[..., None]))
    np.testing.assert_allclose(ext.logits, want_logits.numpy(), rtol=1e-5, atol=1e-5)
    assert len(ext) == 12 and np.array_equal(ext.labels, y)


def test_an_unregistered_format_is_refused_by_name(tmp_path, pixels8):
    _write_csv(tmp_path / "d.csv", n=3)
    unregister_format("pixels8_csv")
    assert "pixels8_csv" not in FORMATS
    assert detect_dataset_format(tmp_path / "d.csv") == "filelist"  # back to the generic list reader
    with pytest.raises(DataError, match="format must be one of .*got 'pixels8_csv'"):
        load_local(tmp_path / "d.csv", fmt="pixels8_csv")
