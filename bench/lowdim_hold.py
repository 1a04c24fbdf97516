"""The subspace fit with the gradient matrix held between passes, against recomputing it, in one run.

Usage: ``python bench/lowdim_hold.py [--n 1000] [--q 2] [--r 200] [--threads 2]``.

On the embedded default CNN, all parameters, NFK, the reference's loss (the Maps page's
gradient defaults), over the first ``--n`` training digits it prints seconds for

(a) the floor: one batched forward + backward over the n samples (loss = Σ LSE), as a training
    epoch without the optimizer;
(b) the randomized SVD recomputing per-sample gradients in every one of its 2q + 2 passes
    (``OOD_MEM_GRAD_HOLD_MB`` tiny);
(c) the same fit holding the gradient matrix (the default when it fits ``grad_hold``);

the ratios b/a and c/a, the speed-up b/c, and whether σ and G_low are bitwise equal. Absolute
times on a shared machine drift; compare within one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--q", type=int, default=2)
    ap.add_argument("--r", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if os.environ.get("OOD_CACHE_DIR"):
        run(a)
        return
    with tempfile.TemporaryDirectory(prefix="ood_bench_hold_") as tmp:  # removed afterwards
        os.environ["OOD_CACHE_DIR"] = tmp
        run(a)


def run(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from ood_core import workbench as wb
    from ood_core.data import get_dataset
    from ood_core.gradients import engine, hooks

    b = wb.load_model("default")
    train = get_dataset("mnist:train").subset(np.arange(a.n))
    pl = hooks.plan(b, "all", device="cpu")
    x = b.preprocess(train.images)

    def floor() -> float:
        t = time.perf_counter()
        for i in range(0, len(x), pl.chunk or 128):
            b.model.zero_grad(set_to_none=True)
            torch.logsumexp(b.model(x[i:i + (pl.chunk or 128)]), 1).sum().backward()
        return time.perf_counter() - t

    def fit(limit_mb: str):
        os.environ["OOD_MEM_GRAD_HOLD_MB"] = limit_mb
        t = time.perf_counter()
        res, _ = engine.randomized_svd(b, train, pl, "lse", 1.0, a.r, len(train), "nfk", a.q, torch.float32)
        return time.perf_counter() - t, res

    floor()
    fa = min(floor(), floor())
    tb, rb = fit("0.001")
    tc, rc = fit("100000")
    same = np.array_equal(rb.sigma, rc.sigma) and np.array_equal(rb.g_low, rc.g_low)
    print(f"default CNN, P={pl.P:,}, n={a.n}, r={a.r}, q={a.q}, threads={a.threads}, engine={pl.engine}")
    print(f"(a) floor, batched forward+backward: {fa:.2f} s")
    print(f"(b) fit, recomputing every pass:     {tb:.2f} s  ({tb / fa:.1f}x floor)")
    print(f"(c) fit, gradient matrix held:       {tc:.2f} s  ({tc / fa:.1f}x floor)")
    print(f"speed-up b/c: {tb / tc:.2f}x; sigma and G_low bitwise equal: {same}")
    b.model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
