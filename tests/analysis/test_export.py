"""Export: figures (PNG/SVG/PDF via Chromium, offline HTML), tables, per-sample scores, experiment JSON."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from ood_core import export as ex
from ood_core.experiment import MAX_BYTES, Experiment, ExperimentError

needs_chromium = pytest.mark.skipif(not ex.static_export_status()[0], reason="no Chromium for kaleido")


@pytest.fixture(scope="module")
def fig():
    f = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="séries α"))
    f.update_layout(title="export test", width=400, height=300)
    return f


@needs_chromium
def test_static_figures(fig):
    png = ex.figure_bytes(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert (w, h) == (800, 600)  # layout size at scale 2
    svg = ex.figure_bytes(fig, "svg")
    assert svg.lstrip().startswith(b"<svg") and b"export test" in svg
    pdf = ex.figure_bytes(fig, "pdf", width=500, height=400)
    assert pdf[:5] == b"%PDF-"


@needs_chromium
def test_the_render_server_stops_when_idle_and_starts_again(fig, monkeypatch):
    """kaleido's long-lived Chromium keeps part of a core busy while idle: it is stopped after
    SERVER_IDLE_S without a render, and the next export starts it again."""
    import time

    monkeypatch.setattr(ex, "SERVER_IDLE_S", 0.5)
    assert ex.figure_bytes(fig, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex._server["state"] == "on"  # noqa: SLF001
    deadline = time.time() + 20
    while ex._server["state"] == "on" and time.time() < deadline:  # noqa: SLF001
        time.sleep(0.1)
    assert ex._server["state"] == "off"  # noqa: SLF001
    assert ex.figure_bytes(fig, "svg").lstrip().startswith(b"<svg")
    assert ex._server["state"] == "on"  # noqa: SLF001


def test_static_export_without_browser_is_a_clear_error(fig, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    ok, why = ex.static_export_status()
    assert not ok and "apt-get install chromium" in why and "HTML export works" in why
    with pytest.raises(ex.ExportError, match="needs Chromium"):
        ex.figure_bytes(fig, "png")
    with pytest.raises(ex.ExportError, match="must be one of"):
        ex.figure_bytes(fig, "eps")


def test_html_is_self_contained(fig):
    html = ex.figure_html(fig).decode()
    assert html.lower().lstrip().startswith(("<!doctype html>", "<html>")) and "Plotly.newPlot" in html
    assert '<script src="http' not in html and "<script src='http" not in html  # nothing fetched
    assert len(html) > 1_000_000  # plotly.js is inlined


def test_tables_csv_and_parquet():
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan], "c": ["x", "ü"], "mixed": [1, "two"]})
    back = pd.read_csv(io.BytesIO(ex.table_csv(df)))
    assert back["a"].tolist() == [1, 2] and back["c"].tolist() == ["x", "ü"]
    pq = pd.read_parquet(io.BytesIO(ex.table_parquet(df)))
    assert pq["a"].tolist() == [1, 2] and np.isnan(pq["b"][1]) and pq["mixed"].tolist() == ["1", "two"]


Tiny = fx.TinyNet


@pytest.fixture()
def setup(tmp_cache, tmp_path):
    """A TorchScript model and CIFAR/SVHN fixture folders registered in a private cache."""
    from ood_core import persist

    torch.manual_seed(0)
    p = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), p)
    persist.register_local(fx.cifar10_folder(tmp_path / "c10"), "exc10", "id_test")
    persist.register_local(fx.svhn_folder(tmp_path / "sv"), "exsv", "ood_test")
    key, bundle = persist.register_upload(p, name="tiny")
    yield key, bundle
    for n in ("exc10", "exsv"):
        persist.unregister_local(n)
    persist.forget_upload(key)


def test_per_sample_scores(setup):
    from ood_core.data import get_dataset

    key, bundle = setup
    df = ex.per_sample_scores(bundle, "exc10", ["exsv"], ["msp", "energy", "knn"], {"knn": {"k": 3}})
    assert list(df.columns[:6]) == ["dataset", "role", "index", "label", "prediction", "max_softmax"]
    assert {"msp", "energy", "knn"} <= set(df.columns) and df.attrs["params"]["knn"]["k"] == 3
    for name, role in (("exc10", "id"), ("exsv", "ood")):
        ds = get_dataset(name)
        part = df[df.dataset == name]
        assert (part.role == role).all() and len(part) == len(ds)
        np.testing.assert_array_equal(part["index"], ds.sample_ids)
        np.testing.assert_array_equal(part["label"], ds.labels)
        with torch.no_grad():  # independent: the model on the preprocessed images
            logits = bundle.model(bundle.preprocess(ds.images)).double()
        np.testing.assert_array_equal(part["prediction"], logits.argmax(1).numpy())
        np.testing.assert_allclose(part["energy"], torch.logsumexp(logits, 1).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(part["msp"], torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-4)
        np.testing.assert_allclose(part["max_softmax"], torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-4)
        assert np.isfinite(part["knn"]).all()
    pq = pd.read_parquet(io.BytesIO(ex.table_parquet(df)))
    assert len(pq) == len(df) and list(pq.columns) == list(df.columns)


def test_per_sample_scores_skips_unavailable(setup, tmp_path):
    from ood_core.models.files import load_model_file

    class NoHead(Tiny):
        def forward(self, x):
            return torch.tanh(self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1)))

    p = tmp_path / "nohead.pt"
    torch.jit.save(torch.jit.script(NoHead().eval()), p)
    b = load_model_file(p)
    df = ex.per_sample_scores(b, "exc10", ["exsv"], ["energy", "knn"])
    assert "energy" in df.columns and "knn" not in df.columns
    assert "features" in df.attrs["skipped"]["knn"]


def test_experiment_round_trip_reproduces_numbers(setup, tmp_path, capsys):
    from ood_core import cli
    from ood_core import workbench as wb

    key, bundle = setup
    exp = Experiment(model=key, id_dataset="exc10", ood_datasets=["exsv"], detectors=["energy", "msp"],
                     params={"energy": {"T": 2.0}})
    data = ex.experiment_json(exp)
    back = ex.experiment_from_bytes(data)
    assert back == exp and ex.check_experiment(back) == []
    (tmp_path / "exp.json").write_bytes(data)
    assert cli.main(["evaluate", "--experiment", str(tmp_path / "exp.json"), "--json", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = wb.evaluate(bundle, "exc10", ["exsv"], ["energy", "msp"], {"energy": {"T": 2.0}})
    assert [r["auroc"] for r in got["results"]] == [r["auroc"] for r in want["results"]]
    assert got["results"][0]["params"] == {"T": 2.0}


def test_experiment_refusals(setup):
    with pytest.raises(ExperimentError, match="not valid JSON"):
        ex.experiment_from_bytes(b"{nope")
    with pytest.raises(ExperimentError, match="not UTF-8"):
        ex.experiment_from_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ExperimentError, match="a few KB"):
        ex.experiment_from_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(ExperimentError, match="a few KB"):  # text too, not only bytes
        ex.experiment_from_bytes(" " * (MAX_BYTES + 1))
    with pytest.raises(ExperimentError, match="unknown experiment fields: rm_rf"):
        ex.experiment_from_bytes(json.dumps({"rm_rf": "/"}).encode())
    bad = Experiment(model="upload:gone@123", id_dataset="nope", ood_datasets=["exsv"], detectors=["energy", "zz"],
                     params={"energy": {"T": -5}})
    problems = ex.check_experiment(bad)
    assert any("upload it on the Models & Data page" in p for p in problems)
    assert any("dataset 'nope' is not registered" in p for p in problems)
    assert any("zz" in p for p in problems) and any("energy.T" in p for p in problems)


def test_download_widgets(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    script = tmp_path / "page.py"
    script.write_text(
        "import pandas as pd, plotly.graph_objects as go\n"
        "from ui.export import figure_downloads, table_downloads\n"
        "figure_downloads(go.Figure(go.Bar(y=[1, 2])), 'bars', key='b')\n"
        "table_downloads(pd.DataFrame({'a': [1]}), 'tbl')\n"
    )
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    at = AppTest.from_file(str(script), default_timeout=60).run()
    assert not at.exception
    keys = {b.key: b for b in at.get("download_button")}
    assert set(keys) == {"dl-b-png", "dl-b-svg", "dl-b-pdf", "dl-b-html", "dl-tbl-csv", "dl-tbl-parquet"}
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent")
    at = AppTest.from_file(str(script), default_timeout=60).run()
    buttons = {b.key: b for b in at.get("download_button")}
    assert buttons["dl-b-png"].proto.disabled and not buttons["dl-b-html"].proto.disabled
    assert any("apt-get install chromium" in c.value for c in at.caption)
