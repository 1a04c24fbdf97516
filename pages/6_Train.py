"""Train: fine-tune or train from scratch with CE, OE, energy margins, GReg, GReg+ or the Gradient Quotient.

The run is a background job; the live part of the page re-renders every second (a
fragment) so the rest stays usable. Finished (or stopped) checkpoints join the model
picker in the sidebar.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core import facade as fc
from ood_core.facade import METHODS, TrainConfig, knob_view
from ood_core.figures.training import epoch_metrics, loss_curves
from ui import common, state
from ui.pages import Page

PAGE = Page(title="Train", icon=":material/model_training:", order=60, url_path="Train", sidebar="no_ood",
            what="GReg, GReg+, Gradient Quotient, Outlier Exposure and Energy fine-tuning")

st.set_page_config(page_title="Train · OOD workbench", layout="wide")
ctx = common.context(PAGE.sidebar)
st.title("Train with gradient regularizers")
st.caption("Batches pair B ID training images with B auxiliary outliers. Every epoch the page shows ID test accuracy "
           "and the Energy score's AUROC against a held-out OOD set (never an OOD test set). The checkpoint is "
           "written after every epoch, so Stop keeps the last finished one.")


def _init_options() -> tuple[list[str], dict[str, str]]:
    opts = ["default", "scratch"]
    labels = {"default": "fine-tune the embedded default", "scratch": "from scratch (small CNN)"}
    for spec, label in fc.trainable_models():
        opts.append(spec)
        labels[spec] = f"fine-tune {label}"
    return opts, labels


left, right = st.columns([1, 2])
with left:
    method_name = st.selectbox("Method", list(METHODS), key="train.method",
                               format_func=lambda n: f"{n}: {METHODS[n].title}")
    method = METHODS[method_name]
    st.caption(method.describe())
    st.caption(method.help)
    # The recipe and the preset (reference = the authors' loss) come first: the knobs below start from
    # their values (a knob's widget holds an explicit value, which would otherwise win over the recipe).
    top = common.knob_widgets(knob_view(method_name, only=("recipe", "preset")), "train")
    preset, recipe = top.get("preset"), top.get("recipe", "default")
    opts, labels = _init_options()
    if state.widget("train.init") not in opts:
        state.set_widget("train.init", "default")
    init = st.selectbox("Start from", opts, key="train.init", format_func=lambda s: labels.get(s, s))
    kind = "scratch" if init == "scratch" else "finetune"
    tag = kind if recipe == "default" else f"{kind}.{recipe}"
    epochs = int(st.number_input("Epochs", 1, 1000, fc.default_epochs(method_name, init, recipe), key=f"train.epochs.{tag}",
                                 help="the paper recipe's epochs" if recipe == "paper" else
                                 "the embedded default's short budget; 1 is a quick run"))
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="train.seed"))
    with st.expander("Hyperparameters", expanded=False):
        st.caption("Defaults are the papers' (see each knob's help); changed values go into the checkpoint's label.")
        params = common.knob_widgets(knob_view(method_name, skip=("preset", "recipe")),
                                     f"train.{tag}" + (f".{preset}" if preset else ""),
                                     values=method.defaults(init, preset, recipe))
        params["recipe"] = recipe
        if preset:
            params["preset"] = preset
    with st.expander("Data", expanded=False):
        aux_names = [s.name for s in fc.datasets(("aux",))] + \
            [s.name for s in fc.datasets() if s.role not in ("aux", "id_test", "id_train")]
        aux = st.selectbox("Auxiliary outliers", aux_names, key="train.aux", disabled=not method.uses_aux,
                           help="any registered dataset can serve; keep it disjoint from your OOD test sets")
        val_names = [s.name for s in fc.datasets(("ood_val",))] + \
            [s.name for s in fc.datasets() if s.role not in ("ood_val", "id_test", "id_train")]
        aux_val = st.selectbox("Held-out OOD for the per-epoch AUROC", val_names, key="train.aux_val",
                               help="the Energy AUROC after every epoch is ID test vs this set (the CLI's --aux-val); "
                                    "never pick one of your OOD test sets")
        n_train = int(st.number_input("ID training images (0 = all)", 0, 10**7, 0, key="train.n_train"))
        n_eval = int(st.number_input("Images for the per-epoch metrics (0 = all)", 0, 10**7, 0, key="train.n_eval"))
    keep = st.checkbox("Keep training after this tab closes", False, key="train.keep",
                       help="off: a run whose browser tab has been closed for 10 s stops at its next step and keeps "
                            "its last finished epoch's checkpoint; on: it runs to the end, and its checkpoint "
                            "appears in the model picker of any later session")
    launch = st.button("Start training", type="primary", key="train.start")

if launch:
    start = common.attempt("training refused", fc.training_init, init)  # an upload: its file and load options
    if start is not None:
        cfg = TrainConfig(method_name, epochs=epochs, seed=seed, id_dataset=state.id_dataset(), aux=aux,
                          aux_val=aux_val, params=params, n_train=n_train, n_eval=n_eval, **start)
        job_id = common.attempt("training refused", fc.start_training, cfg, None if keep else common.session_probe())
        if job_id:
            state.put("train_job_id", job_id)


def _curves(snap: dict, key: str) -> None:
    rows, info = snap["rows"], snap["info"]
    terms = info.get("terms")
    n_steps = sum(1 for r in rows if r.get("kind") == "step")
    if n_steps:
        st.plotly_chart(loss_curves(rows, terms, smooth=1 if n_steps < 60 else 10), key=f"{key}.loss",
                        width="stretch")
    if any(r.get("kind") == "epoch" for r in rows):
        val = (info.get("config") or {}).get("aux_val", "aux_val")
        st.plotly_chart(epoch_metrics(rows, val), key=f"{key}.epochs", width="stretch")


def _form_line(info: dict) -> None:
    """Which form of the method ran, and the mode its gradient penalty ran in."""
    if info.get("form"):
        mode = f"; gradient penalty in {info['penalty_mode']}" if info.get("penalty_mode") else ""
        st.caption(f"Form: {info['form']}{mode}")
    if info.get("recipe") or info.get("augmentation"):
        st.caption(f"Recipe: {info.get('recipe', 'default')}; augmentation: {info.get('augmentation', 'shift')}")


def _use_model(path: str) -> None:
    state.put("model", path)


@st.fragment(run_every=1.0)
def _live(job_id: str) -> None:
    job = fc.job(job_id)
    if job is None:
        return
    snap = job.snapshot()
    if not job.active:  # finished while we watched: a full rerun refreshes the sidebar's model picker
        st.rerun()
    # The trainer's message carries its own ETA (training steps only, not the data preparation).
    st.progress(snap["fraction"], f"{snap['title']}: {snap['message'] or 'starting'}")
    _form_line(snap["info"])
    if st.button("Stop", key="train.stop", help="stop after this step; the last finished epoch's checkpoint stays"):
        job.cancel()
    _curves(snap, "train.live")


def _finished(job) -> None:
    snap = job.snapshot()
    info = snap["info"]
    path = info.get("checkpoint")
    if job.state == "done":
        res = job.result
        ep = res.meta["history"]["epochs"][-1]
        st.success(common.text(f"{res.meta['label']}: ID accuracy {100 * ep['accuracy']:.2f}%, Energy AUROC vs "
                               f"{res.meta['training']['aux_val']} {100 * ep['auroc']:.2f}% ({snap['elapsed']:.0f}s)"))
        _form_line(res.meta)
        if res.meta.get("recommended_detector") not in (None, "energy"):
            st.caption(f"{res.meta['method']} is meant to be scored with {res.meta['recommended_detector']}.")
    elif job.state == "cancelled":
        st.warning("Stopped. " + (f"The checkpoint of the last finished epoch is kept: {common.text(info.get('label'))}"
                                  if path else "No epoch had finished, so no checkpoint was written."))
    elif job.state == "failed":
        st.error(common.text(job.error.split(": ", 1)[-1]) if job.error else "training failed")
        if path:
            st.caption(f"The last good checkpoint is kept: {common.text(info.get('label'))}")
    if path and Path(path).exists():
        st.code(path, language=None)
        current = state.model() == path
        st.button("Selected in the sidebar" if current else "Use this model", key="train.use", disabled=current,
                  on_click=_use_model, args=(path,),
                  help="select the new checkpoint in the sidebar's model picker for every page")
    _curves(snap, "train.done")


with right:
    job = fc.job(state.get("train_job_id"))
    if job is None:
        st.info("Choose a method and press Start training. `python -m ood_core train --method NAME` does the same "
                "from a shell.")
    elif job.active:
        _live(job.id)
    else:
        _finished(job)

hist = (ctx.bundle.info or {}).get("history") if ctx.bundle is not None else None
if hist:
    with st.expander(f"Training history of the selected model: {common.text(ctx.bundle.info.get('label', ctx.model))}"):
        _curves({"rows": hist.get("steps", []) + hist.get("epochs", []),
                 "info": {"config": ctx.bundle.info.get("training", {})}}, "train.history")
        st.json(ctx.bundle.info.get("training", {}), expanded=False)
