"""Models & data: bring your own classifier and datasets (safely), and take experiments in and out."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from ood_core import facade as fc
from ood_core.facade import FORMATS, LOAD_OPTIONS, arch_info, human_bytes, max_model_bytes
from ood_core.figures.previews import preview_input, sample_grid, summary
from ui import common, state
from ui.pages import Page
from ui.common import attempt, text
from ui.export import per_sample_downloads

PAGE = Page(title="Models & data", icon=":material/upload_file:", order=70, url_path="Models_and_Data",
            sidebar="none", what="bring your own checkpoint and datasets; export")

st.set_page_config(page_title="Models & data · OOD workbench", layout="wide")
common.frame(PAGE.sidebar)  # no pickers: this page sets the experiment itself

ROLE_LABELS = {"id_test": "ID test (in-distribution; its training split feeds statistics)",
               "id_train": "ID train (adds the training split to an ID set of the same name)",
               "ood_test": "OOD test", "ood_val": "OOD validation (for tuning)", "aux": "auxiliary outliers (training)"}


@st.cache_data(show_spinner=False, max_entries=64)
def _content_hash(file_id: str, _data: bytes) -> str:
    """sha256 of an upload, once per upload (Streamlit gives each upload its own file id)."""
    return hashlib.sha256(_data).hexdigest()


@st.cache_data(show_spinner=False, max_entries=16)
def _stored_upload(sha: str, name: str, cache_root: str, _data: bytes) -> Path:
    """An upload stored under the cache once per content, not on every widget change."""
    return fc.store_upload(_data, name)


@st.cache_data(show_spinner=False, max_entries=16)
def _inspected_upload(sha: str, _path: Path) -> fc.ModelFileFacts:
    """An upload's facts (format, fitting architectures), read once per content."""
    return fc.inspect_model(_path)


def store_upload(up) -> tuple[Path, str]:
    """The stored copy of an upload and its content hash (hashed once per upload)."""
    data = up.getvalue()
    sha = _content_hash(up.file_id, data)
    saved = _stored_upload(sha, up.name, fc.cache_root(), data)
    return (saved if saved.exists() else fc.store_upload(data, up.name)), sha


st.title("Models & data")
st.caption("Bring your own classifier and datasets. Model files are read as data, never as code: "
           "torch.export archives (.pt2), TorchScript archives, or state_dicts loaded with "
           "`torch.load(weights_only=True)` into an architecture from the list. Datasets are read from a "
           "path on this machine or a small upload; nothing is downloaded.")

tab_model, tab_data, tab_exp = st.tabs(["Model", "Datasets", "Experiment & export"])

