"""Shared Streamlit helpers for the pages: the experiment sidebar, errors, caching.

Session-state keys (the only state the pages share):
- ``model``: the model spec (``"default"``, a checkpoint path, or an ``upload:…`` key);
- ``id_dataset``: the ID test set name (its ``:train`` split feeds training statistics);
- ``ood_datasets``: list of OOD set names;
- ``detector``: the detector shown on the Scores page;
- ``params``: ``{detector: {knob: value}}``, the knob values the user set;
- ``selection``: ``{"dataset": name, "index": i}`` a sample picked on any page (Saliency reads it).
No torch here: everything goes through ``ood_core``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import streamlit as st

from ood_core import workbench as wb
from ood_core.data import DEFAULT_OOD, get_spec, list_datasets
from ood_core.experiment import Experiment
from ood_core.errors import UserError, first_line

DEFAULTS: dict[str, Any] = {
    "model": "default",
    "id_dataset": "mnist",
    "ood_datasets": list(DEFAULT_OOD),
    "detector": "energy",
    "params": {},
    "selection": None,
}

def init_state() -> None:
    for k, v in DEFAULTS.items():
        if k not in st.session_state:
            st.session_state[k] = v if not isinstance(v, (list, dict)) else type(v)(v)


@contextlib.contextmanager
def guard(what: str = "") -> Iterator[None]:
    """Show bad input as one ``st.error`` line and stop the page, never a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(f"{what + ': ' if what else ''}{first_line(exc)}")
        st.stop()


def get_bundle(spec: str | None = None):
    """The model for ``spec`` (session default), with a progress bar on first-launch training.

    ``workbench.load_model`` keeps loaded models in-process, so no Streamlit cache is needed.
    """
    spec = spec or st.session_state["model"]
    progress = None
    if spec == "default":
        from ood_core.models.checkpoints import default_model_path
        if not default_model_path().exists():
            bar = st.progress(0.0, "First launch: training the default model (about 20 seconds on 2 cores)…")
            progress = lambda f, m: bar.progress(min(1.0, f), m)  # noqa: E731
    with guard("loading the model"):
        return wb.load_model(spec, progress)


def extraction(bundle, name: str):
    """Cached Extraction, with a spinner when the forward pass has to run."""
    with guard(f"extracting {name}"), st.spinner(f"Forward pass on {name}…"):
        return wb.get_extraction(bundle, name)


def id_names() -> list[str]:
    return [s.name for s in list_datasets() if s.role in ("id_test",)]


def ood_names() -> list[str]:
    return [s.name for s in list_datasets() if s.role in ("ood_test", "shifted_id", "ood_val")]


@dataclass
class Context:
    model: str
    bundle: Any
    id_name: str
    ood: list[str]


def sidebar(select_ood: bool = True) -> Context:
    """The experiment picker every page shows: model, ID set, OOD sets."""
    init_state()
    apply_pending()
    models = wb.list_models()
    specs = [m["spec"] for m in models]
    labels = {m["spec"]: m["label"] for m in models}
    if st.session_state["model"] not in specs:
        st.session_state["model"] = "default"
    with st.sidebar:
        st.subheader("Experiment")
        st.selectbox("Model", specs, format_func=lambda s: labels.get(s, s), key="model")
        ids = id_names()
        if st.session_state["id_dataset"] not in ids:
            st.session_state["id_dataset"] = ids[0]
        st.selectbox("ID dataset", ids, key="id_dataset", help="its training split provides training statistics")
        if select_ood:
            opts = [n for n in ood_names() if n != st.session_state["id_dataset"]]
            st.session_state["ood_datasets"] = [n for n in st.session_state["ood_datasets"] if n in opts]
            st.multiselect("OOD datasets", opts, key="ood_datasets",
                           format_func=lambda n: f"{n} ({get_spec(n).role.replace('_', ' ')})")
    bundle = get_bundle()
    return Context(st.session_state["model"], bundle, st.session_state["id_dataset"], list(st.session_state["ood_datasets"]))


def current_experiment(detectors: list[str] | None = None) -> Experiment:
    init_state()
    dets = detectors or [st.session_state["detector"]]
    params = {d: dict(st.session_state["params"].get(d, {})) for d in dets if st.session_state["params"].get(d)}
    return Experiment(model=st.session_state["model"], id_dataset=st.session_state["id_dataset"],
                      ood_datasets=list(st.session_state["ood_datasets"]), detectors=dets, params=params)


