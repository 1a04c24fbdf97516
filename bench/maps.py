"""Time 2-D maps (PCA, t-SNE, UMAP) of about 6,000 points of the embedded default, features and gradients.

Usage: ``python bench/maps.py [--n-per-set 934] [--threads 2] [--no-gradients]``. The map holds
the ID test set and the OOD sets letters, textures, faces (400), gaussian, uniform and
digits8x8, each subsampled to ``--n-per-set`` (934 gives 6,004 points). For each space and
method it prints the time of a fresh map (``compute_map`` with a seed never used before,
so the embedding and the separability are computed; the extraction and the gradients are
already cached, as they are after the first visit), its process CPU time (the machine may
be shared), and the time of the same call again (cached). The bar (issue 5): ≤ 20 s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
OOD = ["letters", "textures", "faces", "gaussian", "uniform", "digits8x8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-set", type=int, default=934)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-gradients", action="store_true", help="time the feature map only")
    ap.add_argument("--methods", default="pca,tsne,umap")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from ood_core import maps
    from ood_core import workbench as wb

    bundle = wb.load_model("default")
    spaces = ["features"] + ([] if args.no_gradients else ["gradients"])
    for space in spaces:
        t = time.time()
        maps.compute_map(bundle, "mnist", OOD, space, "pca", args.n_per_set, 0)  # extraction / gradients cached
        print(f"\n[{space}] arrays + first PCA map: {time.time() - t:.1f} s")
        for method in args.methods.split(","):
            seed = int(time.time() * 1000) % 1_000_000 + 1  # unseen: the embedding is computed
            t, c = time.time(), time.process_time()
            res = maps.compute_map(bundle, "mnist", OOD, space, method, args.n_per_set, seed)
            wall, cpu = time.time() - t, time.process_time() - c
            t = time.time()
            maps.compute_map(bundle, "mnist", OOD, space, method, args.n_per_set, seed)
            hot = time.time() - t
            s = res.summary()
            print(f"  {maps.METHOD_LABELS[method]:6s} {res.info['n_points']} points × {res.dims} dims: "
                  f"fresh {wall:5.1f} s (cpu {cpu:5.1f} s)  cached {hot:4.2f} s   "
                  f"kNN AUROC ID vs all OOD: 2-D {s['auroc_2d']:.4f}, full {s['auroc_full']:.4f}", flush=True)
        print(res.separability.to_string(index=False))


if __name__ == "__main__":
    main()
