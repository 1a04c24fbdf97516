"""Time 2-D maps (PCA, t-SNE, UMAP) of about 6,000 points of the embedded default, features and gradients.

Usage: ``python bench/maps.py [--n-per-set 934] [--threads 2] [--no-gradients]``. The map holds
the ID test set and the OOD sets letters, textures, faces (400), gaussian, uniform and
digits8x8, each subsampled to ``--n-per-set`` (934 gives 6,004 points). For each space and
method it prints the time of a fresh map (``compute_map`` with a seed never used before,
so the embedding and the separability are computed; the extraction and the gradients are
already cached, as they are after the first visit), its process CPU time (the machine may
be shared), and the time of the same call again (cached). The bar (issue 5): ≤ 20 s on 2 cores.

``--scale 100000`` (issue 15) times drawing a map of that many synthetic points instead: the Maps
page's binary payload (``map_points`` once per map and colouring, ``encode_map`` every rerun) and its
size, then the plotly figure an export builds (``ood_core.figures.maps.map_figure``), what ``st.plotly_chart`` then does with
it (plotly's validation and JSON), the payload's size, and, in headless Debian Chromium with
plotly.js (the copy bundled with the plotly package), the time to draw it and to answer a
lasso (mouse up to ``plotly_selected``) and a hover. ``--embed-sizes 3000,6000,12000`` times
fresh UMAP and t-SNE embeddings of synthetic 128-d points at those sizes (the cost that
chose the Maps page's default subsample).
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
    ap.add_argument("--scale", type=int, help="time drawing a map of this many synthetic points (no embedding)")
    ap.add_argument("--embed-sizes", help="time fresh embeddings of synthetic points at these sizes, e.g. 3000,12000")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.scale:
        return scale(args.scale)
    if args.embed_sizes:
        return embed_sizes([int(n) for n in args.embed_sizes.split(",")], args.methods.split(","))
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


def synthetic_frame(n: int, seed: int = 0):
    """A map's frame with ``n`` points: 1/6 ID, the rest in two OOD sets, blobs in 2-D."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    code = (np.arange(n) >= n // 6).astype(int) + (np.arange(n) >= n // 2)
    ds = np.array(["mnist", "ood_a", "ood_b"])[code]
    xy = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 3.0]])[code] + rng.normal(0, 1, (n, 2))
    index = np.concatenate([np.arange((ds == d).sum()) for d in ("mnist", "ood_a", "ood_b")])
    return pd.DataFrame({"x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32), "dataset": ds,
                         "index": index, "sample_id": index, "label": rng.integers(0, 10, n),
                         "pred": rng.integers(0, 10, n), "is_id": ds == "mnist", "energy": rng.normal(size=n)})


def scale(n: int) -> None:
    import statistics

    import plotly.io as pio
    import plotly.tools

    from ood_core.figures.maps import encode_map, keys_of_rows, map_figure, map_points, rows_of_positions

    df = synthetic_frame(n)
    print(f"\nmap of {n:,} synthetic points")
    for color in ("dataset", "pred", "energy"):  # what the Maps page sends (ui/map_component)
        t = time.perf_counter()
        pts = map_points(df, color, "mnist")
        t1 = time.perf_counter()
        buf = encode_map(pts, [5, 7])
        t2 = time.perf_counter()
        print(f"  component payload, colour by {color:<8}: points {1000 * (t1 - t):4.0f} ms (once), "
              f"encode {1000 * (t2 - t1):5.1f} ms (per rerun), {len(buf) / 2**20:5.2f} MiB", flush=True)
    specs = {}
    for color in ("dataset", "pred", "energy"):
        builds, sends = [], []
        for _ in range(3):
            t = time.perf_counter()
            fig = map_figure(df, color, "mnist", selected=[("ood_a", 5), ("ood_b", 7)])
            t1 = time.perf_counter()
            # what st.plotly_chart does with a figure before it is sent
            spec = pio.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True), validate=False)
            builds.append(t1 - t)
            sends.append(time.perf_counter() - t1)
        specs[color] = spec
        print(f"  colour by {color:<8} {len(fig.data):2d} traces: build {1000 * statistics.median(builds):5.0f} ms, "
              f"validate+JSON {1000 * statistics.median(sends):5.0f} ms, payload {len(spec) / 2**20:5.2f} MiB", flush=True)
    browser(specs["dataset"], n)
    points = map_points(df, "dataset", "mnist")  # the page keeps these per map and colouring
    t = time.perf_counter()
    positions = list(range(0, 20_000, 2))  # what the component sends back for a lasso
    got = keys_of_rows(df, rows_of_positions(points, positions))
    print(f"  a 10,000-point selection back to (dataset, index): {1000 * (time.perf_counter() - t):.0f} ms ({len(got)})")


