"""Local datasets: each on-disk format read from generated fixtures, refusals, the persisted registry."""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pytest
import torch

from ood_core import persist as P
from ood_core.data import DataError, get_dataset, get_spec
from ood_core.data import readers as R
from ood_core.data import safety as S
from ood_core.figures import previews as V


@pytest.fixture()
def reg(tmp_cache):
    """A private cache (the registry file lives there); user datasets are forgotten afterwards."""
    yield tmp_cache
    for name in list(P.saved_datasets()):
        P.unregister_local(name)


def _cifar_pixels(root: Path, batch: str) -> tuple[np.ndarray, list[int]]:
    """The fixture's own bytes, decoded with plain pickle (we wrote them: trusted here)."""
    with open(root / "cifar-10-batches-py" / batch, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), d[b"labels"]


def test_cifar10_both_splits(tmp_path):
    root = fx.cifar10_folder(tmp_path / "c10", n_train=24, n_test=12)
    assert R.detect_dataset_format(root) == "cifar10"
    assert R.source_splits(root, "cifar10") == ["train", "test"]
    test = R.load_local(root)
    x, y = _cifar_pixels(root, "test_batch")
    np.testing.assert_array_equal(test.images, x)
    np.testing.assert_array_equal(test.labels, y)
    assert test.class_names[:2] == ["airplane", "automobile"]  # from batches.meta
    train = R.load_local(root, split="train")
    assert len(train) == 24 and train.images.shape[1:] == (32, 32, 3)
    # the same folder given at cifar-10-batches-py itself
    assert R.load_local(root / "cifar-10-batches-py").fingerprint == test.fingerprint


def test_cifar100(tmp_path):
    root = fx.cifar100_folder(tmp_path / "c100", n=10)
    assert R.detect_dataset_format(root) == "cifar100"
    ds = R.load_local(root)
    assert len(ds) == 10 and ds.class_names[5] == "c5" and ds.labels.max() < 100


def test_cifar_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    root = tmp_path / "evil" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match=r"names io\.open.*could run code"):
        R.load_local(root.parent)
    assert not marker.exists()


def test_svhn_mat_label_10_is_0(tmp_path):
    import scipy.io

    root = fx.svhn_folder(tmp_path / "svhn", n=12, splits=("train", "test"))
    assert R.detect_dataset_format(root) == "svhn" and R.source_splits(root, "svhn") == ["train", "test"]
    ds = R.load_local(root)
    m = scipy.io.loadmat(str(root / "test_32x32.mat"))
    np.testing.assert_array_equal(ds.images, m["X"].transpose(3, 0, 1, 2))
    want = m["y"].reshape(-1).astype(int)
    want[want == 10] = 0
    np.testing.assert_array_equal(ds.labels, want)
    assert R.load_local(root / "test_32x32.mat").fingerprint == ds.fingerprint  # a .mat path works too


@pytest.mark.parametrize("fashion,gz", [(False, False), (True, True)])
def test_mnist_raw_idx(tmp_path, fashion, gz):
    root = fx.mnist_raw_folder(tmp_path / "m", n=10, fashion=fashion, gz=gz)
    fmt = R.detect_dataset_format(root)
    assert fmt == ("fashion_mnist" if fashion else "mnist")
    ds = R.load_local(root, split="train")
    assert ds.images.shape == (10, 28, 28, 1) and ds.labels.max() <= 9
    assert ds.class_names[0] == ("T-shirt/top" if fashion else "0")


def test_mnist_truncated_idx_refused(tmp_path):
    root = fx.mnist_raw_folder(tmp_path / "m", n=10)
    f = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated"):
        R.load_local(root)


def test_imagefolder_skips_corrupt_file(tmp_path):
    root = fx.image_tree(tmp_path / "tree", classes=("cat", "ant", "bee"), per=4, corrupt=1)
    assert R.detect_dataset_format(root) == "imagefolder"
    ds = R.load_local(root)
    assert len(ds) == 12 and ds.meta["skipped"] == 1 and "broken0.png" in ds.meta["skipped_files"][0]
    assert ds.class_names == ["ant", "bee", "cat"]  # sorted folder names, torchvision's convention
    assert np.bincount(ds.labels).tolist() == [4, 4, 4]
    from PIL import Image
    first_ant = np.asarray(Image.open(sorted((root / "ant").glob("*.png"))[0]))
    assert ds.streamed and not hasattr(ds, "images")  # a folder streams: paths, never the pixels
    np.testing.assert_array_equal(ds.image(0), first_ant)
    unl = R.load_local(root, labelled=False)
    assert (unl.labels == -1).all()


