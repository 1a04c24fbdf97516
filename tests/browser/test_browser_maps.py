"""The Maps page in real Chromium: both maps drawn by the map component (ui/map_component), a lasso
selection on the features map rings the same samples in both maps and shows their images, the plot
is kept (not re-created) by the rerun the selection starts, and Clear removes rings and images."""
from __future__ import annotations

import pytest
from browser_support import by_key, goto_page, wait_idle

# It was flaky in two ways, both fixed: on an empty cache the page's opening UMAP ran in the script
# thread and the PCA click waited behind it (maps now compute as background jobs: ui.common.run_as_job),
# and a late draw of the opening maps could land in the selection's log (the test now waits for both
# PCA maps and a quiet second before selecting).
pytestmark = pytest.mark.browser

MAPS = ".ood-map[data-points]"


def _map_state(page) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('.ood-map')].map(d => ({
        points: Number(d.dataset.points || 0), rings: Number(d.dataset.rings || 0),
        traces: (d._fullData || []).length }))""")


def _settled(page, quiet_ms: int = 1000) -> None:
    """The script idle and no map payload or draw for ``quiet_ms``."""
    page.wait_for_function(
        """(quiet) => { const a = document.querySelector('[data-testid="stApp"]');
            const busy = !a || a.getAttribute('data-test-script-state') !== 'notRunning';
            const last = (window.__oodMapLog || []).filter(e => e[1] !== 'selected').pop();
            return !busy && (!last || performance.now() - last[0] > quiet); }""", arg=quiet_ms, timeout=120_000)


def _precompute_gradients() -> None:
    """The page's default low-dimensional gradients, computed here in the cache the server shares: on an
    empty cache the page would otherwise start them as a background job, and this test is about drawing
    and selecting, not about the job (tests/app/test_page_maps.py covers that path)."""
    from ood_core import gradients, maps
    from ood_core import workbench as wb
    from ood_core.data import DEFAULT_ID, DEFAULT_OOD

    params = {**maps.GRADIENT_KNOBS.defaults(), "T": float(gradients.DEFAULT_PARAMS["T"])}
    bundle = wb.load_model("default")
    for name in [DEFAULT_ID, *DEFAULT_OOD]:
        gradients.lowdim_for_dataset(bundle, name, DEFAULT_ID, params)
    assert maps.gradients_ready(bundle, DEFAULT_ID, DEFAULT_OOD, params)


def test_maps_draw_and_a_lasso_selection_shows_images(browser_page, app_server):
    _precompute_gradients()
    page = browser_page
    goto_page(page, app_server, "Maps", timeout=300_000)
    page.get_by_text("PCA", exact=True).first.click()
    wait_idle(page, 300_000)
    # The page opened on UMAP: wait for both PCA maps, drawn and settled (no payload or draw for a
    # second, the script idle), so no late UMAP draw lands in the selection's log below.
    page.get_by_text("PCA of 2,900 points", exact=False).nth(1).wait_for(timeout=300_000)
    page.wait_for_function(f"() => document.querySelectorAll('{MAPS}').length === 2", timeout=300_000)
    _settled(page)
    maps = _map_state(page)
    assert [m["points"] for m in maps] == [2900, 2900], maps  # the default ID set and five OOD sets, 500 each (faces 400)
    assert all(m["rings"] == 0 and m["traces"] == 6 for m in maps), maps
    # the gallery goes with the rerun that Clear starts; the rings may clear first, in the browser
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"]').length === 0",
                           timeout=30_000)

    chart = by_key(page, "map_features").locator(".js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    page.evaluate("() => { window.__oodMapLog.length = 0; }")
    # a lasso (the maps' default drag mode) around the middle of the plot area
    area = chart.locator(".nsewdrag").first.bounding_box()
    cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
    w, h = area["width"] * 0.3, area["height"] * 0.3
    page.mouse.move(cx - w, cy - h)
    page.mouse.down()
    for dx, dy in ((w, -h), (w, h), (-w, h), (-w, -h)):
        page.mouse.move(cx + dx, cy + dy, steps=5)
    page.mouse.up()
    page.locator('[data-testid="stImage"]').first.wait_for(timeout=60_000)
    wait_idle(page)
    page.wait_for_function("() => [...document.querySelectorAll('.ood-map')].every(d => Number(d.dataset.rings) > 0)",
                           timeout=30_000)
    maps = _map_state(page)
    assert maps[0]["rings"] == maps[1]["rings"] > 0, maps  # the same samples ringed in both maps
    shown = page.locator('[data-testid="stImage"]').count()
    assert shown == min(24, maps[0]["rings"])
    log = page.evaluate("() => window.__oodMapLog.map(e => e[1])")
    assert "selected" in log and "ring" in log, log
    assert "mount" not in log and "drawn" not in log, log  # the selection's rerun kept both plots

    by_key(page, "maps_clear").get_by_role("button").click()
    wait_idle(page)
    page.wait_for_function("() => [...document.querySelectorAll('.ood-map')].every(d => d.dataset.rings === '0')",
                           timeout=30_000)
    # the gallery goes with the rerun that Clear starts; the rings may clear first, in the browser
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"]').length === 0",
                           timeout=30_000)
