"""CIFAR networks of the published OOD checkpoints, with the module names their authors saved.

Written from the papers' descriptions, so that a ``state_dict`` saved by the authors' own class
loads strictly (docs/architecture.md, "Published architectures"):

- :class:`WideResNet`: Zagoruyko & Komodakis' WRN-``depth``-``widen`` in the pre-activation form of
  Hendrycks et al.'s CIFAR code (Outlier Exposure, Energy, GReg; Learning ODIN's "MadrysResnet" is
  WRN-34-1 with the same names): a 3x3 stem ``conv1`` (16 channels), three groups ``block1..3`` of
  ``(depth - 4) / 6`` units ``blockG.layer.i`` each (BN-ReLU-conv3x3-BN-ReLU-conv3x3; when the unit
  changes the width, the pre-activated input goes through a 1x1 ``convShortcut``), then ``bn1``,
  ReLU, global average pooling and ``fc``. Widths 16k, 32k, 64k; groups 2 and 3 halve the size.
- :class:`DenseNetBC`: Huang et al.'s DenseNet-BC (bottleneck + compression), as ODIN, Mahalanobis,
  Energy and GReg use it at depth 100, growth 12: a 3x3 stem of ``2 * growth`` channels, three
  dense blocks of ``(depth - 4) / 6`` bottleneck layers (BN-ReLU-conv1x1 to ``4 * growth``,
  BN-ReLU-conv3x3 to ``growth``, concatenated to the input), transitions ``trans1/2``
  (BN-ReLU-conv1x1 to ``floor(channels * reduction)``, 2x2 average pooling), ``bn1``, ReLU,
  global average pooling, ``fc``.
- :class:`LowDimResNet`: the CIFAR ResNet of the low-dimensional-gradient paper's code: the input is
  normalised inside the model by the buffers ``normalize.mean`` / ``normalize.std`` (saved with the
  weights), a ``Sequential`` stem ``conv1`` (conv3x3-BN-ReLU), stages ``conv2_x..conv5_x`` of blocks
  with a ``residual_function`` ``Sequential`` (conv-BN-ReLU-conv-BN) and a ``shortcut``, then ``fc``.

Global average pooling is adaptive here; at the published 32x32 input it equals the authors'
fixed 8x8 (WRN, DenseNet) pooling.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn


class _WRNUnit(nn.Module):
    """Pre-activation basic unit; the shortcut sees the pre-activated input when widths differ."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        if not self.equal:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class _Group(nn.Module):
    """A group of units held as ``.layer`` (the published key names ``blockG.layer.i``)."""

    def __init__(self, units: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` for 32x32 inputs (Hendrycks et al.'s key names)."""

    def __init__(self, depth: int = 40, widen: int = 2, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"a WRN's depth is 6n + 4 (10, 16, 22, 28, 34, 40, ...), not {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        for g, stride in enumerate((1, 2, 2), 1):
            units = [_WRNUnit(widths[g - 1] if i == 0 else widths[g], widths[g], stride if i == 0 else 1)
                     for i in range(n)]
            setattr(self, f"block{g}", _Group(units))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, out], 1)


class _Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC-``depth`` with growth ``growth`` and compression ``reduction`` for 32x32 inputs."""

    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10, in_channels: int = 3,
                 reduction: float = 0.5) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"a DenseNet-BC's depth is 6n + 4 (40, 100, 190, ...), not {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        for b in (1, 2, 3):
            setattr(self, f"block{b}", _Group([_DenseLayer(c + i * growth, growth) for i in range(n)]))
            c += n * growth
            if b < 3:
                out = int(math.floor(c * reduction))
                setattr(self, f"trans{b}", _Transition(c, out))
                c = out
        self.bn1 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.block1(self.conv1(x)))
        out = self.block3(self.trans2(self.block2(out)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


class _Normalize(nn.Module):
    """``(x - mean) / std`` per channel with both saved as (persistent) buffers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


class _LowDimBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_function(x) + self.shortcut(x))


class LowDimResNet(nn.Module):
    """The low-dimensional-gradient paper's CIFAR ResNet (basic blocks), normalising inside."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.normalize = _Normalize(in_channels)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cin = 64
        for s, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 2):
            units = []
            for i in range(n):
                units.append(_LowDimBlock(cin, width, 2 if (i == 0 and s > 2) else 1))
                cin = width
            setattr(self, f"conv{s}_x", nn.Sequential(*units))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- families: names with parameters, and the parameters read from a state_dict --------------

WRN_NAME = re.compile(r"^wrn(\d+)_(\d+)$")
DENSENET_NAME = re.compile(r"^densenet(\d+)(?:_k(\d+))?$")


def build_family(name: str, num_classes: int, in_channels: int) -> nn.Module | None:
    """Build ``wrn<depth>_<widen>`` or ``densenet<depth>[_k<growth>]`` (growth 12 when not given);
    None for another name."""
    m = WRN_NAME.match(name)
    if m:
        return WideResNet(int(m.group(1)), int(m.group(2)), num_classes, in_channels)
    m = DENSENET_NAME.match(name)
    if m and int(m.group(1)) != 121:  # densenet121 is torchvision's ImageNet DenseNet
        return DenseNetBC(int(m.group(1)), int(m.group(2) or 12), num_classes, in_channels)
    return None


def is_family_name(name: str) -> bool:
    m = WRN_NAME.match(name)
    if m:
        return (int(m.group(1)) - 4) % 6 == 0 and int(m.group(1)) >= 10 and int(m.group(2)) >= 1
    m = DENSENET_NAME.match(name)
    return bool(m) and int(m.group(1)) != 121 and (int(m.group(1)) - 4) % 6 == 0 and int(m.group(1)) >= 10


def family_candidates(keys_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Family members whose depth and width (WRN) or growth (DenseNet) the state_dict's shapes give.

    The number of units per group is the largest ``block1.layer.<i>`` index + 1; a WRN's widen
    factor is ``block1.layer.0.conv1``'s output width / 16, a DenseNet's growth rate is
    ``block1.layer.0.conv2``'s output width."""
    idx = [int(m.group(1)) for k in keys_shapes if (m := re.match(r"block1\.layer\.(\d+)\.", k))]
    if not idx:
        return []
    depth = 6 * (max(idx) + 1) + 4
    out = []
    w = keys_shapes.get("block1.layer.0.conv1.weight")
    if w and len(w) == 4 and w[2] == 3 and w[0] % 16 == 0:
        out.append(f"wrn{depth}_{w[0] // 16}")
    g = keys_shapes.get("block1.layer.0.conv2.weight")
    if g and len(g) == 4 and w and len(w) == 4 and w[2] == 1:
        growth = g[0]
        out.append(f"densenet{depth}" if growth == 12 else f"densenet{depth}_k{growth}")
    return [n for n in out if is_family_name(n)]
