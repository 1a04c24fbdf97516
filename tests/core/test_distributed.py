"""Distributed passes under torchrun on CPU (gloo, 2 ranks) against one process
(docs/architecture.md, "Distributed passes"). Each case launches ``python -m torch.distributed.run``
(torchrun) on ``tests/dist_worker.py`` or the CLI, and the same work in one plain process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import diskcache
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(ROOT / "tests" / "dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OOD_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", LOGLEVEL="ERROR", OOD_DIST_TIMEOUT_S="60",
               PYTHONPATH=str(ROOT))
    return env


def _run(cmd: list[str], cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _keys(cache: Path) -> set[str]:
    with diskcache.Cache(str(cache / "arrays")) as c:
        return set(c.iterkeys())


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    import torch

    from ood_core.models import build_arch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "cnn.pt"
    torch.save(build_arch("small_cnn", 10, 1).state_dict(), path)
    return path


def test_two_rank_extraction_equals_one_process_under_the_same_key(tmp_path, cnn):
    args = ["extract", "--model", str(cnn), "--arch", "small_cnn", "--dataset", "letters", "--batch-size", "64",
            "--quiet"]
    one = _run([sys.executable, "-m", "ood_core", *args, "--out", str(tmp_path / "one.npz")], tmp_path / "c1")
    two = _run([*TORCHRUN, "-m", "ood_core", *args, "--out", str(tmp_path / "two.npz")], tmp_path / "c2")
    assert one.stdout.strip().splitlines()[-1] == str(tmp_path / "one.npz")
    assert two.stdout.strip().splitlines() == [str(tmp_path / "two.npz")]  # rank 0 prints, once
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in ("logits", "features"):
        assert a[k].shape == b[k].shape == (1000, a[k].shape[1])
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5 * float(np.abs(a[k]).max()))
    np.testing.assert_array_equal(a["sample_ids"], b["sample_ids"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    ka, kb = _keys(tmp_path / "c1"), _keys(tmp_path / "c2")
    assert ka == kb and len(kb) == 1  # one entry, keyed as one process keys it
    assert not (tmp_path / "c2" / "partial").exists() or not any((tmp_path / "c2" / "partial").iterdir())


def test_two_rank_lowdim_subspace_and_g_low_equal_one_process(tmp_path):
    _run([sys.executable, WORKER, "lowdim", str(tmp_path / "o1")], tmp_path / "c1")
    _run([*TORCHRUN, WORKER, "lowdim", str(tmp_path / "o2")], tmp_path / "c2")
    a, b = np.load(tmp_path / "o1" / "result.npz"), np.load(tmp_path / "o2" / "result.npz")
    assert bool(a["cached"]) and bool(b["cached"])  # rank 0 wrote the subspace entry
    Q1, Q2 = (np.linalg.qr(x["V"].astype(np.float64))[0] for x in (a, b))
    # the sines of the principal angles (arccos of cosines near 1 loses half the digits)
    sines = np.linalg.svd(Q2 - Q1 @ (Q1.T @ Q2), compute_uv=False)
    assert np.arcsin(np.clip(sines, 0, 1)).max() <= 1e-4
    R = a["V"].astype(np.float64).T @ b["V"].astype(np.float64)  # sign/rotation between the two bases
    for k in ("g_low", "g_fit"):
        scale = float(np.abs(a[k]).max())
        np.testing.assert_allclose(a[k] @ R, b[k], atol=1e-4 * scale, rtol=0)
    assert len(_keys(tmp_path / "c1")) == len(_keys(tmp_path / "c2")) == 2  # subspace + G_low of the test set


# Three processes that each build the training and evaluation sets: over 30 s, so `make test-all` runs it
# (docs/architecture.md, "Tests"); the sharded passes it relies on are checked by the cases above.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "greg"])
def test_two_rank_training_equals_one_process(tmp_path, method):
    _run([sys.executable, WORKER, "train", str(tmp_path / "o1"), method], tmp_path / "c1")
    _run([*TORCHRUN, WORKER, "train", str(tmp_path / "o2"), method], tmp_path / "c2")
    a, b = np.load(tmp_path / "o1" / "result.npz"), np.load(tmp_path / "o2" / "result.npz")
    np.testing.assert_allclose(b["params"], a["params"], rtol=0, atol=1e-5)
    # also relative to what 5 steps moved: a penalty off by the world size (2x) moved them 1e-4 of that
    moved = float(np.abs(a["params"] - a["init"]).max())
    assert float(np.abs(b["params"] - a["params"]).max()) <= 1e-5 * moved
    assert Path(str(b["path"])).exists() and Path(str(b["path"])).with_suffix(".json").exists()


def test_a_failing_rank_gives_one_line_and_no_cache_entry(tmp_path, cnn):
    out = tmp_path / "x.npz"
    p = _run([*TORCHRUN, WORKER, "fail_extract", str(tmp_path / "o"), "extract", "--model", str(cnn), "--arch",
              "small_cnn", "--dataset", "letters", "--batch-size", "64", "--out", str(out)], tmp_path / "c",
             check=False)
    assert p.returncode != 0
    ours = [ln for ln in p.stderr.split("\n") if ln.startswith("rank ")]  # each starts a line of its own
    mine = [ln for ln in ours if ln.startswith("rank 1:")]
    assert len(mine) == 1 and mine[0].startswith("rank 1: RuntimeError: simulated failure on rank 1"), p.stderr[-2000:]
    assert all("simulated" in ln or "another rank failed" in ln for ln in ours), ours  # the others say why they stop
    assert p.stderr.count("simulated failure") == 1  # the cause once; no traceback from the ranks
    assert not out.exists()
    assert _keys(tmp_path / "c") == set()
    # What the ranks left is resume state, not an entry: complete chunk files only (atomic writes), which a
    # rerun with the same number of ranks picks up (docs/architecture.md, "Distributed passes").
    for f in (tmp_path / "c").glob("partial/*/*"):
        assert f.name == "manifest.json" or (f.name.startswith("c") and f.suffix == ".npz"), f
        if f.suffix == ".npz":
            with np.load(f) as z:
                assert z["logits"].ndim == 2
    assert not list((tmp_path / "c").glob("partial/*/*.tmp*"))
