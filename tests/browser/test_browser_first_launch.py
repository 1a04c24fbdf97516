"""First launch on an empty cache, in the real browser: time to Home with the experiment.

The benchmark with its breakdown is ``bench/first_launch.py``. Each test starts a fresh server on
an empty ``OOD_CACHE_DIR`` (the shipped default weights are copied in, the embedded sets are built
and the ID set's forward pass runs; docs/architecture.md, "First launch") and measures from the
first request until Home shows the current experiment (its test accuracy). The bar is 30 s on a
quiet 2-core machine and 40 s with one CPU-bound process beside it; the quiet guard is 60 s so a
2-core CI runner with its own noise does not trip it, and the measured time is printed and kept in
``test-artifacts/``. The busy variant runs the bar's own case and asserts the 40 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, _skip_reason, serve_app

pytestmark = pytest.mark.browser
GUARD_SECONDS = 60  # quiet bar 30 s; measured 10-11 s at load 3, 31 s at load 11 (docs/architecture.md, "First launch")
BUSY_BAR_SECONDS = 40  # with one CPU-bound process beside the server (issue 27's bar)


def _first_launch_seconds(browser, cache_dir, label: str) -> float:
    """Fresh server on ``cache_dir`` (empty): seconds from the first request to Home with the experiment."""
    with serve_app(cache_dir) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            t0 = time.perf_counter()
            page.goto(server.url, wait_until="domcontentloaded")
            page.get_by_text("Test accuracy").first.wait_for(timeout=1000 * 5 * GUARD_SECONDS)
            seconds = time.perf_counter() - t0
            assert "Traceback" not in page.content()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"first-launch-{label}-failure.png"), full_page=True)
            raise
        finally:
            context.close()
    meta = json.loads((Path(cache_dir) / "models" / "default.json").read_text())
    assert meta.get("source") == "shipped with the package"  # nothing was trained on the request path
    line = f"{label}: {seconds:.1f} s from the first request to Home with the experiment (load {os.getloadavg()[0]:.1f})"
    with open(ARTIFACTS / "first_launch.txt", "a") as f:
        f.write(line + "\n")
    print(line)
    return seconds


def test_first_launch_shows_the_experiment_within_the_guard(browser, tmp_path):
    if _skip_reason():
        pytest.skip(_skip_reason())
    seconds = _first_launch_seconds(browser, tmp_path / "cache", "quiet")
    assert seconds <= GUARD_SECONDS, f"first launch took {seconds:.1f} s (guard {GUARD_SECONDS} s; see bench/first_launch.py)"


@pytest.mark.slow
def test_first_launch_beside_a_busy_process_meets_the_bar(browser, tmp_path):
    """Issue 27's bar: one CPU-bound process running beside the server, Home within 40 s."""
    if _skip_reason():
        pytest.skip(_skip_reason())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1)
        seconds = _first_launch_seconds(browser, tmp_path / "cache", "one busy process beside")
    finally:
        busy.kill()
        busy.wait()
    assert seconds <= BUSY_BAR_SECONDS, f"first launch beside a busy process took {seconds:.1f} s (bar {BUSY_BAR_SECONDS} s)"
