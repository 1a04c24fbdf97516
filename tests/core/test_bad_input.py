"""The hostile battery (issue 13): each defect an adversarial run found, reproduced, with its exact outcome.

Every case asserts what the user sees (exit code, one line on stderr, no traceback) and that the
data is intact afterwards. The CLI runs in-process through ``cli.main`` (a traceback would be an
exception escaping it); the multi-process cases fork a few short-lived writers.
"""
from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import signal
import sqlite3
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from ood_core import cache, cli, persist, stores
from ood_core.data import DataError, get_dataset
from ood_core.data import registry as data_registry

pytestmark = pytest.mark.hostile


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m ood_core ARGV`` in-process; an exception escaping main() would be a traceback."""
    try:
        code = cli.main(list(argv))
    except KeyboardInterrupt:  # would end the test run itself
        pytest.fail("KeyboardInterrupt escaped cli.main (a traceback for the user)")
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, expect: int = 2) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert code == expect, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def noise_npz(path: Path, n: int = 20, seed: int = 0, **extra) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), **extra)
    return path


def png_folder(root: Path, n: int = 4, seed: int = 0) -> Path:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.fixture()
def forget_registered():
    names: list[str] = []
    yield names
    for n in names:
        data_registry.unregister(n)


# 1 --- a compressed .npz cannot exhaust memory ---------------------------------------------

def test_npz_declared_size_is_checked_before_loading(tmp_cache, tmp_path, monkeypatch, forget_registered):
    monkeypatch.setenv("OOD_MAX_DATASET_BYTES", str(2**20))
    p = tmp_path / "bomb.npz"
    np.savez_compressed(p, x=np.zeros((40, 200, 200), np.uint8))  # 1.6 MB in memory, a few KB on disk
    assert p.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"declares 2 MiB of arrays .*over the 1 MiB limit"):
        persist.register_local(p, "bomb", "ood_test")
    with pytest.raises(DataError, match="over the 1 MiB limit"):  # an app upload takes the same path
        persist.register_dataset_upload(p.read_bytes(), "bomb.npz", "bomb_up", "ood_test")
    assert "bomb" not in persist.saved_datasets()


def test_npz_bomb_never_allocates(tmp_cache, tmp_path, capsys):
    """A .npy header declaring (5000, 1000, 1000) uint8 (5 GB) over almost no data is refused unread."""
    p = tmp_path / "huge.npz"
    header = {"descr": "|u1", "fortran_order": False, "shape": (5000, 1000, 1000)}
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue() + bytes(1000))
    code, _, err = run_cli(capsys, "register", "--path", str(p), "--name", "huge")
    assert "4768 MiB" in one_line_error(code, err)


# 2 --- a damaged registry is kept aside, never overwritten ----------------------------------

def test_damaged_registry_is_kept_aside(tmp_cache, tmp_path, caplog, forget_registered):
    forget_registered += ["a", "b", "c"]
    src = noise_npz(tmp_path / "n.npz")
    persist.register_local(src, "a", "ood_test")
    persist.register_local(src, "b", "ood_test")
    reg = persist.DATASETS.path()
    damaged = reg.read_bytes()[:-3]
    reg.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        persist.register_local(src, "c", "ood_test")
    aside = [p for p in reg.parent.iterdir() if p.name.startswith("registry.json.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # the 2 earlier registrations survive there
    assert set(json.loads(reg.read_text())) == {"c"}
    assert sum("kept as registry.json.damaged-" in r.getMessage() for r in caplog.records) == 1


# 3 --- concurrent writers: a cross-process lock, atomic replace ----------------------------

def _register_many(cache_dir: str, src: str, prefix: str, n: int) -> None:
    os.environ["OOD_CACHE_DIR"] = cache_dir
    cache.reset()
    for i in range(n):
        persist.register_local(src, f"{prefix}{i}", "ood_test", validate=False)
    os._exit(0)


def test_two_register_processes_lose_nothing(tmp_cache, tmp_path):
    src = str(noise_npz(tmp_path / "n.npz"))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_register_many, args=(str(tmp_cache), src, f"p{k}_", 8)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    saved = persist.DATASETS.read()
    assert sorted(saved) == sorted(f"p{k}_{i}" for k in range(4) for i in range(8))


def _write_forever(path: str) -> None:
    i = 0
    while True:
        stores.update_json_dict(Path(path), lambda d: d.__setitem__(f"k{i % 50}", "x" * 2000))
        i += 1


def test_sigkill_mid_write_leaves_a_readable_store(tmp_path):
    path = tmp_path / "store.json"
    stores.write_json_dict(path, {"keep": 1})
    for _ in range(3):
        p = mp.get_context("fork").Process(target=_write_forever, args=(str(path),))
        p.start()
        time.sleep(0.4)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        data = json.loads(path.read_text())  # never half a file
        assert data["keep"] == 1
    stores.update_json_dict(path, lambda d: d.__setitem__("after", 2))  # the lock of a killed writer is released
    assert json.loads(path.read_text())["after"] == 2


# 4 --- a long-running process never serves stale data -------------------------------------

def test_changed_or_deleted_folder_is_not_served_stale(tmp_cache, tmp_path, forget_registered):
    import shutil
    forget_registered.append("live")
    folder = png_folder(tmp_path / "live", seed=0)
    persist.register_local(folder, "live", "ood_test")
    before = get_dataset("live")
    assert get_dataset("live") is before  # unchanged files: the in-memory copy is reused
    time.sleep(0.01)
    png_folder(folder, seed=1)  # overwrite the images in place
    after = get_dataset("live")
    assert after.fingerprint != before.fingerprint
    assert after is not before  # rebuilt from the changed files, not served stale
    shutil.rmtree(folder)
    with pytest.raises(DataError, match=r"is gone; .*register --remove --name live"):
        get_dataset("live")


# 5 --- model options are applied or refused, never ignored --------------------------------

@pytest.mark.parametrize("opts", [["--input-size", "32"], ["--mean", "0.5"], ["--arch", "resnet18"],
                                  ["--head", "fc"], ["--channels", "3"], ["--std", "2"]])
def test_default_model_refuses_file_options(capsys, opts, tmp_path):
    code, _, err = run_cli(capsys, "extract", "--model", "default", *opts, "--dataset", "gaussian",
                           "--out", str(tmp_path / "x.npz"), "--quiet")
    assert "apply to a model file" in one_line_error(code, err)
    assert not (tmp_path / "x.npz").exists()


# 6 --- the forward batch is sized from a memory estimate ----------------------------------

def test_extraction_batch_fits_the_memory_budget(default_bundle, monkeypatch):
    from ood_core.data.base import ImageDataset
    from ood_core.batching import plan_batch
    from ood_core.extract import ExtractError, run_forward
    from ood_core.models.bundle import ModelBundle, Preprocess

    big = ModelBundle(model=default_bundle.model, preprocess=Preprocess((1000, 1000), 1, (0.1,), (0.3,)),
                      name="big", arch="small_cnn")
    monkeypatch.setenv("OOD_MEM_FORWARD_MB", "2048")
    assert 1 <= plan_batch(big, 256, "cpu") < 32  # not 256 samples of 1000x1000
    monkeypatch.setenv("OOD_MEM_FORWARD_MB", "20")
    ds = ImageDataset("two", np.zeros((2, 8, 8, 1), np.uint8), None)
    with pytest.raises(ExtractError, match=r"one 1000x1000 sample needs about \d+ MB .* over the 20 MB budget"):
        run_forward(big, ds, device="cpu")


# 7 --- a full disk or a read-only cache -----------------------------------------------------

def test_read_only_cache_serves_what_it_holds(tmp_cache, monkeypatch, caplog):
    import diskcache
    cache.put_arrays("k:held", {"a": np.arange(5)})
    cache.reset()

    def readonly(*a, **k):
        raise sqlite3.OperationalError("attempt to write a readonly database")
    monkeypatch.setattr(diskcache, "Cache", readonly)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(cache.get_arrays("k:held")["a"], np.arange(5))
        got = cache.cached_arrays("k:new", lambda: {"b": np.ones(2)})  # computed, not stored
        assert np.array_equal(got["b"], np.ones(2)) and cache.get_arrays("k:new") is None
        cache.cached_arrays("k:new2", lambda: {"b": np.ones(2)})
    assert sum("cannot be written" in r.getMessage() for r in caplog.records) == 1  # said once
    cache.reset()


def test_full_disk_gives_one_line_and_nothing_half_written(tmp_cache, tmp_path, monkeypatch, capsys):
    target = tmp_path / "keep.json"
    stores.write_json_dict(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(stores.StorageError, match="the disk is full"):
        stores.write_json_dict(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json", "keep.json.lock"]
    code, _, err = run_cli(capsys, "register", "--path", str(noise_npz(tmp_path / "n.npz")), "--name", "full")
    assert "the disk is full" in one_line_error(code, err)

    import diskcache
    monkeypatch.setattr(diskcache.Cache, "set", lambda *a, **k: (_ for _ in ()).throw(
        sqlite3.OperationalError("database or disk is full")))
    assert cache.put_arrays("k:x", {"a": np.ones(3)}) is False and cache.get_arrays("k:x") is None


# 8 --- checkpoint sidecars are validated like any input -------------------------------------

def test_malformed_sidecar_is_one_line(default_bundle, tmp_path):
    from ood_core.models import ModelError
    from ood_core.models.checkpoints import default_model_path, load_checkpoint

    src = default_model_path()
    good = json.loads(src.with_suffix(".json").read_text())
    cases = [({"num_classes": None}, "'num_classes' must be a whole number"),
             ({"num_classes": "ten"}, "'num_classes' must be a whole number"),
             ({"preprocess": {**good["preprocess"], "gamma": 2}}, "unknown: gamma"),
             ({"preprocess": {**good["preprocess"], "mean": "abc"}}, "wrong type"),
             ({"arch": 3}, "'arch' must name"),
             ({"num_classes": 3e7}, "'num_classes' must be a whole number"),
             ({"num_classes": 30_000_000}, "'num_classes' must be a whole number")]
    for change, message in cases:
        pt = tmp_path / "m.pt"
        pt.write_bytes(src.read_bytes())
        meta = {**good, **change}
        if change.get("num_classes", 0) is None:
            meta.pop("num_classes")
        pt.with_suffix(".json").write_text(json.dumps(meta))
        with pytest.raises(ModelError, match=message):
            load_checkpoint(pt)
    pt.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="must be a JSON object"):
        load_checkpoint(pt)


# 9 --- every JSON the project writes is standard JSON ---------------------------------------

def test_evaluate_json_without_id_labels_is_standard(default_bundle, tmp_path, capsys, forget_registered):
    forget_registered.append("nolabels")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u.npz", x=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8))
    persist.register_local(tmp_path / "u.npz", "nolabels", "id_test", persist=False)
    code, out, err = run_cli(capsys, "evaluate", "--id", "nolabels", "--ood", "gaussian", "--detectors", "msp",
                             "--json", "--quiet")
    assert code == 0, err
    assert "NaN" not in out
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["id_accuracy"] is None
    assert stores.standard_json({"a": float("nan"), "b": [np.float32("inf"), 1.5]}) == '{"a": null, "b": [null, 1.5]}'


# 10 --- one fault boundary: no traceback from any subcommand --------------------------------

def test_hostile_arguments_never_trace_back(tmp_cache, tmp_path, capsys, monkeypatch):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "params.json").write_text(json.dumps({"method": "ce", "params": [1, 2]}))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "outdir").mkdir()
    cases = [
        (["train", "--config", str(tmp_path / "list.json"), "--quiet"], "JSON object"),
        (["train", "--config", str(tmp_path / "params.json"), "--quiet"], "'params' is an object"),
        (["register", "--path", str(fifo), "--name", "f"], "not a regular file or folder"),
        (["register", "--path", "/dev/zero", "--name", "z"], "not a regular file or folder"),
        (["register", "--path", str(tmp_path / "missing"), "--name", "m"], "no such file or folder"),
        (["register", "--name", "x", "--remove"], "is not a registered local dataset"),
        (["evaluate", "--id", "nope", "--ood", "gaussian", "--detectors", "msp", "--quiet"], "unknown dataset"),
        (["evaluate", "--experiment", str(tmp_path / "list.json"), "--quiet"], ""),
        (["extract", "--model", str(tmp_path / "list.json"), "--dataset", "gaussian", "--out", "x.npz"], ""),
        (["extract", "--model", str(fifo), "--dataset", "gaussian", "--out", "x.npz"], ""),
        (["register", "--path", str(tmp_path), "--name", "x", "--limit", "abc"], "invalid int"),
        (["nosuchcommand"], "invalid choice"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert message in one_line_error(code, err), argv


def test_extract_out_to_a_folder_or_a_full_device(default_bundle, tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    code, _, err = run_cli(capsys, "extract", "--dataset", "gaussian", "--out", str(tmp_path / "outdir"), "--quiet")
    assert "is a folder; name a file" in one_line_error(code, err)
    if Path("/dev/full").exists():
        code, _, err = run_cli(capsys, "extract", "--dataset", "gaussian", "--out", "/dev/full", "--quiet")
        assert "the disk is full" in one_line_error(code, err)
        assert Path("/dev/full").is_char_device()  # the device node itself was not replaced


def test_ctrl_c_during_evaluate_is_exit_130(capsys, monkeypatch):
    from ood_core import workbench as wb

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(wb, "evaluate", interrupted)
    code, _, err = run_cli(capsys, "evaluate", "--id", "mnist", "--ood", "gaussian", "--detectors", "msp", "--quiet")
    assert "interrupted" in one_line_error(code, err, expect=130)


# 11 --- dataset names ---------------------------------------------------------------------------

def test_dataset_names_are_validated_and_never_silently_replaced(tmp_cache, tmp_path, capsys, forget_registered):
    forget_registered += ["mine"]
    src = noise_npz(tmp_path / "n.npz")
    for bad in ["a,b", "a\nb", "a\tb", " ", "x" * 101]:
        code, _, err = run_cli(capsys, "register", "--path", str(src), "--name", bad)
        assert "dataset names must be" in one_line_error(code, err), repr(bad)
    assert run_cli(capsys, "register", "--path", str(src), "--name", "mine")[0] == 0
    other = noise_npz(tmp_path / "other.npz", seed=1)
    for role in ("ood_test", "aux"):
        code, _, err = run_cli(capsys, "register", "--path", str(other), "--name", "mine", "--role", role)
        assert "already registered (role ood_test)" in one_line_error(code, err)
    assert persist.saved_datasets()["mine"]["sources"]["test"]["path"] == str(src.resolve())
    assert run_cli(capsys, "register", "--path", str(other), "--name", "mine", "--role", "aux", "--replace")[0] == 0
    assert persist.saved_datasets()["mine"]["role"] == "aux"
    code, out, _ = run_cli(capsys, "datasets")
    assert all(len(line.split("\t")) == 3 for line in out.strip().splitlines())


# 12 --- links inside a dataset folder -----------------------------------------------------------

def test_links_leaving_the_folder_are_skipped_and_counted(tmp_cache, tmp_path, capsys, forget_registered):
    forget_registered += ["linked", "flatlinked"]
    outside = png_folder(tmp_path / "outside", n=3, seed=5)
    root = tmp_path / "ds"
    png_folder(root / "cats", n=2)
    png_folder(root / "dogs", n=2, seed=1)
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    (root / "cats" / "stolen.png").symlink_to(outside / "0.png")
    code, out, err = run_cli(capsys, "register", "--path", str(root), "--name", "linked")
    assert code == 0, err
    assert "4 images" in out and "2 classes" in out and "2 unreadable skipped" in out
    flat = png_folder(tmp_path / "flat", n=3)
    (flat / "x.png").symlink_to(outside / "1.png")
    (flat / "sub").symlink_to(outside, target_is_directory=True)
    ds = persist.register_local(flat, "flatlinked", "ood_test").build("test")
    assert len(ds) == 3 and ds.meta["skipped"] == 2


# 13 --- messages that point the right way ----------------------------------------------------

def test_text_file_named_npz(tmp_cache, tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("hello, not arrays")
    with pytest.raises(DataError, match=r"notes.npz is not a \.npz \(a zip of \.npy arrays"):
        persist.register_local(p, "notes", "ood_test")


def test_nan_model_output_names_the_model(default_bundle):
    from ood_core.data.base import ImageDataset
    from ood_core.extract import ExtractError, run_forward
    from ood_core.models.bundle import ModelBundle

    class NaNOnBright(nn.Module):
        def forward(self, x):
            out = x.flatten(1)[:, :3].clone()
            out[x.flatten(1).mean(1) > 0] = float("nan")
            return out

    b = ModelBundle(model=NaNOnBright(), preprocess=default_bundle.preprocess, name="nan", arch="x", num_classes=3)
    ds = ImageDataset("mixed", np.r_[np.zeros((3, 28, 28, 1)), np.full((2, 28, 28, 1), 255)].astype(np.uint8), None)
    with pytest.raises(ExtractError, match=r"the model outputs NaN or inf on 2 of 5 images of 'mixed'"):
        run_forward(b, ds, device="cpu")


def test_preprocessing_and_output_messages():
    from ood_core.models import ModelError
    from ood_core.models.bundle import Preprocess
    from ood_core.models.preprocess import Preprocess as PP
    from ood_core.models.preprocess import first_size_that_runs

    with pytest.raises(ModelError, match="mean needs 1 value for 1-channel input, got 3"):
        Preprocess((28, 28), 1, (0.1, 0.2, 0.3), (0.3,))

    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :2], x.flatten(1)[:, :2]

    with pytest.raises(ModelError) as info:
        first_size_that_runs(Pair(), PP((28, 28), 1, (0.5,), (0.5,)), None)
    assert "returns a tuple" in str(info.value) and "also tried" not in str(info.value)


def test_vanished_folder_is_reported_once(tmp_cache, tmp_path, caplog, forget_registered):
    import shutil
    forget_registered.append("gone")
    folder = png_folder(tmp_path / "gone")
    persist.register_local(folder, "gone", "ood_test")
    shutil.rmtree(folder)
    data_registry.unregister("gone")
    for _ in range(3):  # three later commands
        with caplog.at_level(logging.WARNING):
            got = persist.restore_datasets()
        assert "is gone" in got.skipped["gone"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "gone" in r.getMessage()]
    assert len(warnings) == 1 and "register --remove --name gone" in warnings[0]


# 14 --- metrics stay in [0, 1] ------------------------------------------------------------------

def test_aupr_never_exceeds_one():
    from ood_core.metrics import ood_metrics

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        n, m = rng.integers(2, 60), rng.integers(2, 60)
        res = ood_metrics(rng.normal(3, 1, n), rng.normal(0, 1, m))
        worst = max(worst, res["aupr_in"], res["aupr_out"])
    assert worst <= 1.0
