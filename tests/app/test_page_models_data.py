"""The Models & Data page with AppTest: uploads, refusals as st.error lines, dataset registration,
experiment JSON, and the end-to-end case: CIFAR-10 + SVHN folders and a CIFAR ResNet-18 state_dict
reach a working Scores page through the UI alone."""
from __future__ import annotations

import json
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
PAGE_REL = "pages/7_Models_and_Data.py"


Tiny = fx.TinyNet


@pytest.fixture()
def page(tmp_cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ood_core import persist

    monkeypatch.chdir(ROOT)
    # Start from the app's main script so switch_page can reach the Scores page later;
    # switching before the first run means app.py itself never runs (no default model needed).
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page(PAGE_REL)
    yield at
    for n in list(persist.saved_datasets()):
        persist.unregister_local(n)
    for key in list(persist.saved_uploads()):
        persist.forget_upload(key)


def errors(at) -> list[str]:
    """The error lines as the user reads them (Markdown's backslash escapes of user text removed)."""
    import re

    return [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]


def upload_model(at, name: str, data: bytes):
    at.file_uploader(key="md_upload").set_value((name, data, "application/octet-stream"))
    return at.run()


def register_dataset(at, name: str, role: str, path):
    at.text_input(key="ds_name").set_value(name)
    at.selectbox(key="ds_role").set_value(role)
    at.text_input(key="ds_path").set_value(str(path))
    return at.button(key="ds_register").click().run()


def test_torchscript_upload_flow(page, tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), p)
    at = page.run()
    assert not at.exception and not errors(at)
    assert [t.value for t in at.title] == ["Models & data"]
    upload_model(at, "tiny.pt", p.read_bytes())
    assert any("TorchScript archive" in c.value for c in at.caption)
    at.button(key="md_load").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert at.session_state["model"].startswith("upload:tiny@")
    assert any("Loaded tiny (TorchScript archive): 10 classes" in s.value for s in at.success)
    assert any("the input of fc " in m.value for m in at.markdown)
    assert len(at.image) >= 3  # raw sample, model input, dataset grid


def load_scripted(at, tmp_path, model, option: str, value: str) -> None:
    """Upload ``model`` as TorchScript, set one load option's field to ``value`` and press Load."""
    p = tmp_path / f"{type(model).__name__.lower()}.pt"
    torch.jit.save(torch.jit.script(model), p)
    upload_model(at, p.name, p.read_bytes())
    at.text_input(key=option).set_value(value)
    at.button(key="md_load").click().run()


@pytest.mark.parametrize("case", ["pickled", "too_large", "junk", "wrong_arch", "dry_run", "bad_mean"])
def test_model_refusals_are_one_line_errors(page, tmp_path, monkeypatch, case):
    from ood_core.models import build_arch

    if case == "too_large":
        monkeypatch.setenv("OOD_MAX_MODEL_BYTES", "1000")
    at = page.run()
    if case == "pickled":
        p = tmp_path / "whole.pt"
        torch.save(Tiny(), p)
        upload_model(at, "whole.pt", p.read_bytes())
        want = "cannot read this file: refused whole.pt: it is a pickled Python object"
    elif case == "too_large":
        upload_model(at, "big.pt", b"\0" * 5000)
        want = "upload refused: the upload big.pt is 4.9 KiB, over the 1000 B limit"
    elif case == "junk":
        upload_model(at, "notes.pt", b"just some text, not a model")
        want = "this is not a model file the workbench reads"
    elif case == "wrong_arch":
        p = tmp_path / "r18.pt"
        torch.save(build_arch("resnet18_cifar", 3, 3).state_dict(), p)
        upload_model(at, "r18.pt", p.read_bytes())
        assert at.selectbox(key="md_arch").value == "resnet18_cifar"  # the fitting one is preselected
        at.selectbox(key="md_arch").set_value("resnet34")
        at.button(key="md_load").click().run()
        want = "model refused: r18.pt does not fit resnet34"
    elif case == "dry_run":
        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3 * 8 * 8, 3)

            def forward(self, x):
                return self.fc(x.flatten(1))
        load_scripted(at, tmp_path, Fixed(), "md.model.input_size", "16")
        want = "model refused: the model failed a dry run on a batch of shape (2, 3, 16, 16): RuntimeError"
    else:
        load_scripted(at, tmp_path, Tiny(), "md.model.mean", "0.5, abc")
        want = "model refused: model.mean must be numbers separated by commas"
    assert not at.exception
    errs = errors(at)
    assert any(e.startswith(want) for e in errs), errs
    assert all("\n" not in e and "Traceback" not in e for e in errs)
    assert at.session_state["model"] == "default"


