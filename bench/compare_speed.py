"""Compare-table speed on the embedded default: every cached-array detector, cold.

"Cold" = a fresh process whose extractions are on disk (the default model trained and
extracted once before) but whose detectors are not fitted yet: the timed call fits every
detector's training statistics, scores ID + the five OOD sets and computes the metrics with
the Compare page's default 1,000 bootstrap resamples. Also prints each detector's own
fit + score time, and the floor: one ``energy`` table (the cheapest detector, same metrics).
Bar: the whole table in <= 2 s on 2 cores.
Run: .venv/bin/python bench/compare_speed.py [--n-boot N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ood_core import compare as cmp  # noqa: E402
from ood_core import workbench as wb  # noqa: E402
from ood_core.data import DEFAULT_OOD  # noqa: E402

BAR_S = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1, help="per-detector timings: best of R")
    a = ap.parse_args()
    bundle = wb.load_model("default")
    for n in ["mnist", "mnist:train", *DEFAULT_OOD]:  # load from the disk cache (not timed: not Compare's work)
        wb.get_extraction(bundle, n)
    names = cmp.cached_array_detectors()

    t = time.perf_counter()
    df = cmp.compare_table(bundle, "mnist", DEFAULT_OOD, names, n_boot=a.n_boot)
    total = time.perf_counter() - t
    bad = df[df["status"] != "ok"].drop_duplicates("detector")
    per: dict[str, float] = {}
    for name in names:
        best = float("inf")
        for _ in range(a.repeat):
            wb._fitted.clear()  # refit: the per-detector figure includes its fit, as the cold table does
            t = time.perf_counter()
            cmp.compare_table(bundle, "mnist", DEFAULT_OOD, [name], n_boot=a.n_boot)
            best = min(best, time.perf_counter() - t)
        per[name] = best
    floor = per.get("energy", float("nan"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{len(names)} cached-array detectors x {len(DEFAULT_OOD)} OOD sets, n_boot={a.n_boot}")
    print(f"{'detector':<14}{'seconds':>9}{'x energy':>10}")
    for name, s in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"{name:<14}{s:>9.3f}{s / floor:>10.1f}")
    print(f"floor (one energy table): {floor:.3f} s")
    print(f"whole table, cold (fits included): {total:.2f} s  [bar {BAR_S:.1f} s: {'ok' if total <= BAR_S else 'OVER'}]")
    if len(bad):
        print("not ok:", ", ".join(f"{r.detector} ({r.status}: {r.reason})" for r in bad.itertuples()))


if __name__ == "__main__":
    main()
