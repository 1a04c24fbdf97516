"""Published OOD checkpoints load into the exact architecture (issue 25).

Every network here is an independent definition written in this file from the papers'
descriptions (layer sizes, module names as the authors saved them); none imports the project's
classes. Each gets random weights (and random batch-norm statistics, so a train/eval mix-up
shows), is saved the ways the authors save it (plain ``state_dict``, ``{'state_dict': …}``,
``module.`` prefixes, GReg's ``{'epoch','arch','state_dict','cla_acc'}``, ``{'epoch','model'}``,
Learning ODIN's ``{'net': module.…}``) and loaded with ``load_model_file`` (what
``python -m ood_core evaluate --model FILE`` runs), without ``--arch`` where detection must work;
logits agree to 1e-5.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ood_core.models import ModelError
from ood_core.models.files import load_model_file
from ood_core.models.state_dicts import rank_architectures

# --- independent definitions ---------------------------------------------------------------

class RefWRNUnit(nn.Module):
    """Zagoruyko & Komodakis' basic block in Hendrycks' pre-activation form."""

    def __init__(self, i: int, o: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(i), nn.ReLU()
        self.conv1 = nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(o), nn.ReLU()
        self.conv2 = nn.Conv2d(o, o, 3, stride=1, padding=1, bias=False)
        self.same = i == o
        self.convShortcut = None if self.same else nn.Conv2d(i, o, 1, stride=stride, bias=False)

    def forward(self, x):
        if self.same:
            h = self.conv1(self.relu1(self.bn1(x)))
            return x + self.conv2(self.relu2(self.bn2(h)))
        x = self.relu1(self.bn1(x))
        return self.convShortcut(x) + self.conv2(self.relu2(self.bn2(self.conv1(x))))


class RefWRN(nn.Module):
    def __init__(self, depth: int, k: int, classes: int):
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        for b in range(3):
            grp = nn.Module()
            grp.layer = nn.Sequential(*[RefWRNUnit(ch[b] if j == 0 else ch[b + 1], ch[b + 1],
                                                   (1 if b == 0 else 2) if j == 0 else 1) for j in range(n)])
            setattr(self, f"block{b + 1}", grp)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], classes)
        self.width = ch[3]

    def forward(self, x):
        h = self.conv1(x)
        for b in (self.block1, self.block2, self.block3):
            h = b.layer(h)
        h = F.avg_pool2d(F.relu(self.bn1(h)), 8)  # the authors' fixed 8x8 pooling at 32x32
        return self.fc(h.view(-1, self.width))


class RefDenseNetBC(nn.Module):
    """DenseNet-BC: bottleneck (1x1 to 4k, 3x3 to k) layers, compression 0.5 transitions."""

    def __init__(self, depth: int, k: int, classes: int, head: str = "fc"):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * k
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        for b in range(1, 4):
            blk = nn.Module()
            layers = []
            for j in range(n):
                lay = nn.Module()
                lay.bn1 = nn.BatchNorm2d(c + j * k)
                lay.conv1 = nn.Conv2d(c + j * k, 4 * k, 1, bias=False)
                lay.bn2 = nn.BatchNorm2d(4 * k)
                lay.conv2 = nn.Conv2d(4 * k, k, 3, padding=1, bias=False)
                layers.append(lay)
            blk.layer = nn.Sequential(*layers)
            setattr(self, f"block{b}", blk)
            c += n * k
            if b < 3:
                t = nn.Module()
                t.bn1, t.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c // 2, 1, bias=False)
                setattr(self, f"trans{b}", t)
                c //= 2
        self.bn1 = nn.BatchNorm2d(c)
        setattr(self, head, nn.Linear(c, classes))
        self.head, self.c = head, c

    def forward(self, x):
        h = self.conv1(x)
        for b in range(1, 4):
            for lay in getattr(self, f"block{b}").layer:
                y = lay.conv1(F.relu(lay.bn1(h)))
                h = torch.cat([h, lay.conv2(F.relu(lay.bn2(y)))], 1)
            if b < 3:
                t = getattr(self, f"trans{b}")
                h = F.avg_pool2d(t.conv1(F.relu(t.bn1(h))), 2)
        h = F.avg_pool2d(F.relu(self.bn1(h)), 8).view(-1, self.c)
        return getattr(self, self.head)(h)


def basic_stages(net: nn.Module, skip: str, always: bool) -> None:
    """ResNet-18's four stages of two basic blocks as ``net.layer1..4`` (conv1/bn1/conv2/bn2 per block);
    the 1x1 projection is named ``skip`` (``shortcut`` or ``downsample``), an identity ``Sequential``
    where no projection is needed when ``always`` (kuangliu's spelling) and absent otherwise (torchvision's)."""
    cin = 64
    for s, w in enumerate((64, 128, 256, 512), 1):
        blocks = []
        for j in range(2):
            st = 2 if (s > 1 and j == 0) else 1
            blk = nn.Module()
            blk.conv1, blk.bn1 = nn.Conv2d(cin, w, 3, st, 1, bias=False), nn.BatchNorm2d(w)
            blk.conv2, blk.bn2 = nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
            if st != 1 or cin != w:
                setattr(blk, skip, nn.Sequential(nn.Conv2d(cin, w, 1, st, bias=False), nn.BatchNorm2d(w)))
            elif always:
                setattr(blk, skip, nn.Sequential())
            blocks.append(blk)
            cin = w
        setattr(net, f"layer{s}", nn.Sequential(*blocks))


class RefCifarResNet18(nn.Module):
    """He et al.'s ResNet-18 for CIFAR (3x3 stem, no pool), with the ``shortcut`` spelling of
    kuangliu/pytorch-cifar (head ``linear``: Learning ODIN) or OpenOOD (head ``fc``)."""

    def __init__(self, classes: int, head: str = "linear"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        basic_stages(self, "shortcut", always=True)
        setattr(self, head, nn.Linear(512, classes))
        self.head = head

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, 5):
            for b in getattr(self, f"layer{s}"):
                h = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h))))) + b.shortcut(h))
        return getattr(self, self.head)(F.avg_pool2d(h, 4).flatten(1))


class RefLowDimResNet18(nn.Module):
    """The low-dimensional-gradient paper's ResNet-18: in-model normalisation buffers
    ``normalize.mean/std``, a Sequential stem, ``residual_function`` / ``shortcut`` blocks."""

    def __init__(self, classes: int):
        super().__init__()
        self.normalize = nn.Module()
        self.normalize.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]))
        self.normalize.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]))
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cin = 64
        for s, w in zip(range(2, 6), (64, 128, 256, 512)):
            blocks = []
            for j in range(2):
                st = 2 if (s > 2 and j == 0) else 1
                blk = nn.Module()
                blk.residual_function = nn.Sequential(
                    nn.Conv2d(cin, w, 3, st, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                    nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
                blk.shortcut = (nn.Sequential(nn.Conv2d(cin, w, 1, st, bias=False), nn.BatchNorm2d(w))
                                if st != 1 or cin != w else nn.Sequential())
                blocks.append(blk)
                cin = w
            setattr(self, f"conv{s}_x", nn.Sequential(*blocks))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        h = (x - self.normalize.mean[:, None, None]) / self.normalize.std[:, None, None]
        h = self.conv1(h)
        for s in range(2, 6):
            for b in getattr(self, f"conv{s}_x"):
                h = F.relu(b.residual_function(h) + b.shortcut(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class RefResNet18_224(nn.Module):
    """OpenOOD's ResNet18_224x224: torchvision's names, 7x7 stem, max-pool, AvgPool2d(7, 2), dropout."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        basic_stages(self, "downsample", always=False)
        self.dropout = nn.Dropout2d(0.5)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for s in range(1, 5):
            for b in getattr(self, f"layer{s}"):
                skip = b.downsample(h) if hasattr(b, "downsample") else h
                h = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h))))) + skip)
        return self.fc(self.dropout(F.avg_pool2d(h, 7, 2)).flatten(1))


def randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with variance-preserving scales and random BN statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if name.startswith("normalize.") or not t.dtype.is_floating_point:
                continue
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(1.0 / t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return m.eval()


def check_same(model: nn.Module, path: Path, size: int = 32, **kw):
    b = load_model_file(path, **kw)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(b.logits(x), model(x), rtol=1e-5, atol=1e-5)
    assert b.has_features
    return b


# --- loading -------------------------------------------------------------------------------

WRAPPINGS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd},
    "module": lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
    "greg": lambda sd: {"epoch": 99, "arch": "wrn", "state_dict": sd, "cla_acc": torch.tensor(94.8)},
    "lowdim": lambda sd: {"epoch": 200, "model": sd},
    "learning_odin": lambda sd: {"net": OrderedDict((f"module.{k}", v) for k, v in sd.items()), "acc": 95.0},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
}


@pytest.mark.parametrize("wrap", list(WRAPPINGS))
def test_every_wrapping_unwraps_to_the_same_tensors(tmp_path, wrap):
    from ood_core.models.state_dicts import read_state_dict, strip_prefixes

    sd = randomise(RefWRN(10, 1, 3)).state_dict()
    torch.save(WRAPPINGS[wrap](sd), tmp_path / "w.pt")
    got = strip_prefixes(read_state_dict(tmp_path / "w.pt"))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert rank_architectures(got)[0][:2] == ("wrn10_1", 0)


