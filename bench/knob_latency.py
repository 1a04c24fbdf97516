"""Knob latency: time from a knob change to a fresh metrics table, in ood_core.

Two cases: the embedded default (cached extraction of the default CNN on MNIST vs the
five OOD sets) and a synthetic 10k ID + 50k OOD extraction with D=512, C=100.
Prints the median over repeated knob moves for each detector. Bar: <= 50 ms (synthetic).
Run: .venv/bin/python bench/knob_latency.py
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ood_core import metrics  # noqa: E402
from ood_core.detectors import get_detector  # noqa: E402
from ood_core.extract import Extraction  # noqa: E402

KNOB_MOVES = {
    "msp": ("T", [1.0, 2.0, 5.0, 10.0, 1.5]),
    "energy": ("T", [1.0, 2.0, 5.0, 10.0, 1.5]),
    "gradnorm": ("T", [1.0, 2.0, 5.0, 10.0, 1.5]),
    "rg": ("q", [80.0, 85.0, 90.0, 95.0, 99.0]),
    "react": ("p", [80.0, 85.0, 90.0, 95.0, 99.0]),
}


def synthetic(n: int, d: int, c: int, seed: int, shift: float) -> Extraction:
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(0).normal(0, 0.1, (c, d)).astype(np.float32)
    b = np.zeros(c, np.float32)
    h = np.maximum(rng.normal(shift, 1.0, (n, d)), 0).astype(np.float32)
    return Extraction(h @ W.T + b, h, rng.integers(0, c, n), W, b, f"syn{seed}")


def time_case(label: str, train: Extraction, id_ext: Extraction, oods: dict[str, Extraction], repeats: int = 3) -> None:
    print(f"\n{label}: ID {len(id_ext)}, OOD {sum(len(e) for e in oods.values())} in {len(oods)} sets, D={id_ext.features.shape[1]}")
    for name, (knob, values) in KNOB_MOVES.items():
        det = get_detector(name).fit(train)
        times = []
        for _ in range(repeats):
            for v in values:
                t0 = time.perf_counter()
                s_id = det.score(id_ext, **{knob: v})
                table = metrics.metrics_table(s_id, {k: det.score(e, **{knob: v}) for k, e in oods.items()})
                times.append(time.perf_counter() - t0)
        assert len(table) == len(oods) + (1 if len(oods) > 1 else 0)
        print(f"  {name:<10} knob {knob:<3} median {1000 * statistics.median(times):7.1f} ms   "
              f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f}, n={len(times)})")


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    train = synthetic(10000, 512, 100, 1, 0.5)
    id_ext = synthetic(10000, 512, 100, 2, 0.5)
    oods = {f"ood{i}": synthetic(10000, 512, 100, 10 + i, 0.2 + 0.1 * i) for i in range(5)}
    time_case("synthetic", train, id_ext, oods)

    from ood_core import workbench as wb
    from ood_core.data import DEFAULT_OOD
    bundle = wb.load_model("default")
    train = wb.get_extraction(bundle, "mnist:train")
    id_ext = wb.get_extraction(bundle, "mnist")
    oods = {n: wb.get_extraction(bundle, n) for n in DEFAULT_OOD}
    time_case("embedded default", train, id_ext, oods)


if __name__ == "__main__":
    main()