def test_dataset_registration_and_refusals(page, tmp_path):
    at = page.run()

    register_dataset(at, "nowhere", "ood_test", tmp_path / "missing")
    assert "dataset refused: no such file or folder" in errors(at)[0]
    (tmp_path / "empty").mkdir()
    register_dataset(at, "empty", "ood_test", tmp_path / "empty")
    assert "dataset refused: could not recognise" in errors(at)[0]
    np.savez(tmp_path / "chw.npz", x=np.zeros((4, 3, 8, 8), np.uint8))
    register_dataset(at, "chw", "ood_test", tmp_path / "chw.npz")
    assert "looks channels-first" in errors(at)[0]
    tree = fx.image_tree(tmp_path / "tree", per=3, corrupt=1)
    register_dataset(at, "mytree", "ood_test", tree)
    assert not errors(at) and not at.exception
    assert "mytree" in at.session_state["ood_datasets"]
    assert any("1 files could not be read" in w.value for w in at.warning)
    assert at.metric[0].value == "9"  # images in the preview
    assert any("fingerprint" in c.value for c in at.caption)


def test_an_upload_is_inspected_once_not_on_every_widget_change(page, tmp_path, monkeypatch):
    from ood_core import persist
    from ood_core.models import files

    calls = {"save": 0, "inspect": 0}
    save, inspect = persist.save_upload, files.inspect_model_file

    def counted_save(*a, **k):
        calls["save"] += 1
        return save(*a, **k)

    def counted_inspect(*a, **k):
        calls["inspect"] += 1
        return inspect(*a, **k)

    monkeypatch.setattr(persist, "save_upload", counted_save)
    monkeypatch.setattr(files, "inspect_model_file", counted_inspect)
    torch.manual_seed(7)  # bytes no other test uploads, so the content-keyed cache starts cold
    p = tmp_path / "once.pt"
    torch.save(Tiny().state_dict(), p)
    at = upload_model(page.run(), "once.pt", p.read_bytes())
    assert not at.exception and not errors(at), errors(at)
    assert any("state_dict (weights only)" in c.value for c in at.caption)
    assert calls == {"save": 1, "inspect": 1}
    at.text_input(key="md_name").set_value("renamed").run()  # unrelated widgets: no new inspection
    at.checkbox(key="md_expect").check().run()
    at.text_input(key="ds_name").set_value("whatever").run()
    assert not at.exception and not errors(at), errors(at)
    assert calls == {"save": 1, "inspect": 1}
    assert any("state_dict (weights only)" in c.value for c in at.caption)


def test_experiment_json_upload(page, tmp_path):
    at = page.run()
    up = at.file_uploader(key="exp_upload")
    up.set_value(("e.json", b"{broken", "application/json"))
    at.run()
    assert any(e.startswith("experiment refused: not valid JSON") for e in errors(at))
    bad = {"model": "default", "id_dataset": "nope", "ood_datasets": ["letters"], "detectors": ["energy"]}
    at.file_uploader(key="exp_upload").set_value(("e.json", json.dumps(bad).encode(), "application/json"))
    at.run()
    assert any("dataset 'nope' is not registered" in e for e in errors(at))
    good = {"model": "default", "id_dataset": "mnist", "ood_datasets": ["faces"], "detectors": ["msp"],
            "params": {"msp": {"T": 2.0}}}
    at.file_uploader(key="exp_upload").set_value(("e.json", json.dumps(good).encode(), "application/json"))
    at.run()
    assert not errors(at)
    at.button(key="exp_apply").click().run()
    assert at.session_state["ood_datasets"] == ["faces"] and at.session_state["detector_knobs"] == {"msp": {"T": 2.0}}
    assert at.session_state["detector"] == "msp"


