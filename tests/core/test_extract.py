import json

import numpy as np
import pytest
import torch

from ood_core import extract as ex
from ood_core import workbench as wb
from ood_core.data import get_dataset


def test_extraction_contract_and_features_are_head_input(default_bundle):
    ext = wb.get_extraction(default_bundle, "letters")
    assert ext.logits.dtype == np.float32 and ext.features.dtype == np.float32
    assert ext.logits.shape == (1000, 10) and ext.features.shape == (1000, 128)
    assert ext.head_weight.shape == (10, 128) and ext.head_bias.shape == (10,)
    assert (ext.labels == -1).all()
    np.testing.assert_allclose(ext.features @ ext.head_weight.T + ext.head_bias, ext.logits, rtol=1e-4, atol=1e-4)
    ds = get_dataset("letters")
    with torch.no_grad():
        direct = default_bundle.model(default_bundle.preprocess(ds.images[:16])).numpy()
    np.testing.assert_allclose(ext.logits[:16], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ext.sample_ids, ds.sample_ids)


def test_second_extraction_does_no_forward(default_bundle, monkeypatch):
    first = wb.get_extraction(default_bundle, "faces")

    def boom(*a, **k):
        raise AssertionError("forward pass ran although the extraction was cached")

    monkeypatch.setattr(ex, "run_forward", boom)
    wb._extractions.clear()  # as a new process would: only the disk cache is left
    again = wb.get_extraction(default_bundle, "faces")
    np.testing.assert_array_equal(first.logits, again.logits)


@pytest.mark.hostile
def test_a_cache_hit_creates_no_folder(default_bundle, monkeypatch):
    """A hit on a cache that cannot be written is served: nothing on the hit path creates a folder
    (a hit once made ``cache/partial/`` and failed where it could not)."""
    from ood_core import cache, stores

    wb.get_extraction(default_bundle, "faces")
    wb._extractions.clear()

    def refuse(*a, **k):
        raise stores.StorageError("the cache folder cannot be written")

    monkeypatch.setattr(cache, "subdir", refuse)
    monkeypatch.setattr(stores, "ensure_dir", refuse)
    monkeypatch.setattr(ex, "run_forward", refuse)
    assert wb.get_extraction(default_bundle, "faces").logits.shape[0] == len(get_dataset("faces"))


def test_changed_input_misses_the_cache(default_bundle):
    ds = get_dataset("gaussian")
    k1 = ex.extraction_key(default_bundle, ds)
    k2 = ex.extraction_key(default_bundle, ds.subset(np.arange(10)))
    assert k1 != k2
    import copy
    other = copy.deepcopy(default_bundle)
    other.preprocess.mean = (0.5,)
    assert ex.extraction_key(other, ds) != k1


def test_npz_roundtrip(tmp_path, default_bundle):
    ext = wb.get_extraction(default_bundle, "faces")
    p = ext.save_npz(tmp_path / "e.npz")
    back = ex.Extraction.load_npz(p)
    for k in ["logits", "features", "labels", "head_weight", "head_bias", "sample_ids"]:
        np.testing.assert_array_equal(getattr(ext, k), getattr(back, k))
    assert back.dataset == "faces"


def test_default_model_accuracy(default_bundle):
    ext = wb.get_extraction(default_bundle, "mnist")
    assert ext.accuracy >= 0.97


def test_bundle_split_leaves_the_model_intact(default_bundle):
    assert isinstance(default_bundle.model.fc, torch.nn.Linear)
    assert isinstance(default_bundle.body.fc, torch.nn.Identity)
    assert default_bundle.head is default_bundle.model.fc


def test_damaged_default_checkpoint_is_retrained(tmp_cache, monkeypatch):
    from ood_core.models import checkpoints as ck
    monkeypatch.setattr(ck, "SHIPPED_DEFAULT", tmp_cache / "no-shipped-copy.pt")  # else the shipped copy replaces it
    path = ck.default_model_path()
    path.write_bytes(b"not a checkpoint")
    path.with_suffix(".json").write_text('{"arch": "small_cnn", "num_classes": 10, "preprocess": {}}')
    calls = []
    monkeypatch.setattr(ck, "train_default", lambda progress=None: calls.append(1) or "retrained")
    assert ck.load_default() == "retrained" and calls == [1]


# --- issue 27, item 3: two passes over one uncached dataset at once ------------------------

_PASS_CHILD = r"""
import sys, time, numpy as np, torch
from torch import nn
from pathlib import Path
torch.set_num_threads(1)
from ood_core import extract as ex
from fixtures_models import slow_tiny_bundle, tiny_images
delay, go, out = float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ex.CHUNK_ROWS = 8
b = slow_tiny_bundle(delay)  # the delay is no part of the fingerprint: both processes share the key
ds = tiny_images(48)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.02)
ext = ex.extract(b, ds, batch_size=4, device="cpu")
np.save(out, ext.logits)
"""