def test_imagefolder_split_tree_and_grayscale(tmp_path):
    fx.image_tree(tmp_path / "t" / "train", per=3, corrupt=0, mode="L")
    fx.image_tree(tmp_path / "t" / "val", per=2, corrupt=0, mode="L")
    assert R.source_splits(tmp_path / "t", "imagefolder") == ["train", "test"]
    tr = R.load_local(tmp_path / "t", split="train")
    te = R.load_local(tmp_path / "t")
    assert len(tr) == 9 and len(te) == 6 and tr.shape[-1] == 1 and tr.image(0).shape[-1] == 1


def test_flat_folder_mixed_sizes_kept_until_the_model_resizes(tmp_path):
    from ood_core.models import Preprocess

    root = fx.flat_images(tmp_path / "flat", n=5, sizes=((16, 16), (16, 16), (24, 20)))
    assert R.detect_dataset_format(root) == "flat"
    ds = R.load_local(root)
    assert len(ds) == 5 and (ds.labels == -1).all() and ds.meta["sizes_seen"] == 2
    assert sorted({ds.image(i).shape for i in range(5)}) == [(16, 16, 3), (24, 20, 3)]  # each at its own size
    pp = Preprocess((8, 8), 3, (0.5,), (0.5,))
    x = torch.cat(list(ds.batches(pp, 2)))  # one batch shape: the model's preprocessing resized each image
    assert x.shape == (5, 3, 8, 8)
    want = torch.stack([pp(ds.image(i)[None])[0] for i in range(5)])
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    same = fx.flat_images(tmp_path / "same", n=3, sizes=((12, 10),))
    d2 = R.load_local(same)
    assert d2.shape == (12, 10, 3) and d2.meta["sizes_seen"] == 1


def test_empty_and_unreadable_sources_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="could not recognise"):
        R.load_local(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 3 image files"):
        R.load_local(bad)
    with pytest.raises(DataError, match="no such file"):
        R.load_local(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hi")  # a .txt is read as a file list: none listed
    with pytest.raises(DataError, match="notes.txt is not a list of image files.*hi \\(missing\\)"):
        R.load_local(tmp_path / "notes.txt")
    (tmp_path / "notes.bin").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        R.load_local(tmp_path / "notes.bin")


def test_npz_good_and_float(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(6))
    ds = R.load_local(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, np.arange(6))
    np.savez(tmp_path / "f.npz", x=x[..., 0] / 255.0)  # floats in [0, 1], grayscale (N,H,W), no labels
    f = R.load_local(tmp_path / "f.npz")
    np.testing.assert_array_equal(f.images[..., 0], x[..., 0]) and (f.labels == -1).all()
    np.savez(tmp_path / "s.npz", x_train=x[:4], y_train=np.zeros(4, int), x_test=x[4:], y_test=np.ones(2, int))
    assert R.source_splits(tmp_path / "s.npz", "npz") == ["train", "test"]
    assert len(R.load_local(tmp_path / "s.npz", split="train")) == 4


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((4, 3, 8, 8), np.uint8)}, "channels-first"),
    ({"x": np.zeros((4, 8, 8, 5), np.uint8)}, r"must be \(N, H, W\)"),
    ({"x": np.zeros((4, 8), np.uint8)}, r"must be \(N, H, W\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)}, "4 images but labels of shape"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.full(4, 0.5)}, "labels must be integers"),
    ({"x": np.full((4, 8, 8), 300.0)}, r"pixel values span \[300, 300\]"),
    ({"images_wrong_name": np.zeros((4, 8, 8), np.uint8)}, "no array named 'x'"),
    ({"x": np.zeros((0, 8, 8), np.uint8)}, "holds no images"),
])
def test_npz_bad_shapes_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        R.load_local(tmp_path / "bad.npz")


def test_npz_object_array_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object arrays"):
        R.load_local(tmp_path / "obj.npz")


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder.parent))
    return buf.getvalue()


def test_zip_upload_of_cifar_and_npz(reg, tmp_path):
    root = fx.cifar10_folder(tmp_path / "c10")
    spec = P.register_dataset_upload(_zip_of(root / "cifar-10-batches-py"), "cifar.zip", "zc10", "id_test")
    assert spec.splits == ("train", "test")
    assert get_dataset("zc10").fingerprint == R.load_local(root).fingerprint
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 5, 5), np.uint8))
    s2 = P.register_dataset_upload(buf.getvalue(), "noise.npz", "znpz", "ood_test")
    assert len(get_dataset(s2.name)) == 3
    # recognised by content: an .npz under another name is stored as one, a folder zip is unpacked
    s3 = P.register_dataset_upload(buf.getvalue(), "noise.bin", "znpz2", "ood_test")
    assert s3.source.endswith("data.npz") and len(get_dataset(s3.name)) == 3
    P.register_dataset_upload(_zip_of(root / "cifar-10-batches-py"), "cifar.bin", "zc10b", "id_test")
    assert get_dataset("zc10b").fingerprint == R.load_local(root).fingerprint
    with pytest.raises(DataError, match="upload a .zip"):
        P.register_dataset_upload(b"hello", "x.txt", "bad", "ood_test")


