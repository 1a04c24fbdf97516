"""Maps: 2-D maps of penultimate features next to maps of low-dimensional gradients."""
from __future__ import annotations

import numpy as np
import streamlit as st

from ood_core import facade as fc
from ood_core.figures.maps import (color_options, keys_of_rows, map_figure, map_points, selected_mask,
                                   separability_figure, separability_frame)
from ood_core.figures.previews import thumbnail
from ui import common, state
from ui.pages import Page
from ui.export import figure_downloads, table_downloads
from ui.map_component import load_plotly, scatter_map

PAGE = Page(title="Maps", icon=":material/scatter_plot:", order=40, url_path="Maps",
            what="t-SNE / UMAP / PCA of features versus low-dimensional gradients")

st.set_page_config(page_title="Maps · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Maps: features vs low-dimensional gradients")
st.caption("The ID test set and the chosen OOD sets embedded jointly in 2-D, once from the model's penultimate "
           "features and once from per-sample gradients projected on the top directions of ID training gradients. "
           "The separability numbers (cross-validated kNN AUROC of ID vs OOD) compare the two without squinting. "
           "Select points with the box or lasso tool to see their images below.")

if not ctx.ood:
    st.info("Choose at least one OOD dataset in the sidebar.")
    st.stop()


@st.fragment
def maps_body(ctx: common.Context) -> None:
    """Everything below the caption, a fragment: a knob, a colour or a selection reruns only this, not the sidebar (docs/architecture.md, "The app")."""
    # --- settings ----------------------------------------------------------------------------------
    with st.expander("Map settings", expanded=True):
        c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
        with c1:
            method = st.radio("Method", list(fc.MAP_METHODS), format_func=lambda m: fc.MAP_METHOD_LABELS[m], horizontal=True,
                              key="maps_method", index=list(fc.MAP_METHODS).index("umap"))
            # Every detector that can score this model, built-in or plugin: a score the maps were not
            # computed with is added to their points on demand (below).
            score_labels = fc.map_score_choices(ctx.bundle, ctx.id_name)
            colours = ["dataset", "pred", *score_labels]
            if state.widget("maps_color", "dataset") not in colours:  # a plugin gone since, another model
                state.set_widget("maps_color", "dataset")
            color = st.selectbox("Colour by", colours,
                                 format_func=lambda c: {"dataset": "dataset", "pred": "predicted class"}.get(
                                     c, f"score: {score_labels.get(c, c)}"), key="maps_color")
        with c2:
            # Up to 50,000 per set, so a map can hold 100,000 points (WebGL draws them); the default
            # keeps a fresh UMAP of the default sets within the ~20 s bar on 2 cores (bench/maps.py).
            n_per_set = int(st.number_input("Samples per dataset", 10, 50_000, 500, 100, key="maps_n",
                                            help="each set is subsampled to this many points (fixed seed); faces has "
                                                 "400. UMAP/t-SNE time grows with it (bench/maps.py --embed-sizes)"))
            seed = int(st.number_input("Seed", 0, 1_000_000, 0, 1, key="maps_seed",
                                       help="drives the subsample and the embedding"))
        with c3:
            if method == "pca":
                st.caption("PCA has no knobs: the two leading principal components of the standardised data.")
            knobs = common.knob_widgets(fc.MAP_KNOBS[method], "maps")
        with c4:
            g = fc.MAP_GRADIENT_KNOBS
            avg = state.widget(state.knob_key("maps", g.name, "subspace"), g.defaults()["subspace"]) == "avg"
            drawn = common.knob_widgets(g, "maps", disabled=["r"] if avg else [])
            with common.guard("gradient settings"):
                grad_params = fc.map_gradient_params(drawn)  # the rest (T, …) from the reference preset
        n_total = fc.map_points_total([ctx.id_name, *ctx.ood], n_per_set)
        st.caption(f"{n_total:,} points per map ({1 + len(ctx.ood)} datasets).")


    # --- computing the two maps ----------------------------------------------------------------------
    def _key(space: str) -> str:
        gpk = sorted(grad_params.items()) if space == "gradients" else []
        return (f"map:{ctx.bundle.fingerprint}:{ctx.id_name}:{','.join(ctx.ood)}:{space}:{method}:{n_per_set}:{seed}:"
                f"{sorted(knobs.items())}:{gpk}")


    memo: dict = state.setdefault("maps_results", {})


    def _remember(key: str, res) -> None:
        memo[key] = res
        while len(memo) > 6:
            memo.pop(next(iter(memo)))


    def _compute(space: str):
        # The progress lives in a slot drawn on every run, computed or not: the elements after it
        # keep their places, so the browser keeps the map components alive instead of re-creating them
        # (a shifted element is a new element to Streamlit's frontend; docs/architecture.md, "The app").
        # A map not in this session's memo is a background job: a cached one (or a PCA) ends within the
        # short wait and is drawn in this run, a slow UMAP/t-SNE never blocks the widgets, and changing
        # a setting while one runs cancels it.
        slot = st.empty()
        key = _key(space)
        if key in memo:
            return memo[key]

        def _job(jc, _b=ctx.bundle, _id=ctx.id_name, _ood=list(ctx.ood), _m=method, _n=n_per_set, _s=seed,
                 _gp=grad_params if space == "gradients" else None, _kn=dict(knobs)):
            return fc.compute_map(_b, _id, _ood, space, _m, _n, _s, _gp, _kn, progress=jc.progress)

        with slot.container():
            res = common.run_as_job(key, _job, f"{fc.MAP_METHOD_LABELS[method]} map of the {space}", wait_s=3.0,
                                    supersedes=f"map:{ctx.bundle.fingerprint}:", forget=True)
        slot.empty()
        _remember(key, res)
        return res


    left, right = st.columns(2)
    with left:
        st.subheader("Penultimate features")
        with common.guard("features map"):
            feat = _compute("features")
    with right:
        st.subheader("Low-dimensional gradients")
        with common.guard("gradients map"):
            if _key("gradients") not in memo and not fc.gradients_ready(ctx.bundle, ctx.id_name, ctx.ood, grad_params):
                st.caption("Per-sample gradients of every set are computed once (the subspace from the ID training split, "
                           "then G·V per set) and cached; later maps reuse them.")
            grad = _compute("gradients")


    # --- a score the maps do not carry yet (a plugin's, or any other detector's) --------------------------
    if color in score_labels and not all(color in r.frame.columns for r in (feat, grad)):
        def _scores_job(jc, _b=ctx.bundle, _id=ctx.id_name, _rs=(feat, grad), _d=color):
            for i, r in enumerate(_rs):
                fc.add_map_score(r, _b, _id, _d, progress=lambda f, m, i=i: jc.progress((i + f) / len(_rs), m))

        with common.guard(f"{score_labels[color]} scores"):
            common.run_as_job(f"mapscore:{_key('features')}:{color}", _scores_job,
                              f"{score_labels[color]} scores of the maps' points", wait_s=3.0, forget=True)

    # --- selection state (shared by both maps) ---------------------------------------------------------
    # A lasso or box selection on either map arrives through the map component's callback, which
    # stores its samples before this rerun starts; the rings in both maps and the gallery follow
    # from maps_selected_points alone. The gallery and separability are sent before the maps, so
    # the images reach the browser first (docs/architecture.md, "The app").
    selected: list[tuple[str, int]] = list(state.get("maps_selected_points", []))

    def _points(res):
        """The map's payload points for this colouring, encoded once per map and colouring."""
        pts = res.views.get(color)
        if pts is None:
            pts = res.views[color] = map_points(res.frame, color, ctx.id_name)
        return pts

    def _take(frame):
        def take(rows: np.ndarray) -> None:
            state.put("maps_selected_points", keys_of_rows(frame, rows))
        return take

    def _draw(res, title: str, key: str) -> None:
        s = res.summary()
        st.caption(f"{fc.MAP_METHOD_LABELS[res.method]} of {len(res.frame):,} points in {res.dims} dimensions "
                   f"({res.seconds:.1f} s). kNN AUROC ID vs all OOD: **2-D {_pct(s['auroc_2d'])}**, "
                   f"full space {_pct(s['auroc_full'])}.")
        with common.guard(title):
            try:
                pts = _points(res)
            except ValueError as exc:
                st.error(common.text(exc))
                return
            ring = np.flatnonzero(selected_mask(res.frame, selected))
            scatter_map(pts, key, ring, on_select=_take(res.frame))
            sel = list(selected)
            # The plotly figure is built only when a download is asked for (about 0.3 s at 100,000 points).
            figure_downloads(lambda: map_figure(res.frame, color, ctx.id_name, selected=sel), f"map_{key}", key)

    with left:
        box_f = st.container()
    with right:
        desc = f"{grad_params['subspace']}, r={grad.dims}, {grad_params['loss']}, {grad_params['param_set']}"
        st.caption(f"G_low = G·V ({desc})")
        box_g = st.container()
    below = st.container()
    with below:
        _below(feat, grad, selected, score_labels)
    with box_f:
        _draw(feat, "features map", "map_features")
    with box_g:
        _draw(grad, "gradients map", "map_gradients")
    load_plotly()


