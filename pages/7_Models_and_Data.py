"""Models & data: bring your own classifier and datasets (safely), and take experiments in and out."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from ood_core import cache as _cache
from ood_core import export as ex
from ood_core import persist
from ood_core import workbench as wb
from ood_core.data import get_dataset, get_spec, list_datasets
from ood_core.data.readers import FORMATS
from ood_core.detectors import detector_names
from ood_core.errors import UserError, first_line
from ood_core.experiment import ExperimentError
from ood_core.figures.previews import preview_input, sample_grid, summary
from ood_core.models.archs import arch_info, list_architectures
from ood_core.models.files import inspect_model_file
from ood_core.models.formats import human_bytes, max_model_bytes
from ui import common, state
from ui.export import per_sample_downloads

st.set_page_config(page_title="Models & data · OOD workbench", layout="wide")
common.frame("none")  # no pickers: this page sets the experiment itself

ROLE_LABELS = {"id_test": "ID test (in-distribution; its training split feeds statistics)",
               "id_train": "ID train (adds the training split to an ID set of the same name)",
               "ood_test": "OOD test", "ood_val": "OOD validation (for tuning)", "aux": "auxiliary outliers (training)"}


def attempt(what: str, fn, *args, **kwargs):
    """Run ``fn``; a user error becomes one st.error line (the rest of the page still renders)."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        st.error(f"{what}: {first_line(exc)}")
    except OSError as exc:
        st.error(f"{what}: {exc.strerror or exc}")
    except MemoryError:  # docs/architecture.md, "Errors": one line, the page keeps running
        st.error(f"{what}: out of memory; use a smaller subset (at most N samples)")
    return None


