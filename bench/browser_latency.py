"""Browser latency of the app: a knob move on Scores, in the default and a large case (issue 15).

Playwright drives Debian's Chromium (``/usr/bin/chromium``, never a Playwright download)
against a running app (``--url``) or one it starts itself (its own process group, stopped on
exit, ``OOD_CACHE_DIR`` = ``cache/bench`` unless set).

Scores: Energy, knob T (a log-scale select slider). Each move is one ArrowRight on the slider's
thumb, so every value is one not seen before in the session. Two times per move, both
measured inside the page (``performance.now()``): from the trusted keydown to the text of the
"AUROC (mean)" metric changing (a MutationObserver), and to the end of the rerun (Streamlit's
``data-test-script-state`` attribute on ``stApp`` leaving ``running``).

Cases:
- ``default``: the embedded default (default CNN, MNIST vs the five default OOD sets);
- ``large``: 10,000 generated ID images (``bench_id``) and 50,000 generated OOD images
  (``bench_ood``) through the same model; generated and registered once in the bench cache,
  selected through Home's experiment upload (so the same browser session then opens Scores).

The first load of ``/Scores`` in the fresh server (when it starts one) is reported with the
sidebar's page titles. Maps at 100,000 points: ``bench/maps.py --scale 100000`` (build, payload,
plotly.js draw and lasso in the same Chromium).

Usage: ``python bench/browser_latency.py [--url URL] [--case default,large,maps] [--moves 10]``.

``maps``: the large case plus a 40,000-image OOD set (``bench_ood2``), so the Maps page holds
100,000 points per map at 50,000 samples per set; both PCA maps are computed and cached first.
Times: from the "Samples per dataset" entry to both maps drawn in the page, and from a lasso's
mouse-up on the features map to the first gallery image (and to the end of the rerun), the median
of five lassos at different places (the gallery cleared between them).
Bars (issue 15; medians on a 2-core machine): knob → metric ≤ 150 ms (default), ≤ 300 ms (large).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("OOD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
LARGE_ID, LARGE_OOD, MAPS_OOD = "bench_id", "bench_ood", "bench_ood2"

# Installed before any page script: records trusted keydowns, the script state and the metric's text.
PROBE = """
window.__probe = {keys: [], states: [], metric: []};
document.addEventListener('keydown', e => { if (e.isTrusted) window.__probe.keys.push(performance.now()); }, true);
const __watch = () => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) { setTimeout(__watch, 20); return; }
  new MutationObserver(() => window.__probe.states.push([performance.now(), app.getAttribute('data-test-script-state')]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  // The metric's element container: its text, and whether Streamlit marks it stale (a rerun has
  // started and not yet re-sent it). "Updated" = fresh again after the move, same text or not.
  new MutationObserver(() => {
    const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(e => (e.querySelector('[data-testid="stMetricLabel"]') || {}).innerText === window.__probe.label);
    if (!m) return;
    const box = m.closest('[data-testid="stElementContainer"]');
    const v = m.querySelector('[data-testid="stMetricValue"]').innerText;
    const stale = !!box && box.getAttribute('data-stale') === 'true';
    const last = window.__probe.metric[window.__probe.metric.length - 1];
    if (!last || last[1] !== v || last[2] !== stale) window.__probe.metric.push([performance.now(), v, stale]);
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                             attributeFilter: ['data-stale']});
};
__watch();
"""


def load_text() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, load average {load_text()}"


# --- server -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"bench-streamlit-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--server.runOnSave", "false", "--global.developmentMode", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise SystemExit("streamlit did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- the large case -------------------------------------------------------------------------------

def ensure_large_case(n_id: int = 10_000, n_ood: int = 50_000) -> None:
    """Generate and register the large case once in this cache; extract it once (cached on disk)."""
    from ood_core import cache, persist
    from ood_core import workbench as wb
    from ood_core.data import list_datasets

    wb.restore_saved()
    have = {s.name for s in list_datasets()}
    folder = cache.cache_dir() / "bench_large"
    folder.mkdir(parents=True, exist_ok=True)
    import numpy as np

    rng = np.random.default_rng(0)
    if LARGE_ID not in have:
        from ood_core.data import get_dataset
        m = get_dataset("mnist")  # jittered MNIST digits: the model classifies them, so scores spread like real ID data
        src, lab = np.asarray(m.images), np.asarray(m.labels)

        def jitter(n):
            i = rng.integers(0, len(src), n)
            x = src[i].astype(np.int16) + rng.integers(-20, 21, src[i].shape, dtype=np.int16)
            return np.clip(x, 0, 255).astype(np.uint8), lab[i]

        (xtr, ytr), (xte, yte) = jitter(n_id), jitter(n_id)
        np.savez(folder / "id.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
        persist.register_local(folder / "id.npz", LARGE_ID, "id_test", "npz")
    if LARGE_OOD not in have:
        x = rng.integers(0, 256, (n_ood, 28, 28, 1), dtype=np.uint8)
        x = (x * rng.uniform(0.1, 1.0, (n_ood, 1, 1, 1))).astype(np.uint8)
        np.savez(folder / "ood.npz", x=x)
        persist.register_local(folder / "ood.npz", LARGE_OOD, "ood_test", "npz", labelled=False)
    t = time.time()
    b = wb.load_model("default")
    for n in (LARGE_ID, f"{LARGE_ID}:train", LARGE_OOD):
        wb.get_extraction(b, n)
    print(f"large case ready ({time.time() - t:.1f} s to load/extract)", flush=True)


def ensure_maps_case(n_extra: int = 40_000) -> None:
    """The large case plus a 40,000-image OOD set: 10k + 50k + 40k = 100,000 map points. Both PCA maps
    (features and the reference preset's G_low, the Maps page's defaults) are computed once and
    cached on disk, as after a first visit."""
    from ood_core import maps, persist
    from ood_core import cache
    from ood_core import workbench as wb
    from ood_core.data import list_datasets

    ensure_large_case()
    import numpy as np

    if MAPS_OOD not in {s.name for s in list_datasets()}:
        rng = np.random.default_rng(1)
        x = np.clip(rng.normal(128, 60, (n_extra, 28, 28, 1)), 0, 255).astype(np.uint8)
        np.savez(cache.cache_dir() / "bench_large" / "ood2.npz", x=x)
        persist.register_local(cache.cache_dir() / "bench_large" / "ood2.npz", MAPS_OOD, "ood_test", "npz", labelled=False)
    t = time.time()
    b = wb.load_model("default")
    gp = {**maps.GRADIENT_KNOBS.defaults(), "T": 1.0}
    for space in ("features", "gradients"):
        maps.compute_map(b, LARGE_ID, [LARGE_OOD, MAPS_OOD], space, "pca", 50_000, 0,
                         gp if space == "gradients" else None, **maps.KNOBS["pca"].defaults())
    print(f"maps case ready ({time.time() - t:.1f} s to compute/load both 100,000-point maps)", flush=True)


# Every plotly graph in the page (the maps are the Maps component's, ui/map_component; the
# separability bars a plotly chart): the number of points each has drawn.
MAP_POINTS = """() => { const gs = [...document.querySelectorAll('.js-plotly-plot')];
  return gs.map(g => (g._fullData || []).reduce((s, t) => s + (t.x ? t.x.length : 0), 0)); }"""


def maps_case(browser, url: str) -> None:
    """Maps at 100,000 points: settings → both maps drawn; a lasso on the features map → the gallery's images."""
    ctx = browser.new_context(viewport={"width": 1600, "height": 1200})
    ctx.add_init_script(PROBE)
    page = ctx.new_page()
    page.set_default_timeout(300_000)
    try:
        apply_experiment(page, url, {"model": "default", "id_dataset": LARGE_ID, "ood_datasets": [LARGE_OOD, MAPS_OOD],
                                     "detectors": ["energy"], "schema": "ood-workbench/experiment@1"})
        goto_in_session(page, "Maps")
        page.get_by_text("PCA", exact=True).first.click()
        wait_idle(page)
        box = page.locator('.st-key-maps_n input').first
        box.fill("50000")
        t0 = time.perf_counter()
        box.press("Enter")
        page.wait_for_function(f"() => ({MAP_POINTS})().filter(n => n >= 100000).length >= 2", timeout=300_000)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        draw = time.perf_counter() - t0
        wait_idle(page)
        print(f"\nMaps, 100,000 points per map (PCA, embeddings cached): settings -> both maps drawn {draw:.2f} s "
              f"(bar 3 s); points per map {page.evaluate(MAP_POINTS)}", flush=True)
        chart = page.locator('.st-key-map_features .js-plotly-plot').first
        chart.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        firsts, dones, plotly_s, shown = [], [], [], []
        # Lassos of 80x80 px at five places around the dense centre: each selects other points (about
        # 1,500 of the 100,000), and Clear empties the gallery before the next, so "first image" is a new image.
        for k, (ox, oy) in enumerate(((0, 0), (-30, -20), (25, 15), (-15, 30), (30, -25))):
            if k:
                page.locator('.st-key-maps_clear button').first.click()
                wait_idle(page)
                page.locator('[data-testid="stImage"]').first.wait_for(state="detached", timeout=60_000)
                chart.scroll_into_view_if_needed()  # the Clear button scrolled the page down
                page.wait_for_timeout(300)
            drag = chart.locator(".nsewdrag").first.bounding_box()
            cx, cy = drag["x"] + drag["width"] / 2 + ox, drag["y"] + drag["height"] / 2 + oy
            page.evaluate("() => { window.__oodMapLog.length = 0; }")
            page.mouse.move(cx - 40, cy - 40)
            page.mouse.down()
            for dx, dy in ((40, -40), (40, 40), (-40, 40), (-40, -40)):
                page.mouse.move(cx + dx, cy + dy, steps=4)
            t_up = page.evaluate("() => performance.now()")
            t0 = time.perf_counter()
            page.mouse.up()
            try:
                page.locator('[data-testid="stImage"]').first.wait_for(timeout=60_000)
            except Exception:  # noqa: BLE001 - say what the page did, then fail
                print("  no gallery image 60 s after the lasso; map log:",
                      page.evaluate("() => window.__oodMapLog.map(e => [Math.round(e[0]), e[1], e[2]])"), flush=True)
                page.screenshot(path=str(Path(tempfile.gettempdir()) / "browser_latency_lasso.png"))
                raise
            firsts.append(time.perf_counter() - t0)
            wait_idle(page)
            dones.append(time.perf_counter() - t0 - 0.3)  # wait_idle's settling pause
            sel = [e[0] for e in page.evaluate("() => window.__oodMapLog") if e[1] == "selected"]
            plotly_s.append((sel[0] - t_up) / 1000 if sel else float("nan"))
            shown.append(page.locator('[data-testid="stImage"]').count())
        print(f"  lasso on the features map (5 places): mouse up -> first gallery image median "
              f"{statistics.median(firsts):.2f} s (bar 1 s; each: {', '.join(f'{v:.2f}' for v in firsts)}), "
              f"-> rerun finished median {statistics.median(dones):.2f} s; plotly's own selection (mouse up -> "
              f"its selected event) median {statistics.median(plotly_s):.2f} s; images shown {shown}", flush=True)
    finally:
        ctx.close()


# --- browser helpers -------------------------------------------------------------------------------

def wait_idle(page, timeout: float = 180_000) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout)
    page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
        " return a && a.getAttribute('data-test-script-state') === 'notRunning'; }", timeout=timeout)
    page.wait_for_timeout(300)


