"""The model wrapper every step shares: :class:`ModelBundle`, its :class:`Preprocess`, the body/head split.

A :class:`ModelBundle` wraps any classifier as ``logits = head(body(x))`` where ``head``
is the final linear layer and ``body(x)`` gives the **features** (the head's input; the
Extraction contract in docs/architecture.md). The split is made by replacing the head with
``nn.Identity`` in a shallow copy, which works for every model whose final layer is a
submodule (torchvision's ResNets, VGGs, MobileNets, ViTs, our CNN) and keeps ``body`` a plain
module for ``torch.func``. Compiled archives (torch.export, TorchScript) are split by their
loaders and joined again with :class:`Split`.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError

class ModelError(UserError):
    """A model could not be loaded or used; the message says why and what to do instead."""


PREPROCESS_IMPL = 2  # bump when Preprocess computes other numbers from the same settings


@dataclass
class Preprocess:
    """How raw uint8 images become the model's input: resize, channels, normalise.

    ``resize``: ``"stretch"`` resizes to ``input_size`` exactly (the GradNorm/RG reference's
    ``Resize((480, 480))``); ``"crop"`` resizes the shorter side to ``min(input_size) / crop_ratio``
    and takes the centre crop (torchvision's ImageNet evaluation, ``Resize(256)`` +
    ``CenterCrop(224)`` at the default ratio 0.875). The same torchvision ops run on a batch
    (:meth:`__call__`) and on one image in a ``DataLoader`` worker (:meth:`pixels_one`, then
    :meth:`finish` on the batch), so an image gives the same input whichever path it takes
    (docs/architecture.md, "Datasets").
    """

    input_size: tuple[int, int] = (28, 28)
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    resize: str = "stretch"
    crop_ratio: float = 0.875

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelError(f"input size must be two positive integers, got {self.input_size}")
        if self.channels not in (1, 3):
            raise ModelError(f"channels must be 1 or 3, got {self.channels}")
        self.mean = _per_channel(self.mean, self.channels, "mean")
        self.std = _per_channel(self.std, self.channels, "std")
        if min(self.std) <= 0:
            raise ModelError(f"std must be positive, got {self.std}")
        if self.resize not in ("stretch", "crop"):
            raise ModelError(f"resize must be 'stretch' or 'crop', got {self.resize!r}")
        self.crop_ratio = float(self.crop_ratio)
        if not 0 < self.crop_ratio <= 1:
            raise ModelError(f"crop_ratio must be in (0, 1], got {self.crop_ratio}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.resize == "stretch":  # the original fields only: cache keys made before crop mode stay valid
            d.pop("resize")
            d.pop("crop_ratio")
        return d

    def cache_key(self) -> dict:
        """What cache keys hold of the preprocessing: the settings and the version of the code that
        applies them (2: uint8 pixels resized before scaling), so entries made by older code miss."""
        return {**self.to_dict(), "impl": PREPROCESS_IMPL}

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(N,H,W,C)`` -> normalised float ``(N,channels,*input_size)``."""
        if not isinstance(images, torch.Tensor):
            images = np.asarray(images)
            if not images.flags.writeable:  # a decoded image's buffer: torch wants its own
                images = images.copy()
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[..., None]
        return self._tensor(x.permute(0, 3, 1, 2))

    def one(self, image: np.ndarray) -> torch.Tensor:
        """One uint8 ``(H,W,C)`` image -> ``(channels,*input_size)`` float input."""
        return self.finish(self.pixels_one(image)[None])[0]

    def pixels_one(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One uint8 image, ``(H,W,C)`` array or ``(C,H,W)`` tensor -> uint8 ``(C,*input_size)``:
        the resize/crop only. A loader worker runs this and the main process runs :meth:`finish`
        on the batch: a quarter of the bytes cross between processes, and the worker's share of
        the cores (which it takes from the forward on a CPU) shrinks (bench/streaming.py)."""
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 3 else image[None]
        else:
            a = np.asarray(image)
            if a.ndim == 2:
                a = a[..., None]
            x = torch.as_tensor(np.array(a, copy=not a.flags.writeable)).permute(2, 0, 1)
        return self.pixels(x[None])[0]

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N,C,H,W)`` -> uint8 ``(N,C,*input_size)``: the resize (and crop) of the pixels
        (float pixels give floats, as ``saliency.PixelsToInput`` uses it)."""
        from torchvision.transforms.v2 import functional as TF

        # Resize the uint8 pixels, then scale: the order of torchvision's ImageNet pipelines (Resize on
        # the decoded image, then ToTensor), and torchvision's uint8 antialiased resize is 7x cheaper than
        # resizing floats (0.8 vs 5.9 ms for a 400x350 photo to 224, one core). Its fast kernel wants
        # channels-last memory, which both decoders give (an (H,W,C) buffer seen as (C,H,W)).
        if tuple(x.shape[-2:]) != self.input_size:
            if self.resize == "crop":
                short = max(1, round(min(self.input_size) / self.crop_ratio))
                x = TF.resize(x, [short], antialias=True)
                x = TF.center_crop(x, list(self.input_size))
            else:
                x = TF.resize(x, list(self.input_size), antialias=True)
        return x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N,C,*input_size)`` from :meth:`pixels` -> the normalised float input (float pixels
        in ``[0, 1]`` pass through the same ops, differentiably: ``saliency.PixelsToInput``)."""
        from torchvision.transforms.v2 import functional as TF

        x = TF.to_dtype(x, torch.float32, scale=True)
        if x.shape[1] != self.channels:
            if self.channels == 1:
                x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                x = x.expand(-1, 3, -1, -1)
        return TF.normalize(x, list(self.mean), list(self.std))

    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.pixels(x))

    def valid_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of normalised inputs that come from pixels in [0, 1]."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std


def _per_channel(v: Sequence[float] | float, c: int, what: str) -> tuple[float, ...]:
    vals = [float(v)] if isinstance(v, (int, float)) else [float(t) for t in v]
    if len(vals) == 1:
        vals = vals * c
    if len(vals) != c:
        need = "1 value for 1-channel input" if c == 1 else f"1 or {c} values (one per channel)"
        raise ModelError(f"{what} needs {need}, got {len(vals)}")
    return tuple(vals)


def find_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The final linear layer: the last ``nn.Linear`` registered in the module tree.

    For common architectures this is the classifier (``fc``, ``classifier.N``,
    ``heads.head``); callers can override with an explicit name.
    """
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    return last


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parts = dotted.split(".")
    parent = root.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else root
    setattr(parent, parts[-1], new)


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:20]


