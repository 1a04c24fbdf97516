"""Saliency: which pixels drive the predicted class and the OOD scores of one sample."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ood_core import facade as fc
from ood_core.figures.previews import thumbnail
from ood_core.figures.saliency import attribution_figure, image_figure, shared_scales
from ui import common, state
from ui.pages import Page
from ui.export import figure_downloads, table_downloads

PAGE = Page(title="Saliency", icon=":material/visibility:", order=50, url_path="Saliency",
            what="which pixels drive a class logit or an OOD score")

st.set_page_config(page_title="Saliency · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Saliency")
st.caption("Attributions (captum) of the predicted-class logit and of the OOD scores themselves, in pixel space. "
           "For a score, red marks pixels whose increase makes the sample look more in-distribution, blue less; "
           "Saliency and SmoothGrad show |gradient|. Next to the sample: an ID test sample the model predicts as "
           "the same class (the nearest in feature space), on the same colour scale.")

# --- which sample ---------------------------------------------------------------------------------
choices = list(dict.fromkeys([ctx.id_name, *ctx.ood, *common.ood_names()]))
sel = state.get("selected_sample")
if sel and state.get("saliency_shown_selection") != sel:
    # A pick from another page (Maps gallery, Scores misses) fills the pickers once; they stay editable.
    state.put("saliency_shown_selection", dict(sel))
    if sel.get("dataset") in choices:
        state.set_widget("sal_dataset", sel["dataset"])
        state.set_widget("sal_index", int(sel.get("index", 0)))
if state.widget("sal_dataset") not in choices:
    state.set_widget("sal_dataset", ctx.ood[0] if ctx.ood else ctx.id_name)

pick, gal = st.columns([1, 3])
with pick:
    ds_name = st.selectbox("Dataset", choices, key="sal_dataset")
    ds = fc.dataset(ds_name)
    if int(state.widget("sal_index", 0)) >= len(ds):
        state.set_widget("sal_index", 0)
    index = int(st.number_input(f"Index (0–{len(ds) - 1})", 0, len(ds) - 1, key="sal_index", step=1))
    st.caption("Or pick from the gallery, the Maps page's selection, or the Scores page's mistakes.")
with gal:
    with st.expander("Gallery", expanded=sel is None):
        page = int(st.number_input("Gallery page", 0, max(0, (len(ds) - 1) // 12), 0, 1, key="sal_gallery_page"))
        cols = st.columns(12)
        for j, i in enumerate(range(12 * page, min(len(ds), 12 * page + 12))):
            with cols[j]:
                st.image(thumbnail(ds.image(i), 48), caption=f"#{i}", width=48, clamp=True)
                if st.button("use", key=f"sal_use_{i}"):
                    state.select_sample(ds_name, i)
                    st.rerun()

with common.guard("this sample"):
    ex = fc.explain_sample(ctx.bundle, ds_name, index, ctx.id_name)
    img, info, twin, twin_img, twin_info = ex.image, ex.info, ex.twin, ex.twin_image, ex.twin_info

# --- settings ---------------------------------------------------------------------------------------
with st.expander("Attribution settings", expanded=False):
    s1, s2 = st.columns(2)
    with s1:
        targets = st.multiselect("Attribute", list(fc.SALIENCY_TARGETS), default=list(fc.SALIENCY_TARGETS), key="sal_targets",
                                 format_func=lambda t: fc.SALIENCY_TARGET_LABELS[t])
        methods = st.multiselect("Methods", list(fc.SALIENCY_METHODS), default=list(fc.SALIENCY_METHODS), key="sal_methods",
                                 format_func=lambda m: fc.SALIENCY_METHOD_LABELS[m])
    with s2:
        with common.guard("RG's k"):
            k_default = fc.default_rg_k(ctx.bundle, ctx.id_name)
    settings = common.knob_widgets(fc.SALIENCY_KNOBS, "saliency", values={"k": float(f"{k_default:.4g}")}, container=s2)
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.6, 0.05, key="sal_opacity")

if not targets or not methods:
    st.info("Choose at least one thing to attribute and one method.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=32)
def _attributions(_bundle, fingerprint: str, ds: str, i: int, twin_i: int, id_name: str, targets: tuple,
                  methods: tuple, knobs: tuple):
    return fc.attributions(_bundle, ds, i, twin_i, id_name, targets, methods, dict(knobs))


knobs = settings
with common.guard("attributions"), st.spinner("Attributing…"):
    attrs, seconds = _attributions(ctx.bundle, ctx.bundle.fingerprint, ds_name, index, twin, ctx.id_name,
                                   tuple(targets), tuple(methods), tuple(sorted(knobs.items())))
scales = shared_scales(attrs)

# --- the two samples ---------------------------------------------------------------------------------
def _describe(inf: dict) -> str:
    bits = [f"label {inf['label']}" if inf["label"] >= 0 else "no label", f"predicted {inf['pred']}"]
    bits += [f"{k} {inf[k]:.4g}" for k in ("energy", "gradnorm", "rg", "msp") if k in inf]
    return " · ".join(bits)


st.caption(f"{len(targets) * len(methods)} attributions of 2 images in {seconds:.2f} s "
           f"({seconds / 2:.2f} s per sample).")
a, b = st.columns(2)
for col, im, inf, who, n in ((a, img, info, f"{ds_name} #{index}", 0),
                             (b, twin_img, twin_info, f"{ctx.id_name} #{twin} (ID, same prediction)", 1)):
    with col:
        st.markdown(f"**{common.text(who)}**")
        st.caption(_describe(inf))
        st.plotly_chart(image_figure(im, height=200), width="content", key=f"sal_img_{n}")
        fig = attribution_figure(im, attrs, n, targets, methods, opacity, scales, fc.SALIENCY_TARGET_LABELS,
                                 fc.SALIENCY_METHOD_LABELS)
        st.plotly_chart(fig, width="stretch", key=f"sal_fig_{n}")
        figure_downloads(fig, f"saliency_{who.split(' ')[0]}_{index if n == 0 else twin}", key=f"sal_{n}")

rows = [{"sample": who, **inf} for who, inf in ((f"{ds_name} #{index}", info), (f"{ctx.id_name} #{twin}", twin_info))]
table = pd.DataFrame(rows)
with st.expander("Scores of the two samples"):
    st.dataframe(table, hide_index=True, width="stretch", key="sal_table")
    table_downloads(table, f"saliency_{ds_name}_{index}", key="sal_table")
