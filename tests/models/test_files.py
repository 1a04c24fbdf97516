"""Loading users' model files: every accepted format, and every refusal with its message.

Fixture files are generated here: a TorchScript archive (scripted and traced), torch.export
archives (dynamic and fixed batch), a state_dict for each listed architecture, a pickled
whole model and booby-trapped files that must be refused *without* running their payload.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ood_core import persist as P
from ood_core.figures import previews
from ood_core.models import ARCHITECTURES, ModelError, build_arch, formats, state_dicts
from ood_core.models.archs import ARCH_INFO, CIFAR_MEAN, IMAGENET_MEAN
from ood_core.models.files import load_model_file


class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> GAP -> fc: small, with a BatchNorm to catch train/eval mistakes."""

    def __init__(self, c_in: int = 3, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


class FixedSizeNet(nn.Module):
    """Only takes 8x8 inputs (flatten -> Linear), to exercise dry-run failures."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


class ScaledOutput(TinyNet):
    """Something follows the last linear layer: no clean feature layer."""

    def forward(self, x):
        return 2.0 * torch.tanh(self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)))


def _trained_bn(model: nn.Module) -> nn.Module:
    # non-trivial BN statistics so eval/train mode differences would show
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _trained_bn(TinyNet())


@pytest.fixture(scope="module")
def x():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def files(tmp_path, tiny):
    out = {}
    out["script"] = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(tiny), out["script"])
    out["traced"] = tmp_path / "traced.ts"
    torch.jit.save(torch.jit.trace(tiny, torch.zeros(1, 3, 32, 32)), out["traced"])
    out["state"] = tmp_path / "state.pth"
    torch.save(tiny.state_dict(), out["state"])
    return out


@pytest.fixture(scope="module")
def pt2_files(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("pt2")
    dyn = d / "dynamic.pt2"
    ep = torch.export.export(tiny, (torch.zeros(2, 3, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(ep, dyn)
    fixed = d / "fixed1.pt2"
    torch.export.save(torch.export.export(tiny, (torch.zeros(1, 3, 32, 32),)), fixed)
    return {"dynamic": dyn, "fixed": fixed}


# --- accepted formats -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["script", "traced"])
def test_torchscript_loads_with_feature_split(files, tiny, x, kind):
    b = load_model_file(files[kind])
    assert b.info["format"] == "TorchScript archive"
    assert b.num_classes == 3 and b.has_features and b.info["head_layer"] == "fc"
    with torch.no_grad():
        logits, feats = b.forward(x)
        ref = tiny(x)
        ref_feats = F.adaptive_avg_pool2d(F.relu(tiny.bn(tiny.conv(x))), 1).flatten(1)
    assert torch.allclose(logits, ref, atol=1e-5)
    assert torch.allclose(feats, ref_feats, atol=1e-5)  # the features are the head's input, computed independently
    w, bias = b.head_arrays()
    np.testing.assert_allclose(w, tiny.fc.weight.detach().numpy())
    # the split shares the model's tensors instead of copying them
    assert b.body.conv.weight.data_ptr() == b.model.body.conv.weight.data_ptr()
    named = dict(b.model.named_parameters())
    assert {"head.weight", "head.bias"} <= set(named) and named["head.weight"].requires_grad


def test_torchscript_preprocessing_defaults_and_overrides(files):
    b = load_model_file(files["script"])
    assert b.preprocess.input_size == (32, 32) and b.preprocess.channels == 3
    assert b.preprocess.mean == pytest.approx(CIFAR_MEAN)  # 3x3 RGB stem -> CIFAR-style
    b2 = load_model_file(files["script"], input_size=[40], mean=[0.5], std=[0.25])
    assert b2.preprocess.input_size == (40, 40) and b2.preprocess.mean == (0.5, 0.5, 0.5)
    assert b2.preprocess.std == (0.25,) * 3


def test_pt2_dynamic_batch(pt2_files, tiny, x):
    b = load_model_file(pt2_files["dynamic"])
    assert b.info["format"] == "torch.export archive"
    assert b.preprocess.input_size == (32, 32)  # read from the archive's input shape
    assert b.has_features and b.info["head_layer"] == "fc"
    with torch.no_grad():
        logits, feats = b.forward(x)
    assert torch.allclose(logits, tiny(x), atol=1e-5)
    assert feats.shape == (5, 6)
    b.model.eval()  # ep.module() refuses .eval(); the wrapper must not
    assert b.info["notes"] == []
    # gradient methods select parameters by name under head_name and need them trainable
    named = dict(b.model.named_parameters())
    assert {"head.weight", "head.bias"} <= set(named) and all(p.requires_grad for p in named.values())
    assert not any(n.startswith("body.") and n.endswith("fc.weight") for n in named)


def test_pt2_fixed_batch_runs_in_chunks(pt2_files, tiny, x):
    b = load_model_file(pt2_files["fixed"])
    assert any("chunks of 1" in n for n in b.info["notes"])
    with torch.no_grad():
        assert torch.allclose(b.logits(x), tiny(x), atol=1e-5)
        assert b.forward(x)[1].shape == (5, 6)


def test_pt2_refuses_other_input_size(pt2_files):
    with pytest.raises(ModelError, match="exported for 32x32"):
        load_model_file(pt2_files["dynamic"], input_size=[64])


def test_pt2_saved_on_gpu_loads_on_cpu(pt2_files, tmp_path, tiny, x):
    """A GPU export records cuda devices; we rewrite them (what map_location does for torch.load)."""
    src = pt2_files["dynamic"]
    gpu = tmp_path / "gpu.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(gpu, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".json"):
                data = data.replace(b'"type": "cpu"', b'"type": "cuda"').replace(b'"type":"cpu"', b'"type":"cuda"')
            zout.writestr(info, data)
    with zipfile.ZipFile(gpu) as z:
        assert any(b'"cuda"' in z.read(n) for n in z.namelist() if n.endswith(".json"))
    if not torch.cuda.is_available():
        with pytest.raises(Exception):  # the raw archive really wants a GPU
            torch.export.load(gpu).module()(x)
    b = load_model_file(gpu)
    with torch.no_grad():
        assert torch.allclose(b.logits(x), tiny(x), atol=1e-5)


def test_state_dict_saved_on_gpu_loads_on_cpu(tmp_path, tiny, monkeypatch):
    """Storages tagged 'cuda:0' (as torch.save writes them on a GPU) load with map_location='cpu'."""
    import torch.serialization as ser

    p = tmp_path / "gpu_state.pt"
    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save(tiny.state_dict(), p)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(p, weights_only=True)
    state = state_dicts.read_state_dict(p)
    assert all(v.device.type == "cpu" for v in state.values())
    torch.testing.assert_close(state["fc.weight"], tiny.fc.weight.detach())


def test_resnet18_cifar_state_dict_detected(tmp_path):
    torch.manual_seed(0)
    m = build_arch("resnet18_cifar", 7, 3).eval()
    p = tmp_path / "r18.pt"
    torch.save(m.state_dict(), p)
    b = load_model_file(p)  # no architecture given: detected from the weights
    assert b.arch == "resnet18_cifar" and b.num_classes == 7 and b.head_name == "fc"
    assert b.preprocess.input_size == (32, 32) and b.preprocess.mean == pytest.approx(CIFAR_MEAN)
    assert "detected" in b.info["notes"][0]
    xb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b.logits(xb), m(xb), atol=1e-5)


def test_state_dict_key_spellings(tmp_path):
    """DataParallel's module. prefix, kuangliu's shortcut/linear names and wrapper dicts all load."""
    m = build_arch("resnet18_cifar", 10, 3).eval()
    sd = {}
    for k, v in m.state_dict().items():
        k = k.replace(".downsample.", ".shortcut.")
        k = "linear." + k[3:] if k.startswith("fc.") else k
        sd["module." + k] = v
    p = tmp_path / "kuangliu.pt"
    torch.save({"epoch": 200, "acc": 95.1, "net": sd}, p)
    b = load_model_file(p, arch="resnet18_cifar")
    xb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b.logits(xb), m(xb), atol=1e-5)


def test_grayscale_resnet_channels_from_first_conv(tmp_path):
    m = build_arch("resnet18_cifar", 4, 1)
    p = tmp_path / "gray.pt"
    torch.save(m.state_dict(), p)
    b = load_model_file(p, arch="resnet18_cifar")
    assert b.preprocess.channels == 1 and len(b.preprocess.mean) == 1


def test_workbench_checkpoint_delegates(tmp_path):
    from ood_core.models.checkpoints import save_checkpoint

    m = build_arch("small_cnn", 10, 1)
    meta = {"name": "mine", "arch": "small_cnn", "num_classes": 10, "in_channels": 1,
            "preprocess": {"input_size": [28, 28], "channels": 1, "mean": [0.1307], "std": [0.3081]}}
    p = save_checkpoint(m, tmp_path / "mine.pt", meta)
    assert formats.detect_model_format(p) == "checkpoint"
    b = load_model_file(p)
    assert b.arch == "small_cnn" and b.name == "mine" and b.has_features


SMALL = [a for a in ARCHITECTURES if not ARCH_INFO[a].big]
BIG = [a for a in ARCHITECTURES if ARCH_INFO[a].big]


def _quick_build(arch: str, classes: int, channels: int) -> nn.Module:
    """The architecture with random weights, without its (slow) initialisers: built on the meta
    device, then filled (BN variances positive so outputs stay finite)."""
    try:
        with torch.device("meta"):
            m = build_arch(arch, classes, channels)
        m = m.to_empty(device="cpu")
    except NotImplementedError:  # RegNet's builder computes with tensors
        m = build_arch(arch, classes, channels)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * (0.5 / max(1, t[0].numel()) ** 0.5 if t.ndim > 1 else 0.1))
            else:
                t.zero_()
    return m.eval()


def _roundtrip_arch(tmp_path: Path, arch: str) -> None:
    info = ARCH_INFO[arch]
    m = _quick_build(arch, 3, info.channels)
    p = tmp_path / f"{arch}.pt"
    torch.save(m.state_dict(), p)
    b = load_model_file(p, arch=arch)
    assert b.num_classes == 3 and b.has_features, b.feature_reason
    assert b.preprocess.input_size == info.input_size
    assert state_dicts.match_architectures(torch.load(p, weights_only=True))[0] == (arch, 0)
    xb = torch.randn(2, info.channels, *info.input_size)
    with torch.no_grad():
        logits, feats = b.forward(xb)
        assert torch.allclose(logits, m(xb), atol=1e-4)
        assert torch.allclose(b.head(feats), logits, atol=1e-4)


@pytest.mark.parametrize("arch", SMALL)
def test_state_dict_for_each_architecture(tmp_path, arch):
    _roundtrip_arch(tmp_path, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", BIG)
def test_state_dict_for_each_big_architecture(tmp_path, arch):
    _roundtrip_arch(tmp_path, arch)


def test_imagenet_defaults_for_torchvision(tmp_path):
    m = build_arch("mobilenet_v3_small", 3, 3)
    p = tmp_path / "mnv3.pt"
    torch.save(m.state_dict(), p)
    b = load_model_file(p)
    assert b.arch == "mobilenet_v3_small" and b.preprocess.input_size == (224, 224)
    assert b.preprocess.mean == pytest.approx(IMAGENET_MEAN)


# --- refusals ----------------------------------------------------------------------------

class Booby:
    """Unpickling this creates a marker file: proof that a loader ran code from the file."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_whole_model_refused(tmp_path, tiny):
    p = tmp_path / "whole.pt"
    torch.save(tiny, p)
    with pytest.raises(ModelError, match="pickled Python object.*TinyNet") as e:
        load_model_file(p)
    assert "state_dict" in str(e.value) and "torch.export" in str(e.value)  # says what to do instead


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    Booby.marker = str(marker)
    p = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Booby()}, p)
    with pytest.raises(ModelError, match="pickled Python object"):
        load_model_file(p, arch="resnet18")
    assert not marker.exists()
    # a legacy (non-zip) pickle too
    p2 = tmp_path / "evil_legacy.pt"
    p2.write_bytes(pickle.dumps(Booby(), protocol=2))
    with pytest.raises(ModelError):
        load_model_file(p2)
    assert not marker.exists()


