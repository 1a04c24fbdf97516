"""Architectures a ``state_dict`` can be loaded into, each with its default preprocessing.

The registry ``ARCHITECTURES`` (name -> builder) starts with the workbench's own
:class:`SmallCNN` (the embedded default model) and lists torchvision's classifiers after it.

torchvision's classification models are built with ``weights=None`` (no download) and
the requested class count; a CIFAR-style ResNet-18 (3x3 stem, no max-pool, the network
most CIFAR OOD papers use) is torchvision's ResNet-18 with that stem, so its weights
share torchvision's key names. ``STATE_KEY_ALIASES`` maps the other common spellings
(kuangliu/pytorch-cifar's ``shortcut``/``linear``, OpenOOD's ``shortcut``) onto them.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .archs_cifar import build_family, is_family_name
from .bundle import ModelError, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class SmallCNN(nn.Module):
    """The embedded default: three conv layers and a 128-d post-ReLU feature layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, feat_dim: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(2 * width * 9, feat_dim), nn.ReLU(),
        )
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda num_classes=10, in_channels=1: SmallCNN(num_classes, in_channels),
}


def build_arch(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Instantiate a named architecture: a registered one, a published variant (built as the
    structure it shares) or a member of a family (``wrn<depth>_<widen>``, ``densenet<depth>``)."""
    base = ARCH_VARIANTS.get(arch, arch)
    if base in ARCHITECTURES:
        return ARCHITECTURES[base](num_classes=num_classes, in_channels=in_channels)
    model = build_family(base, num_classes, in_channels)
    if model is not None:
        return model
    raise ModelError(f"unknown architecture {arch!r}; `python -m ood_core archs` lists them "
                     f"(and the families wrn<depth>_<widen>, densenet<depth>)")


def known_arch(arch: str) -> bool:
    """Whether :func:`build_arch` can build ``arch``."""
    base = ARCH_VARIANTS.get(arch, arch)
    return base in ARCHITECTURES or is_family_name(base)


def structure_of(arch: str) -> str:
    """The registered structure a published variant loads into (itself for the others)."""
    return ARCH_VARIANTS.get(arch, arch)



@dataclass(frozen=True)
class ArchInfo:
    """What the pickers show, the published preprocessing a fresh load starts from, and where the
    architecture's checkpoints are published (docs/architecture.md, "Published architectures").

    ``resize``: ``"stretch"`` or ``"crop"`` (shorter side to size / 0.875, centre crop: the ImageNet
    evaluation of torchvision and OpenOOD). ``mean = 0, std = 1`` means raw ``[0, 1]`` pixels (the
    authors apply no normalisation, or the model normalises inside: ``normalises_inside``).
    The ID accuracy published for an architecture is data, not a field here:
    :func:`ood_core.published.published_arch_accuracy` (docs/methods.md, "Published numbers").
    """

    label: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    fixed_size: bool = False  # the model only accepts this input size (ViT)
    big: bool = False  # over ~40 M parameters: slow to build, save and test on a CPU
    resize: str = "stretch"
    source: str = ""
    normalises_inside: bool = False

    def preprocess(self, channels: int | None = None) -> Preprocess:
        c = channels or self.channels
        mean, std = self.mean, self.std
        if c != len(mean):  # a 1-channel variant of an RGB model: average the statistics
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        return Preprocess(self.input_size, c, mean, std, self.resize)

    @property
    def raw_pixels(self) -> bool:
        """The published input is ``[0, 1]`` pixels without normalisation outside the model."""
        return all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def describe_preprocess(self) -> str:
        """One phrase: size, resize mode, normalisation."""
        h, w = self.input_size
        size = f"{h}x{w} " + ("stretched" if self.resize == "stretch" else "centre crop of a resize to "
                             f"{round(min(h, w) / 0.875)}")
        if self.normalises_inside:
            norm = "raw [0,1] pixels (the model normalises inside)"
        elif self.raw_pixels:
            norm = "raw [0,1] pixels (no normalisation)"
        else:
            norm = "mean " + "/".join(f"{v:.4g}" for v in self.mean) + " std " + "/".join(f"{v:.4g}" for v in self.std)
        return f"{size}, {norm}"


ARCH_INFO: dict[str, ArchInfo] = {
    "small_cnn": ArchInfo("the workbench's small CNN (MNIST-sized input)", (28, 28), MNIST_MEAN, MNIST_STD, 1),
}


def _first_conv_to(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the stem convolution for one with ``in_channels`` inputs (e.g. grayscale ResNets)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new)
            return model
    return model


def _torchvision(fn_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, fn_name)(weights=None, num_classes=num_classes)
        return _first_conv_to(model, in_channels)

    build.__name__ = f"build_{fn_name}"
    return build


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem and no max-pool (He et al.'s CIFAR variant)."""
    import torchvision.models as tvm

    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


_TORCHVISION = {
    "resnet18": ("torchvision ResNet-18", False),
    "resnet34": ("torchvision ResNet-34", False),
    "resnet50": ("torchvision ResNet-50", False),
    "resnet101": ("torchvision ResNet-101", True),
    "wide_resnet50_2": ("torchvision Wide ResNet-50-2", True),
    "vgg11_bn": ("torchvision VGG-11 with batch norm", True),
    "vgg16_bn": ("torchvision VGG-16 with batch norm", True),
    "mobilenet_v2": ("torchvision MobileNetV2", False),
    "mobilenet_v3_small": ("torchvision MobileNetV3-Small", False),
    "mobilenet_v3_large": ("torchvision MobileNetV3-Large", False),
    "densenet121": ("torchvision DenseNet-121", False),
    "efficientnet_b0": ("torchvision EfficientNet-B0", False),
    "convnext_tiny": ("torchvision ConvNeXt-Tiny", False),
    "regnet_y_400mf": ("torchvision RegNetY-400MF", False),
    "shufflenet_v2_x1_0": ("torchvision ShuffleNetV2 x1.0", False),
    "vit_b_16": ("torchvision ViT-B/16 (224x224 only)", True),
}

_TORCHVISION["swin_t"] = ("torchvision Swin-T (224x224)", False)
_OPENOOD_IMAGENET1K = ("resnet50", "vit_b_16", "swin_t")  # OpenOOD v1.5's ImageNet-1K models
_TV_SOURCE = "torchvision; OpenOOD v1.5 evaluates it on ImageNet-1K"

for _name, (_label, _big) in _TORCHVISION.items():
    ARCHITECTURES[_name] = _torchvision(_name)
    # torchvision's and OpenOOD's ImageNet evaluation: resize the shorter side to 256, centre crop 224
    ARCH_INFO[_name] = ArchInfo(
        _label, (224, 224), IMAGENET_MEAN, IMAGENET_STD, 3, fixed_size=_name.startswith(("vit", "swin")),
        big=_big, resize="crop", source=_TV_SOURCE if _name in _OPENOOD_IMAGENET1K else "torchvision")

ARCHITECTURES["resnet18_cifar"] = resnet18_cifar
ARCH_INFO["resnet18_cifar"] = ArchInfo(
    "CIFAR-style ResNet-18 (3x3 stem, no max-pool, 32x32)", (32, 32), CIFAR_MEAN, CIFAR_STD, 3,
    source="GReg and OpenOOD v1.5 (ResNet18_32x32); kuangliu/pytorch-cifar key names load too")

class StdConv2d(nn.Conv2d):
    """A convolution with Weight Standardization (Qiao et al. 2019), as BiT's ResNetV2 uses it:
    each output filter is centred and scaled to unit (population) variance before the conv.

    torch has no such layer; it is written from the formula, ``w' = (w - mean) / sqrt(var + 1e-10)``
    over (in, kh, kw). Its type is not ``nn.Conv2d``, so the per-sample gradient engine treats it
    with ``torch.func`` rather than with the plain-convolution formula (docs/architecture.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _PreActUnit(nn.Module):
    """BiT's pre-activation bottleneck: GN-ReLU before each conv, the stride on the 3x3 conv,
    and a projection shortcut taken from the pre-activated input when the shape changes."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(32, cin), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.gn1(x))
        skip = self.downsample(pre) if hasattr(self, "downsample") else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + skip


class BiTResNetV2(nn.Module):
    """Big Transfer's ResNetV2 (Kolesnikov et al. 2020), the GradNorm/RG papers' ImageNet model
    (BiT-S-R101x1). Module names follow the released PyTorch port, so its state_dicts load as
    they are; the 1x1-convolution classifier is held as the equal ``nn.Linear`` ``head.conv``
    (the loader squeezes its (C, D, 1, 1) weight), which is where GradNorm takes its gradient."""

    def __init__(self, units: tuple[int, int, int, int], width: int = 1, num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        wf = width
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(in_channels, 64 * wf, 7, 2, 3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),  # BiT pads with zeros, then pools without padding
            ("pool", nn.MaxPool2d(3, 2, 0)),
        ]))
        blocks, cin = [], 64 * wf
        for b, (n, cmid) in enumerate(zip(units, (64, 128, 256, 512)), 1):
            cout = cmid * 4 * wf
            unit = [(f"unit{i:02d}", _PreActUnit(cin if i == 1 else cout, cout, cmid * wf,
                                                 2 if (i == 1 and b > 1) else 1)) for i in range(1, n + 1)]
            blocks.append((f"block{b}", nn.Sequential(OrderedDict(unit))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))
        self.before_head = nn.Sequential(OrderedDict([
            ("gn", nn.GroupNorm(32, cin)), ("relu", nn.ReLU()), ("avg", nn.AdaptiveAvgPool2d(1)),
            ("flat", nn.Flatten(1)),
        ]))
        self.head = nn.Sequential(OrderedDict([("conv", nn.Linear(cin, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.before_head(self.body(self.root(x))))


def _bit(units: tuple[int, int, int, int], width: int = 1) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return BiTResNetV2(units, width, num_classes, in_channels)

    return build


for _name, _units, _label in (("bit_r50x1", (3, 4, 6, 3), "BiT ResNetV2-50x1"),
                              ("bit_r101x1", (3, 4, 23, 3), "BiT ResNetV2-101x1 (the GradNorm/RG ImageNet model)")):
    ARCHITECTURES[_name] = _bit(_units)
    # The GradNorm/RG reference evaluates at 480x480, stretched, with mean = std = 0.5.
    ARCH_INFO[_name] = ArchInfo(_label, (480, 480), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3, big=True,
                                source="Kolesnikov et al. 2020 (BiT-S); GradNorm (Huang et al. 2021) and RG")

# Other spellings of the same weights, tried when a state_dict's keys do not match:
# (substring in the file's key, replacement in ours).
STATE_KEY_ALIASES: dict[str, list[tuple[str, str]]] = {
    "resnet18_cifar": [(".shortcut.", ".downsample."), ("linear.", "fc.")],
}


def arch_info(arch: str) -> ArchInfo:
    """Defaults for ``arch``; a family member gets its family's, unknown (user-registered)
    architectures CIFAR-like ones."""
    if arch in ARCH_INFO:
        return ARCH_INFO[arch]
    for declare in FAMILY_INFO:
        info = declare(arch)
        if info is not None:
            return info
    return ArchInfo(arch, (32, 32), CIFAR_MEAN, CIFAR_STD, 3)


def list_architectures() -> list[tuple[str, str]]:
    """``(name, label)`` of every architecture a state_dict can be loaded into (published
    variants included; family members beyond the listed ones are built by name)."""
    return [(n, arch_info(n).label) for n in [*ARCHITECTURES, *ARCH_VARIANTS]]


# Filled by .archs_published (imported by the package's __init__, so always registered):
# published checkpoints whose weights share a registered structure but not its preprocessing
# (name -> structure), and the declarations of family members not registered by name.
ARCH_VARIANTS: dict[str, str] = {}
FAMILY_INFO: list[Callable[[str], "ArchInfo | None"]] = []
