"""Low-dimensional gradients at scale: the G_low engine against the machine's floor, in one run.

Usage: ``python bench/lowdim_scale.py [--model resnet|cnn|both] [--device cpu|cuda] [--threads 2]
[--n 256] [--r 200] [--old-n 8] [--svd-n 1000] [--skip-fit]``.

For each model (the CIFAR-style ResNet-18 ``resnet18_cifar`` freshly initialised at 32×32,
and the embedded default CNN) it prints samples/s of

(a) the floor: a batched forward + backward of the model (eval mode, loss = Σ LSE, all
    parameters requiring grad), as a training step without the optimizer;
(b) the G_low pass at r (default 200), all parameters, NFK (``project`` with a random
    orthonormal V and NFK statistics, in the auto precision);
(c) one subspace-fit pass (``Aᵀ·Y`` accumulation, the randomized SVD's costly half);
(d) the previous engine (``iter_grad_blocks``: torch.func vmap over grad, then the blocks
    times V), on ``--old-n`` samples;

the ratio b/a, the peak memory of (b) and (c) (``ru_maxrss`` rise of a fresh process
per measurement on CPU, ``max_memory_allocated`` on GPU) against ``P·r·4 + 2 GB``, and
the subspace error (largest principal angle and ``‖VVᵀ − UUᵀ‖₂``) of the randomized SVD
vs an exact SVD on a small case (the default CNN's ``last_block``, ``--svd-n`` samples)
for q = 0..4 and 10 power iterations. For the ResNet it writes CIFAR-10-format pickles
and an SVHN-format .mat of generated 32×32 images to a temp folder and registers them
through the public ``ood_core.data.folders.register_local`` (as a user would). Each
time is the best of two passes after a warm-up; the machine may be shared, so compare
(b) with (a) from the same run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _bundle(which: str, tmp: str):
    import torch

    from ood_core.models import ModelBundle, Preprocess

    if which == "cnn":
        from ood_core import workbench as wb
        return wb.load_model("default"), "mnist:train"
    from ood_core.models.archs import resnet18_cifar
    torch.manual_seed(0)
    b = ModelBundle(resnet18_cifar(10), Preprocess((32, 32), 3, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
                    name="resnet18_cifar", arch="resnet18_cifar")
    return b, _register_cifar(tmp)


def _register_cifar(tmp: str) -> str:
    """CIFAR-10 pickles + an SVHN .mat of generated images, registered by path as a user would."""
    from fixtures_data import cifar10_folder, svhn_folder
    from ood_core import persist as folders

    root = Path(tmp)
    cifar10_folder(root / "cifar", n_train=512, n_test=64, batches=2)
    svhn_folder(root / "svhn", n=64)
    folders.register_local(root / "cifar", "bench_cifar", "id_test", persist=False)
    svhn = next((root / "svhn").glob("*.mat"))
    folders.register_local(svhn, "bench_svhn", "ood_test", persist=False)
    return "bench_cifar:train"


def _measure(kind: str, which: str, n: int, r: int, device: str, threads: int, tmp: str, q) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from ood_core import gradients as G
    from ood_core.data import get_dataset
    from ood_core.gradients import engine, hooks

    b, dsname = _bundle(which, tmp)
    ds = get_dataset(dsname)
    ds = ds.subset(np.arange(min(n, len(ds))))
    x = b.preprocess(ds.images)
    P = G.n_params(b, "all")
    pl = hooks.plan(b, "all", device=device)
    dtype = G.subspace.compute_dtype("auto", P, r, device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = {"P": P, "chunk": pl.chunk, "engine": pl.engine, "dtype": str(dtype)[6:]}

    def best(fn, reps=2):
        fn(1)  # warm-up on a small slice
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(None)
            ts.append(time.perf_counter() - t)
        return min(ts)

    if kind == "floor":
        b.to(device)
        for p in b.model.parameters():
            p.requires_grad_(True)

        def floor(lim):
            xs = x[:lim] if lim else x
            for a in range(0, len(xs), pl.chunk):
                xb = xs[a:a + pl.chunk].to(device)
                y = torch.logsumexp(b.model(xb), 1).sum()
                torch.autograd.grad(y, [p for p in b.model.parameters()])
            if device == "cuda":
                torch.cuda.synchronize()
        out["t"] = best(floor)
    elif kind in ("glow", "fit"):
        gen = torch.Generator().manual_seed(0)
        if kind == "glow":
            # as a fit leaves it: only S·V, in the product dtype (a random V of unit-norm columns: the
            # timing does not depend on orthogonality, and an fp32 V would inflate the peak memory)
            sv = [torch.randn(s, r, generator=gen).mul_(P ** -0.5).to(dtype) for s in pl.sizes]
            sub = G.Subspace(None, "pca", "bench", mean=[torch.zeros(s) for s in pl.sizes],
                             scale=[torch.rand(s, generator=gen) + 0.5 for s in pl.sizes], sv=sv)
            out["t"] = best(lambda lim: G.project(b, x[:lim] if lim else x, sub, {"precision": "auto", "r": r},
                                                  device=device))
        else:
            Y = np.random.default_rng(0).standard_normal((len(x), r + 10))
            out["t"] = best(lambda lim: engine.accumulate_pass(b, x[:lim] if lim else x, pl, "lse", 1.0,
                                                               Y[:lim] if lim else Y, None, None, dtype), reps=1)
    elif kind == "old":
        Vt = [torch.randn(s, r) for s in pl.sizes]

        def old(lim):
            xs = x[:lim] if lim else x
            for _, blocks in G.iter_grad_blocks(b, xs, "lse", "all", 1.0, None, device):
                sum(blk.float() @ v for blk, v in zip(blocks, Vt))
        out["t"] = best(old, reps=1)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    out.update(n=len(x), peak=peak)
    q.put(out)


def run(kind, which, n, r, device, threads, tmp):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, which, n, r, device, threads, tmp, q))
    p.start()
    p.join()
    return q.get() if not q.empty() else {"t": float("nan"), "n": n, "peak": 0, "error": f"exit {p.exitcode}"}


def subspace_error(n: int, threads: int) -> None:
    """Randomized SVD vs exact SVD: the default CNN's last block, normalised (NFK) LSE gradients."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OOD_CACHE_DIR", tempfile.mkdtemp())
    from ood_core import gradients as G
    from ood_core import workbench as wb
    from ood_core.data import get_dataset

    b = wb.load_model("default")
    train = get_dataset("mnist:train").subset(np.arange(n))
    g = G.per_sample_grads(b, train, "lse", "last_block").astype(np.float64)
    zb = g.mean(0)
    L = ((g - zb) ** 2).mean(0)
    s = np.where(L > 0, 1 / np.sqrt(np.where(L > 0, L, 1)), 0)
    s[L == 0] = s.max()
    _, sig, vt = np.linalg.svd((g - zb) * s, full_matrices=False)
    print(f"\nsubspace error vs exact SVD (default CNN, last_block, P={g.shape[1]:,}, N={n}):")
    print("   r   q   max principal angle (rad)   ‖VVᵀ−UUᵀ‖₂   variance captured / optimal   fit s")
    for r in (10, 50, 200):
        for q in (0, 1, 2, 3, 4, 10):
            t = time.perf_counter()
            sub = G.fit_subspace(b, train, {"param_set": "last_block", "r": r, "power_iters": q, "precision": "fp32"})
            dt = time.perf_counter() - t
            c = np.linalg.svd(vt[:r] @ sub.V.astype(np.float64), compute_uv=False)
            # ‖A V‖_F² / ‖A U_r‖_F²: the share of the best rank-r subspace's energy the fit keeps; the
            # angle alone is dominated by near-equal singular values at the cut, which no r-subspace can tell apart
            cap = float((sub.sigma ** 2).sum() / (sig[:r] ** 2).sum())
            print(f"{r:4d} {q:3d}   {np.arccos(np.clip(c.min(), -1, 1)):22.2e}   {np.sqrt(1 - c.min() ** 2):10.2e}"
                  f"   {cap:26.5f}   {dt:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="both", choices=("resnet", "cnn", "both"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--r", type=int, default=200)
    ap.add_argument("--old-n", type=int, default=8)
    ap.add_argument("--svd-n", type=int, default=1000)
    ap.add_argument("--skip-fit", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lowdim_bench_")
    os.environ.setdefault("OOD_CACHE_DIR", str(Path(tmp) / "cache"))
    models = ("resnet", "cnn") if a.model == "both" else (a.model,)
    for which in models:
        res = {k: run(k, which, a.old_n if k == "old" else a.n, a.r, a.device, a.threads, tmp)
               for k in ("floor", "glow") + (() if a.skip_fit else ("fit",)) + ("old",)}
        P = res["glow"].get("P", 0)
        print(f"\n{which}: P = {P:,} parameters, r = {a.r}, {a.device}, {a.threads} threads, "
              f"chunk {res['glow'].get('chunk')}, engine {res['glow'].get('engine')}, G·V in {res['glow'].get('dtype')}")
        print("  pass                               samples/s    peak memory")
        labels = {"floor": "(a) forward+backward (floor)", "glow": "(b) G_low, r, all params, NFK",
                  "fit": "(c) one subspace-fit pass (AᵀY)", "old": "(d) previous engine (vmap) + G·V"}
        for k, v in res.items():
            sps = v["n"] / v["t"] if v["t"] == v["t"] else float("nan")
            print(f"  {labels[k]:34s} {sps:9.2f}    {v['peak'] / 2**30:6.2f} GB {v.get('error', '')}")
        ratio = (res["glow"]["n"] / res["glow"]["t"]) / (res["floor"]["n"] / res["floor"]["t"])
        bar = (P * a.r * 4 + 2 * 2**30) / 2**30
        print(f"  b/a = {ratio:.1%} (bar ≥ 25%); memory bar P·r·4 + 2 GB = {bar:.2f} GB")
    subspace_error(a.svd_n, a.threads)


if __name__ == "__main__":
    main()