def apply_experiment(exp: Experiment) -> None:
    """Load an experiment JSON back into the session (contract 7) on the next run.

    Widget-bound keys cannot change after their widgets exist, so the experiment is
    parked and applied by :func:`sidebar` before it draws anything.
    """
    st.session_state["_pending_experiment"] = exp.to_dict()
    st.rerun()


def apply_pending() -> None:
    """Apply an experiment parked by :func:`apply_experiment` (call before drawing widgets)."""
    d = st.session_state.pop("_pending_experiment", None)
    if not d:
        return
    exp = Experiment.from_dict(d)
    st.session_state["model"] = exp.model
    st.session_state["id_dataset"] = exp.id_dataset
    st.session_state["ood_datasets"] = list(exp.ood_datasets)
    if exp.detectors:
        st.session_state["detector"] = exp.detectors[0]
    st.session_state["params"] = {d: dict(v) for d, v in exp.params.items()}


def knob_widgets(det, key_prefix: str, values: dict[str, Any] | None = None, container=None) -> dict[str, Any]:
    """Widgets generated from a detector's declared knobs (contract 2)."""
    c = container or st
    values = dict(values or {})
    out: dict[str, Any] = {}
    for k in det.knobs:
        cur = values.get(k.name, k.default)
        key = f"{key_prefix}.{det.name}.{k.name}"
        if k.kind == "choice":
            out[k.name] = c.selectbox(k.label or k.name, list(k.choices), index=list(k.choices).index(cur), key=key, help=k.help)
        elif k.kind == "bool":
            out[k.name] = c.checkbox(k.label or k.name, value=bool(cur), key=key, help=k.help)
        elif k.scale == "log" and k.low and k.high:
            # Log-spaced stops that show the real value; the current value is always one of them.
            nice = [m * 10.0 ** e for e in range(-6, 7) for m in (1, 2, 5) if k.low <= m * 10.0 ** e <= k.high]
            stops = sorted({float(f"{v:.3g}") for v in np.geomspace(k.low, k.high, 61)} | set(nice) | {float(cur)})
            out[k.name] = float(c.select_slider(f"{k.label or k.name} (log scale)", stops, value=float(cur), key=key,
                                                help=k.help, format_func=lambda v: f"{v:g}"))
        elif k.kind == "int":
            hi = int(k.high) if k.high is not None else max(int(cur) * 10, 10)
            out[k.name] = int(c.slider(k.label or k.name, int(k.low or 0), hi, int(cur), key=key, help=k.help))
        else:
            if k.high is not None and k.high >= 1e5:  # effectively unbounded: a number box, not a slider
                out[k.name] = float(c.number_input(k.label or k.name, float(k.low or 0.0), float(k.high), float(cur),
                                                   key=key, help=k.help, format="%.4g"))
            else:
                lo, hi = float(k.low if k.low is not None else 0.0), float(k.high if k.high is not None else 1.0)
                out[k.name] = float(c.slider(k.label or k.name, lo, hi, float(cur), step=(hi - lo) / 200 or None,
                                             key=key, help=k.help))
    return out


def run_as_job(key: str, fn, title: str):
    """Run ``fn(ctx)`` as a background job keyed by ``key``; show progress and a Cancel button.

    Returns the job's result once done; while it runs the page re-renders every half
    second (the rest of the page above stays usable) and stops here.
    """
    import time

    from ood_core.jobs import JOBS

    jobs = st.session_state.setdefault("_jobs", {})
    job = JOBS.get(jobs.get(key))
    if job is None:
        job = JOBS.submit(fn, title)
        jobs[key] = job.id
    if job.active:
        snap = job.snapshot()
        eta = f", about {snap['eta']:.0f}s left" if snap["eta"] else ""
        st.progress(snap["fraction"], f"{title}: {snap['message'] or 'starting'}{eta}")
        if st.button("Cancel", key=f"cancel-{key}"):
            job.cancel()
        time.sleep(0.5)
        st.rerun()
    if job.state == "failed":
        jobs.pop(key, None)
        st.error(f"{title} failed: {job.error}")
        st.stop()
    if job.state == "cancelled":
        jobs.pop(key, None)
        st.warning(f"{title} was cancelled; change a setting or reload to run it again.")
        st.stop()
    return job.result

