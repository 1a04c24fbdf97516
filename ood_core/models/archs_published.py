"""The published OOD checkpoints' architectures, as data: structure, preprocessing, source.

Registered into :mod:`.archs` when it is imported, which the package's ``__init__`` does
(docs/architecture.md, "Published architectures"). Each declaration says the input the authors fed (size, resize mode,
normalisation or none). The ID accuracy the setup checks compare with (:mod:`.setup_checks`) is
data with its citation: ``published_tables/architectures.csv`` (docs/methods.md, "Published numbers").

Published *variants* (``ARCH_VARIANTS``) share a registered structure's weights layout but not its
preprocessing: Learning ODIN feeds raw ``ToTensor()`` pixels to a CIFAR ResNet-18 and to its
"MadrysResnet" (WRN-34-1). Detection cannot tell them apart from the weights, so a detected
structure's load notes name its variants (``--arch`` picks one).
"""
from __future__ import annotations

from .archs import (ARCH_INFO, ARCH_VARIANTS, ARCHITECTURES, CIFAR_MEAN, CIFAR_STD, FAMILY_INFO, IMAGENET_MEAN,
                    IMAGENET_STD, STATE_KEY_ALIASES, ArchInfo)
from .archs_cifar import DENSENET_NAME, WRN_NAME, DenseNetBC, LowDimResNet, WideResNet

# Hendrycks et al.'s CIFAR statistics (Outlier Exposure, Energy; ODIN and Mahalanobis use the same)
HENDRYCKS_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
HENDRYCKS_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

_WRN_SOURCE = "Hendrycks et al.'s CIFAR WRN: Outlier Exposure, Energy, GReg"
_DENSE_SOURCE = "DenseNet-BC as in ODIN, Mahalanobis, Energy, GReg"


def _wrn(depth: int, widen: int):
    def build(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, widen, num_classes, in_channels)

    return build


def _wrn_info(depth: int, widen: int) -> ArchInfo:
    return ArchInfo(f"Wide ResNet-{depth}-{widen} (CIFAR, pre-activation)", (32, 32), HENDRYCKS_MEAN,
                    HENDRYCKS_STD, 3, big=depth * widen * widen > 1000, source=_WRN_SOURCE)


def _densenet_info(depth: int, growth: int) -> ArchInfo:
    return ArchInfo(f"DenseNet-BC-{depth} (growth {growth}, CIFAR)", (32, 32), HENDRYCKS_MEAN, HENDRYCKS_STD, 3,
                    source=_DENSE_SOURCE)


def family_info(name: str) -> ArchInfo | None:
    """The declaration of a family member not registered by name (say ``wrn16_2``)."""
    m = WRN_NAME.match(name)
    if m:
        return _wrn_info(int(m.group(1)), int(m.group(2)))
    m = DENSENET_NAME.match(name)
    if m:
        return _densenet_info(int(m.group(1)), int(m.group(2) or 12))
    return None


FAMILY_INFO.append(family_info)

for _d, _w in ((40, 2), (28, 10)):
    ARCHITECTURES[f"wrn{_d}_{_w}"] = _wrn(_d, _w)
    ARCH_INFO[f"wrn{_d}_{_w}"] = _wrn_info(_d, _w)

ARCHITECTURES["densenet100"] = lambda num_classes=10, in_channels=3: DenseNetBC(100, 12, num_classes, in_channels)
ARCH_INFO["densenet100"] = _densenet_info(100, 12)
STATE_KEY_ALIASES["densenet100"] = [("linear.", "fc.")]  # GReg's copy names the classifier `linear`

ARCHITECTURES["lowdim_resnet18"] = lambda num_classes=10, in_channels=3: LowDimResNet((2, 2, 2, 2), num_classes,
                                                                                      in_channels)
ARCH_INFO["lowdim_resnet18"] = ArchInfo(
    "CIFAR ResNet-18 of the low-dimensional-gradient paper (normalises inside)", (32, 32), *RAW, 3,
    normalises_inside=True,
    source="Low-dimensional Gradient Helps OOD Detection (snowien/Low-dimensional-Gradient-Helps-OOD-Detection)")

ARCH_VARIANTS.update({
    "openood_resnet18_32x32": "resnet18_cifar",
    "openood_resnet18_224x224": "resnet18",
    "learning_odin_resnet18": "resnet18_cifar",
    "learning_odin_wrn34_1": "wrn34_1",
})
ARCH_INFO["openood_resnet18_32x32"] = ArchInfo(
    "OpenOOD v1.5 ResNet18_32x32 (CIFAR)", (32, 32), CIFAR_MEAN, CIFAR_STD, 3,
    source="OpenOOD v1.5 CIFAR-10/100 checkpoints (.ckpt); GReg")
ARCH_INFO["openood_resnet18_224x224"] = ArchInfo(
    "OpenOOD v1.5 ResNet18_224x224 (ImageNet-200)", (224, 224), IMAGENET_MEAN, IMAGENET_STD, 3, resize="crop",
    source="OpenOOD v1.5 ImageNet-200 checkpoints")
ARCH_INFO["learning_odin_resnet18"] = ArchInfo(
    "Learning ODIN's CIFAR ResNet-18 (raw ToTensor() pixels)", (32, 32), *RAW, 3,
    source="Learning ODIN (ajevnisek/learning-odin), {'net': module.…}")
ARCH_INFO["learning_odin_wrn34_1"] = ArchInfo(
    "Learning ODIN's MadrysResnet = WRN-34-1 (raw ToTensor() pixels)", (32, 32), *RAW, 3,
    source="Learning ODIN (ajevnisek/learning-odin), {'net': module.…}")


def variants_of(structure: str) -> list[str]:
    """Published variants that load into ``structure``."""
    return [v for v, base in ARCH_VARIANTS.items() if base == structure]


def archs_table() -> list[str]:
    """``name<TAB>label<TAB>preprocessing<TAB>where published``, one line per architecture, then the
    families (what ``python -m ood_core archs`` prints)."""
    from .archs import arch_info, list_architectures, structure_of

    out = []
    for name, label in list_architectures():
        info, base = arch_info(name), structure_of(name)
        shares = f" [weights of {base}]" if base != name else ""
        out.append(f"{name}\t{label}{shares}\t{info.describe_preprocess()}\t{info.source or '-'}")
    for pattern, what, example in (("wrn<depth>_<widen>", "any Wide ResNet (depth 6n+4)", "wrn16_2"),
                                   ("densenet<depth>[_k<growth>]", "any DenseNet-BC (growth 12 unless _k)",
                                    "densenet40")):
        info = arch_info(example)
        out.append(f"{pattern}\t{what}, detected from the weights\t{info.describe_preprocess()}\t{info.source}")
    return out