def goto_in_session(page, title: str) -> None:
    """Navigate inside the current session with the sidebar (page.goto would start a new session)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_timeout(200)
    wait_idle(page)


def apply_experiment(page, url: str, exp: dict) -> None:
    page.goto(url, wait_until="domcontentloaded")
    wait_idle(page)
    page.get_by_text("Load an experiment JSON").click()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(exp, f)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(f.name)
    page.get_by_text("Loaded: model").wait_for(timeout=120_000)
    wait_idle(page)


def knob_moves(page, label: str, moves: int) -> tuple[list[float], list[float]]:
    """``moves`` ArrowRight presses on the Energy T slider; per move (ms): to the metric, to the rerun's end."""
    page.evaluate(f"window.__probe.label = {json.dumps(label)}")
    thumb = page.locator('.st-key-scores-energy-T input').first  # react-aria: the thumb's range input
    thumb.scroll_into_view_if_needed()
    thumb.focus()
    to_metric, to_done = [], []
    for _ in range(moves):
        page.evaluate("window.__probe.keys = []; window.__probe.states = []; window.__probe.metric = window.__probe.metric.slice(-1)")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => { const p = window.__probe; return p.keys.length && p.states.some(s => s[1] === 'running')"
            " && p.states[p.states.length - 1][1] === 'notRunning'; }", timeout=120_000)
        page.wait_for_timeout(150)
        p = page.evaluate("window.__probe")
        t0 = p["keys"][0]
        to_metric.append(metric_update(p["metric"], t0))
        to_done.append(max(t for t, s in p["states"] if s == "notRunning") - t0)
        page.wait_for_timeout(250)
    return to_metric, to_done


