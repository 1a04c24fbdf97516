"""The browser tests' fixtures: one app server and one Chromium for the session (tests/browser_support.py)."""
from browser_support import app_server, browser, browser_page  # noqa: F401
