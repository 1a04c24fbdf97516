"""Streamed datasets (issue 14): folders and file lists stay on disk, passes stream, extraction resumes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import digits_tree, photo_folder  # noqa: F401
from PIL import Image

from ood_core import batching, cache, persist
from ood_core import extract as ex
from ood_core import workbench as wb
from ood_core.data import DataError, StreamedDataset, get_dataset, set_sample, unregister
from ood_core.data import readers as R
from ood_core.models import Preprocess

ROOT = Path(__file__).resolve().parents[2]


def _decoded_reference(bundle, ds: StreamedDataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features computed independently: every file decoded with Pillow here, one image at a time."""
    xs = []
    for i in range(len(ds)):
        with Image.open(ds.path(i)) as im:
            arr = np.asarray(im.convert("L" if ds.gray else "RGB"))
        xs.append(bundle.preprocess(arr[None]))
    with torch.no_grad():
        lo, h = bundle.forward(torch.cat(xs))
    return lo.numpy(), h.numpy()


def test_folder_streams_past_the_in_memory_cap(tmp_path, monkeypatch, default_bundle, tmp_cache):
    root = photo_folder(tmp_path / "photos", n=40)
    monkeypatch.setenv("OOD_MAX_DATASET_BYTES", "1000")  # far below the 40 decoded photos
    ds = R.load_local(root, name="photos")
    assert isinstance(ds, StreamedDataset) and not hasattr(ds, "images")
    assert ds.nbytes_decoded() > 1000 and ds.meta["sizes_seen"] > 1
    monkeypatch.setattr(ex, "CHUNK_ROWS", 8)
    seen = []
    real = ds.batches

    def spy(*a, **k):
        for x in real(*a, **k):
            seen.append(len(x))
            yield x

    monkeypatch.setattr(ds, "batches", spy)
    got = ex.extract(default_bundle, ds, batch_size=8, workers=2)
    assert max(seen) <= 8 and sum(seen) == 40  # never more than one batch of pixels at a time
    lo, h = _decoded_reference(default_bundle, ds)
    np.testing.assert_allclose(got.logits, lo, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.features, h, rtol=1e-5, atol=1e-5)
    assert not list((tmp_cache / "partial").glob("*/c*.npz"))  # chunks are gone once the entry is in


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ood_core import extract as ex, workbench as wb
from ood_core.data import readers as R
ex.CHUNK_ROWS = 8
real, count = ex._write_chunk, [0]
def write_then_die(*a, **k):
    real(*a, **k)
    count[0] += 1
    if count[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
ex._write_chunk = write_then_die
ds = R.load_local({folder!r}, name="photos")
ex.extract(wb.load_model("default"), ds, batch_size=4, workers=0)
"""


def test_extraction_resumes_after_sigkill_bit_identical(tmp_path, monkeypatch, default_bundle):
    folder = photo_folder(tmp_path / "photos", n=30, seed=3)
    killed_cache = tmp_path / "killed"
    env = {**os.environ, "OOD_CACHE_DIR": str(killed_cache)}
    # the default model is trained in the shared test cache: copy its checkpoint so the child loads it
    src = Path(cache.cache_dir()) / "models"
    (killed_cache / "models").mkdir(parents=True)
    for f in src.glob("default.*"):
        (killed_cache / "models" / f.name).write_bytes(f.read_bytes())
    script = KILL_SCRIPT.format(root=str(ROOT), folder=str(folder))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    chunks = sorted(killed_cache.glob("partial/*/c*.npz"))
    assert len(chunks) == 2  # the kill came after the second chunk
    monkeypatch.setenv("OOD_CACHE_DIR", str(killed_cache))
    cache.reset()
    monkeypatch.setattr(ex, "CHUNK_ROWS", 8)
    ds = R.load_local(folder, name="photos")
    resumed = ex.run_forward(default_bundle, ds, 4, resume_key=ex.extraction_key(default_bundle, ds), workers=0)
    assert resumed.extra["resumed_at"] == 16
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "clean"))
    cache.reset()
    whole = ex.run_forward(default_bundle, ds, 4, workers=0)
    assert np.array_equal(resumed.logits, whole.logits) and np.array_equal(resumed.features, whole.features)
    cache.reset()


def test_a_changed_file_changes_the_fingerprint_and_evaluate_recomputes(tmp_path, monkeypatch, default_bundle):
    from ood_core.data import registry

    # On a busy machine signing 12 files can pass STAMP_CHEAP_S, and the signature would then be reused
    # for a while (by design, for big folders): this test is about a folder signed on every use.
    monkeypatch.setattr(registry, "STAMP_CHEAP_S", float("inf"))
    folder = photo_folder(tmp_path / "live", n=12, seed=1)
    persist.register_local(folder, "live_stream", "ood_test", persist=False)
    try:
        calls = []
        real = ex.run_forward
        monkeypatch.setattr(ex, "run_forward", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
        first = wb.evaluate("default", "mnist", ["live_stream"], ["msp"])
        fp1 = get_dataset("live_stream").fingerprint
        n_live = calls.count("live_stream")
        again = wb.evaluate("default", "mnist", ["live_stream"], ["msp"])
        assert calls.count("live_stream") == n_live  # unchanged folder: served from the cache
        assert again["results"] == first["results"]
        time.sleep(0.01)
        Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(folder / "p000.jpg")  # one file replaced
        changed = wb.evaluate("default", "mnist", ["live_stream"], ["msp"])
        assert get_dataset("live_stream").fingerprint != fp1
        assert calls.count("live_stream") == n_live + 1  # recomputed, not served stale
        assert changed["results"][0]["auroc"] != first["results"][0]["auroc"]
    finally:
        unregister("live_stream")


def test_content_hash_is_optional_and_catches_same_size_same_mtime_edits(tmp_path):
    folder = photo_folder(tmp_path / "c", n=4)
    a = R.load_local(folder, content_hash=True)
    f = folder / "p001.jpg"
    st = os.stat(f)
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # same size; the mtime put back below
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert R.load_local(folder).fingerprint == R.load_local(folder).fingerprint  # names, sizes, mtimes only
    assert R.load_local(folder, content_hash=True).fingerprint != a.fingerprint


def test_subsampling_by_role_is_deterministic_and_reported(tmp_path):
    try:
        set_sample("mnist:train", 500, seed=3)
        a = get_dataset("mnist:train")
        assert get_dataset("mnist:train") is a and len(a) == 500
        assert a.meta["sampled"] == {"used": 500, "of": 4000, "seed": 3}
        set_sample("mnist:train", 500, seed=3)
        assert np.array_equal(get_dataset("mnist:train").sample_ids, a.sample_ids)
        set_sample("mnist:train", 500, seed=4)
        assert not np.array_equal(get_dataset("mnist:train").sample_ids, a.sample_ids)
        set_sample("mnist:train", 0.1, seed=3)
        assert len(get_dataset("mnist:train")) == 400
        with pytest.raises(DataError, match="whole number of samples or a fraction"):
            set_sample("mnist:train", 2.5)
        out = wb.evaluate("default", "mnist", ["letters"], ["knn"], subsample={"id_train": 300, "ood_test": 200},
                          seed=1)
        assert out["samples"]["id_train"] == {"used": 300, "of": 4000, "seed": 1}
        assert out["samples"]["letters"] == {"used": 200, "of": 1000, "seed": 1}
        assert out["samples"]["id_test"] == {"used": 1000, "of": 1000, "seed": None}
        assert out["subsample"] == {"id_train": 300, "ood_test": 200} and out["seed"] == 1
        with pytest.raises(wb.WorkbenchError, match="subsample roles"):
            wb.evaluate("default", "mnist", ["letters"], ["knn"], subsample={"train": 3})
    finally:
        for n in ("mnist:train", "mnist", "letters"):
            set_sample(n, None)


def test_cli_evaluate_subsample_and_paper_columns(tmp_path, capsys):
    from ood_core import cli
    from ood_core.experiment import Experiment

    try:
        assert cli.main(["evaluate", "--id", "mnist", "--ood", "letters,textures", "--detectors", "gradnorm",
                         "--subsample", "id_test=200", "--paper", "gradnorm", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "samples: id_test 200 of 1,000 (seed 0)" in out
        assert "paper FPR95" in out
        row = next(line for line in out.splitlines() if line.startswith("gradnorm") and "textures" in line)
        assert row.split()[-2:] == ["61.42", "81.07"]  # the paper's Textures row beside ours
        mean = next(line for line in out.splitlines() if line.split()[:2] == ["gradnorm", "mean"])
        assert mean.split()[-2:] == ["54.70", "86.31"]
        exp = Experiment(id_dataset="mnist", ood_datasets=["letters"], detectors=["msp"], subsample={"ood_test": 100},
                         seed=2)
        p = exp.save(tmp_path / "e.json")
        assert Experiment.load(p).subsample == {"ood_test": 100}
        assert cli.main(["evaluate", "--experiment", str(p), "--quiet"]) == 0
        assert "letters 100 of 1,000 (seed 2)" in capsys.readouterr().out
        assert cli.main(["evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp",
                         "--subsample", "id_test"]) == 2
        assert "ROLE=COUNT" in capsys.readouterr().err
    finally:
        for n in ("mnist", "letters", "textures"):
            set_sample(n, None)


def test_bad_files_behave_the_same_when_streamed(tmp_path):
    root = photo_folder(tmp_path / "bad", n=6)
    (root / "notes.txt").write_text("not an image")  # ignored, as folders always did
    (root / "garbage.jpg").write_bytes(b"garbage")  # unreadable header
    good = (root / "p000.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated: the header reads, the data does not
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(good)
    (root / "link.jpg").symlink_to(outside)  # leaves the folder
    ds = R.load_local(root)
    assert len(ds) == 6 and ds.meta["skipped"] == 3
    assert {"garbage.jpg", "cut.jpg", "link.jpg (link)"} == set(ds.meta["skipped_files"])
    # a file damaged after the scan: a blank input in the pass, named in the extraction
    pp = Preprocess((16, 16), 3, (0.5,), (0.5,))
    (root / "p002.jpg").write_bytes(b"broken later")
    x = torch.cat(list(ds.batches(pp, 4, workers=0)))
    assert x.shape == (6, 3, 16, 16) and ds.failed == {2}
    assert torch.equal(x[2], torch.zeros(3, 16, 16))
    with pytest.raises(DataError, match="p002.jpg .* cannot be read"):
        ds.image(2)


def test_file_list_reads_paths_and_labels_and_refuses_escapes(tmp_path):
    root = photo_folder(tmp_path / "imgs" / "a", n=4)
    lst = tmp_path / "imgs" / "list.txt"
    lines = ["# path label", "a/p000.jpg 3", "a/p001.jpg 1", "a/p002.jpg", "../elsewhere.jpg 2", "a/missing.jpg 0"]
    lst.write_text("\n".join(lines) + "\n")
    assert R.detect_dataset_format(lst) == "filelist"
    ds = R.load_local(lst)
    assert ds.streamed and len(ds) == 3 and ds.labels.tolist() == [3, 1, -1]
    assert ds.meta["skipped"] == 2 and any("outside" in s for s in ds.meta["skipped_files"])
    np.testing.assert_array_equal(ds.image(0), np.asarray(Image.open(root / "p000.jpg").convert("RGB")))
    lst.write_text("a/p000.jpg cat\n")
    with pytest.raises(DataError, match="line 1: the label 'cat' is not an integer"):
        R.load_local(lst)


def test_fast_jpeg_decoder_gives_pillows_pixels_and_workers_give_the_in_memory_input(tmp_path, monkeypatch):
    """Colour JPEGs decode through torchvision (faster); the pixels must be Pillow's, and a pass
    through loader workers (resize in the worker, normalise in the main process) must give
    exactly the input the in-memory path gives."""
    from ood_core.data.streamed import _decode, decode

    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).resize((70, 61), Image.BICUBIC)
    root = tmp_path / "jpegs"
    root.mkdir()
    variants = {"rgb.jpg": ({}, "RGB"), "sub444.jpg": ({"subsampling": 0}, "RGB"),
                "progressive.jpg": ({"progressive": True}, "RGB"), "grey.jpg": ({}, "L"), "cmyk.jpg": ({}, "CMYK")}
    for name, (kw, mode) in variants.items():
        base.convert(mode).save(root / name, quality=88, **kw)
    for name in variants:
        with Image.open(root / name) as im:
            want = np.asarray(im.convert("RGB"))
        got = decode(str(root / name), False)
        assert got.dtype == np.uint8 and np.array_equal(got, want), name
        assert _decode(str(root / name), False).stride()[0] == 1  # channels-last: the resize's fast kernel
    ds = R.load_local(root)
    monkeypatch.setattr("ood_core.data.streamed.INLINE_ROWS", 0)  # a real worker process, even for 5 files
    for pp in (Preprocess((32, 32), 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), resize="crop"), Preprocess((20, 24), 1)):
        ref = torch.cat([pp(np.asarray(Image.open(ds.path(i)).convert("RGB"))[None]) for i in range(len(ds))])
        for workers in (0, 1):
            got = torch.cat(list(ds.batches(pp, 2, workers=workers)))
            assert torch.equal(got, ref), (pp, workers)
        assert torch.equal(ds.rows(pp)[np.arange(len(ds))], ref)


def test_crop_preprocessing_matches_torchvision_imagenet_eval():
    from torchvision.transforms import v2

    pp = Preprocess((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize="crop")
    img = np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    ref = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(pp.mean, pp.std)])(img)
    torch.testing.assert_close(pp.one(img), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(pp(img[None])[0], ref, rtol=0, atol=1e-6)
    # and the classic pipeline on a PIL image (what the reference code runs): within one grey level
    from torchvision import transforms as T
    classic = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(pp.mean, pp.std)])
    diff = (classic(Image.fromarray(img)) - ref) * torch.tensor(pp.std).view(3, 1, 1) * 255
    assert diff.abs().max() <= 1.0 + 1e-4
    assert "resize" not in Preprocess((28, 28), 1).to_dict()  # old cache keys unchanged


def test_tuned_batch_size_is_measured_once_and_remembered(default_bundle, tmp_cache, monkeypatch):
    b = batching.tuned_batch_size(default_bundle, "cpu", cap=64, budget_s=2.0)
    assert b in (8, 16, 32, 64)
    monkeypatch.setattr(default_bundle, "forward", lambda x: (_ for _ in ()).throw(AssertionError("measured again")))
    assert batching.tuned_batch_size(default_bundle, "cpu", cap=64) == b


def test_autocast_reports_its_first_batch_difference(default_bundle, tmp_cache):
    ds = get_dataset("letters").subset(np.arange(64))
    got = ex.extract(default_bundle, ds, batch_size=32, autocast="bf16")
    chk = got.extra["autocast_check"]
    assert chk["dtype"] == "bf16" and chk["rows"] == 32 and 0 < chk["max_abs_logit_diff"] < 1.0
    assert chk["top1_agreement"] > 0.9
    fp32 = ex.extract(default_bundle, ds, batch_size=32)
    assert "autocast_check" not in fp32.extra and not np.array_equal(fp32.logits, got.logits)  # its own entry


def test_cli_register_evaluate_extract_and_train_on_streamed_folders(tmp_path, capsys, tmp_cache, default_bundle):
    """The README's ImageNet recipe in miniature: folders registered, then evaluate, extract and train."""
    from ood_core import cli
    from ood_core.models.checkpoints import models_dir

    src = Path(__file__).resolve().parents[2] / "cache" / "test" / "models"
    for f in src.glob("default.*"):  # the default model, trained once for the session, in this private cache
        (models_dir() / f.name).write_bytes(f.read_bytes())
    digits = digits_tree(tmp_path / "digits", 80, 40)
    photos = photo_folder(tmp_path / "photos", 48)
    try:
        assert cli.main(["register", "--path", str(digits), "--name", "dstream", "--role", "id_test"]) == 0
        assert cli.main(["register", "--path", str(photos), "--name", "pstream", "--role", "ood_test",
                         "--unlabelled"]) == 0
        out = capsys.readouterr().out
        assert "dstream\tid_test\t40 images" in out and "dstream:train\tid_train\t80 images" in out
        assert "streamed from disk" in out
        assert cli.main(["evaluate", "--id", "dstream", "--ood", "pstream", "--detectors", "energy,knn,gradnorm",
                         "--subsample", "id_train=60", "--quiet", "--json"]) == 0
        import json
        res = json.loads(capsys.readouterr().out)
        assert res["samples"]["id_train"] == {"used": 60, "of": 80, "seed": 0}
        assert len(res["results"]) == 3 and all(0 <= r["auroc"] <= 1 for r in res["results"])
        assert res["id_accuracy"] > 0.5  # the default model reads the digits back from PNG files
        assert cli.main(["extract", "--dataset", "pstream", "--out", str(tmp_path / "p.npz"), "--workers", "2",
                         "--batch-size", "16", "--quiet"]) == 0
        with np.load(tmp_path / "p.npz") as z:
            assert z["logits"].shape == (48, 10)
        assert cli.main(["train", "--method", "energy_oe", "--id", "dstream", "--aux", "pstream", "--epochs", "1",
                         "--n-eval", "20", "--param", "energy_oe.batch_size=16", "--quiet"]) == 0
        path = Path(capsys.readouterr().out.strip().splitlines()[-1])
        assert path.is_file() and path.suffix == ".pt"
    finally:
        set_sample("dstream:train", None)
        for n in ("dstream", "pstream"):
            persist.unregister_local(n)


def _cut_jpeg_folder(root: Path, n: int = 8, cut: int = 5) -> Path:
    """Colour progressive JPEGs; file ``cut`` loses the middle of its data but keeps its header and
    end marker, so the scan keeps it and only decoding finds the damage."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"p{i}.jpg", quality=90,
                                                                                 progressive=True)
    data = (root / f"p{cut}.jpg").read_bytes()
    sos = data.find(b"\xff\xda")
    (root / f"p{cut}.jpg").write_bytes(data[: sos + 3] + data[len(data) // 2:])
    assert (root / f"p{cut}.jpg").read_bytes().endswith(b"\xff\xd9")
    with pytest.raises(OSError), Image.open(root / f"p{cut}.jpg") as im:
        im.convert("RGB")
    return root


@pytest.mark.hostile
def test_a_cut_colour_jpeg_becomes_a_named_blank_also_on_resume(tmp_path, monkeypatch, default_bundle, tmp_cache):
    """Issue 27, item 5: the blank stand-in had the model's 1 channel, the images 3: every pass
    crashed in torch.stack, and a resumed pass at the same file."""
    ds = R.load_local(_cut_jpeg_folder(tmp_path / "photos"), name="cut")
    assert len(ds) == 8 and ds.meta["skipped"] == 0 and not ds.gray  # it passes registration
    whole = ex.run_forward(default_bundle, ds, 4, workers=0)
    assert whole.extra["decode_failed"] == [5]
    assert whole.extra["blank_files"][0].startswith("p5.jpg: cannot be read (OSError")
    # a pass interrupted after its first chunk, then resumed: the cut file is in the resumed part
    monkeypatch.setattr(ex, "CHUNK_ROWS", 4)
    key = ex.extraction_key(default_bundle, ds)

    def stop(frac, msg):
        if frac >= 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.run_forward(default_bundle, ds, 4, resume_key=key, workers=0, progress=stop)
    resumed = ex.run_forward(default_bundle, ds, 4, resume_key=key, workers=0)
    assert resumed.extra["resumed_at"] == 4 and resumed.extra["decode_failed"] == [5]
    assert np.array_equal(resumed.logits, whole.logits)
    assert resumed.extra["blank_files"] == whole.extra["blank_files"]


@pytest.mark.hostile
def test_cli_extract_names_the_blank_file_and_why(tmp_path, capsys, tmp_cache, default_bundle):
    from ood_core import cli
    from ood_core.models.checkpoints import models_dir

    src = Path(__file__).resolve().parents[2] / "cache" / "test" / "models"
    for f in src.glob("default.*"):  # the default model, trained once for the session, in this private cache
        (models_dir() / f.name).write_bytes(f.read_bytes())
    folder = _cut_jpeg_folder(tmp_path / "photos")
    try:
        assert cli.main(["register", "--path", str(folder), "--name", "cutjpeg"]) == 0
        assert cli.main(["extract", "--dataset", "cutjpeg", "--out", str(tmp_path / "c.npz"), "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "1 files could not be decoded" in err and "blank: p5.jpg: cannot be read (OSError" in err
    finally:
        persist.unregister_local("cutjpeg")