def browser(spec: str, n: int) -> None:
    """Draw the spec with plotly.js in headless Chromium; time the draw, a lasso and a hover."""
    import plotly
    from playwright.sync_api import sync_playwright

    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        try:
            page = b.new_page(viewport={"width": 900, "height": 700})
            page.set_content("<div id='m' style='width:800px;height:560px'></div>")
            page.add_script_tag(path=str(js))
            page.evaluate("s => { window.__spec = JSON.parse(s); }", spec)
            draws = []
            for _ in range(3):
                draws.append(page.evaluate("""async () => {
                    const t = performance.now();
                    await Plotly.newPlot('m', window.__spec.data, window.__spec.layout);
                    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                    return performance.now() - t; }"""))
            print(f"  Chromium (software GL): draw {min(draws):.0f}–{max(draws):.0f} ms over 3 draws of {n:,} points")
            page.evaluate("""() => { const g = document.getElementById('m'); window.__sel = null; window.__hov = null;
                g.on('plotly_selected', e => { window.__sel = [performance.now(), e ? e.points.length : 0]; });
                g.on('plotly_hover', e => { window.__hov = performance.now(); });
                document.addEventListener('mouseup', () => { window.__up = performance.now(); }, true);
                }""")
            box = page.locator("#m .nsewdrag").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx - 50, cy - 50)
            page.mouse.down()
            for dx, dy in ((50, -50), (50, 50), (-50, 50), (-50, -50)):
                page.mouse.move(cx + dx, cy + dy, steps=5)
            page.mouse.up()
            page.wait_for_function("() => window.__sel", timeout=60_000)
            sel = page.evaluate("[window.__sel[0] - window.__up, window.__sel[1]]")
            print(f"  lasso: mouse up -> plotly_selected {sel[0]:.0f} ms ({sel[1]:,} points selected)")
            page.evaluate("() => Plotly.relayout('m', {dragmode: 'pan'})")
            page.mouse.move(cx + 3, cy + 2)
            page.wait_for_timeout(500)
            page.evaluate("() => { window.__hov = null; window.__mv = null; document.addEventListener('mousemove',"
                          " () => { if (window.__mv === null) window.__mv = performance.now(); }, true); }")
            page.mouse.move(cx + 1, cy + 1)
            try:
                page.wait_for_function("() => window.__hov", timeout=10_000)
                print(f"  hover: mouse move -> plotly_hover {page.evaluate('window.__hov - window.__mv'):.0f} ms")
            except Exception:  # noqa: BLE001
                print("  hover: no plotly_hover within 10 s")
        finally:
            b.close()


def embed_sizes(sizes: list[int], methods: list[str]) -> None:
    import numpy as np

    from ood_core import maps

    rng = np.random.default_rng(0)
    for n in sizes:
        X = (rng.normal(size=(n, 128)) + np.repeat(rng.normal(0, 3, (6, 128)), -(-n // 6), axis=0)[:n]).astype(np.float32)
        for method in methods:
            if method == "pca":
                continue
            seed = int(time.time() * 1000) % 1_000_000 + 1
            t, c = time.time(), time.process_time()
            maps.embed(X, method, seed)
            print(f"  {maps.METHOD_LABELS[method]:6s} {n:7,} points × 128 dims: fresh {time.time() - t:6.1f} s "
                  f"(cpu {time.process_time() - c:6.1f} s)", flush=True)


if __name__ == "__main__":
    main()
