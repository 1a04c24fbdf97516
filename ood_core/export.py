"""Getting figures, tables, per-sample scores and experiments out (and experiments back in).

- figures -> PNG / SVG / PDF through kaleido (>= 1.0), which drives a Chrome-family browser;
  we point it at the system Chromium (``/usr/bin/chromium``, or ``$BROWSER_PATH``) and never
  download one. Without a browser, :class:`ExportError` says how to install it;
- figures -> interactive HTML with plotly.js inlined (works offline, no CDN);
- tables -> CSV and Parquet (pyarrow);
- per-sample scores: dataset, index, label, prediction and one column per detector;
- experiments: the JSON of docs/architecture.md, "Reproducible", which ``evaluate --experiment`` and the app accept.
"""
from __future__ import annotations

import atexit
import io
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import UserError, first_line, jsonable
from .experiment import Experiment

SYSTEM_CHROMIUM = "/usr/bin/chromium"
STATIC_FORMATS = ("png", "svg", "pdf")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json"}


class ExportError(UserError):
    """An export could not be produced; the message says what to install or change."""


def browser_path() -> str | None:
    """The browser kaleido will drive: ``$BROWSER_PATH``, else the system Chromium, else one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access(SYSTEM_CHROMIUM, os.X_OK):
        return SYSTEM_CHROMIUM
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def static_export_status() -> tuple[bool, str]:
    """(available, reason) for PNG/SVG/PDF export."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False, "PNG/SVG/PDF export needs the kaleido package: pip install 'kaleido>=1'"
    if browser_path() is None:
        where = os.environ.get("BROWSER_PATH")
        return False, ((f"BROWSER_PATH={where!r} is not an executable browser; " if where else "")
                       + "PNG/SVG/PDF export needs Chromium: apt-get install chromium (or set BROWSER_PATH); "
                       "HTML export works without it")
    return True, ""


def figure_bytes(fig: Any, fmt: str, width: int | None = None, height: int | None = None,
                 scale: float | None = None, timeout: float = 90) -> bytes:
    """A plotly figure as PNG, SVG or PDF bytes, rendered by kaleido in the system Chromium."""
    fmt = fmt.lower()
    if fmt not in STATIC_FORMATS:
        raise ExportError(f"static format must be one of {', '.join(STATIC_FORMATS)}; got {fmt!r}")
    ok, why = static_export_status()
    if not ok:
        raise ExportError(why)
    from plotly.io._utils import validate_coerce_fig_to_dict

    fig_dict = validate_coerce_fig_to_dict(fig, True)
    layout = fig_dict.get("layout", {})
    opts = {"format": fmt, "width": width or layout.get("width") or 900, "height": height or layout.get("height") or 560,
            "scale": scale or (2 if fmt == "png" else 1)}
    try:
        data = _render(fig_dict, opts, timeout)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the browser can fail in many ways
        raise ExportError(f"{fmt.upper()} export failed in Chromium ({browser_path()}): {first_line(exc, 200)}") from None
    if not data:
        raise ExportError(f"{fmt.upper()} export returned nothing")
    return bytes(data)


_render_lock = threading.Lock()
_server = {"state": "off"}  # off -> on, or broken after a failure (then one browser per export)
# The server's Chromium keeps about a quarter of a core busy while it idles (measured on 2 cores: 28%
# for the rest of a test session after one export), so it is stopped after this long without a render
# and started again by the next one (~1 s).
SERVER_IDLE_S = 30.0
_idle_timer: dict[str, threading.Timer | None] = {"t": None}


def _stop_idle_server() -> None:
    """Stop kaleido's sync server: the idle timer's action (a render after it starts the server again)."""
    import kaleido

    with _render_lock:
        if _server["state"] == "on":
            try:
                kaleido.stop_sync_server(silence_warnings=True)
            except Exception:  # noqa: BLE001 - a browser already gone is stopped enough
                pass
            _server["state"] = "off"


def _at_exit() -> None:
    """Cancel the idle timer and stop the server under the render lock, before kaleido's own exit hook
    (atexit runs last-registered first): a timer firing during that hook made both close one server."""
    if _idle_timer["t"] is not None:
        _idle_timer["t"].cancel()
    _stop_idle_server()


def _arm_idle_stop() -> None:
    if _idle_timer["t"] is not None:
        _idle_timer["t"].cancel()
    t = threading.Timer(SERVER_IDLE_S, _stop_idle_server)
    t.daemon = True
    _idle_timer["t"] = t
    t.start()