# =============================================================================== model
with tab_model:
    limit_mb = max_model_bytes() // 2**20
    src = st.radio("Model source", ["Upload a file", "Path on this machine"], horizontal=True, key="md_src")
    path: Path | None = None
    if src == "Upload a file":
        up = st.file_uploader(f"Model file (.pt2, TorchScript .pt, state_dict .pt/.pth; up to {limit_mb} MiB)",
                              key="md_upload", max_upload_size=max(1, limit_mb),
                              help="recognised by content, not by extension")
        if up is not None:
            path, sha = attempt("upload refused", store_upload, up) or (None, None)
    else:
        typed = st.text_input("Path of a model file", key="md_path",
                              placeholder="/data/models/resnet18_cifar10.pt")
        if typed.strip():
            p = Path(typed.strip()).expanduser()
            if not p.is_file():
                st.error(f"no file at {text(p)}")
            else:
                path = p

    if path is None:
        facts = None
    elif src == "Upload a file":
        facts = attempt("cannot read this file", _inspected_upload, sha, path)
    else:
        facts = attempt("cannot read this file", fc.inspect_model, path)
    if facts:
        fmt_label = {"pt2": "torch.export archive", "torchscript": "TorchScript archive",
                     "state_dict": "state_dict (weights only)", "checkpoint": "workbench checkpoint",
                     "unknown": "unrecognised"}[facts.format]
        st.caption(f"{text(path.name)}: {fmt_label}, {human_bytes(facts.bytes)}")
        arch = None
        if facts.format == "unknown":
            st.error("this is not a model file the workbench reads: expected a .pt2 (torch.export), a TorchScript "
                     "archive (torch.jit.save) or a state_dict (torch.save(model.state_dict(), ...))")
        elif facts.format == "state_dict":
            names = fc.architectures()
            fits = [a for a in facts.fits if a in names]
            order = fits + [n for n in names if n not in fits]
            if fits:
                st.caption(f"The weights fit: {', '.join(fits)}")
            else:
                close = ", ".join(f"{a} ({p} differences)" for a, p in facts.closest)
                st.warning(f"These weights fit none of the listed architectures exactly (closest: {close}).")
            arch = st.selectbox("Architecture", order, key="md_arch",
                                format_func=lambda n: f"{n}: {arch_info(n).label}" + ("  ✓ fits" if n in fits else ""))

        with st.expander("Preprocessing (empty = detected from the model)", expanded=False):
            # The fields come from the one declaration of the load options (also the CLI's --mean, --std, …).
            cols = st.columns(3)
            shown = [k for k in LOAD_OPTIONS.knobs if k.name != "arch"]  # arch: the fitting-first picker above
            options = {}
            for i, k in enumerate(shown):
                options.update(common.knob_widgets(LOAD_OPTIONS.subset([k.name]), "md", container=cols[i % 3]))
            st.caption("Images are converted to the model's channels, resized (bilinear, antialiased) to the input "
                       "size and normalised as (x/255 − mean)/std.")
        name = st.text_input("Name shown in the pickers", value=path.stem, key="md_name")
        expect = st.checkbox("Check the class count against the current ID dataset", value=False, key="md_expect")

        if facts.format != "unknown" and st.button("Load model", type="primary", key="md_load"):
            with st.spinner("Loading and dry-running the model…"):
                res = attempt("model refused", fc.load_model_file, path, {**options, "arch": arch}, name,
                              state.id_dataset(), expect)
            if res:
                key, bundle = res
                state.put("model", key)
                state.put("loaded_model", key)

    loaded = state.get("loaded_model")
    if loaded and loaded in {m["spec"] for m in fc.list_models()}:
        bundle = fc.load_model(loaded)
        st.success(f"Loaded {text(bundle.name)} ({text(bundle.info.get('format', bundle.arch))}): "
                   f"{bundle.num_classes} classes; now the current model ({text(loaded)}).")
        pp = bundle.preprocess
        c1, c2 = st.columns([2, 3])
        with c1:
            st.markdown(f"**Architecture** {text(bundle.arch)}  \n**Input** {pp.channels}×{pp.input_size[0]}×{pp.input_size[1]}"
                        f"  \n**Mean** {', '.join(f'{v:.4g}' for v in pp.mean)}  \n**Std** "
                        f"{', '.join(f'{v:.4g}' for v in pp.std)}  \n**Fingerprint** `{bundle.fingerprint[:16]}`")
            st.caption(f"Preprocessing: {text(bundle.info.get('preprocess_source', 'from the checkpoint'))}")
            for note in bundle.info.get("notes", []):
                st.info(text(note))
            if bundle.has_features:
                st.markdown(f"**Feature layer**: the input of {text(bundle.info.get('head_layer', bundle.head_name))} "
                            f"({bundle.head.weight.shape[1]} features → {bundle.num_classes} logits)")
            else:
                st.warning(text(bundle.feature_reason))
            layers = bundle.info.get("linear_layers") or []
            if len(layers) > 1 or (layers and not bundle.has_features):
                pick = st.selectbox("Use another final linear layer", layers, key="md_pick_head",
                                    index=layers.index(cur_head) if (cur_head := bundle.info.get("head_layer", bundle.head_name)) in layers else 0)
                if st.button("Reload with this layer", key="md_reload_head"):
                    res = attempt("layer refused", fc.reload_with_head, loaded, pick)
                    if res:
                        state.put("model", res[0])
                        state.put("loaded_model", res[0])
                        st.rerun()
        with c2:
            names = [s.name for s in fc.datasets()]
            cur = state.id_dataset()
            ds_name = st.selectbox("Preview one sample from", names, index=names.index(cur) if cur in names else 0,
                                   key="md_prev_ds")
            ds = attempt("preview", fc.dataset, ds_name)
            raw = None
            if ds is not None:
                idx = st.number_input("Sample", 0, len(ds) - 1, 0, key="md_prev_idx")
                raw = attempt("preview", ds.image, int(idx))
            if ds is not None and raw is not None:
                shown, stats = preview_input(pp, raw)
                i1, i2 = st.columns(2)
                i1.image(raw, caption=f"raw {'×'.join(map(str, raw.shape))}", width=160)
                i2.image(shown, caption=f"model input {pp.channels}×{pp.input_size[0]}×{pp.input_size[1]} "
                                        f"(values {stats['min']:.2f} to {stats['max']:.2f} after normalising)", width=160)

