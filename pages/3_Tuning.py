"""Tuning: sweep a detector's knobs on validation data and apply the best setting."""
from __future__ import annotations

import streamlit as st

from ood_core import facade as fc
from ood_core.figures.compare import LABELS
from ood_core.figures.tuning import tuning_curve
from ui import common, state
from ui.pages import Page
from ui.export import figure_downloads, table_downloads

PAGE = Page(title="Tuning", icon=":material/tune:", order=30, url_path="Tuning", sidebar="no_ood",
            what="sweep a detector's knobs on validation OOD data")

st.set_page_config(page_title="Tuning · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Tune a detector")
st.caption("Sweep knob values and keep the best. Validation never touches the OOD test sets: the ID side is the "
           f"held-out {fc.TUNING_HOLDOUT:.0%} of the ID training split (fixed seed; the detector is fitted on the "
           "rest), the OOD side is a set marked as validation OOD.")

val_sets = fc.validation_sets()
if not val_sets:
    st.warning("No validation OOD set is registered. Add a dataset with the role 'ood_val' to tune.")
    st.stop()


@st.fragment
def tuning_body(ctx: common.Context) -> None:
    """Everything below the caption, a fragment: a control here reruns only this (docs/architecture.md, "The app")."""
    names = [d.name for d in fc.detectors() if d.has_knobs]
    start = state.get("detector") if state.get("detector") in names else names[0]
    if state.widget("tuning.detector") not in names:
        state.set_widget("tuning.detector", start)

    left, right = st.columns([1, 2])
    with left:
        plugin = {d.name: d.plugin for d in fc.detectors() if d.plugin}
        det_name = st.selectbox("Detector", names, key="tuning.detector",
                                format_func=lambda n: f"{n} · plugin ({plugin[n]})" if n in plugin else n)
        det = fc.detector(det_name)
        with common.guard("detectors"):
            reason = fc.availability(ctx.bundle, ctx.id_name)[det_name]
        if reason:
            st.warning(common.text(reason))
            return
        st.caption(det.describe())
        declared = fc.default_grid(det)
        knob_names = [k.name for k in det.knobs]
        swept = st.multiselect("Knobs to sweep", knob_names, default=list(declared) or knob_names[:1],
                               key=f"tuning.knobs.{det_name}", help="defaults: the detector's declared grid")
        grid: dict[str, list] = {}
        with common.guard("grid"):
            for k in swept:
                start_vals = declared.get(k) or [det.knob(k).default]
                text = st.text_input(f"{k} values", ", ".join(str(v) for v in start_vals),
                                     key=f"tuning.grid.{det_name}.{k}", help=det.knob(k).help)
                grid[k] = fc.parse_grid_values(det, k, text)
        val = st.multiselect("Validation OOD", val_sets, default=val_sets[:1], key="tuning.val")
        metric = st.selectbox("Choose by", list(fc.METRICS), format_func=lambda m: LABELS[m], key="tuning.metric")
        n = 1
        for v in grid.values():
            n *= len(v)
        st.caption(f"{n} settings" + (" (model-time: runs as a job with progress)" if det.needs_model else ""))
        run = st.button("Run sweep", key="tuning.run", type="primary", disabled=not (swept and val))

    fixed = {k: v for k, v in state.detector_knobs(det_name).items() if k not in grid}
    run_key = f"tuning:{ctx.bundle.fingerprint}:{ctx.id_name}:{det_name}:{sorted(grid.items())}:{val}:{metric}:{sorted(fixed.items(), key=str)}"
    if run:
        state.put("tuning_requested_sweep", run_key)

    with right:
        if state.get("tuning_requested_sweep") == run_key:
            def _sweep(progress=None, _b=ctx.bundle, _d=det_name, _g=grid, _id=ctx.id_name, _v=list(val), _m=metric,
                       _f=fixed):
                return fc.tune(_b, _d, _g, _id, _v, _m, fixed=_f, progress=progress)

            with common.guard("sweep"):
                if det.needs_model:
                    res = common.run_as_job(run_key, lambda jc: _sweep(jc.progress), f"sweep of {det_name}")
                else:
                    with st.spinner(f"Sweeping {n} settings of {det_name}…"):
                        res = _sweep()
            state.put("tuning_result", {"key": run_key, "detector": det_name, "df": res[0], "best": res[1]})
            state.put("tuning_requested_sweep", None)

        result = state.get("tuning_result")
        if not result or result["detector"] != det_name:
            st.info("Set the grid and press Run sweep.")
            return
        df, best = result["df"], result["best"]
        m = df.attrs.get("metric", metric)
        for note in df.attrs.get("notes", []):
            st.caption(f"Note: {common.text(note)}")
        st.caption(common.text(f"ID validation: {df.attrs.get('id_validation', '')}; "
                               f"OOD validation: {', '.join(df.attrs.get('val_ood', []))}"))
        knobs_swept = [k for k in df.attrs.get("knobs", []) if k in df.columns]
        x = st.selectbox("x-axis", knobs_swept, key="tuning.x") if len(knobs_swept) > 1 else knobs_swept[0]
        others = [k for k in knobs_swept if k != x]
        color = others[0] if others else None
        fig = tuning_curve(df, x, m, color_by=color, title=f"{det_name}: {LABELS[m]} on validation data vs {x}")
        st.plotly_chart(fig, width="stretch", key="tuning.curve")
        figure_downloads(fig, f"tuning_{det_name}_{x}", key="tuning-fig")
        st.dataframe(df, hide_index=True, width="stretch", key="tuning.table")
        table_downloads(df, f"tuning_{det_name}", key="tuning-csv")
        row = df[df["best"]].iloc[0]
        st.success(f"Best {LABELS[m]} {row[m]:.4f} at " + ", ".join(f"{k}={best[k]}" for k in knobs_swept))
        if st.button("Apply best", key="tuning.apply"):
            state.set_detector_knobs(det_name, best)
            state.reset_knob_widgets("scores", det_name, best)  # Scores rebuilds them from the applied values
            st.success(f"Applied to {det_name}: the Scores and Compare pages now use these values.")


tuning_body(ctx)