def _in_thread(fn: Any, timeout: float) -> Any:
    """Run ``fn`` in a daemon thread with a deadline (kaleido's calls block; a stuck browser must not hang a page)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["v"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise ExportError(f"Chromium did not answer within {timeout:.0f} s")
    if "e" in box:
        raise box["e"]
    return box["v"]


def _render(fig_dict: dict, opts: dict, timeout: float) -> bytes:
    """Render with one long-lived Chromium (kaleido's sync server: ~0.3 s an image instead of
    ~3 s for a fresh browser), falling back to a browser per call if the server fails."""
    import asyncio

    import kaleido

    # mathjax=False: kaleido would otherwise put a CDN <script> in its page (we are offline).
    kopts = {"path": browser_path(), "mathjax": False, "timeout": timeout}
    with _render_lock:  # the sync server has one return queue: one call at a time
        if _server["state"] == "off" and os.environ.get("OOD_KALEIDO_SERVER", "1") != "0":
            try:
                kaleido.start_sync_server(silence_warnings=True, **kopts)
                _server["state"] = "on"
                atexit.register(_at_exit)  # after kaleido's hook, so it runs first; once per start
            except Exception:  # noqa: BLE001
                _server["state"] = "broken"
        if _server["state"] == "on":
            try:
                out = _in_thread(lambda: kaleido.calc_fig_sync(fig_dict, opts=opts), timeout + 30)
                _arm_idle_stop()
                return out
            except Exception:  # noqa: BLE001 - retried once with a fresh browser below
                _server["state"] = "broken"
        return _in_thread(lambda: asyncio.run(kaleido.calc_fig(fig_dict, opts=opts, kopts=dict(kopts))), timeout + 30)


def figure_html(fig: Any, include_plotlyjs: bool = True) -> bytes:
    """A self-contained interactive HTML page: plotly.js is inlined, nothing is fetched."""
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True, include_mathjax=False,
                       config={"displaylogo": False}).encode("utf-8")


def table_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def table_parquet(df: pd.DataFrame) -> bytes:
    """Parquet via pyarrow; columns of mixed Python objects are written as strings."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            kinds = {type(v) for v in out[c].dropna()}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                out[c] = out[c].map(lambda v: v if v is None else str(v))
    out.columns = [str(c) for c in out.columns]
    buf = io.BytesIO()
    try:
        out.to_parquet(buf, index=False, engine="pyarrow")
    except ImportError:
        raise ExportError("Parquet export needs pyarrow: pip install pyarrow") from None
    return buf.getvalue()


def per_sample_scores(bundle: Any, id_name: str, ood_names: Iterable[str], detectors: Iterable[str],
                      params: dict[str, dict[str, Any]] | None = None, progress: Any = None) -> pd.DataFrame:
    """One row per sample of the ID test set and each OOD set.

    Columns: ``dataset``, ``role`` (``id``/``ood``), ``index`` (the sample's id in its
    source), ``label`` (-1 unknown), ``prediction``, ``max_softmax``, then one column per
    detector (higher = more ID). Detectors that cannot run on this model are left out and
    listed with their reason in ``df.attrs["skipped"]``; knob values in ``df.attrs["params"]``.
    """
    from . import workbench as wb
    from .detectors import DetectorError, get_detector
    from .detectors.base import max_softmax

    params = params or {}
    detectors = list(dict.fromkeys(detectors))
    sets = [(id_name, "id")] + [(n, "ood") for n in dict.fromkeys(ood_names) if n != id_name]
    exts = {n: wb.get_extraction(bundle, n, progress) for n, _ in sets}
    skipped: dict[str, str] = {}
    resolved: dict[str, dict] = {}
    frames = []
    for n, role in sets:
        e = exts[n]
        frames.append(pd.DataFrame({"dataset": n, "role": role, "index": e.sample_ids.astype(np.int64),
                                    "label": e.labels.astype(np.int64), "prediction": e.preds.astype(np.int64),
                                    "max_softmax": max_softmax(e.logits)}))
    for d in detectors:
        det0 = get_detector(d)
        reason = det0.unavailable_reason(exts[id_name])
        if reason:
            skipped[d] = reason
            continue
        try:
            knobs = det0.resolve(params.get(d))
            det = wb.fitted_detector(d, bundle, id_name, progress)
            cols = [wb.score(bundle, det, n, id_name, knobs, progress) for n, _ in sets]
        except DetectorError as exc:
            skipped[d] = first_line(exc)
            continue
        resolved[d] = jsonable(knobs)
        for f, s in zip(frames, cols):
            f[d] = np.asarray(s, np.float64)
    df = pd.concat(frames, ignore_index=True)
    df.attrs["skipped"] = skipped
    df.attrs["params"] = resolved
    df.attrs["model_fingerprint"] = getattr(bundle, "fingerprint", "")
    return df


def experiment_json(exp: Experiment) -> bytes:
    return exp.to_json().encode("utf-8")


def experiment_from_bytes(data: bytes | str) -> Experiment:
    """Parse an uploaded experiment JSON (size-checked, UTF-8) into an :class:`Experiment`."""
    return Experiment.from_json(data)


def check_experiment(exp: Experiment) -> list[str]:
    """What in ``exp`` this installation cannot reproduce (unknown model, dataset, detector, knob); [] if all is well."""
    from . import workbench as wb
    from .data import DataError, get_spec
    from .detectors import DetectorError, get_detector

    problems = []
    specs = {m["spec"] for m in wb.list_models()}
    if exp.model not in specs and not (exp.model != "default" and Path(exp.model).exists()):
        hint = "upload it on the Models & Data page" if exp.model.startswith("upload:") else "check the path"
        problems.append(f"model {exp.model!r} is not available here: {hint}")
    for n in [exp.id_dataset, *exp.ood_datasets]:
        try:
            get_spec(n)
        except DataError:
            problems.append(f"dataset {n!r} is not registered here: register it on the Models & Data page")
    for d in exp.detectors:
        try:
            get_detector(d).resolve(exp.params.get(d))
        except DetectorError as exc:
            problems.append(first_line(exc))
    return problems