# =============================================================================== datasets
with tab_data:
    st.subheader("Register a dataset")
    dsrc = st.radio("Source", ["Path on this machine", "Upload (.zip or .npz)"], horizontal=True, key="ds_src")
    c1, c2, c3 = st.columns(3)
    ds_name_in = c1.text_input("Name", key="ds_name", placeholder="cifar10")
    role = c2.selectbox("Role", list(ROLE_LABELS), format_func=lambda r: ROLE_LABELS[r], key="ds_role")
    fmt = c3.selectbox("Format", FORMATS, key="ds_fmt",
                       help="auto recognises CIFAR-10/100, SVHN, MNIST/Fashion-MNIST, class folders, flat folders, .npz")
    c4, c5, c6 = st.columns(3)
    split = c4.selectbox("Split of the source", ["auto", "train", "test", "extra"], key="ds_split",
                         help="auto: test for test/OOD roles (plus train for an ID set), train for 'ID train'")
    limit = c5.number_input("Use at most N samples (0 = all)", 0, 10_000_000, 0, key="ds_limit",
                            help="a fixed random subset (seed 0): keeps CPU forward passes short")
    labelled = c6.checkbox("Use labels", value=True, key="ds_labelled", help="class folders / label arrays")
    replace = c6.checkbox("Replace", value=False, key="ds_replace",
                          help="replace a dataset already registered under this name (otherwise it is refused)")
    dpath, dup = None, None
    if dsrc.startswith("Path"):
        dpath = st.text_input("Folder or file", key="ds_path", placeholder="/data/cifar10  (holds cifar-10-batches-py)")
    else:
        dup = st.file_uploader("A .zip of a dataset folder, or a .npz with x (N,H,W[,C]) and optional y",
                               type=["zip", "npz"], key="ds_upload", max_upload_size=512)
    if st.button("Register", type="primary", key="ds_register"):
        kw = {"fmt": fmt, "split": None if split == "auto" else split, "limit": int(limit) or None,
              "labelled": labelled, "replace": replace}
        with st.spinner("Reading the dataset…"):
            if not ds_name_in.strip():
                st.error("give the dataset a name")
                spec = None
            elif dup is not None:
                spec = attempt("dataset refused", fc.register_dataset, ds_name_in.strip(), role,
                               upload=(dup.getvalue(), dup.name), **kw)
            elif dpath and dpath.strip():
                spec = attempt("dataset refused", fc.register_dataset, ds_name_in.strip(), role, path=dpath.strip(), **kw)
            else:
                st.error("give a folder/file path or upload a .zip/.npz")
                spec = None
        if spec is not None:
            state.set_widget("ds_preview_pick", spec.name)  # the preview below shows the new set
            if spec.role == "id_test":
                state.put("id_dataset", spec.name)
                state.put("ood_datasets", [n for n in state.ood_datasets() if not fc.dataset_spec(n).embedded])
                st.success(f"registered {text(spec.name)} ({', '.join(spec.splits)}); it is now the ID dataset. "
                           "The built-in MNIST-style OOD sets were deselected: register OOD sets for this domain.")
            elif spec.role in ("ood_test", "ood_val"):
                if spec.name not in state.ood_datasets():
                    state.put("ood_datasets", [*state.ood_datasets(), spec.name])
                st.success(f"registered {text(spec.name)} as {ROLE_LABELS[spec.role]}; added to the OOD selection.")
            else:
                st.success(f"registered {text(spec.name)} ({spec.role.replace('_', ' ')}, splits: {', '.join(spec.splits)}).")

    st.subheader("Datasets")
    saved = fc.saved_dataset_names()
    rows = []
    for s in fc.datasets():
        rows.append({"name": s.name, "role": s.role, "splits": ", ".join(s.splits),
                     "source": "built-in" if s.embedded else s.source, "yours": not s.embedded})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="ds_table")
    all_names = [r["name"] for r in rows]
    if state.widget("ds_preview_pick") not in all_names:
        state.set_widget("ds_preview_pick", all_names[0])
    pv = st.selectbox("Preview", all_names, key="ds_preview_pick")
    pv_spec = fc.dataset_spec(pv)
    pv_split = st.radio("Split", list(pv_spec.splits), horizontal=True, key="ds_preview_split",
                        index=list(pv_spec.splits).index("test") if "test" in pv_spec.splits else 0)
    pds = attempt(f"reading {pv}", fc.dataset, pv, pv_split)
    if pds is not None:
        info = summary(pds)
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("images", f"{info['images']:,}")
        m2.metric("shape (H×W×C)", info["shape"])
        m3.metric("labelled", f"{info['labelled']:,}", f"{info['classes']} classes", delta_color="off")
        m4.metric("unreadable, skipped", info["skipped"])
        st.caption(f"fingerprint `{info['fingerprint']}` · {text(pds.description)}")
        if info["skipped"]:
            st.warning(f"{info['skipped']} files could not be read and were skipped: "
                       f"{text(', '.join(pds.meta.get('skipped_files', [])[:5]))}")
        st.image(sample_grid(pds, 32, 8), caption=f"32 random samples of {text(pds.name)}",
                 width=min(900, 8 * (pds.shape[1] + 2) * max(1, 64 // max(pds.shape[1], 1))))
        if info["class_counts"]:
            with st.expander("Counts per class"):
                st.dataframe(pd.DataFrame({"class": list(info["class_counts"]), "count": list(info["class_counts"].values())}),
                             hide_index=True, key="ds_counts")
        if pv in saved and st.button(f"Forget {text(pv)}", key="ds_forget", help="the files are not touched"):
            attempt("remove", fc.forget_dataset, pv)
            state.put("ood_datasets", [n for n in state.ood_datasets() if n != pv])
            if state.id_dataset() == pv:
                state.put("id_dataset", "mnist")
            st.rerun()

# =============================================================================== experiment & export
with tab_exp:
    st.subheader("Experiment JSON")
    st.caption("The model, datasets, detectors and knob values of this session; `python -m ood_core evaluate "
               "--experiment FILE.json` and this page accept it back.")
    exp = common.current_experiment()
    st.code(exp.to_json(), language="json")
    st.download_button("Download experiment JSON", fc.experiment_json(exp), "experiment.json", fc.MIME["json"],
                       key="exp_download", icon=":material/download:", on_click="ignore")
    up_exp = st.file_uploader("Load an experiment JSON", type=["json"], key="exp_upload")
    if up_exp is not None:
        got = attempt("experiment refused", fc.experiment_from_json, up_exp.getvalue())
        if got is not None:
            problems = fc.check_experiment(got)
            for p in problems:
                st.error(text(p))
            if not problems and st.button("Apply this experiment", key="exp_apply", type="primary"):
                state.put("experiment_applied_message", f"applied: model {got.model}, ID {got.id_dataset}, OOD "
                                                   f"{', '.join(got.ood_datasets)}, detectors {', '.join(got.detectors)}")
                common.apply_experiment(got)  # parks it and reruns; the next run applies it before any widget
    if state.get("experiment_applied_message"):
        st.success(text(state.pop("experiment_applied_message")))

    st.subheader("Per-sample scores")
    st.caption("One row per ID-test and OOD sample: dataset, index, label, prediction, max softmax and each "
               "chosen detector's score (higher = more ID). Computed when you click (cached scores are reused).")
    det_names = [d.name for d in fc.detectors()]
    dets = st.multiselect("Detectors", det_names, default=[d for d in ["msp", "energy"] if d in det_names],
                          key="exp_dets")
    if dets and state.ood_datasets():
        per_sample_downloads(state.model(), state.id_dataset(), state.ood_datasets(), dets, state.detector_knobs(),
                             key="exp")
    else:
        st.info("Choose detectors and at least one OOD dataset.")