def _prefer_channels_last(model: nn.Module, probe: torch.Tensor) -> torch.Tensor | None:
    """Store a plain module's 4-D weights channels-last (a layout: values and state_dict keep).

    On the CPU this halved the default CNN's forward on every embedded set (MNIST 253 -> 105 ms,
    textures 217 -> 96 ms per 1,000 images; logits within 4e-6): mkldnn's convolutions prefer that
    layout, and PyTorch's NCHW max-pool kernel branches per element (11x slower on natural-image
    activations than on digits'). Compiled programs (TorchScript, torch.export) keep the layout
    they were traced with, and a module whose forward fails on ``probe`` once converted (say it
    calls ``.view`` on an activation) goes back to NCHW. Returns the probe's output when the
    dry run succeeded (the caller reads the class count from it instead of running it again).
    """
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        return None
    if not any(p.dim() == 4 for p in model.parameters()):
        return None
    model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            return model(probe.to(next(model.parameters()).device))
    except Exception:  # noqa: BLE001 - any failure means "keep the layout the author wrote for"
        model.to(memory_format=torch.contiguous_format)
        return None


def same_device(have: torch.device, want: str | torch.device) -> bool:
    """Whether tensors on ``have`` are already on ``want``: ``"cuda"`` names the current GPU, so a model
    on ``cuda:0`` is there already (``torch.device("cuda") != torch.device("cuda:0")``)."""
    want = torch.device(want)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    return have.type == want.type and (want.index is None or have.index == want.index)