def test_end_to_end_cifar10_svhn_resnet18_to_scores(page, tmp_path):
    """The issue's 'done when': folders in the real formats and a state_dict, UI only, to Scores."""
    from ood_core.models import build_arch

    torch.manual_seed(0)
    c10 = fx.cifar10_folder(tmp_path / "data" / "cifar10", n_train=24, n_test=12)  # holds cifar-10-batches-py
    svhn = fx.svhn_folder(tmp_path / "data" / "svhn", n=12)  # holds test_32x32.mat
    weights = tmp_path / "resnet18_cifar10.pth"
    torch.save(build_arch("resnet18_cifar", 10, 3).eval().state_dict(), weights)

    at = page.run()
    upload_model(at, weights.name, weights.read_bytes())
    assert at.selectbox(key="md_arch").value == "resnet18_cifar"
    at.button(key="md_load").click().run()
    assert not errors(at), errors(at)
    for name, role, path in (("cifar10", "id_test", c10), ("svhn", "ood_test", svhn)):
        register_dataset(at, name, role, path)
        assert not errors(at), errors(at)
    assert at.session_state["id_dataset"] == "cifar10" and at.session_state["ood_datasets"] == ["svhn"]
    model = at.session_state["model"]
    assert model.startswith("upload:resnet18_cifar10@")

    at.switch_page("pages/1_Scores.py").run()
    assert [t.value for t in at.title] == ["Scores"]
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["AUROC (mean)"]) >= 0 and metrics["ID accuracy"].endswith("%")
    assert at.session_state["model"] == model and at.session_state["id_dataset"] == "cifar10"
    # a detector that needs the ID training split (cifar10:train) and the features
    at.selectbox(key="detector").set_value("knn").run()
    assert not at.exception and not errors(at), errors(at)
    assert 0 <= float({m.label: m.value for m in at.metric}["AUROC (mean)"]) <= 100
    assert {"dl-hist-png", "dl-hist-html"} <= {b.key for b in at.get("download_button")}


def test_reload_with_another_head_layer(page, tmp_path):
    """The layer picker reloads the remembered upload (its saved path and options) with ``head=``."""
    class TwoLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(3 * 8 * 8, 6)
            self.fc2 = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    torch.manual_seed(0)
    p = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(TwoLinear().eval()), p)
    at = page.run()
    upload_model(at, "two.pt", p.read_bytes())
    at.text_input(key="md.model.input_size").set_value("8")
    at.button(key="md_load").click().run()
    assert not errors(at), errors(at)
    pick = at.selectbox(key="md_pick_head")
    assert list(pick.options) == ["fc1", "fc2"] and pick.value == "fc2"
    pick.set_value("fc1")
    at.button(key="md_reload_head").click().run()
    assert any(e.startswith("layer refused: cannot use 'fc1' as the feature layer") for e in errors(at)), errors(at)
    assert not at.exception


# --- issue 27: user text stays text (item 2); hostile uploads are one clear line (item 8) ---------

URL_IMG = "![t](http://127.0.0.1:9/x.png)"


