"""First launch on an empty cache: where the time goes, standalone and inside the app.

Prints two breakdowns measured in the same run on the same machine:

* **standalone**: a fresh interpreter with an empty ``OOD_CACHE_DIR`` imports the backend,
  builds the embedded datasets, trains the default model and runs the extractions Home and
  the default experiment need (wall and CPU seconds per phase);
* **in the app**: ``streamlit run app.py`` on another empty cache, driven by Debian Chromium
  through Playwright: server start to healthy, then first request to the Home page showing the
  current experiment (its ID test accuracy), with the server's CPU seconds over that time.

The difference between the two is what the app itself adds (see docs/architecture.md,
"First launch"). ``--watcher`` picks Streamlit's file watcher for the app run (default: what
``.streamlit/config.toml`` says), so the cost of each can be compared.

    .venv/bin/python bench/first_launch.py [--watcher auto|watchdog|poll|none] [--skip-app]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("OOD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

STANDALONE = r"""
import json, os, resource, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
out, t, c = {}, time.perf_counter(), cpu()
def mark(name):
    global t, c
    t2, c2 = time.perf_counter(), cpu()
    out[name] = (t2 - t, c2 - c)
    t, c = t2, c2
import torch
from ood_core import workbench as wb
from ood_core.data import DEFAULT_ID, DEFAULT_OOD, get_dataset
mark("imports")
wb.restore_saved()
names = [DEFAULT_ID, DEFAULT_ID + ":train", *DEFAULT_OOD]
for n in names:
    get_dataset(n)
mark("datasets")
bundle = wb.load_model("default")
mark("training")
for n in names:
    wb.get_extraction(bundle, n)
mark("extractions")
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def standalone(cache: Path) -> dict[str, tuple[float, float]]:
    env = dict(os.environ, OOD_CACHE_DIR=str(cache))
    res = subprocess.run([sys.executable, "-c", STANDALONE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def in_app(cache: Path, watcher: str | None) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, OOD_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    if watcher:
        cmd += ["--server.fileWatcherType", watcher]
    log = open(cache.parent / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, float] = {}
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise SystemExit(f"streamlit did not start; see {log.name}")
        out["server start (s)"] = time.perf_counter() - t0
        cpu0 = proc_cpu(proc.pid)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            t1 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.get_by_text("Test accuracy").first.wait_for(timeout=600_000)
            out["first request to Home with the experiment (s)"] = time.perf_counter() - t1
            out["server CPU over that time (s)"] = proc_cpu(proc.pid) - cpu0
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--watcher", default=None, help="Streamlit fileWatcherType for the app run (default: config.toml)")
    ap.add_argument("--skip-app", action="store_true", help="only the standalone breakdown")
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"python {platform.python_version()}")
    tmp = Path(tempfile.mkdtemp(prefix="first_launch_"))
    try:
        phases = standalone(tmp / "standalone")
        total = sum(w for w, _ in phases.values())
        print("\nstandalone (fresh interpreter, empty cache)      wall s    CPU s")
        for name, (w, c) in phases.items():
            print(f"  {name:<44} {w:7.1f}  {c:7.1f}")
        print(f"  {'total':<44} {total:7.1f}")
        if not a.skip_app:
            app = in_app(tmp / "app", a.watcher)
            print(f"\nin the app (streamlit run app.py, empty cache, watcher: {a.watcher or 'config.toml'})")
            for name, v in app.items():
                print(f"  {name:<52} {v:7.1f}")
            first = app["first request to Home with the experiment (s)"]
            print(f"  {'app overhead over the standalone work (s)':<52} {first - (total - phases['imports'][0]):7.1f}")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
