"""Scores: one detector, its knobs, ID vs OOD distributions, ROC/PR, a live threshold.

Live knobs (docs/architecture.md, "The app"): everything below the page's caption is a
fragment, so a knob move reruns only it (not app.py's sidebar, not the model or the
extractions), and the threshold controls are a nested fragment, so a threshold move reruns
only the threshold's counts and overlays. The scores of one knob setting are sorted once
(``facade.scores_view``) and their table and base figures are kept in ``state.scores_view``,
so only what changed is rebuilt. A knob move resolves the knobs once, here, through the facade.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from ood_core import facade as fc
from ood_core.figures import scores as figs
from ood_core.figures.previews import thumbnail
from ui import common, state
from ui.pages import Page
from ui.export import figure_downloads, per_sample_downloads, table_downloads

PAGE = Page(title="Scores", icon=":material/leaderboard:", order=10, url_path="Scores",
            what="one detector, its knobs, histograms, ROC/PR and a live threshold")

st.set_page_config(page_title="Scores · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Scores")
st.caption("Pick a detector, move its knobs, and watch the separation of ID and OOD scores change. "
           "Every score is oriented higher = more in-distribution.")

if not ctx.ood:
    st.info("Choose at least one OOD dataset in the sidebar.")
    st.stop()


@st.fragment
def detector_and_results(ctx: common.Context) -> None:
    """The detector, its knobs, the metrics and the threshold: reruns alone on a knob move."""
    id_ext = common.extraction(ctx.bundle, ctx.id_name)
    with common.guard("detectors"):
        reasons = fc.availability(ctx.bundle, ctx.id_name)  # once per (model, dataset), not every rerun
    names = list(reasons)
    if state.get("detector") not in names:
        state.put("detector", "energy")
    left, right = st.columns([1, 3])
    with left:
        det_name = st.selectbox(
            "Detector", names, key="detector",
            format_func=lambda n: f"{n}" + ("  (unavailable)" if reasons[n] else ""),
        )
        if reasons[det_name]:
            st.warning(reasons[det_name])
            return
        with common.guard(f"fitting {det_name}"), st.spinner(f"Fitting {det_name} on the ID training split…"):
            det = fc.fitted_detector(det_name, ctx.bundle, ctx.id_name)
        knob_box = st.container()  # filled after the metrics: a knob move's result reaches the browser first
    raw = common.knob_values(det, "scores", state.detector_knobs(det_name))
    with common.guard(det_name):
        knobs = fc.resolve_knobs(det, raw)  # the one validation of this move; everything below takes it as is

    sets = [ctx.id_name, *ctx.ood]

    def _score_sets(progress=None, _b=ctx.bundle, _d=det, _k=knobs, _sets=sets, _id=ctx.id_name) -> dict[str, np.ndarray]:
        """Scores of every set; defaults bind this run's values so a background job keeps them."""
        return fc.score_sets(_b, _d, _sets, _id, _k, progress)

    view_key = f"{ctx.bundle.fingerprint}:{det_name}:{sorted(knobs.items())}:{sets}"
    view = state.get("scores_view")
    if view is None or view.key != view_key:
        with common.guard(f"scoring with {det_name}"):
            if fc.needs_job(ctx.bundle, det, sets, knobs):
                with right:
                    job_key = f"scores:{view_key}"
                    if job_key not in state.get("job_ids", {}):
                        seconds, line = common.model_time_cost(ctx.bundle, det_name, ctx.id_name, sets, knobs)
                        st.caption(f"Needs the model: {common.text(line)}")
                        # a few seconds start at once; anything longer waits for a click
                        if seconds > LONG_JOB_S and not st.button(f"Run {det_name} as a job", key="scores.run_mt"):
                            return
                    scores = common.run_as_job(job_key, lambda jc: _score_sets(jc.progress),
                                               f"{det_name} on {len(sets)} datasets")
            else:
                scores = _score_sets()
            view = fc.scores_view(view_key, ctx.id_name, scores)
        state.put("scores_view", view)
    table = view.table

    with right:
        acc = id_ext.accuracy
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("ID accuracy", f"{100 * acc:.2f}%" if np.isfinite(acc) else "n/a")
        mean_row = table.iloc[-1]
        c2.metric("AUROC (mean)", f"{100 * mean_row['auroc']:.2f}")
        c3.metric("FPR@95TPR (mean)", f"{100 * mean_row['fpr95']:.2f}")
        c4.metric("AUPR-In (mean)", f"{100 * mean_row['aupr_in']:.2f}")
    with knob_box:
        st.caption(det.describe())
        if (src := fc.plugin_source(det.name)):
            st.badge(f"plugin · {src}", icon=":material/extension:", color="violet")
            st.caption(fc.PLUGIN_TRUST)
        if det.help:
            st.caption(det.help)
        if det.needs_training:
            st.caption(common.statistics_note(ctx.id_name))
        drawn = common.knob_widgets(det, "scores", state.detector_knobs(det_name))
        state.set_detector_knobs(det_name, knobs)
        for k, v in det.derived(**knobs).items():
            st.caption(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if drawn != raw:  # the widgets disagree with the values read before them (not expected): redo with theirs
        st.rerun(scope="fragment")
    with right:
        diag = det.diagnostics(id_ext, **knobs)
        for k, v in diag.items():
            if v:
                st.warning(common.text(f"{k} in the ID test set: {v}. The score's order reverses for them."))
        show = table.rename(columns={"ood_dataset": "OOD set", "n_ood": "n", "auroc": "AUROC %", "fpr95": "FPR95 %",
                                     "aupr_in": "AUPR-In %", "aupr_out": "AUPR-Out %"})
        for c in ["AUROC %", "FPR95 %", "AUPR-In %", "AUPR-Out %"]:
            show[c] = (100 * show[c]).round(2)
        st.subheader("Metrics")
        st.dataframe(show, hide_index=True, width="stretch", key="metrics_table")
        table_downloads(show, f"metrics_{det_name}", key="metrics")
        with st.popover("Per-sample scores"):
            st.caption("Every sample's dataset, index, label, prediction and this detector's score.")
            per_sample_downloads(ctx.model, ctx.id_name, ctx.ood, [det_name], {det_name: knobs}, key="scores")

    threshold_panel(ctx, det_name, view)

    with st.expander("Reproduce"):
        exp = common.current_experiment([det_name], ctx.bundle)
        st.code(exp.to_json(), language="json")
        st.download_button("Experiment JSON", exp.to_json(), "experiment.json", "application/json", key="dl-exp")
        cli = (f"python -m ood_core evaluate --model {exp.model} --id {exp.id_dataset} --ood {','.join(exp.ood_datasets)} "
               f"--detectors {det_name} " + " ".join(f"--param {det_name}.{k}={v}" for k, v in knobs.items()) + " --json")
        st.code(cli, language="bash")


LONG_JOB_S = 20.0  # a model-time detector estimated to take longer asks before it runs


def _figure(view: fc.ScoresView, name: str, build):
    """A base figure of this knob setting, built on first use and kept in the view."""
    if name not in view.figures:
        view.figures[name] = figs.spec(build())
    return view.figures[name]


@st.fragment
def threshold_panel(ctx: common.Context, det_name: str, view: fc.ScoresView) -> None:
    """The threshold, its counts and the figures: reruns alone on a threshold move."""
    sv = view.sets
    scores = view.scores
    st.subheader("Threshold")
    t95 = sv.threshold_at_tpr(0.95)
    lo, hi = sv.lo, sv.hi
    tc1, tc2 = st.columns([3, 1])
    with tc2:
        mode = st.radio("Set the threshold by", ["ID kept (TPR)", "score value"], key="thr_mode")
        focus = st.selectbox("OOD set for counts", ctx.ood, key="thr_focus")
    with tc1:
        if mode == "ID kept (TPR)":
            tpr_target = st.slider("Keep this fraction of ID samples", 0.50, 1.00, 0.95, 0.005, key="thr_tpr")
            thr = sv.threshold_at_tpr(tpr_target)
        else:
            span = hi - lo if hi > lo else 1.0
            thr = st.slider("Score threshold (score ≥ threshold → called ID)", lo, hi, float(np.clip(t95, lo, hi)),
                            span / 500, key="thr_value", format="%.4g")
    stats = sv.at_threshold(focus, thr)
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("threshold", f"{thr:.4g}")
    m2.metric("TPR (ID kept)", f"{100 * stats.tpr:.1f}%")
    m3.metric(f"FPR ({common.text(focus)} called ID)", f"{100 * stats.fpr:.1f}%")
    m4.metric("ID called OOD", f"{stats.id_below} / {stats.id_above + stats.id_below}")
    m5.metric(f"{common.text(focus)} called ID", f"{stats.ood_above} / {stats.ood_above + stats.ood_below}")

    g1, g2 = st.columns(2)
    with g1:
        log_y = st.checkbox("log y-axis", key="hist_log")
        base = _figure(view, f"hist:{log_y}", lambda: figs.histogram_base(
            sv, title=f"{det_name} scores (higher = more ID)", log_y=log_y))
        hist = figs.with_threshold_line(base, thr)
        st.plotly_chart(hist, width="stretch", key="hist")
        figure_downloads(hist, f"histogram_{det_name}", key="hist")
    with g2:
        # One curve drawn at a time (tabs would draw both on every move); switching reruns only this fragment.
        curve = st.radio("Curve", ["ROC", "PR"], horizontal=True, key="curve_kind", label_visibility="collapsed")
        if curve == "ROC":
            rocf = figs.with_roc_markers(_figure(view, "roc", lambda: figs.roc_base(sv, view.table)), sv, thr)
            st.plotly_chart(rocf, width="stretch", key="roc")
            figure_downloads(rocf, f"roc_{det_name}", key="roc")
        else:
            prf = _figure(view, "pr", lambda: figs.pr_base(sv, view.table))
            st.plotly_chart(prf, width="stretch", key="pr")
            figure_downloads(prf, f"pr_{det_name}", key="pr")

    with st.expander("Mistakes at this threshold: OOD samples called ID, ID samples called OOD"):
        kind = st.radio("Show", ["ood", "id"], horizontal=True, key="miss_kind",
                        format_func=lambda k: f"{common.text(focus)} called ID (highest scores)" if k == "ood"
                        else "ID called OOD (lowest scores)")
        ds_name = focus if kind == "ood" else ctx.id_name
        s, idx = scores[ds_name], view.extremes[ds_name]
        idx = idx[s[idx] >= thr] if ds_name == focus else idx[s[idx] < thr]
        if len(idx) == 0:
            st.write("None at this threshold.")
        else:
            ds = fc.dataset(ds_name)
            ext = common.extraction(ctx.bundle, ds_name)
            cols = st.columns(6)
            for j, i in enumerate(idx):
                with cols[j % 6]:
                    st.image(thumbnail(ds.image(i)), width=84, clamp=True,
                             caption=f"#{int(ds.sample_ids[i])} score {s[i]:.3g} pred {int(ext.preds[i])}")
                    if st.button("Saliency →", key=f"sal-{ds_name}-{i}"):
                        state.select_sample(ds_name, i)
                        st.switch_page("pages/5_Saliency.py")


detector_and_results(ctx)