def floats(text: str, what: str) -> list[float] | None:
    text = (text or "").strip()
    if not text or text.lower() == "auto":
        return None
    try:
        return [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise ExperimentError(f"{what} must be numbers separated by commas (one, or one per channel); got {text!r}") from None


@st.cache_data(show_spinner=False, max_entries=64)
def _content_hash(file_id: str, _data: bytes) -> str:
    """sha256 of an upload, once per upload (Streamlit gives each upload its own file id)."""
    return hashlib.sha256(_data).hexdigest()


@st.cache_data(show_spinner=False, max_entries=16)
def _stored_upload(sha: str, name: str, cache_root: str, _data: bytes) -> Path:
    """An upload stored under the cache once per content, not on every widget change."""
    return persist.save_upload(_data, name)


@st.cache_data(show_spinner=False, max_entries=16)
def _inspected_upload(sha: str, _path: Path) -> dict:
    """An upload's facts (format, fitting architectures), read once per content."""
    return inspect_model_file(_path)


def store_upload(up) -> tuple[Path, str]:
    """The stored copy of an upload and its content hash (hashed once per upload)."""
    data = up.getvalue()
    sha = _content_hash(up.file_id, data)
    saved = _stored_upload(sha, up.name, str(_cache.cache_dir()), data)
    return (saved if saved.exists() else persist.save_upload(data, up.name)), sha


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
                st.error(f"no file at {p}")
            else:
                path = p

    if path is None:
        facts = None
    elif src == "Upload a file":
        facts = attempt("cannot read this file", _inspected_upload, sha, path)
    else:
        facts = attempt("cannot read this file", inspect_model_file, path)
    if facts:
        fmt_label = {"pt2": "torch.export archive", "torchscript": "TorchScript archive",
                     "state_dict": "state_dict (weights only)", "checkpoint": "workbench checkpoint",
                     "unknown": "unrecognised"}[facts["format"]]
        st.caption(f"{path.name}: {fmt_label}, {human_bytes(facts['bytes'])}")
        arch = None
        if facts["format"] == "unknown":
            st.error("this is not a model file the workbench reads: expected a .pt2 (torch.export), a TorchScript "
                     "archive (torch.jit.save) or a state_dict (torch.save(model.state_dict(), ...))")
        elif facts["format"] == "state_dict":
            names = [n for n, _ in list_architectures()]
            fits = [a for a in facts["fits"] if a in names]
            order = fits + [n for n in names if n not in fits]
            if fits:
                st.caption(f"The weights fit: {', '.join(fits)}")
            else:
                close = ", ".join(f"{a} ({p} differences)" for a, p in facts.get("closest", []))
                st.warning(f"These weights fit none of the listed architectures exactly (closest: {close}).")
            arch = st.selectbox("Architecture", order, key="md_arch",
                                format_func=lambda n: f"{n}: {arch_info(n).label}" + ("  ✓ fits" if n in fits else ""))

        with st.expander("Preprocessing (empty = detected from the model)", expanded=False):
            c1, c2, c3 = st.columns(3)
            size_txt = c1.text_input("Input size (H or H,W)", key="md_size", placeholder="auto")
            ch = c2.selectbox("Channels", ["auto", 1, 3], key="md_channels")
            head = c3.text_input("Final linear layer (feature layer = its input)", key="md_head", placeholder="auto")
            c4, c5 = st.columns(2)
            mean_txt = c4.text_input("Mean (one value or one per channel)", key="md_mean", placeholder="auto")
            std_txt = c5.text_input("Std (one value or one per channel)", key="md_std", placeholder="auto")
            st.caption("Images are converted to the model's channels, resized (bilinear, antialiased) to the input "
                       "size and normalised as (x/255 − mean)/std.")
        name = st.text_input("Name shown in the pickers", value=path.stem, key="md_name")
        expect = st.checkbox("Check the class count against the current ID dataset", value=False, key="md_expect")

        if facts["format"] != "unknown" and st.button("Load model", type="primary", key="md_load"):
            def _load():
                opts = {"arch": arch, "name": name.strip() or path.stem, "head": head.strip() or None,
                        "channels": None if ch == "auto" else int(ch), "mean": floats(mean_txt, "mean"),
                        "std": floats(std_txt, "std")}
                if size_txt.strip() and size_txt.strip().lower() != "auto":
                    try:
                        opts["input_size"] = [int(v) for v in size_txt.replace("x", ",").split(",") if v.strip()]
                    except ValueError:
                        raise ExperimentError(f"input size must be one or two integers, got {size_txt!r}") from None
                try:
                    id_ds = get_dataset(state.id_dataset())
                    opts["size_hint"] = list(id_ds.shape[:2])
                    if expect and id_ds.has_labels:
                        opts["num_classes"] = len(id_ds.class_names or []) or int(id_ds.labels.max()) + 1
                except UserError:
                    pass
                with st.spinner("Loading and dry-running the model…"):
                    return persist.register_upload(path, **opts)
            res = attempt("model refused", _load)
            if res:
                key, bundle = res
                state.put("model", key)
                state.put("loaded_model", key)

    loaded = state.get("loaded_model")
    if loaded and loaded in {m["spec"] for m in wb.list_models()}:
        bundle = wb.load_model(loaded)
        st.success(f"Loaded {bundle.name} ({bundle.info.get('format', bundle.arch)}): {bundle.num_classes} classes; "
                   f"now the current model (`{loaded}`).")
        pp = bundle.preprocess
        c1, c2 = st.columns([2, 3])
        with c1:
            st.markdown(f"**Architecture** {bundle.arch}  \n**Input** {pp.channels}×{pp.input_size[0]}×{pp.input_size[1]}"
                        f"  \n**Mean** {', '.join(f'{v:.4g}' for v in pp.mean)}  \n**Std** "
                        f"{', '.join(f'{v:.4g}' for v in pp.std)}  \n**Fingerprint** `{bundle.fingerprint[:16]}`")
            st.caption(f"Preprocessing: {bundle.info.get('preprocess_source', 'from the checkpoint')}")
            for note in bundle.info.get("notes", []):
                st.info(note)
            if bundle.has_features:
                st.markdown(f"**Feature layer**: the input of `{bundle.info.get('head_layer', bundle.head_name)}` "
                            f"({bundle.head.weight.shape[1]} features → {bundle.num_classes} logits)")
            else:
                st.warning(bundle.feature_reason)
            layers = bundle.info.get("linear_layers") or []
            if len(layers) > 1 or (layers and not bundle.has_features):
                pick = st.selectbox("Use another final linear layer", layers, key="md_pick_head",
                                    index=layers.index(cur_head) if (cur_head := bundle.info.get("head_layer", bundle.head_name)) in layers else 0)
                if st.button("Reload with this layer", key="md_reload_head"):
                    entry = persist.saved_uploads().get(loaded, {})
                    opts = dict(entry.get("options", {}), head=pick)
                    res = attempt("layer refused", persist.register_upload, entry.get("path", ""), **opts)
                    if res:
                        state.put("model", res[0])
                        state.put("loaded_model", res[0])
                        st.rerun()
        with c2:
            names = [s.name for s in list_datasets()]
            cur = state.id_dataset()
            ds_name = st.selectbox("Preview one sample from", names, index=names.index(cur) if cur in names else 0,
                                   key="md_prev_ds")
            ds = attempt("preview", get_dataset, ds_name)
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
                spec = attempt("dataset refused", persist.register_dataset_upload, dup.getvalue(), dup.name,
                               ds_name_in.strip(), role, **kw)
            elif dpath and dpath.strip():
                spec = attempt("dataset refused", persist.register_local, dpath.strip(), ds_name_in.strip(), role, **kw)
            else:
                st.error("give a folder/file path or upload a .zip/.npz")
                spec = None
        if spec is not None:
            state.set_widget("ds_preview_pick", spec.name)  # the preview below shows the new set
            if spec.role == "id_test":
                state.put("id_dataset", spec.name)
                state.put("ood_datasets", [n for n in state.ood_datasets() if not get_spec(n).embedded])
                st.success(f"registered {spec.name} ({', '.join(spec.splits)}); it is now the ID dataset. "
                           "The built-in MNIST-style OOD sets were deselected: register OOD sets for this domain.")
            elif spec.role in ("ood_test", "ood_val"):
                if spec.name not in state.ood_datasets():
                    state.put("ood_datasets", [*state.ood_datasets(), spec.name])
                st.success(f"registered {spec.name} as {ROLE_LABELS[spec.role]}; added to the OOD selection.")
            else:
                st.success(f"registered {spec.name} ({spec.role.replace('_', ' ')}, splits: {', '.join(spec.splits)}).")

    st.subheader("Datasets")
    saved = persist.saved_datasets()
    rows = []
    for s in list_datasets():
        rows.append({"name": s.name, "role": s.role, "splits": ", ".join(s.splits),
                     "source": "built-in" if s.embedded else s.source, "yours": not s.embedded})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="ds_table")
    all_names = [r["name"] for r in rows]
    if state.widget("ds_preview_pick") not in all_names:
        state.set_widget("ds_preview_pick", all_names[0])
    pv = st.selectbox("Preview", all_names, key="ds_preview_pick")
    pv_spec = get_spec(pv)
    pv_split = st.radio("Split", list(pv_spec.splits), horizontal=True, key="ds_preview_split",
                        index=list(pv_spec.splits).index("test") if "test" in pv_spec.splits else 0)
    pds = attempt(f"reading {pv}", get_dataset, pv, pv_split)
    if pds is not None:
        info = summary(pds)
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("images", f"{info['images']:,}")
        m2.metric("shape (H×W×C)", info["shape"])
        m3.metric("labelled", f"{info['labelled']:,}", f"{info['classes']} classes", delta_color="off")
        m4.metric("unreadable, skipped", info["skipped"])
        st.caption(f"fingerprint `{info['fingerprint']}` · {pds.description}")
        if info["skipped"]:
            st.warning(f"{info['skipped']} files could not be read and were skipped: "
                       f"{', '.join(pds.meta.get('skipped_files', [])[:5])}")
        st.image(sample_grid(pds, 32, 8), caption=f"32 random samples of {pds.name}",
                 width=min(900, 8 * (pds.shape[1] + 2) * max(1, 64 // max(pds.shape[1], 1))))
        if info["class_counts"]:
            with st.expander("Counts per class"):
                st.dataframe(pd.DataFrame({"class": list(info["class_counts"]), "count": list(info["class_counts"].values())}),
                             hide_index=True, key="ds_counts")
        if pv in saved and st.button(f"Forget {pv}", key="ds_forget", help="the files are not touched"):
            attempt("remove", persist.unregister_local, pv)
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
    st.download_button("Download experiment JSON", ex.experiment_json(exp), "experiment.json", ex.MIME["json"],
                       key="exp_download", icon=":material/download:", on_click="ignore")
    up_exp = st.file_uploader("Load an experiment JSON", type=["json"], key="exp_upload")
    if up_exp is not None:
        got = attempt("experiment refused", ex.experiment_from_bytes, up_exp.getvalue())
        if got is not None:
            problems = ex.check_experiment(got)
            for p in problems:
                st.error(p)
            if not problems and st.button("Apply this experiment", key="exp_apply", type="primary"):
                state.put("experiment_applied_message", f"applied: model {got.model}, ID {got.id_dataset}, OOD "
                                                   f"{', '.join(got.ood_datasets)}, detectors {', '.join(got.detectors)}")
                common.apply_experiment(got)  # parks it and reruns; the next run applies it before any widget
    if state.get("experiment_applied_message"):
        st.success(state.pop("experiment_applied_message"))

    st.subheader("Per-sample scores")
    st.caption("One row per ID-test and OOD sample: dataset, index, label, prediction, max softmax and each "
               "chosen detector's score (higher = more ID). Computed when you click (cached scores are reused).")
    dets = st.multiselect("Detectors", detector_names(), default=[d for d in ["msp", "energy"] if d in detector_names()],
                          key="exp_dets")
    if dets and state.ood_datasets():
        per_sample_downloads(state.model(), state.id_dataset(), state.ood_datasets(), dets, state.detector_knobs(),
                             key="exp")
    else:
        st.info("Choose detectors and at least one OOD dataset.")