def metric_update(trace: list, t0: float) -> float:
    """ms from ``t0`` to the metric shown fresh: its text changed, or it went stale and came back."""
    went_stale = False
    before = [v for t, v, _ in trace if t <= t0]
    prev = before[-1] if before else None
    for t, v, stale in trace:
        if t <= t0:
            continue
        if v != prev and not stale:
            return t - t0
        went_stale |= stale
        if went_stale and not stale:
            return t - t0
    return float("nan")


def report(name: str, values: list[float]) -> None:
    print(f"  {name:<28} median {statistics.median(values):7.0f} ms   (min {min(values):.0f}, max {max(values):.0f}, "
          f"n={len(values)})", flush=True)


def scores_case(browser, url: str, case: str, moves: int) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_init_script(PROBE)
    page = ctx.new_page()
    page.set_default_timeout(180_000)
    try:
        if case == "large":
            apply_experiment(page, url, {"model": "default", "id_dataset": LARGE_ID, "ood_datasets": [LARGE_OOD],
                                         "detectors": ["energy"], "schema": "ood-workbench/experiment@1"})
            goto_in_session(page, "Scores")
            page.get_by_text(LARGE_OOD).first.wait_for()  # the experiment was applied
        else:
            page.goto(f"{url}/Scores", wait_until="domcontentloaded")
            wait_idle(page)
        page.get_by_text("Metrics", exact=True).wait_for()
        t0 = time.time()
        knob_moves(page, "AUROC (mean)" if case == "default" else "AUROC (mean)", 1)  # warm-up
        warm = time.time() - t0
        m, d = knob_moves(page, "AUROC (mean)", moves)
        print(f"\nScores, {case} case (Energy T, {moves} moves to unseen values; warm-up move {1000 * warm:.0f} ms):")
        report("knob -> metric changed", m)
        report("knob -> rerun finished", d)
        return {"metric": m, "done": d}
    finally:
        ctx.close()