def _pct(v: float) -> str:
    return f"{100 * v:.1f}" if np.isfinite(v) else "n/a"


def _below(feat, grad, selected: list[tuple[str, int]], labels: dict[str, str]) -> None:
    """Separability, the gallery and the table of points (drawn before the maps, see maps_body).

    The gallery is sent before the separability section above it (a container kept for it): after a
    selection the images are what the user waits for (docs/architecture.md, "The app").
    """
    sep_box = st.container()
    with st.container():
        _gallery(feat, selected, labels)
    with sep_box:
        _separability(feat, grad)
    with st.expander("All points (features map)"):
        # The table of every point is sent only when asked for: at 100,000 points it is megabytes.
        frame = feat.frame
        if st.toggle(f"Show the table of all {len(frame):,} points", key="maps_show_points", value=len(frame) <= 5000):
            st.dataframe(frame, hide_index=True, width="stretch", key="maps_points")
        table_downloads(frame, "map_points_features", key="maps_points_f")
        table_downloads(grad.frame, "map_points_gradients", key="maps_points_g")


def _separability(feat, grad) -> None:
    """The kNN separability numbers, table and bars of both maps."""
    st.subheader("Separability")
    st.caption("Cross-validated kNN (k = 15, 5 folds) probability of being ID, scored by AUROC: 50 = ID and OOD mixed, "
               "100 = they occupy separate regions. '2-D' is on the map's coordinates, 'full' on the vectors the map "
               "was drawn from (features or G_low), so the gap shows what the 2-D projection loses.")
    sf, sg = feat.summary(), grad.summary()


    def _delta(a: float, b: float) -> str | None:
        return f"{100 * (a - b):+.1f} vs features" if np.isfinite(a) and np.isfinite(b) else None


    if not np.isfinite(sf["auroc_full"]):
        st.info("Too few points to cross-validate: separability needs at least 2 ID and 2 OOD points.")
    m = st.columns(4)
    m[0].metric("features · 2-D", _pct(sf["auroc_2d"]))
    m[1].metric("features · full", _pct(sf["auroc_full"]))
    m[2].metric("gradients · 2-D", _pct(sg["auroc_2d"]), _delta(sg["auroc_2d"], sf["auroc_2d"]))
    m[3].metric("gradients · full", _pct(sg["auroc_full"]), _delta(sg["auroc_full"], sf["auroc_full"]))
    tables = {"features": feat.separability, "gradients": grad.separability}
    sep_table = separability_frame(tables)
    tc, fc = st.columns([2, 3])
    with tc:
        st.dataframe(sep_table, hide_index=True, width="stretch", key="maps_separability")
        table_downloads(sep_table, "map_separability", key="maps_sep")
    with fc:
        sep_fig = separability_figure(tables)
        st.plotly_chart(sep_fig, width="stretch", key="maps_sep_fig")
        figure_downloads(sep_fig, "map_separability", key="maps_sep_fig")