def _slow_pass(delay: float, go, out, cache_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OOD_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    p = subprocess.Popen([sys.executable, "-c", _PASS_CHILD, str(delay), str(go), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def _chunks(cache_dir) -> list:
    return sorted((cache_dir / "partial").glob("*/c*.npz")) if (cache_dir / "partial").is_dir() else []


@pytest.mark.hostile
def test_two_processes_one_cold_pass(tmp_cache):
    """Two processes start the same cold pass, the second while the first is half-way: both succeed
    with identical arrays and no chunk is left in cache/partial (today the second fails with
    "the forward pass produced 0 of 48 rows" and leaves its chunks for good)."""
    import time

    go_a, go_b = tmp_cache.parent / "go_a", tmp_cache.parent / "go_b"
    a = _slow_pass(0.2, go_a, tmp_cache.parent / "a.npy", tmp_cache)
    b = _slow_pass(0.4, go_b, tmp_cache.parent / "b.npy", tmp_cache)
    try:
        go_a.touch()
        t0 = time.time()
        while len(_chunks(tmp_cache)) < 2 and a.poll() is None and time.time() - t0 < 30:
            time.sleep(0.01)
        go_b.touch()  # the second pass starts while the first one's chunks are on disk
        ra, rb = a.wait(60), b.wait(60)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    assert ra == 0, a.stderr.read()
    assert rb == 0, b.stderr.read()
    la, lb = np.load(tmp_cache.parent / "a.npy"), np.load(tmp_cache.parent / "b.npy")
    assert la.shape == (48, 4)
    np.testing.assert_array_equal(la, lb)
    assert _chunks(tmp_cache) == []


@pytest.mark.hostile
def test_two_threads_one_cold_pass(tmp_cache, monkeypatch):
    """The same in one process (two app sessions on the shared model): both threads get the same
    arrays, one forward pass runs, and nothing stays in cache/partial."""
    import threading
    import time

    from fixtures_models import slow_tiny_bundle, tiny_images

    monkeypatch.setattr(ex, "CHUNK_ROWS", 8)
    delays = {"first": 0.1, "second": 0.3}
    calls = {"first": 0, "second": 0}

    def delay():
        name = threading.current_thread().name
        if name not in delays:  # building the bundle probes the model once
            return 0.0
        calls[name] += 1
        return delays[name]

    b = slow_tiny_bundle(delay)
    ds = tiny_images(48)
    out, err = {}, {}

    def run():
        try:
            out[threading.current_thread().name] = ex.extract(b, ds, batch_size=4, device="cpu").logits
        except Exception as exc:  # noqa: BLE001 - reported below
            err[threading.current_thread().name] = repr(exc)

    t1 = threading.Thread(target=run, name="first")
    t2 = threading.Thread(target=run, name="second")
    t1.start()
    t0 = time.time()
    while len(_chunks(tmp_cache)) < 2 and time.time() - t0 < 30:
        time.sleep(0.005)
    t2.start()
    t1.join(60)
    t2.join(60)
    assert err == {}
    np.testing.assert_array_equal(out["first"], out["second"])
    assert calls["second"] == 0  # it waited and reused the first pass's entry
    assert _chunks(tmp_cache) == []


def test_a_dead_pass_leaves_no_lock(tmp_cache):
    """A pass killed mid-way holds no lock afterwards (the OS drops it): the next pass resumes its chunks."""
    import signal
    import time

    go = tmp_cache.parent / "go"
    a = _slow_pass(0.05, go, tmp_cache.parent / "a.npy", tmp_cache)
    go.touch()
    t0 = time.time()
    while len(_chunks(tmp_cache)) < 2 and time.time() - t0 < 30:
        time.sleep(0.01)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    b = _slow_pass(0.0, go, tmp_cache.parent / "b.npy", tmp_cache)
    assert b.wait(60) == 0, b.stderr.read()
    assert np.load(tmp_cache.parent / "b.npy").shape == (48, 4)
    assert _chunks(tmp_cache) == []


@pytest.mark.hostile
def test_orphan_chunks_are_swept(tmp_cache):
    """Chunks left by a pass that lost the race (entry stored, folder still there) are removed: the
    folder of the key asked for on its next hit, any other stored key's folder after the next pass."""
    from fixtures_models import tiny_bundle, tiny_images

    b = tiny_bundle()
    ds, other = tiny_images(16, seed=1), tiny_images(16, seed=2)
    ex.extract(b, ds, batch_size=8, device="cpu")
    key = ex.extraction_key(b, ds)
    orphan = ex._partial_dir(key)  # noqa: SLF001
    orphan.mkdir(parents=True)
    (orphan / "c000000000008.npz").write_bytes(b"left behind")
    ex.extract(b, ds, batch_size=8, device="cpu")  # a hit
    assert not orphan.exists()
    orphan.mkdir(parents=True)  # an orphan with a manifest naming its (stored) key
    (orphan / "manifest.json").write_text(json.dumps({"batch_size": 8, "chunk": 8, "n": 16, "key": key}))
    (orphan / "c000000000008.npz").write_bytes(b"left behind")
    ex.extract(b, other, batch_size=8, device="cpu")  # another dataset's pass sweeps it
    assert not orphan.exists()
    assert not any((tmp_cache / "partial").iterdir())
