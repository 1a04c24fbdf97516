"""The real app in headless Debian Chromium: landing page, then the Scores page."""
from __future__ import annotations

import pytest
from browser_support import ARTIFACTS, goto_page, wait_idle

pytestmark = pytest.mark.browser


def test_landing_then_scores_page(browser_page, app_server, default_bundle):
    page = browser_page
    goto_page(page, app_server, "")
    page.get_by_text("Gradient-OOD workbench").first.wait_for()
    page.get_by_text("Current experiment").wait_for()
    page.locator('[data-testid="stPageLink"]').first.wait_for()
    wait_idle(page)
    page.screenshot(path=str(ARTIFACTS / "landing.png"), full_page=True)

    # Navigate as a user would: the sidebar link to the Scores page.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Scores").first.click()
    wait_idle(page)
    page.get_by_text("Metrics", exact=True).wait_for()
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")  # histogram, ROC
    assert "Traceback" not in page.content()
    # Streamlit scrolls inside its main container: a tall viewport shows the whole page.
    page.set_viewport_size({"width": 1400, "height": 1850})
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], section.main, .main')"
                  ".forEach(e => e.scrollTo(0, 0))")
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "scores.png"))
