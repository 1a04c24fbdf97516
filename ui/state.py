"""The session's shared state: every key the pages keep in ``st.session_state``, documented here.

:data:`KEYS` lists each key once: its name, type, meaning and who writes it. :func:`get`,
:func:`put` and :func:`pop` refuse any other name, so a new key is added here first. Widget
keys that only one page reads (``maps_n``, ``sal_index``, …) are that page's business:
:func:`widget` and :func:`set_widget` read and pre-set them. Knob widgets are keyed by
:func:`knob_key`, and :func:`reset_knob_widgets` drops them so a page rebuilds them from new
values. No other module touches ``st.session_state``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import streamlit as st

from ood_core.facade import DEFAULT_OOD


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    meaning: str
    written_by: str
    default: Callable[[], Any] | None = None  # filled in by init(); None: absent until written


KEYS: dict[str, Key] = {k.name: k for k in (
    # --- the experiment (the sidebar's pickers and the Scores page's detector) ---
    Key("model", "str", "the model: 'default', a checkpoint path, or an 'upload:…' key",
        "the sidebar picker; Train ('Use this model'); Models & data (a loaded upload); an applied experiment",
        lambda: "default"),
    Key("id_dataset", "str", "the ID test set; its training split gives the training statistics",
        "the sidebar picker; Models & data (a registered ID set); an applied experiment", lambda: "mnist"),
    Key("ood_datasets", "list[str]", "the OOD sets every page scores against",
        "the sidebar picker; Models & data (registered or forgotten sets); an applied experiment",
        lambda: list(DEFAULT_OOD)),
    Key("detector", "str", "the detector shown on Scores (Tuning starts from it)",
        "Scores' detector picker; an applied experiment", lambda: "energy"),
    Key("detector_knobs", "dict[str, dict[str, Any]]",
        "{detector: {knob: value}}: knob values set on Scores or applied from Tuning; Compare and exports use them",
        "Scores; Tuning ('Apply best'); an applied experiment", dict),
    Key("selected_sample", "dict | None", "{'dataset': name, 'index': i}: a sample picked to explain on Saliency",
        "Scores (mistakes), Maps (gallery), Saliency (gallery)", lambda: None),
    Key("sidebar_drawn", "str", "the sidebar mode app.py drew this run; the page's first call takes it (absent: the page "
        "runs on its own, as in AppTest, and draws the sidebar itself)", "ui.common.sidebar (app.py); taken by ui.common.frame"),
    # --- applying an experiment JSON ---
    Key("experiment_to_apply", "dict", "an experiment parked until the next run applies it, before any widget exists",
        "ui.common.apply_experiment (Home, Models & data)"),
    Key("experiment_expect", "dict", "the applied experiment, kept until the model is loaded and compared with "
        "the one it recorded (fingerprint, load options): a warning when they differ", "ui.common.context"),
    Key("experiment_applied_message", "str", "the confirmation Models & data shows once, after the rerun that applied it",
        "Models & data"),
    Key("experiment_upload_applied", "str", "file id of the experiment upload Home has applied (not re-applied on reruns)",
        "Home"),
    # --- work kept between runs ---
    Key("job_ids", "dict[str, str]", "{work key: job id} of the background jobs pages started",
        "ui.common.run_as_job; Compare (drops a finished job)"),
    Key("scores_view", "facade.ScoresView", "(key, sets, table, scores, extremes, figures): the Scores page's current "
        "knob setting, its scores sorted once (metrics.ScoreSets), exact table and base figure specs, so a threshold "
        "move rebuilds only overlays (docs/architecture.md, \"The app\")", "Scores"),
    Key("maps_results", "dict[str, MapResult]", "the last few maps computed, by their settings", "Maps"),
    Key("maps_selected_points", "list[tuple[str, int]]", "(dataset, index) of the points selected on either map",
        "Maps"),
    Key("saliency_shown_selection", "dict", "the selected_sample Saliency has copied into its pickers (once)",
        "Saliency"),
    Key("tuning_requested_sweep", "str | None", "the settings key of the sweep the user asked for and not yet shown",
        "Tuning"),
    Key("tuning_result", "dict", "{'key', 'detector', 'df', 'best'} of the last sweep", "Tuning"),
    Key("train_job_id", "str", "the training job Train shows", "Train"),
    Key("loaded_model", "str", "the model Models & data loaded and describes (its spec)", "Models & data"),
)}


def _check(name: str) -> str:
    if name not in KEYS:
        raise KeyError(f"{name!r} is not a documented session key (ui/state.py KEYS)")
    return name


def init() -> None:
    """Fill in every key that has a default and is not set yet."""
    for k in KEYS.values():
        if k.default is not None and k.name not in st.session_state:
            st.session_state[k.name] = k.default()


def get(name: str, default: Any = None) -> Any:
    _check(name)
    if name not in st.session_state and KEYS[name].default is not None:
        return KEYS[name].default()
    return st.session_state.get(name, default)


def put(name: str, value: Any) -> None:
    st.session_state[_check(name)] = value


def pop(name: str, default: Any = None) -> Any:
    return st.session_state.pop(_check(name), default)


def setdefault(name: str, value: Any) -> Any:
    return st.session_state.setdefault(_check(name), value)


def keep(names: Iterable[str]) -> None:
    """Re-assign keys whose widgets this run does not draw: Streamlit drops an unrendered widget's state."""
    for name in names:
        if _check(name) in st.session_state:
            st.session_state[name] = st.session_state[name]


# --- typed accessors of the experiment -----------------------------------------------------------

def model() -> str:
    return get("model")


def id_dataset() -> str:
    return get("id_dataset")


def ood_datasets() -> list[str]:
    return list(get("ood_datasets"))


def detector_knobs(detector: str | None = None) -> dict[str, Any]:
    """Knob values of one detector (a copy), or ``{detector: {knob: value}}`` of all."""
    allv = get("detector_knobs")
    return dict(allv.get(detector, {})) if detector else {d: dict(v) for d, v in allv.items()}


def set_detector_knobs(detector: str, values: dict[str, Any]) -> None:
    put("detector_knobs", {**get("detector_knobs"), detector: dict(values)})


def select_sample(dataset: str, index: int) -> None:
    put("selected_sample", {"dataset": dataset, "index": int(index)})


# --- a page's own widgets ------------------------------------------------------------------------

def widget(key: str, default: Any = None) -> Any:
    """The current value of one of the page's own widgets (``default`` before it is drawn)."""
    return st.session_state.get(key, default)


def set_widget(key: str, value: Any) -> None:
    """Pre-set one of the page's own widgets (before it is drawn in this run)."""
    st.session_state[key] = value


def knob_key(page: str, owner: str, knob: str) -> str:
    """The widget key of a declared knob: ``page.owner.knob`` (e.g. ``scores.energy.T``)."""
    return f"{page}.{owner}.{knob}"


def reset_knob_widgets(page: str, owner: str, knobs: Iterable[str]) -> None:
    """Drop a page's knob widgets so the page rebuilds them from the stored values on its next run."""
    for k in knobs:
        st.session_state.pop(knob_key(page, owner, k), None)