def first_load_nav(browser, url: str) -> None:
    """The sidebar's page titles on the first load of a deep link (fresh browser session)."""
    ctx = browser.new_context()
    page = ctx.new_page()
    try:
        t = time.time()
        page.goto(f"{url}/Scores", wait_until="domcontentloaded")
        wait_idle(page)
        links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
        print(f"\nfirst load of /Scores: {time.time() - t:.1f} s, sidebar: {links}")
    finally:
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running app; otherwise one is started (and stopped)")
    ap.add_argument("--case", default="default,large")
    ap.add_argument("--moves", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("OOD_CACHE_DIR", str(ROOT / "cache" / "bench"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    cases = [c for c in args.case.split(",") if c]
    print(f"machine: {machine()}; cache {os.environ['OOD_CACHE_DIR']}", flush=True)
    if "large" in cases:
        ensure_large_case()
    if "maps" in cases:
        ensure_maps_case()
    proc = None
    try:
        if args.url:
            url = args.url
        else:
            env = dict(os.environ, PYTHONUNBUFFERED="1", BROWSER_PATH=CHROMIUM)
            proc, url = start_server(env)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                if not args.url:
                    first_load_nav(browser, url)
                for case in cases:
                    if case == "maps":
                        maps_case(browser, url)
                    else:
                        scores_case(browser, url, case, args.moves)
            finally:
                browser.close()
    finally:
        if proc is not None:
            stop_server(proc)
    print(f"\nload average at the end: {load_text()}")


if __name__ == "__main__":
    main()