def _gallery(feat, selected: list[tuple[str, int]], labels: dict[str, str]) -> None:
    """The images of the selected points, or of the OOD points that look most ID (and the reverse)."""
    st.subheader("Gallery")
    scores_present = [c for c in color_options(feat.frame) if c not in ("dataset", "pred")]
    g1, g2 = st.columns([3, 1])
    with g1:
        source = st.radio("Show", ["selection", "ood_most_id", "id_most_ood"], horizontal=True, key="maps_gallery",
                          format_func={"selection": "points selected in the maps",
                                       "ood_most_id": "OOD points that look most ID",
                                       "id_most_ood": "ID points that look most OOD"}.get)
    with g2:
        rank_by = st.selectbox("ranked by", scores_present, key="maps_rank_by",
                               index=scores_present.index("energy") if "energy" in scores_present else 0,
                               format_func=lambda c: labels.get(c, c), disabled=source == "selection")
    frame = feat.frame
    if source == "selection":
        keys = selected
        if not keys:
            st.caption("Nothing selected yet: use the box or lasso tool on either map.")
    else:
        sub = frame[~frame["is_id"]] if source == "ood_most_id" else frame[frame["is_id"]]
        sub = sub.sort_values(rank_by, ascending=source != "ood_most_id").head(24)
        keys = list(zip(sub["dataset"].astype(str), sub["index"].astype(int)))
    if keys and st.button("Clear selection", key="maps_clear", disabled=not selected):
        state.put("maps_selected_points", [])
        selected.clear()  # the maps are drawn after this: they lose their rings in this same run
        if source == "selection":
            keys = []
            st.caption("Nothing selected yet: use the box or lasso tool on either map.")
    if keys:
        shown = keys[:24]
        if len(keys) > 24:
            st.caption(f"Showing 24 of {len(keys):,} samples.")
        # Look rows up by mask (no index over 100,000 points per run): the 24 shown, then all selected.
        shown_rows = frame[selected_mask(frame, shown)]
        look = {(str(d), int(i)): r for d, i, r in zip(shown_rows["dataset"], shown_rows["index"],
                                                      shown_rows.to_dict("records"))}
        cols = st.columns(6)
        for j, (ds_name, i) in enumerate(shown):
            row = look.get((ds_name, i))
            img = thumbnail(fc.dataset(ds_name).image(i))  # one file decoded for a streamed set
            cap = f"{common.text(ds_name)} #{i}"
            if row is not None:
                cap += f" · label {int(row['label'])} · pred {int(row['pred'])}" + (
                    f" · {labels.get(rank_by, rank_by)} {row[rank_by]:.3g}" if rank_by in row else "")
            with cols[j % 6]:
                st.image(img[..., 0] if img.shape[-1] == 1 else img, caption=cap, width=96, clamp=True)
                if st.button("Saliency →", key=f"maps_sal_{ds_name}_{i}"):
                    state.select_sample(ds_name, i)
                    st.switch_page("pages/5_Saliency.py")
        sel_rows = frame[selected_mask(frame, keys)]
        table_downloads(sel_rows, "map_gallery", key="maps_gallery_csv")


maps_body(ctx)
