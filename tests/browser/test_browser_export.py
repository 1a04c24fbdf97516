"""Exports through the real UI: after bringing a model and CIFAR-10/SVHN folders in with the
Models & Data page, the Scores page's figure downloads (PNG, SVG, PDF, HTML) and table
downloads (CSV, Parquet) produce real files in the browser."""
from __future__ import annotations

import io

import fixtures_data as fx
import pandas as pd
import pytest
import torch
from browser_support import ARTIFACTS, by_key, goto_page, wait_idle

pytestmark = pytest.mark.browser


Tiny = fx.TinyNet


def _download(page, locator) -> bytes:
    with page.expect_download(timeout=90_000) as dl:
        locator.click()
    return open(dl.value.path(), "rb").read()


def test_exports_from_the_scores_page(browser_page, app_server, tmp_path):
    from ood_core import persist

    page = browser_page
    torch.manual_seed(0)
    model_file = tmp_path / "browser_export_model.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), model_file)
    c10 = fx.cifar10_folder(tmp_path / "cifar10")
    svhn = fx.svhn_folder(tmp_path / "svhn")
    names = ("browser_c10", "browser_svhn")
    try:
        goto_page(page, app_server, "Models_and_Data")
        by_key(page, "md_upload").locator('input[type="file"]').set_input_files(str(model_file))
        wait_idle(page)
        by_key(page, "md_load").get_by_role("button").click()
        page.get_by_text("Loaded browser_export_model").wait_for()

        page.get_by_role("tab", name="Datasets").click()
        for name, role, path in ((names[0], "ID test", c10), (names[1], "OOD test", svhn)):
            by_key(page, "ds_name").locator("input").fill(name)
            by_key(page, "ds_name").locator("input").press("Enter")
            wait_idle(page)
            by_key(page, "ds_role").click()
            page.get_by_role("option", name=role).first.click()
            wait_idle(page)
            by_key(page, "ds_path").locator("input").fill(str(path))
            by_key(page, "ds_path").locator("input").press("Enter")
            wait_idle(page)
            by_key(page, "ds_register").get_by_role("button").click()
            page.get_by_text(f"registered {name}").wait_for()
            wait_idle(page)

        # client-side navigation keeps the session (a new URL load would start a new one)
        page.get_by_role("link", name="Scores").click()
        page.get_by_role("heading", name="Scores").wait_for()
        wait_idle(page)
        page.get_by_text("AUROC (mean)").first.wait_for()
        page.get_by_role("button", name="Download figure").first.wait_for()
        wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "browser_scores_user_model.png"), full_page=True)

        files = {}
        for fmt in ("PNG", "SVG", "PDF", "HTML"):
            page.get_by_role("button", name="Download figure").first.click()
            files[fmt] = _download(page, by_key(page, f"dl-hist-{fmt.lower()}").get_by_role("button"))
            page.keyboard.press("Escape")
        assert files["PNG"][:8] == b"\x89PNG\r\n\x1a\n"
        assert files["SVG"].lstrip()[:4] == b"<svg"
        assert files["PDF"][:5] == b"%PDF-"
        assert b"Plotly.newPlot" in files["HTML"] and b'<script src="http' not in files["HTML"]
        csv = _download(page, by_key(page, "dl-metrics-csv").get_by_role("button"))
        table = pd.read_csv(io.BytesIO(csv))
        assert names[1] in set(table.iloc[:, 0].astype(str))
        pq = _download(page, by_key(page, "dl-metrics-parquet").get_by_role("button"))
        assert pd.read_parquet(io.BytesIO(pq)).shape == table.shape
    finally:
        for n in names:
            if n in persist.saved_datasets():
                persist.unregister_local(n)
        for key in list(persist.saved_uploads()):
            if key.startswith("upload:browser_export_model@"):
                persist.forget_upload(key)