def test_zip_tricks_refused(reg):
    def make(entries):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data, attr in entries:
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                if attr:
                    info.external_attr = attr
                z.writestr(info, data)
        return buf.getvalue()

    with pytest.raises(DataError, match="points outside the archive"):
        S.unpack_zip(make([("../../escape.png", b"x", 0)]))
    with pytest.raises(DataError, match="symbolic link"):
        S.unpack_zip(make([("link.png", b"/etc/passwd", 0o120777 << 16)]))
    with pytest.raises(DataError, match="zip bomb"):
        S.unpack_zip(make([("zeros.png", bytes(20 << 20), 0)]))
    with pytest.raises(DataError, match="over the"):
        S.unpack_zip(make([("a.png", bytes(2000), 0)]), max_bytes=1000)
    with pytest.raises(DataError, match="not a valid zip"):
        S.unpack_zip(b"PK\x03\x04 broken")


def test_register_roles_splits_and_persistence(reg, tmp_path):
    c10 = fx.cifar10_folder(tmp_path / "c10")
    spec = P.register_local(c10, "myc10", "id_test")
    assert spec.role == "id_test" and spec.splits == ("train", "test")
    assert get_dataset("myc10:train").name == "myc10:train" and get_dataset("myc10:train").role == "id_train"
    fp = get_dataset("myc10").fingerprint
    # a single-split ID test set, then its training split from another folder
    fx.image_tree(tmp_path / "tr", per=2, corrupt=0)
    fx.image_tree(tmp_path / "te", per=1, corrupt=0)
    P.register_local(tmp_path / "te", "mine", "id_test")
    assert get_spec("mine").splits == ("test",)
    P.register_local(tmp_path / "tr", "mine", "id_train")
    assert get_spec("mine").splits == ("train", "test") and get_spec("mine").role == "id_test"
    assert len(get_dataset("mine:train")) == 6
    sv = fx.svhn_folder(tmp_path / "sv", splits=("train", "test"))
    P.register_local(sv, "mysvhn", "ood_test", limit=5)
    small = get_dataset("mysvhn")
    assert len(small) == 5 and small.role == "ood_test"
    # a restart: the in-memory registry is empty, the JSON brings everything back
    from ood_core.data import unregister
    for n in ("myc10", "mine", "mysvhn"):
        unregister(n)
    with pytest.raises(DataError):
        get_spec("myc10")
    assert set(P.restore_datasets().datasets) >= {"myc10", "mine", "mysvhn"}
    assert get_dataset("myc10").fingerprint == fp
    assert get_dataset("mysvhn").fingerprint == small.fingerprint  # the same fixed subset
    P.unregister_local("mine")
    assert "mine" not in P.saved_datasets()


def test_register_refusals(reg, tmp_path):
    c10 = fx.cifar10_folder(tmp_path / "c10")
    with pytest.raises(DataError, match="built-in dataset"):
        P.register_local(c10, "mnist", "ood_test")
    with pytest.raises(DataError, match="role must be one of"):
        P.register_local(c10, "x", "train")
    with pytest.raises(DataError, match="names must be"):
        P.register_local(c10, "a:b", "ood_test")
    with pytest.raises(DataError, match="no 'extra' split"):
        P.register_local(c10, "x", "ood_test", split="extra")
    with pytest.raises(DataError, match="format must be one of"):
        P.register_local(c10, "x", "ood_test", fmt="tfrecord")
    with pytest.raises(DataError, match="limit must be"):
        P.register_local(c10, "x", "ood_test", limit=0)
    assert "x" not in P.saved_datasets()


def test_sample_grid_and_summary(tmp_path):
    ds = R.load_local(fx.image_tree(tmp_path / "t", per=3, corrupt=1, size=(10, 10)))
    grid = V.sample_grid(ds, n=9, cols=4, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 12 + 2, 4 * 12 + 2, 3)
    info = V.summary(ds)
    assert info["images"] == 9 and info["skipped"] == 1 and info["classes"] == 3 and info["shape"] == "10x10x3"