def test_pt2_with_pickled_payload_refused(pt2_files, tmp_path):
    """torch.export.load unpickles 'use_pickle' weights with weights_only=False: we must refuse first."""
    marker = tmp_path / "pwned_pt2"
    Booby.marker = str(marker)
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(Booby(), buf, _use_new_zipfile_serialization=True)
    with zipfile.ZipFile(pt2_files["dynamic"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                target = cfg["config"][first]["path_name"]
                data = json.dumps(cfg).encode()
            zout.writestr(info, data)
        root = zin.namelist()[0].split("/")[0]
    with zipfile.ZipFile(evil, "a") as z:
        # replace the weight file with a pickle (zip appends; the last entry wins on read)
        z.writestr(f"{root}/data/weights/{target}", buf.getvalue())
    with pytest.raises(ModelError, match="pickled Python object"):
        load_model_file(evil)
    assert not marker.exists()


def test_pt2_with_compiled_code_refused(pt2_files, tmp_path):
    evil = tmp_path / "aoti.pt2"
    with zipfile.ZipFile(pt2_files["dynamic"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(ModelError, match="compiled code"):
        load_model_file(evil)


def test_size_limit(files, monkeypatch):
    with pytest.raises(ModelError, match="over the 100 B limit"):
        load_model_file(files["script"], max_bytes=100)
    monkeypatch.setenv("OOD_MAX_MODEL_BYTES", "1000")
    with pytest.raises(ModelError, match="OOD_MAX_MODEL_BYTES"):
        load_model_file(files["script"])
    with pytest.raises(ModelError, match="limit"):
        P.save_upload(b"x" * 2000, "big.pt")


def test_class_count_mismatch(files):
    with pytest.raises(ModelError, match="outputs 3 logits per sample but 10 classes were expected"):
        load_model_file(files["script"], num_classes=10)


def test_dry_run_failure_is_one_line(tmp_path):
    p = tmp_path / "fixed.pt"
    torch.jit.save(torch.jit.script(FixedSizeNet().eval()), p)
    with pytest.raises(ModelError) as e:
        load_model_file(p)  # no size fits among the common ones
    msg = str(e.value)
    assert "failed a dry run" in msg and "also tried input sizes" in msg and "\n" not in msg
    assert "mat1 and mat2 shapes cannot be multiplied" in msg  # TorchScript's real cause, not its banner
    b = load_model_file(p, input_size=[8, 8])  # the user says the size: it works
    assert b.preprocess.input_size == (8, 8)
    with pytest.raises(ModelError, match="dry run on a batch of shape \\(2, 3, 16, 16\\)"):
        load_model_file(p, input_size=[16])


def test_no_final_linear_gives_logits_only_with_reason(tmp_path, x):
    torch.manual_seed(0)
    p = tmp_path / "scaled.pt"
    m = _trained_bn(ScaledOutput())
    torch.jit.save(torch.jit.script(m), p)
    b = load_model_file(p)
    assert not b.has_features and "logits only" in b.feature_reason and "fc" in b.feature_reason
    with torch.no_grad():
        logits, feats = b.forward(x)
    assert feats is None and torch.allclose(logits, m(x), atol=1e-5)
    ep = torch.export.export(m, (torch.zeros(2, 3, 32, 32),), dynamic_shapes={"x": {0: torch.export.Dim("b")}})
    torch.export.save(ep, tmp_path / "scaled.pt2")
    b2 = load_model_file(tmp_path / "scaled.pt2")
    assert not b2.has_features and "linear" in b2.feature_reason
    with pytest.raises(ModelError, match="cannot use 'fc' as the feature layer"):
        load_model_file(p, head="fc")


def test_wrong_architecture_says_which_fits(tmp_path):
    p = tmp_path / "r18c.pt"
    torch.save(build_arch("resnet18_cifar", 3, 3).state_dict(), p)
    with pytest.raises(ModelError, match="does not fit resnet34.*it fits resnet18_cifar"):
        load_model_file(p, arch="resnet34")
    with pytest.raises(ModelError, match="unknown architecture 'resnet9000'"):
        load_model_file(p, arch="resnet9000")


def test_unknown_state_dict_and_junk(tmp_path, files):
    with pytest.raises(ModelError, match="no known architecture.*pick its architecture"):
        load_model_file(files["state"])  # TinyNet is not in the list
    junk = tmp_path / "notes.pt"
    junk.write_bytes(b"hello, this is not a model" * 10)
    with pytest.raises(ModelError, match="not a model file"):
        load_model_file(junk)
    png = tmp_path / "cat.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ModelError, match="not a model file"):
        load_model_file(png)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(ModelError, match="holds a list, not a state_dict"):
        load_model_file(lst)
    with pytest.raises(ModelError, match="no model file"):
        load_model_file(tmp_path / "missing.pt")


def test_preview_input_inverts_normalisation():
    from ood_core.models import Preprocess

    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    shown, stats = previews.preview_input(Preprocess((20, 20), 3, CIFAR_MEAN, (0.25, 0.25, 0.25)), img)
    assert shown.shape == (20, 20, 3) and np.abs(shown.astype(int) - img).max() <= 1
    assert stats["min"] < 0 < stats["max"]
    gray, _ = previews.preview_input(Preprocess((10, 10), 1, (0.5,), (0.5,)), img)
    assert gray.shape == (10, 10)


def test_upload_register_and_restore(tmp_cache, files):
    from ood_core import workbench as wb

    data = files["script"].read_bytes()
    p = P.save_upload(data, "../../etc/passwd model.pt")  # the name cannot escape the uploads folder
    assert p.is_relative_to(tmp_cache) and p.read_bytes() == data and ".." not in p.name
    key, b = P.register_upload(p, name="tiny")
    assert key.startswith("upload:tiny@") and wb.load_model(key) is b
    assert any(m["spec"] == key for m in wb.list_models())
    wb.forget_model(key)
    assert key in P.restore_uploads().models  # as after a restart
    assert wb.load_model(key).fingerprint == b.fingerprint
    P.forget_upload(key)
    with pytest.raises(ModelError, match="upload it again"):
        P.restore_upload(key)


def test_models_go_channels_last_unless_their_forward_needs_nchw():
    import torch
    from torch import nn

    from ood_core.models import ModelBundle, Preprocess, SmallCNN

    class ViewNet(nn.Module):  # LeNet-style: .view on a conv activation fails on channels-last strides
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.shape[0], -1))

    pre = Preprocess(input_size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
    b = ModelBundle(model=ViewNet(), preprocess=pre)
    assert b.model.conv.weight.is_contiguous() and b.num_classes == 3  # kept NCHW, and it works
    b2 = ModelBundle(model=SmallCNN(), preprocess=Preprocess(input_size=(28, 28), channels=1, mean=(0.0,), std=(1.0,)))
    assert b2.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.hostile
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_reduced_precision_state_dicts_load_as_float32(tmp_path, dtype):
    """Issue 27, item 10: a half-precision file was refused with a dtype mismatch."""
    torch.manual_seed(0)
    m = build_arch("resnet18_cifar", 5, 3).eval()
    p = tmp_path / "half.pt"
    torch.save({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in m.state_dict().items()}, p)
    b = load_model_file(p, arch="resnet18_cifar")
    assert all(t.dtype == torch.float32 for t in b.model.parameters())
    name = str(dtype).replace("torch.", "")
    assert any(f"weights stored as {name}, cast to float32" in n for n in b.info["notes"])
    ref = build_arch("resnet18_cifar", 5, 3).eval()
    ref.load_state_dict({k: (v.to(dtype).float() if v.is_floating_point() else v) for k, v in m.state_dict().items()})
    xb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b.logits(xb), ref(xb), atol=1e-5)


@pytest.mark.hostile
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_state_dicts_are_refused_in_one_complete_line(tmp_path, dtype):
    m = build_arch("resnet18_cifar", 5, 3)
    p = tmp_path / "ints.pt"
    torch.save({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in m.state_dict().items()}, p)
    with pytest.raises(ModelError) as got:
        load_model_file(p, arch="resnet18_cifar")
    msg = str(got.value)
    name = str(dtype).replace("torch.", "")
    assert "\n" not in msg and msg.endswith(".") and not msg.endswith(":")
    assert f"holds {name} tensors where resnet18_cifar has floating-point weights (conv1.weight and" in msg
