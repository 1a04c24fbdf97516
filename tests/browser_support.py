"""Fixtures for browser tests: the real app (`streamlit run app.py`) driven by Debian's Chromium.

``tests/browser/conftest.py`` makes ``app_server``, ``browser`` and ``browser_page`` fixtures of
every browser test; a module imports only the helpers::

    from browser_support import goto_page

    @pytest.mark.browser
    def test_something(browser_page, app_server):
        goto_page(browser_page, app_server, "Models_and_Data")

One server and one Chromium serve the whole session (each test gets its own tab and context, so its
own Streamlit session); a test that needs a server no session has used starts its own with
:func:`serve_app`.

The server runs headless on a free localhost port with the test session's ``OOD_CACHE_DIR``
(so models/extractions cached by other tests are reused); Chromium is ``/usr/bin/chromium``,
never a Playwright download. Everything is skipped cleanly when Chromium or Playwright is
missing. Screenshots and the server log go to ``test-artifacts/`` (git-ignored).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("OOD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]
SERVER_START_TIMEOUT = 90


def _skip_reason() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its own process group: streamlit's children go with it)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def serve_app(cache_dir: str | Path | None = None) -> Iterator[AppServer]:
    """``streamlit run app.py`` on a free port, yielded once /_stcore/health answers.

    ``cache_dir`` defaults to the test session's ``OOD_CACHE_DIR`` (models and extractions cached by
    other tests are reused); pass an empty folder to see a first launch.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    if cache_dir is not None:
        env["OOD_CACHE_DIR"] = str(cache_dir)
    env.setdefault("OOD_CACHE_DIR", str(ROOT / "cache" / "test"))
    env["BROWSER_PATH"] = CHROMIUM  # kaleido's static export in the app uses the same browser
    env["PYTHONUNBUFFERED"] = "1"
    log_path = ARTIFACTS / f"streamlit-{port}.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false", "--global.developmentMode", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = AppServer(url, proc, log_path)
    deadline = time.time() + SERVER_START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"streamlit did not start within {SERVER_START_TIMEOUT}s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def app_server() -> Iterator[AppServer]:
    """The app on the test session's cache (see :func:`serve_app`), shared by the session's browser tests."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with serve_app() as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright (never ``playwright install``)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"Chromium at {CHROMIUM} did not start under Playwright: {str(exc).splitlines()[0]}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture()
def browser_page(browser, app_server, request):
    """A fresh browser tab (own context: own Streamlit session); a screenshot is kept on failure."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(90_000)
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
        try:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        except Exception:  # noqa: BLE001
            pass
    context.close()


_NOT_RUNNING = ("() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
                " return !!a && a.getAttribute('data-test-script-state') === 'notRunning'; }")


def wait_idle(page, timeout: float = 90_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running…' status widget)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout,
    )
    # The status widget shows "Running" only once a run has lasted a moment; the app element's
    # script state says it at once (a widget event sent just before may still be starting a run).
    page.wait_for_function(_NOT_RUNNING, timeout=timeout)
    page.wait_for_timeout(300)  # a rerun may start right after a widget event
    page.wait_for_function(_NOT_RUNNING, timeout=timeout)


def goto_page(page, server: AppServer, url_path: str = "", timeout: float = 90_000) -> None:
    """Open one page of the app (``""`` = the landing page, ``"Scores"``, ``"Models_and_Data"``, …)."""
    page.goto(f"{server.url}/{url_path}", wait_until="domcontentloaded")
    wait_idle(page, timeout)


def by_key(page, key: str):
    """The element of the widget created with ``key=`` (Streamlit adds the class ``st-key-<key>``)."""
    return page.locator(f".st-key-{key}")
