"""1 process vs ``torchrun --nproc_per_node 2`` on CPU (gloo): an extraction and a G_low pass.

docs/architecture.md, "Distributed passes". Prints the wall time of each, the speedup and the
communication share, estimated as the share of the 2-rank in-process time above an ideal half of
the 1-process time (collectives and waiting for the slower rank; not timed per collective). On a
2-core machine expect no speedup: the figure is the overhead.
Usage: ``python bench/distributed.py [N]`` (N images for the G_low pass, default 512).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def timed(cmd: list[str], cache: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OOD_CACHE_DIR=str(cache), LOGLEVEL="ERROR", PYTHONPATH=str(ROOT))
    env.setdefault("OMP_NUM_THREADS", "1")
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt


def main() -> None:
    import numpy as np
    import torch

    from ood_core.models import build_arch

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(build_arch("small_cnn", 10, 1).state_dict(), tmp / "cnn.pt")
        ext = ["-m", "ood_core", "extract", "--model", str(tmp / "cnn.pt"), "--arch", "small_cnn",
               "--dataset", "mnist", "--split", "train", "--batch-size", "128", "--quiet"]
        rows = []
        for what, one, two in [
            ("extraction (small CNN, mnist:train, 4000 images)",
             [sys.executable, *ext, "--out", str(tmp / "a.npz")], [*TORCHRUN, *ext, "--out", str(tmp / "b.npz")]),
            (f"G_low pass (tiny net, pca r=8, q=2, fit + G_low on {n} images)",
             [sys.executable, "tests/dist_worker.py", "lowdim_bench", str(tmp / "o1"), str(n)],
             [*TORCHRUN, "tests/dist_worker.py", "lowdim_bench", str(tmp / "o2"), str(n)]),
        ]:
            t1 = timed(one, tmp / f"c1{len(rows)}")
            t2 = timed(two, tmp / f"c2{len(rows)}")
            rows.append((what, t1, t2))
        # the process start and rendezvous alone: torchrun on a trivial command
        t0 = timed([*TORCHRUN, "-m", "ood_core", "datasets"], tmp / "c3")
        t0_1 = timed([sys.executable, "-m", "ood_core", "datasets"], tmp / "c4")
        for name in ("o1", "o2"):
            r = np.load(tmp / name / "result.npz")
            rows.append((f"  in-process G_low time, {'1 process' if name == 'o1' else '2 ranks'}", float(r["seconds"]), None))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, gloo, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '1')} per process")
    for what, t1, t2 in rows:
        if t2 is None:
            print(f"{what}: {t1:.2f} s")
            continue
        print(f"{what}: 1 process {t1:.2f} s, torchrun 2 ranks {t2:.2f} s, speedup {t1 / t2:.2f}x")
    print(f"launch overhead (a trivial command): 1 process {t0_1:.2f} s, torchrun 2 ranks {t0:.2f} s "
          f"(+{t0 - t0_1:.2f} s start and rendezvous)")
    r1, r2 = rows[2][1], rows[3][1]
    print(f"G_low pass inside the run: 1 process {r1:.2f} s, 2 ranks {r2:.2f} s; communication and waiting "
          f"share of the 2-rank pass ≈ {max(0.0, r2 - r1 / 2) / r2:.0%} (time above an ideal half)")


if __name__ == "__main__":
    main()
