"""Shared Streamlit helpers for the pages: the experiment sidebar, errors, knob widgets, jobs.

The session's shared keys live in :mod:`ui.state`. ``app.py`` draws the sidebar once per run
(:func:`sidebar`); pages read the experiment with :func:`context`. No torch here: everything
goes through ``ood_core.facade`` (``tests/core/test_import_graph.py``).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import streamlit as st

from ood_core import facade as fc
from ood_core.errors import UserError, first_line
from ood_core.knobs import Knob

from . import state
from .pages import ROOT, discover

PICKERS = ("model", "id_dataset", "ood_datasets")
# The characters that start Markdown or HTML in one line of text: links and images ([ ] !), raw HTML
# and autolinks (< > &), emphasis and code (* _ `), strikethrough (~), LaTeX ($), headings (#), and
# the backslash itself. Parentheses, colons and quotes stay as they are: without "[" there is no
# link, and messages read as before.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>!#~$&])")


def text(value: object) -> str:
    """``value`` (a dataset, class, file or model name, a path, a message quoting one) as literal text
    inside a Streamlit Markdown string: ``st.markdown``, ``st.caption``, ``st.info``/``error``/…,
    widget labels and ``st.metric`` labels all render Markdown, so ``![t](http://host/x.png)`` in a
    dataset name would make every viewer's browser fetch that URL (docs/architecture.md, "The app").
    A backslash before a punctuation character is CommonMark's literal; a leading ``-``, ``+`` or
    ``1.`` would start a list, so it is escaped too; newlines become spaces (one line stays one)."""
    out = _MARKDOWN.sub(r"\\\1", " ".join(str(value).splitlines()))
    return re.sub(r"^(\s*\d*)([-+.)])(?=\s|$)", r"\1\\\2", out, count=1)


@contextlib.contextmanager
def guard(what: str = "", stop: bool = True) -> Iterator[None]:
    """The one error guard: bad input (``UserError``), a file the machine cannot read (``OSError``) or
    memory running out becomes one ``st.error`` line, never a traceback (docs/architecture.md, "Errors").

    ``stop``: stop the page there (what follows needs the block's result); ``False`` skips the rest
    of the block only, and the rest of the page still renders.
    """
    try:
        yield
    except (UserError, OSError, MemoryError) as exc:
        if isinstance(exc, MemoryError):
            line = "out of memory; use a smaller subset (at most N samples)"
        elif isinstance(exc, UserError):
            line = first_line(exc)
        else:
            line = exc.strerror or first_line(exc)
        st.error(text(f"{what + ': ' if what else ''}{line}"))
        if stop:
            st.stop()


def attempt(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under :func:`guard` without stopping: its result, or None after one error line."""
    with guard(what, stop=False):
        return fn(*args, **kwargs)
    return None


def get_bundle(spec: str | None = None):
    """The model for ``spec`` (session default), with a progress bar on first-launch training.

    ``workbench.load_model`` keeps loaded models in-process, so no Streamlit cache is needed.
    """
    spec = spec or state.model()
    progress = None
    if spec == "default":
        if fc.default_model_missing():
            bar = st.progress(0.0, "First launch: training the default model (about 20 seconds on 2 cores)…")
            progress = lambda f, m: bar.progress(min(1.0, f), m)  # noqa: E731
    with guard("loading the model"):
        return fc.load_model(spec, progress)


def extraction(bundle, name: str):
    """Cached Extraction; a forward pass that has to run shows a progress bar and a Stop button.

    docs/architecture.md, "Concurrency and cancellation": each batch updates the bar, and every
    Streamlit call is a point where the script runner stops a run whose session closed or reruns
    one the user changed; Stop is such a rerun, after which the pass is not started again until
    the next interaction (its finished chunks are kept and resumed).
    """
    key = f"stop-extract:{bundle.fingerprint}:{name}"
    if state.widget(key):  # the Stop button's value in the run it was pressed
        st.warning(f"The forward pass on {text(name)} was stopped; change a setting or rerun the page to resume it.")
        st.stop()
    shown: dict = {}

    def progress(frac: float, msg: str) -> None:
        if not shown:  # drawn only when a pass runs: a cached extraction draws nothing
            box = st.container()
            shown["bar"] = box.progress(0.0, text(msg))
            box.button("Stop", key=key, help="stop this forward pass")
        shown["bar"].progress(min(1.0, max(0.0, frac)), text(msg))

    with guard(f"extracting {name}"), st.spinner(f"Forward pass on {text(name)}…"):
        return fc.extraction(bundle, name, progress)


statistics_note = fc.statistics_note


def id_names() -> list[str]:
    return [s.name for s in fc.datasets(("id_test",))]


def ood_names() -> list[str]:
    return [s.name for s in fc.datasets(("ood_test", "shifted_id", "ood_val"))]


@dataclass
class Context:
    model: str
    bundle: Any
    id_name: str
    ood: list[str]


def sidebar(mode: str = "pickers") -> None:
    """The experiment picker, drawn once per run by ``app.py`` before the page runs.

    ``mode``: ``"pickers"`` (model, ID set, OOD sets), ``"no_ood"`` (model and ID set), or
    ``"none"`` for a page that sets the experiment itself (its values are kept; see
    :func:`sidebar_summary`). An experiment parked by :func:`apply_experiment` is applied first.
    """
    state.init()
    apply_pending()
    state.put("sidebar_drawn", mode)
    drawn = {"pickers": PICKERS, "no_ood": PICKERS[:2], "none": ()}[mode]
    state.keep(k for k in PICKERS if k not in drawn)
    if not drawn:
        return
    models = fc.list_models()
    specs = [m["spec"] for m in models]
    labels = {m["spec"]: m["label"] for m in models}
    if state.model() not in specs:
        state.put("model", "default")
    with st.sidebar:
        st.subheader("Experiment")
        st.selectbox("Model", specs, format_func=lambda s: labels.get(s, s), key="model")
        ids = id_names()
        if state.id_dataset() not in ids:
            state.put("id_dataset", ids[0])
        st.selectbox("ID dataset", ids, key="id_dataset", help="its training split provides training statistics")
        if "ood_datasets" in drawn:
            opts = [n for n in ood_names() if n != state.id_dataset()]
            state.put("ood_datasets", [n for n in state.ood_datasets() if n in opts])
            st.multiselect("OOD datasets", opts, key="ood_datasets",
                           format_func=lambda n: f"{n} ({fc.dataset_spec(n).role.replace('_', ' ')})")


def sidebar_summary() -> None:
    """The experiment as text in the sidebar, for a page without pickers (drawn after the page ran)."""
    with st.sidebar:
        st.subheader("Current experiment")
        st.caption(f"Model: {text(state.model())}")
        st.caption(f"ID: {text(state.id_dataset())} · OOD: {text(', '.join(state.ood_datasets()) or 'none')}")


def frame(mode: str = "pickers") -> None:
    """A page's first call: takes what ``app.py`` drew this run, or draws the sidebar when the page
    runs on its own (AppTest runs a switched-to page without app.py; so does ``streamlit run pages/…``).

    ``mode`` is the page's entry in app.py's ``SIDEBAR``.
    """
    if state.pop("sidebar_drawn") is None:
        take_over_from_pages_folder()
        sidebar(mode)
        state.pop("sidebar_drawn")


def app_pages(root: Path | None = None) -> list:
    """The app's pages as ``st.Page`` objects, for ``st.navigation``, from each file's ``PAGE`` under
    ``root`` (the app's folder; :mod:`ui.pages`)."""
    root = root or ROOT
    return [st.Page(str(root / path), title=p.title, icon=p.icon or None, default=(path == "home.py"),
                    **({"url_path": p.url_path} if p.url_path else {}))
            for path, p in discover(root)]


def sidebar_mode(url_path: str, root: Path | None = None) -> str:
    """The sidebar mode the page at ``url_path`` declares (``"pickers"`` unless it says otherwise)."""
    return next((p.sidebar for _, p in discover(root or ROOT) if p.url_path == url_path), "pickers")


_TAKEN_OVER: list[bool] = []  # once per process, as Streamlit's own decision


def take_over_from_pages_folder() -> None:
    """Rerun through ``app.py`` when Streamlit ran this page through its ``pages/`` auto-navigation.

    Streamlit decides once per process, before any script has called ``st.navigation``, that
    an app with a ``pages/`` folder next to its main script is a folder-navigated app. The first
    load of a deep link (``/Scores``) after the server starts therefore runs the page on its own
    under the navigation built from ``pages/`` ("app", …, "Models and Data"), not ``app.py``
    (docs/architecture.md, "The app"). Calling ``st.navigation`` with the app's pages (same URL
    paths, so this page keeps its identity) hands navigation to the app for the rest of the
    process, and the rerun runs ``app.py``, which opens the same page with its sidebar. Once per
    process: AppTest resets Streamlit's decision on every run, and a page run on its own
    (AppTest of a page file, ``streamlit run pages/…``) has itself as the main script.
    """
    from pathlib import Path

    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if _TAKEN_OVER:
        return
    run = get_script_run_ctx()
    main = Path(getattr(run, "main_script_path", "") or "")
    if main.name == "app.py" and (main.parent / "pages").is_dir():
        _TAKEN_OVER.append(True)
        st.navigation(app_pages(main.parent))
        st.rerun()


def context(mode: str = "pickers") -> Context:
    """:func:`frame`, then the experiment the sidebar set, with its model loaded."""
    frame(mode)
    bundle = get_bundle()
    expect = state.pop("experiment_expect", None)
    if expect:
        differs = fc.model_differences(fc.Experiment.from_dict(expect), bundle)
        if differs:  # the run goes on with this model, but not without a word
            st.warning(text(differs))
    return Context(state.model(), bundle, state.id_dataset(), state.ood_datasets())


def current_experiment(detectors: list[str] | None = None, bundle: Any = None) -> "fc.Experiment":
    """This session's experiment, with the model's fingerprint and load options (``bundle``, or the
    current model loaded) so that running it on another model warns (``fc.model_differences``)."""
    state.init()
    dets = detectors or [state.get("detector")]
    knobs = state.detector_knobs()
    params = {d: knobs[d] for d in dets if knobs.get(d)}
    sub, seed = fc.subsample_of(state.id_dataset(), state.ood_datasets())
    try:
        record = fc.model_record(bundle if bundle is not None else state.model())
    except (UserError, OSError):  # a model that does not load records nothing; the model picker says why
        record = {}
    return fc.Experiment(model=state.model(), id_dataset=state.id_dataset(), ood_datasets=state.ood_datasets(),
                         detectors=dets, params=params, subsample=sub, seed=seed, **record)


def apply_experiment(exp: "fc.Experiment") -> None:
    """Load an experiment JSON back into the session on the next run.

    Widget-bound keys cannot change after their widgets exist, so the experiment is
    parked and applied by :func:`sidebar` before it draws anything.
    """
    state.put("experiment_to_apply", exp.to_dict())
    st.rerun()


def apply_pending() -> None:
    """Apply an experiment parked by :func:`apply_experiment` (call before drawing widgets)."""
    d = state.pop("experiment_to_apply", None)
    if not d:
        return
    try:
        exp = fc.Experiment.from_dict(d)
    except UserError as exc:  # parked by this app, so checked already; a session from older code may differ
        st.warning(f"the experiment was not applied: {text(first_line(exc))}")
        return
    state.put("experiment_expect", exp.to_dict())  # the model it recorded, compared once the model is loaded
    state.put("model", exp.model)
    state.put("id_dataset", exp.id_dataset)
    state.put("ood_datasets", list(exp.ood_datasets))
    if exp.detectors:
        state.put("detector", exp.detectors[0])
    state.put("detector_knobs", {d: dict(v) for d, v in exp.params.items()})
    try:  # the experiment's subsets by role, so its numbers come back (issue 14)
        fc.apply_subsample(exp.subsample, exp.id_dataset, exp.ood_datasets, exp.seed)
    except UserError as exc:
        st.warning(f"the experiment's subsample was not applied: {text(first_line(exc))}")


def knob_widgets(owner, page: str, values: dict[str, Any] | None = None, container=None,
                 disabled: Iterable[str] = ()) -> dict[str, Any]:
    """Widgets generated from declared knobs, keyed ``page.owner.knob`` (:func:`ui.state.knob_key`).

    ``owner`` is anything with a ``name`` and ``knobs`` (a detector, a training method's view,
    a :class:`ood_core.knobs.KnobSet`); ``values`` are the starting values (defaults otherwise);
    knobs named in ``disabled`` are drawn greyed out.
    """
    c = container or st
    values = dict(values or {})
    off = set(disabled)
    return {k.name: _knob_widget(c, k, values.get(k.name, k.default), state.knob_key(page, owner.name, k.name),
                                 k.name in off) for k in owner.knobs}


def knob_values(owner, page: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`knob_widgets` will return this run, read before the widgets are drawn.

    A moved widget's new value is in the session before the script runs, so a page can compute
    (and show) its result first and draw the knob widgets after it: the browser then receives
    the result ahead of the widgets' own messages (docs/architecture.md, "The app").
    """
    values = dict(values or {})
    out = {}
    for k in owner.knobs:
        v = state.widget(state.knob_key(page, owner.name, k.name), values.get(k.name, k.default))
        out[k.name] = (bool(v) if k.kind == "bool" else int(v) if k.kind == "int"
                       else v if k.kind in ("choice", "text", "floats", "ints") else float(v))
    return out


def _knob_widget(c, k: Knob, cur: Any, key: str, disabled: bool) -> Any:
    label, kw = k.label or k.name, {"key": key, "help": k.help or None, "disabled": disabled}
    if k.kind in ("text", "floats", "ints"):  # typed; empty = auto (resolved by knobs.resolve at the facade)
        shown = "" if cur is None else (", ".join(f"{v:g}" for v in cur) if isinstance(cur, (list, tuple)) else str(cur))
        return c.text_input(label, value=shown, placeholder="auto", **kw)
    if k.kind == "choice":
        return c.selectbox(label, list(k.choices), index=list(k.choices).index(cur), **kw)
    if k.kind == "bool":
        return c.checkbox(label, value=bool(cur), **kw)
    if k.scale == "log" and k.low and k.high:
        # Log-spaced stops that show the real value; the current value is always one of them.
        nice = [m * 10.0 ** e for e in range(-6, 7) for m in (1, 2, 5) if k.low <= m * 10.0 ** e <= k.high]
        stops = sorted({float(f"{v:.3g}") for v in np.geomspace(k.low, k.high, 61)} | set(nice) | {float(cur)})
        return float(c.select_slider(f"{label} (log scale)", stops, value=float(cur), format_func=lambda v: f"{v:g}",
                                     **kw))
    if k.kind == "int":
        hi = int(k.high) if k.high is not None else max(int(cur) * 10, 10)
        return int(c.slider(label, int(k.low or 0), hi, int(cur), step=int(k.step or 1), **kw))
    if k.high is not None and k.high >= 1e5:  # effectively unbounded: a number box, not a slider
        return float(c.number_input(label, float(k.low or 0.0), float(k.high), float(cur), format="%.4g", **kw))
    lo, hi = float(k.low if k.low is not None else 0.0), float(k.high if k.high is not None else 1.0)
    return float(c.slider(label, lo, hi, float(cur), step=k.step or (hi - lo) / 200 or None, **kw))


@st.cache_data(show_spinner=False, max_entries=256)
def _cost(fingerprint: str, detector: str, id_name: str, datasets: tuple[str, ...], params_json: str,
          _bundle: Any) -> tuple[float, str]:
    import json

    return fc.model_time_estimate(_bundle, detector, id_name, list(datasets), json.loads(params_json))


def model_time_cost(bundle, detector: str, id_name: str, datasets: Iterable[str],
                    params: dict[str, Any] | None) -> tuple[float, str]:
    """``(seconds, one line)``: what running a model-time detector will cost, from a dry run (cached per setting)."""
    import json

    try:
        seconds, line = _cost(bundle.fingerprint, detector, id_name, tuple(datasets),
                              json.dumps(dict(params or {}), sort_keys=True, default=str), bundle)
    except UserError as exc:
        return 0.0, f"{detector}: cost unknown ({first_line(exc)})"
    return seconds, f"{detector}: {line}"


def session_probe():
    """Whether this browser session is still connected, as a callable for a job (None outside a server).

    docs/architecture.md, "Concurrency and cancellation": a job whose session has gone (the tab was
    closed) cancels itself at its next batch instead of running on for nobody. Streamlit's runtime
    knows its connected sessions; AppTest and bare script runs have no runtime, so no probe.
    """
    try:
        from streamlit import runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        if ctx is None or not runtime.exists():
            return None
        rt, sid = runtime.get_instance(), ctx.session_id
    except Exception:  # noqa: BLE001 - another Streamlit version: jobs simply are not watched
        return None
    return lambda: rt.is_active_session(sid)


def run_as_job(key: str, fn, title: str, wait_s: float = 0.0, supersedes: str | None = None, forget: bool = False):
    """Run ``fn(ctx)`` as a background job keyed by ``key``; show progress and a Cancel button.

    Returns the job's result once done; while it runs the page re-renders every half
    second (the rest of the page above stays usable) and stops here. ``wait_s``: a new job that
    ends within this many seconds is returned in this same run (no poll, no flicker), so quick
    work costs nothing for running as a job while slow work never blocks a widget for longer.
    ``supersedes``: a key prefix; jobs this session started under another key with that prefix
    are cancelled (a setting changed while they ran: their result would be thrown away).
    ``forget``: drop a finished job once its result is returned (the caller keeps the result;
    a large one, such as a 100,000-point map, is then not held twice).
    """
    import time

    JOBS = fc.JOBS

    jobs = state.setdefault("job_ids", {})
    if supersedes is not None:
        for other in [k for k in jobs if k != key and k.startswith(supersedes)]:
            stale = JOBS.get(jobs.pop(other))
            if stale is not None:
                fc.cancel_job(stale.id)
    job = JOBS.get(jobs.get(key))
    if job is None:
        job = JOBS.submit(fn, title, owner_alive=session_probe())
        jobs[key] = job.id
        if wait_s > 0:
            job.wait(wait_s)
    if job.active:
        snap = job.snapshot()
        eta = f", about {snap['eta']:.0f}s left" if snap["eta"] else ""
        st.progress(snap["fraction"], text(f"{title}: {snap['message'] or 'starting'}{eta}"))
        if st.button("Cancel", key=f"cancel-{key}"):
            fc.cancel_job(job.id)
        time.sleep(0.5)
        st.rerun()
    if job.state == "failed":
        jobs.pop(key, None)
        st.error(text(f"{title} failed: {job.error}"))
        st.stop()
    if job.state == "cancelled":
        jobs.pop(key, None)
        st.warning(f"{title} was cancelled; change a setting or reload to run it again.")
        st.stop()
    if forget:
        jobs.pop(key, None)
        JOBS.forget(job.id)
    return job.result

