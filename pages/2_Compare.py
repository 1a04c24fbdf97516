"""Compare: every detector on every OOD set, with 95% bootstrap intervals."""
from __future__ import annotations

import json

import streamlit as st

from ood_core import facade as cmp
from ood_core.errors import UserError
from ood_core.figures.compare import LABELS, compare_chart
from ui import common, state
from ui.pages import Page
from ui.export import figure_downloads, table_downloads

PAGE = Page(title="Compare", icon=":material/table_chart:", order=20, url_path="Compare",
            what="every detector side by side with bootstrap intervals")

st.set_page_config(page_title="Compare · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Compare detectors")
st.caption("Which detector should you trust for this model and this kind of shift? Every detector on every OOD set, "
           "with 95% percentile-bootstrap intervals (ID and OOD resampled separately). Knob values come from the "
           "Scores and Tuning pages; detectors you have not touched use their defaults.")

if not ctx.ood:
    st.info("Choose at least one OOD dataset in the sidebar.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=32)
def _table(fingerprint: str, id_name: str, ood: tuple, dets: tuple, params_json: str, n_boot: int,
           model_state: tuple, _bundle):
    return cmp.compare(_bundle, id_name, list(ood), list(dets), json.loads(params_json), n_boot=n_boot)


@st.fragment
def compare_body(ctx: common.Context) -> None:
    """Everything below the caption, a fragment: a control here reruns only this (docs/architecture.md, "The app")."""
    common.extraction(ctx.bundle, ctx.id_name)
    classes = {d.name: d for d in cmp.detectors()}
    cached_names = cmp.cached_array_detectors()
    model_names = [n for n, c in classes.items() if c.needs_model]

    c1, c2, c3 = st.columns([2, 5, 1])
    with c1:
        metric = st.radio("Metric", list(cmp.METRICS), format_func=lambda m: LABELS[m], horizontal=True, key="compare.metric")
    with c2:
        chosen = st.multiselect("Detectors", list(classes), default=cached_names, key="compare.detectors",
                                format_func=lambda n: f"{n} · plugin ({classes[n].plugin})" if classes[n].plugin else n,
                                help="model-time detectors (e.g. odin) need a job; their rows appear once it has run")
    with c3:
        n_boot = int(st.number_input("Resamples", 0, 5000, 1000, 100, key="compare.n_boot",
                                     help="bootstrap resamples for the intervals (0: no intervals)"))
    if not chosen:
        st.info("Pick at least one detector.")
        return

    params = {d: v for d, v in state.detector_knobs().items() if d in chosen}
    chosen_model = [d for d in chosen if d in model_names]


    def _model_time_cached() -> tuple[bool, ...]:
        out = []
        for d in chosen_model:
            try:
                out.append(cmp.model_time_cached(ctx.bundle, d, [ctx.id_name, *ctx.ood], params.get(d)))
            except UserError:
                out.append(False)
        return tuple(out)


    mt_state = _model_time_cached()
    with common.guard("comparing"), st.spinner(f"Scoring {len(chosen)} detectors on {len(ctx.ood)} OOD sets…"):
        df = _table(ctx.bundle.fingerprint, ctx.id_name, tuple(ctx.ood), tuple(chosen),
                    json.dumps(params, sort_keys=True, default=str), n_boot, mt_state, ctx.bundle)

    # --- model-time detectors: run as a job -------------------------------------------------
    pending = [d for d, ok in zip(chosen_model, mt_state) if not ok]
    if pending:
        key = f"compare-mt:{ctx.bundle.fingerprint}:{ctx.id_name}:{ctx.ood}:{pending}:{sorted(params.items(), key=str)}"
        running = key in state.get("job_ids", {})
        if not running:
            with st.spinner("Estimating what they will cost (a dry run on a few images)…"):
                costs = [common.model_time_cost(ctx.bundle, d, ctx.id_name, [ctx.id_name, *ctx.ood], params.get(d))
                         for d in pending]
            st.caption("Before running: " + "; ".join(line for _, line in costs)
                       + (". The low-dimensional gradient detectors share one subspace fit and one G_low per set."
                          if sum(d.startswith("lowdim") for d in pending) > 1 else ""))
        if running or st.button(f"Run model-time detectors ({', '.join(pending)}) as a job", key="compare.run_mt"):
            def _job(jc, _b=ctx.bundle, _id=ctx.id_name, _ood=list(ctx.ood), _d=pending, _p=params):
                return cmp.compare(_b, _id, _ood, _d, _p, n_boot=0, progress=jc.progress, run_model_time=True)
            common.run_as_job(key, _job, f"{', '.join(pending)} on {1 + len(ctx.ood)} datasets")
            state.get("job_ids").pop(key, None)
            st.rerun()

    # --- the table ----------------------------------------------------------------------------
    ok = cmp.ok_rows(df)
    if ok.empty:
        st.warning("No detector could run on this model and data; see the reasons below.")
    else:
        w = cmp.wide(df, metric)
        best = cmp.best_mask(w, metric)
        better = "higher" if metric != "fpr95" else "lower"
        st.subheader(f"{LABELS[metric]} ({better} is better; best per column in bold green)")
        styled = w.style.format("{:.4f}").apply(
            lambda col: ["font-weight: bold; background-color: #c8e6c9" if b else "" for b in best[col.name]], axis=0)
        st.dataframe(styled, width="stretch", key="compare.table")
        if metric in ("auroc", "fpr95") and n_boot:
            with st.expander(f"{LABELS[metric]} with 95% bootstrap intervals ({n_boot} resamples)", expanded=True):
                st.dataframe(cmp.ci_text(df, metric), width="stretch", key="compare.ci")
        bench_view(ctx, df, metric)
        secs = df.attrs.get("seconds")
        if secs is not None:
            st.caption(f"{len(ok)} cells computed in {secs:.2f} s (cached afterwards).")

    bad = cmp.unavailable(df)
    if not bad.empty:
        st.markdown("**Not shown**")
        for _, r in bad.iterrows():
            st.markdown(f":gray[**{common.text(r['detector'])}**: {common.text(r['status'])}. {common.text(r['reason'])}]")

    if not ok.empty:
        fig = compare_chart(df, metric)
        st.plotly_chart(fig, width="stretch", key="compare.chart")
        d1, d2 = st.columns(2)
        with d1:
            figure_downloads(fig, f"compare_{metric}", key="compare-fig")
        with d2:
            table_downloads(df, "compare_table", key="compare-csv")
        with st.expander("Long table: every detector × OOD set with all metrics"):
            st.dataframe(df, hide_index=True, width="stretch", key="compare.long")


def bench_view(ctx: common.Context, df, metric: str) -> None:
    """Near/far means as OpenOOD reports them, with the published value beside, when the ID set is a
    benchmark's (docs/architecture.md, "Benchmarks")."""
    with common.guard("grouping by benchmark"):
        view = cmp.benchmark_view(df, ctx.id_name, metric, ctx.bundle)
    if view is None:
        return
    st.subheader(f"{view.benchmark}: near / far means ({LABELS[metric]})")
    t = view.table
    cols = [c for c in t.columns if not c.endswith(" sets") and not c.endswith(" outside")]
    shown = t[cols].copy()
    for g in view.groups:
        if f"{g} published" in t.columns:
            shown[f"{g} published"] = [
                "" if p != p else f"{p:.4f}" + ("" if s is None or s != s else f" ± {s:.4f}")
                for p, s in zip(t[f"{g} published"], t.get(f"{g} published std", [None] * len(t)))]
            shown.drop(columns=[f"{g} published std"], errors="ignore", inplace=True)
    outside = {g: t[f"{g} outside"].fillna(False).astype(bool) for g in view.groups if f"{g} outside" in t.columns}

    def _mark(col):
        flags = outside.get(col.name)
        return ["background-color: #ffcdd2" if flags is not None and flags.get(i, False) else "" for i in col.index]

    styled = shown.style.format({g: "{:.4f}" for g in view.groups}).apply(_mark, axis=0)
    st.dataframe(styled, width="stretch", key="compare.bench")
    lines = [f"{g}: {', '.join(names)}" for g, names in view.groups.items()]
    st.caption("Plain means over each group's sets, as OpenOOD v1.5 reports them. " + "; ".join(lines) + ".")
    if view.missing:
        st.caption("Not in this comparison (choose them as OOD sets in the sidebar for the full group): "
                   + "; ".join(f"{g}: {', '.join(n)}" for g, n in view.missing.items()) + ".")
    if view.published_arch:
        st.caption(f"Published: OpenOOD v1.5's leaderboard for {view.published_arch} trained with cross-entropy "
                   "(mean ± std over its three checkpoints; AUROC and ID accuracy only). A red cell is more than "
                   "1.96 std from it over the full group: check the setup (Models & data) before trusting either. "
                   f"Source: {view.citation}")
    else:
        st.caption("No published column: OpenOOD's leaderboard has no rows for this model's architecture "
                   f"({getattr(ctx.bundle, 'arch', '?')}) on {view.benchmark}.")


compare_body(ctx)