@dataclass
class ModelBundle:
    """A classifier split as ``head(body(x))`` with its preprocessing and provenance."""

    model: nn.Module
    preprocess: Preprocess
    name: str = "model"
    head_name: str | None = None
    arch: str = "custom"
    num_classes: int = 0
    fingerprint: str = ""
    class_names: list[str] | None = None
    info: dict = field(default_factory=dict)
    body: nn.Module | None = None
    head: nn.Linear | None = None
    feature_reason: str = ""

    def __post_init__(self) -> None:
        self.model.eval()
        probed = _prefer_channels_last(self.model, self.dummy_input(2))
        if not self.fingerprint:
            self.fingerprint = state_fingerprint(self.model)
        if self.body is None and self.head is None:
            self._split()
        if not self.num_classes:
            if not isinstance(probed, torch.Tensor) or probed.ndim != 2:
                with torch.no_grad():
                    probed = self.logits(self.dummy_input(1))
            self.num_classes = int(probed.shape[1])

    def _split(self) -> None:
        found = None
        if self.head_name:
            try:
                mod = self.model.get_submodule(self.head_name)
            except AttributeError as exc:
                raise ModelError(f"no submodule named {self.head_name!r} in the model") from exc
            if not isinstance(mod, nn.Linear):
                raise ModelError(f"{self.head_name!r} is {type(mod).__name__}, not a Linear layer")
            found = (self.head_name, mod)
        else:
            try:
                found = find_head(self.model)
            except Exception:  # scripted modules may not support named_modules fully
                found = None
        if found is None:
            self.feature_reason = "no final nn.Linear layer found: feature-based detectors are disabled"
            return
        name, head = found
        try:
            body = copy.copy(self.model)
            # copy.copy shares parameters but gives body its own _modules dict chain.
            _shallow_copy_path(body, name)
            _set_submodule(body, name, nn.Identity())
            self.body, self.head, self.head_name = body, head, name
        except Exception as exc:
            self.feature_reason = f"could not split the model at {name!r} ({exc}); feature-based detectors are disabled"

    @property
    def has_features(self) -> bool:
        return self.head is not None

    def dummy_input(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.preprocess.channels, *self.preprocess.input_size)

    def to(self, device: str | torch.device) -> "ModelBundle":
        # nn.Module.to reassigns every parameter's .data even on the same device, under the feet of
        # other threads scoring with this shared model: skip it when nothing moves
        if not same_device(self.device, device):
            self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, features) of a preprocessed batch; features None when unavailable."""
        if self.body is None or self.head is None:
            return self.model(x), None
        h = self.body(x)
        if h.ndim > 2:
            h = h.flatten(1)
        return self.head(h), h

    def head_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.head is None:
            return np.zeros((self.num_classes, 0), np.float32), np.zeros(self.num_classes, np.float32)
        w = self.head.weight.detach().cpu().float().numpy()
        b = self.head.bias.detach().cpu().float().numpy() if self.head.bias is not None else np.zeros(w.shape[0], np.float32)
        return w, b

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "arch": self.arch, "num_classes": self.num_classes,
            "fingerprint": self.fingerprint, "head": self.head_name,
            "preprocess": self.preprocess.to_dict(), **{k: v for k, v in self.info.items() if k != "history"},
        }


def _shallow_copy_path(root: nn.Module, dotted: str) -> None:
    """Give ``root`` private copies of the containers on the path to ``dotted``.

    ``copy.copy`` of an ``nn.Module`` shares its ``_modules`` dict with the original;
    replacing the head in the copy must not touch the original model.
    """
    parts = dotted.split(".")
    node = root
    node._modules = dict(node._modules)  # noqa: SLF001
    for p in parts[:-1]:
        child = copy.copy(node._modules[p])  # noqa: SLF001
        child._modules = dict(child._modules)  # noqa: SLF001
        node._modules[p] = child  # noqa: SLF001
        node = child


class Split(nn.Module):
    """``head(body(x))`` as one module so ``.to(device)`` moves both halves together."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h.flatten(1) if h.ndim > 2 else h)


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear sharing ``weight``/``bias`` storage (no copy)."""
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    head.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(), requires_grad=True)
    if bias is not None:
        head.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach(), requires_grad=True)
    return head