def test_cli_register(reg, tmp_path, capsys):
    from ood_core import cli

    c10 = fx.cifar10_folder(tmp_path / "c10")
    assert cli.main(["register", "--path", str(c10), "--name", "clic10", "--role", "id_test"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("clic10:train\tid_train\t24 images 32x32x3")
    assert out[1].startswith("clic10\tid_test\t12 images") and "fingerprint" in out[1]
    assert cli.main(["register", "--path", str(tmp_path / "nope"), "--name", "z"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no such file or folder") and "\n" not in err
    assert cli.main(["datasets"]) == 0
    assert "clic10\tid_test" in capsys.readouterr().out
    assert cli.main(["register", "--name", "clic10", "--remove"]) == 0


# --- image lists (issue 27, items 7 and 12) ---------------------------------------------------

def _list_folder(tmp_path: Path) -> Path:
    root = tmp_path / "lists"
    (root / "my dir").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png", "my dir/img 1.png", "my dir/img 2.png"):
        from PIL import Image
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.mark.hostile
def test_image_list_with_a_bom_keeps_its_first_image(tmp_path, tmp_cache):
    root = _list_folder(tmp_path)
    (root / "bom.txt").write_bytes("\ufeffa.png 1\nb.png 0\n".encode())
    ds = R.load_local(root / "bom.txt")
    assert len(ds) == 2 and ds.meta["skipped"] == 0 and ds.labels.tolist() == [1, 0]


@pytest.mark.hostile
def test_image_list_paths_with_spaces_take_the_label_from_the_right(tmp_path, tmp_cache):
    root = _list_folder(tmp_path)
    (root / "spaces.txt").write_text("my dir/img 1.png 3\nmy dir/img 2.png\na.png,2\nb.png\t 4 \n")
    ds = R.load_local(root / "spaces.txt")
    assert [f.decode() for f in ds.files] == ["my dir/img 1.png", "my dir/img 2.png", "a.png", "b.png"]
    assert ds.labels.tolist() == [3, -1, 2, 4] and ds.meta["skipped"] == 0
    (root / "bad.txt").write_text("a.png cat\n")
    with pytest.raises(DataError, match="line 1: the label 'cat' is not an integer"):
        R.load_local(root / "bad.txt")


@pytest.mark.hostile
def test_hostile_image_lists_give_one_line_on_the_cli(reg, tmp_path, capsys):
    """A NUL byte, a label past int64, entries that are symlink loops: exit 2 and one line (or,
    for one bad entry among good ones, a skip with its reason), never a traceback."""
    from ood_core import cli

    root = _list_folder(tmp_path)
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "self.txt").symlink_to(root / "self.txt")
    (root / "nul.txt").write_bytes(b"a.png 1\nb\x00.png 2\n")
    (root / "big.txt").write_text("a.png 99999999999999999999999\n")
    (root / "huge.txt").write_text("a.png " + "9" * 5000 + "\n")
    (root / "loops.txt").write_text("loop.png 1\n")
    (root / "oneloop.txt").write_text("a.png 1\nloop.png 2\n")
    cases = {"nul.txt": "nul.txt, line 2: a NUL byte", "big.txt": "big.txt, line 1: the label 9999",
             "huge.txt": "huge.txt, line 1: the label 9999", "self.txt": "",
             "loops.txt": "loop.png (unreadable: Too many levels of symbolic links)"}
    for name, msg in cases.items():
        code = cli.main(["register", "--path", str(root / name), "--name", "hl"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and err.startswith("error: ") and msg in err, (name, err)
    assert cli.main(["register", "--path", str(root / "oneloop.txt"), "--name", "hl"]) == 0
    got = capsys.readouterr()
    assert "1 images" in got.out and "skipped: loop.png (unreadable: Too many levels" in got.err
    ds = get_dataset("hl")
    assert ds.meta["skipped_files"] == ["loop.png (unreadable: Too many levels of symbolic links)"]


@pytest.mark.hostile
def test_a_long_image_list_is_parsed_once_and_each_file_read_once(tmp_path, tmp_cache, monkeypatch):
    """Item 12: a 1,000,000-line list took 2 min 25 s to register and every later command re-read it
    (78 s). The parse is remembered by the list's size and mtime, and a file listed many times is
    stat'ed and its header read once (bench numbers: docs/architecture.md, "Datasets")."""
    from ood_core.data import image_lists as L
    from ood_core.data import images as I

    root = _list_folder(tmp_path)
    lines = [f"{'ab'[i % 2]}.png {i % 7}" for i in range(20000)]
    (root / "long.txt").write_text("\n".join(lines) + "\n")
    heads = []
    real_header = I._header
    monkeypatch.setattr(I, "_header", lambda p: heads.append(p) or real_header(p))
    ds = R.load_local(root / "long.txt")
    assert len(ds) == 20000 and ds.labels[:8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0] and len(heads) == 2
    monkeypatch.setattr(L, "_parse_list", lambda p: pytest.fail("parsed again"))
    again = R.load_local(root / "long.txt")
    assert again.fingerprint == ds.fingerprint and len(heads) == 2
    (root / "long.txt").write_text("b.png 5\n")  # a changed list is parsed again
    monkeypatch.undo()
    assert R.load_local(root / "long.txt").labels.tolist() == [5]