@pytest.mark.parametrize("wrap", ["plain", "greg"])
def test_wrn40_2_detected(tmp_path, wrap):
    m = randomise(RefWRN(40, 2, 10))
    torch.save(WRAPPINGS[wrap](m.state_dict()), tmp_path / "wrn.pt")
    b = check_same(m, tmp_path / "wrn.pt")
    assert b.arch == "wrn40_2" and b.num_classes == 10
    assert b.preprocess.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))  # OE's statistics


def test_wrn_family_parameters_from_shapes(tmp_path):
    m = randomise(RefWRN(16, 4, 100), 3)
    torch.save(WRAPPINGS["state_dict"](m.state_dict()), tmp_path / "w.pt")
    b = check_same(m, tmp_path / "w.pt")
    assert (b.arch, b.num_classes) == ("wrn16_4", 100)


def test_densenet100_detected(tmp_path):
    m = randomise(RefDenseNetBC(100, 12, 10), 1)
    torch.save({"state_dict": WRAPPINGS["module"](m.state_dict())}, tmp_path / "d.pt")
    b = check_same(m, tmp_path / "d.pt")
    assert b.arch == "densenet100" and b.preprocess.input_size == (32, 32)


def test_densenet_linear_head_and_other_depth(tmp_path):
    m = randomise(RefDenseNetBC(40, 12, 100, head="linear"), 2)  # GReg names the classifier `linear`
    torch.save(WRAPPINGS["model_state_dict"](m.state_dict()), tmp_path / "d40.pt")
    b = check_same(m, tmp_path / "d40.pt")
    assert (b.arch, b.num_classes) == ("densenet40", 100)


def test_lowdim_resnet18_normalises_inside(tmp_path):
    m = randomise(RefLowDimResNet18(10), 4)
    torch.save(WRAPPINGS["lowdim"](m.state_dict()), tmp_path / "low.pt")
    b = check_same(m, tmp_path / "low.pt")
    assert b.arch == "lowdim_resnet18"
    assert b.preprocess.mean == (0.0, 0.0, 0.0) and b.preprocess.std == (1.0, 1.0, 1.0)  # raw pixels in


def test_learning_odin_resnet18_raw_pixels(tmp_path):
    m = randomise(RefCifarResNet18(10, head="linear"), 5)
    torch.save(WRAPPINGS["learning_odin"](m.state_dict()), tmp_path / "lo.pt")
    auto = load_model_file(tmp_path / "lo.pt")
    assert auto.arch == "resnet18_cifar"
    assert any("learning_odin_resnet18" in n for n in auto.info["notes"])  # the note names the variant
    b = check_same(m, tmp_path / "lo.pt", arch="learning_odin_resnet18")
    assert b.preprocess.mean == (0.0, 0.0, 0.0) and b.preprocess.std == (1.0, 1.0, 1.0)


