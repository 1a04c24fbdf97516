"""Maps at scale (issue 15): WebGL traces of typed arrays, no per-point Python objects, and a selection
that leads back to its samples; 100,000 points in the slow set, drawn in headless Chromium."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest

from ood_core.figures.maps import decode_map, encode_map, map_figure, map_points

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from maps import browser, synthetic_frame  # noqa: E402  (bench/maps.py)


def _per_point_arrays(spec: dict, n: int) -> list:
    """Every value in the spec's traces that holds one entry per point of its trace."""
    out = []
    for t in spec["data"]:
        for k, v in list(t.items()) + [("marker." + k2, v2) for k2, v2 in t.get("marker", {}).items()]:
            if isinstance(v, dict) and "bdata" in v or isinstance(v, list) and len(v) > 50:
                out.append((t.get("name"), k, v))
    return out


@pytest.mark.parametrize("color", ["dataset", "pred", "energy"])
def test_map_ships_typed_arrays_and_the_payloads_rows(color):
    df = synthetic_frame(20_000)
    fig = map_figure(df, color, "mnist", selected=[("ood_a", 3), ("ood_b", 10)])
    assert all(t.type == "scattergl" for t in fig.data)
    spec = json.loads(pio.to_json(fig, validate=False))
    arrays = _per_point_arrays(spec, len(df))
    assert arrays and all(isinstance(v, dict) and "bdata" in v for _, _, v in arrays), \
        [(n, k) for n, k, v in arrays if not isinstance(v, dict)]
    assert sum(len(t.x) for t in fig.data if not t.name.startswith("selected")) == len(df)
    # the figure's traces hold the payload's traces, row for row (the payload's positions lead back
    # to frame rows: test_a_100k_point_payload_is_compact_and_round_trips)
    header, arrays = decode_map(encode_map(map_points(df, color, "mnist")))
    data = [t for t in fig.data if not t.name.startswith("selected")]
    assert [t.name for t in data] == [t["name"] for t in header["traces"]]
    for t, h in zip(data, header["traces"]):
        sl = slice(h["start"], h["start"] + h["count"])
        assert np.array_equal(np.asarray(t.x), arrays["x"][sl]) and np.array_equal(np.asarray(t.y), arrays["y"][sl])
        assert np.array_equal(np.asarray(t.customdata).astype(np.int64), arrays["index"][sl].astype(np.int64))
    ring = [t for t in fig.data if t.name.startswith("selected")]
    assert ring and len(ring[0].x) == 2


@pytest.mark.slow
def test_a_100k_point_map_builds_small_and_draws_headless(capsys):
    df = synthetic_frame(100_000)
    t = time.perf_counter()
    fig = map_figure(df, "dataset", "mnist")
    built = time.perf_counter() - t
    spec = pio.to_json(fig, validate=False)
    assert built < 10, built  # about 0.3 s on a quiet 2-core machine; generous for a loaded one
    assert len(spec) < 3 * 2**20, len(spec)  # x, y as float32 and the index as int32, base64
    browser(spec, len(df))  # plotly.js in headless Chromium: draws, answers a lasso and a hover
    out = capsys.readouterr().out
    assert "draw" in out and "plotly_selected" in out


@pytest.mark.parametrize("color", ["dataset", "pred", "energy"])
def test_a_100k_point_payload_is_compact_and_round_trips(color):
    """The map component's payload at 100,000 points: about 10 bytes a point, arrays that decode to the
    frame's own values in payload order, rings at the selected rows, and positions that lead back."""
    from ood_core.figures.maps import decode_map, encode_map, keys_of_rows, map_points, rows_of_positions

    df = synthetic_frame(100_000)
    t = time.perf_counter()
    pts = map_points(df, color, "mnist")
    built = time.perf_counter() - t
    rows = np.array([3, 50_000, 99_999])
    buf = encode_map(pts, rows)
    assert built < 5, built  # about 20 ms on a quiet 2-core machine
    assert len(buf) < (14.1 if color not in ("dataset", "pred") else 10.1) * len(df), len(buf)  # x, y, index (+ score)
    header, arrays = decode_map(buf)
    assert header["n"] == len(df) and header["digest"] == pts.digest
    assert sum(t["count"] for t in header["traces"]) == len(df)
    assert np.array_equal(arrays["x"], df["x"].to_numpy(np.float32)[pts.order])
    assert np.array_equal(arrays["index"].astype(np.int64), df["index"].to_numpy()[pts.order])
    assert sorted(pts.order[arrays["ring"]].tolist()) == rows.tolist()
    back = rows_of_positions(pts, arrays["ring"].tolist() + [len(df), -1])  # out-of-range positions are dropped
    assert sorted(keys_of_rows(df, back)) == sorted(keys_of_rows(df, rows))
    assert map_points(df, color, "mnist").digest == pts.digest  # stable: the browser redraws only on a change
    # once the browser holds these points, a rerun sends the rings alone: bytes per ring, not per point
    small = encode_map(pts, rows, with_points=False)
    assert len(small) < 2048 + 4 * len(rows), len(small)
    h2, a2 = decode_map(small)
    assert h2["rings_only"] and h2["digest"] == pts.digest and set(a2) == {"ring"}
    assert np.array_equal(a2["ring"], arrays["ring"])


def test_the_map_component_sends_points_until_the_browser_has_them(monkeypatch):
    """ui.map_component.scatter_map: the full payload while the component's state "has" is not these
    points' digest (first draw, a re-created element asking again), the rings alone once it is."""
    from ood_core.figures.maps import decode_map, map_points
    from ui import map_component as mc

    pts = map_points(synthetic_frame(2_000), "dataset", "mnist")
    sent, widget = [], {}
    monkeypatch.setattr(mc, "_MAP", lambda **kw: sent.append(decode_map(kw["data"])))
    monkeypatch.setattr(mc.state, "widget", lambda key: widget.get(key))
    for has, rings_only in ((None, False), ({"has": "other"}, False), ({"has": pts.digest}, True), ({"has": None}, False)):
        widget["m"] = has
        mc.scatter_map(pts, "m", [1, 2])
        header, arrays = sent[-1]
        assert bool(header.get("rings_only")) == rings_only and arrays["ring"].size == 2
        assert ("x" in arrays) != rings_only
