"""The low-dimensional gradient preset end to end, as a user runs it, on a CIFAR-style case.

Usage: ``python bench/lowdim_e2e.py [--n 2000] [--threads 2] [--device cpu] [--detectors ...]``.

Writes, in a temporary folder, CIFAR-10-format pickles (``n`` training and ``n`` test images)
and an SVHN-format ``.mat`` (``n`` images) of generated 32×32 images, and a freshly
initialised ``resnet18_cifar`` state_dict; registers the two sets with the CLI
(``python -m ood_core register``) and runs ``python -m ood_core evaluate`` of the reference
preset (r = 200, all 11.2 M parameters, NFK, q power iterations) with an empty cache, then
prints the wall time and peak RSS of each command, the results and the load average. This is issue 17's
end-to-end bar (≤ 45 min on 2 cores at n = 2,000); see ``docs/methods.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

DETECTORS = ("lowdim_knn,lowdim_probe_msp,lowdim_probe_energy,lowdim_probe_odin,lowdim_probe_react,"
             "lowdim_probe_feat_msp,lowdim_probe_feat_energy,lowdim_probe_feat_odin,lowdim_probe_feat_react,"
             "energy,gradnorm")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detectors", default=DETECTORS)
    ap.add_argument("--param", action="append", default=[], help="extra --param for evaluate (repeatable)")
    a = ap.parse_args()
    import torch

    from fixtures_data import cifar10_folder, svhn_folder
    from ood_core.models.archs import resnet18_cifar

    tmp = Path(tempfile.mkdtemp(prefix="lowdim_e2e_"))
    cifar10_folder(tmp / "cifar", n_train=a.n, n_test=a.n, batches=5)
    svhn_folder(tmp / "svhn", n=a.n)
    torch.manual_seed(0)
    torch.save(resnet18_cifar(10).state_dict(), tmp / "resnet18_cifar.pt")
    env = {**os.environ, "OOD_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": str(a.threads)}
    py = [sys.executable, "-m", "ood_core"]
    cmds = [
        py + ["register", "--path", str(tmp / "cifar"), "--name", "e2e_cifar", "--role", "id_test"],
        py + ["register", "--path", str(next((tmp / "svhn").glob("*.mat"))), "--name", "e2e_svhn", "--role", "ood_test"],
        py + ["evaluate", "--model", str(tmp / "resnet18_cifar.pt"), "--arch", "resnet18_cifar", "--input-size", "32",
              "--channels", "3", "--mean", "0.49", "0.48", "0.45", "--std", "0.25", "0.24", "0.26",
              "--device", a.device, "--id", "e2e_cifar", "--ood", "e2e_svhn", "--detectors", a.detectors,
              "--json", "--compact", "--quiet"] + [x for p in a.param for x in ("--param", p)],
    ]
    print(f"n = {a.n} train / {a.n} test / {a.n} SVHN, {a.threads} threads, {a.device}, load before "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    import resource

    for cmd in cmds:
        t = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        dt = time.perf_counter() - t
        # the largest resident set of any child so far: the evaluate's own peak (it is the biggest)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30
        print(f"{dt:8.1f} s  {' '.join(cmd[2:4])}  (exit {res.returncode}, load {os.getloadavg()[0]:.2f}, "
              f"peak RSS {peak:.2f} GB)", flush=True)
        if res.returncode:
            print(res.stderr[-3000:])
            sys.exit(res.returncode)
    out = json.loads(res.stdout)
    print("detector                      AUROC    FPR95")
    for r in out["results"]:
        print(f"{r['detector']:28s} {r['auroc']:.4f}  {r['fpr95']:.4f}")
    print(f"evaluate wall time: {dt / 60:.1f} min (bar ≤ 45 min on 2 cores at n = 2,000)")


if __name__ == "__main__":
    main()