def markdown_bodies(at) -> list[str]:
    """Every string this run handed to Streamlit's Markdown renderer: texts, captions, alerts, labels."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "success", "info"):
        out += [e.value for e in getattr(at, kind)]
    out += [b.label for b in at.button] + [m.label for m in at.metric] + [str(m.value) for m in at.metric]
    return out


def assert_literal(bodies: list[str], *names: str) -> None:
    """No Markdown image, link or HTML tag survives in the bodies (CommonMark backslash escapes aside),
    and each name appears, unescaped, as the literal text the user wrote."""
    import re

    for body in bodies:
        bare = re.sub(r"\\.", "", body)  # what is left once every escaped character is taken out
        assert "![" not in bare and "](" not in bare and "<b>" not in bare and "<a" not in bare, body
    shown = [re.sub(r"\\(.)", r"\1", b) for b in bodies]
    for n in names:
        assert any(n in s for s in shown), (n, bodies)


@pytest.mark.hostile
def test_user_text_renders_as_text_not_markdown(page, tmp_path):
    """A model path, dataset names and an experiment's fields shaped as a Markdown image or HTML made
    every viewer's browser fetch the URL (or render the tag); each is now shown literally."""
    at = page.run()
    exp = {"model": URL_IMG, "id_dataset": "mnist", "ood_datasets": ["<b>x</b>"], "detectors": ["msp"]}
    at.file_uploader(key="exp_upload").set_value(("e.json", json.dumps(exp).encode(), "application/json"))
    at.run()
    assert not at.exception
    assert len(errors(at)) == 2, errors(at)
    assert_literal(markdown_bodies(at), URL_IMG, "<b>x</b>")

    at.radio(key="md_src").set_value("Path on this machine").run()
    at.text_input(key="md_path").set_value(f"/nowhere/{URL_IMG}").run()  # a typed folder path
    assert any("no file at" in e for e in errors(at)), errors(at)
    assert_literal(markdown_bodies(at), "![t](http:", "x.png)")  # the path's "//" is normalised to "/"

    folder = fx.flat_images(tmp_path / "imgs", n=4)
    name = "![t](x.png) <b>y"  # a dataset name may hold neither ':' nor '/', so the URL is relative here
    register_dataset(at, name, "ood_test", folder)
    assert not at.exception
    assert any("registered" in s.value for s in at.success), errors(at)
    assert_literal(markdown_bodies(at), f"registered {name} as", f"Forget {name}")


def _patched_zip(good: bytes, local: int, central: int, value: int) -> bytes:
    b = bytearray(good)
    for sig, off in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        j = 0
        while (j := b.find(sig, j)) >= 0:
            b[j + off] |= value
            j += 4
    return bytes(b)


@pytest.mark.hostile
@pytest.mark.parametrize("case, msg", [("bad CRC", "the zip archive is damaged: Bad CRC-32"),
                                       ("encrypted", "is encrypted")])
def test_damaged_zip_upload_is_one_error(page, tmp_path, case, msg):
    import io
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(3):
            png = io.BytesIO()
            Image.new("L", (8, 8), 9 * i).save(png, "PNG")
            z.writestr(f"d/{i}.png", png.getvalue())
    data = buf.getvalue()
    if case == "bad CRC":
        b = bytearray(data)
        b[b.find(b"\x89PNG") + 20] ^= 0xFF
        data = bytes(b)
    else:
        data = _patched_zip(data, 6, 8, 1)
    at = page.run()
    at.radio(key="ds_src").set_value("Upload (.zip or .npz)").run()
    at.text_input(key="ds_name").set_value("zipped")
    at.file_uploader(key="ds_upload").set_value(("d.zip", data, "application/zip"))
    at.button(key="ds_register").click().run()
    assert not at.exception, at.exception
    assert any(e.startswith("dataset refused: ") and msg in e for e in errors(at)), errors(at)


@pytest.mark.hostile
@pytest.mark.parametrize("field, value, msg", [
    ("seed", "abc", "seed must be a whole number"),
    ("id_dataset", ["mnist"], "id_dataset must be a non-empty string"),
    ("ood_datasets", [1, 2], "ood_datasets must be a list of names"),
    ("notes", "deep", "nested too deeply"),
])
def test_hostile_experiment_upload_is_one_error(page, field, value, msg):
    """Each raised a traceback here (``T: "abc"`` did on Home: tests/app/test_page_scores.py)."""
    exp = {"model": "default", "id_dataset": "mnist", "ood_datasets": ["faces"], "detectors": ["msp"], field: value}
    data = json.dumps(exp).encode()
    if value == "deep":
        data = data.replace(b'"deep"', b"[" * 100_000 + b"]" * 100_000)
    at = page.run()
    at.file_uploader(key="exp_upload").set_value(("e.json", data, "application/json"))
    at.run()
    assert not at.exception, at.exception
    assert any(msg in e for e in errors(at)), errors(at)
    assert not any(b.key == "exp_apply" for b in at.button)