def test_learning_odin_madry_wrn34_1(tmp_path):
    m = randomise(RefWRN(34, 1, 10), 6)
    torch.save(WRAPPINGS["learning_odin"](m.state_dict()), tmp_path / "madry.pt")
    assert rank_architectures(torch.load(tmp_path / "madry.pt", weights_only=True)["net"])[0][:2] == ("wrn34_1", 0)
    b = check_same(m, tmp_path / "madry.pt", arch="learning_odin_wrn34_1")
    assert b.preprocess.mean == (0.0, 0.0, 0.0) and b.preprocess.std == (1.0, 1.0, 1.0)


def test_openood_resnet18_32x32(tmp_path):
    m = randomise(RefCifarResNet18(10, head="fc"), 7)
    torch.save(m.state_dict(), tmp_path / "oo.ckpt")
    assert rank_architectures(m.state_dict())[0][:2] == ("resnet18_cifar", 0)
    b = check_same(m, tmp_path / "oo.ckpt", arch="openood_resnet18_32x32")
    assert b.preprocess.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_openood_resnet18_224_and_imagenet_crop(tmp_path):
    m = randomise(RefResNet18_224(200), 8)
    torch.save(m.state_dict(), tmp_path / "oo224.ckpt")
    assert rank_architectures(m.state_dict())[0][:2] == ("resnet18", 0)
    b = check_same(m, tmp_path / "oo224.ckpt", size=224, arch="openood_resnet18_224x224")
    assert b.num_classes == 200
    assert (b.preprocess.input_size, b.preprocess.resize) == ((224, 224), "crop")  # resize 256, centre crop 224


def test_torchvision_imagenet_models_detected_with_openood_preprocessing():
    import torchvision.models as tvm

    from ood_core.models.archs import arch_info

    for fn, name in ((tvm.resnet50, "resnet50"), (tvm.vit_b_16, "vit_b_16"), (tvm.swin_t, "swin_t")):
        with torch.device("meta"):  # key names and shapes only (test_loading round-trips resnet50's weights)
            sd = fn(weights=None, num_classes=1000).state_dict()
        assert rank_architectures(sd)[0][:2] == (name, 0)
        info = arch_info(name)
        assert (info.input_size, info.resize, info.mean) == ((224, 224), "crop", (0.485, 0.456, 0.406))
        assert info.preprocess().to_dict()["resize"] == "crop"


# --- refusals ------------------------------------------------------------------------------

def test_closest_architecture_is_ranked_by_shared_keys(tmp_path):
    sd = randomise(RefWRN(16, 2, 10)).state_dict()
    for k in [k for k in sd if k.startswith("block3.layer.1.")]:
        del sd[k]  # a damaged WRN-16-2: no known architecture fits exactly
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"no known architecture \(closest: wrn\d+_2 \(\d+% of keys") as e:
        load_model_file(tmp_path / "bad.pt")
    assert "small_cnn" not in str(e.value).split("closest:")[1].split(",")[0]


def test_partial_load_refused_listing_keys(tmp_path):
    sd = randomise(RefWRN(40, 2, 10)).state_dict()
    del sd["block2.layer.3.conv2.weight"]
    sd["block9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "part.pt")
    with pytest.raises(ModelError, match=r"does not fit wrn40_2: 1 missing \(block2\.layer\.3\.conv2\.weight\); "
                                         r"1 unexpected \(block9\.weight\).*never loaded in part"):
        load_model_file(tmp_path / "part.pt", arch="wrn40_2")


def test_archs_command_lists_preprocessing_and_source(capsys):
    from ood_core import cli

    assert cli.main(["archs"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    for name in ("wrn40_2", "densenet100", "lowdim_resnet18", "learning_odin_resnet18", "learning_odin_wrn34_1",
                 "openood_resnet18_32x32", "openood_resnet18_224x224", "resnet50", "vit_b_16", "swin_t",
                 "bit_r101x1", "wrn<depth>_<widen>"):
        assert name in rows and len(rows[name]) == 4, name
    assert "raw [0,1] pixels" in rows["learning_odin_resnet18"][2]
    assert "centre crop" in rows["resnet50"][2] and "OpenOOD" in rows["resnet50"][3]
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help().split())
    assert "python -m ood_core archs" in help_text and "`models`" not in help_text
