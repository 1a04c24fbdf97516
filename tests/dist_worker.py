"""One rank (or the single process) of the distributed tests and bench: ``python tests/dist_worker.py CASE OUT``.

Run plainly it is the one-process reference; under ``torchrun`` each rank runs it and rank 0
writes ``OUT/result.npz``. docs/architecture.md, "Distributed passes".
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ood_core import distributed as D  # noqa: E402


def tiny_bundle(seed: int = 0):
    from ood_core.models import ModelBundle, Preprocess

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 4))
    return ModelBundle(model, Preprocess((8, 8), 1, (0.5,), (0.5,)), name="tiny", arch="tiny")


def tiny_images(n: int, seed: int):
    from ood_core.data import ImageDataset

    rng = np.random.default_rng(seed)
    return ImageDataset(f"tiny{seed}", rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 4, n),
                        role="id_train")


def case_lowdim(out: Path, n_train: int = 96, n_test: int = 40, r: int = 5) -> dict:
    from ood_core import cache
    from ood_core.gradients import subspace as G

    b = tiny_bundle()
    train, test = tiny_images(n_train, 1), tiny_images(n_test, 2)
    p = {"r": r, "power_iters": 2, "precision": "fp32"}
    t0 = time.perf_counter()
    sub = G.fit_subspace(b, train, p, device="cpu")
    g = G.lowdim_for_dataset(b, test, train, p)
    dt = time.perf_counter() - t0
    return {"V": sub.V, "g_low": g, "g_fit": sub.g_low_fit, "seconds": dt,
            "cached": np.array(cache.has(sub.key))}


def case_lowdim_bench(out: Path) -> dict:
    return case_lowdim(out, n_train=int(sys.argv[3]), n_test=int(sys.argv[3]), r=8)


def case_train(out: Path) -> dict:
    from ood_core.training import TrainConfig, Trainer

    method = sys.argv[3]
    extra = {"lam_grad": 100.0} if method == "greg" else {}  # a penalty large enough to move the weights
    cfg = TrainConfig(method, init="scratch", epochs=1, seed=0, n_train=80, n_eval=32,
                      params={"batch_size": 16, **extra})
    tr = Trainer(cfg, out_dir=out / "models")
    init = np.concatenate([p.detach().reshape(-1).numpy() for p in tr.model.parameters()])
    res = tr.run()
    assert tr.total_steps == 5
    return {"params": np.concatenate([p.detach().reshape(-1).numpy() for p in tr.model.parameters()]),
            "init": init, "path": np.array(str(res.path))}


def case_fail_extract(out: Path) -> int:
    """The CLI's extract, with rank 1 failing after its first batch."""
    from ood_core import cli
    from ood_core import extract as X

    real = X.run_forward

    def failing(bundle, ds, batch_size=None, device=None, progress=None, *a, **k):
        if D.rank() == 1:
            def progress(*_a):  # noqa: F811 - rank 1 fails after its first batch
                raise RuntimeError("simulated failure on rank 1 after its first batch")
        return real(bundle, ds, batch_size, device, progress, *a, **k)

    X.run_forward = failing
    return cli.main(sys.argv[3:])


def main() -> int:
    case, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if case == "fail_extract":
        return case_fail_extract(out)
    D.init()
    try:
        res = {"lowdim": case_lowdim, "lowdim_bench": case_lowdim_bench, "train": case_train}[case](out)
        if D.is_writer():
            np.savez(out / "result.npz", **{k: np.asarray(v) for k, v in res.items() if v is not None})
    finally:
        D.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
