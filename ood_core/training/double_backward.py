"""A 2-D convolution whose double backward runs on PyTorch's fast first-order kernels.

The gradient penalty of GReg differentiates an input gradient with respect to the weights
(a double backward). PyTorch's own derivative of a convolution's input gradient builds the
weight term as a forward convolution with batch and channels swapped, whose kernel is the
whole feature map: on the CPU that one op (with its layout copies) took ~40 ms of a 180 ms
GReg step on the default CNN. No library offers another route, so this module writes the
convolution's backward by hand in terms of ``conv_transpose2d``: the derivative of that
op with respect to its weight is an ordinary first-order weight gradient (mkldnn's fast
kernel). Values are the same convolution; the tests compare every gradient with autograd's.

Use :func:`fast_double_backward` around the forward pass whose input gradient will be
differentiated again. Only the ``F.conv2d`` calls made inside it (``nn.Conv2d`` included)
are rerouted; string paddings (``'same'``) keep PyTorch's own path.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@dataclass
class Phase:
    """Per-use switch shared by the nodes one :func:`fast_double_backward` block records.

    ``input_only``: while the input gradient is taken (``create_graph=True``), skip the weight
    gradient nobody asked for. A plain Python Function cannot see which of its inputs the
    running backward wants, and a global flag would leak into other threads' jobs.
    """

    input_only: bool = False


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, phase):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        ctx.phase = phase
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # conv_transpose2d's output size is ambiguous for stride > 1; output_padding picks x's.
            out_pad = tuple(
                x.shape[2 + d] - ((grad.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
                                  + dilation[d] * (weight.shape[2 + d] - 1) + 1)
                for d in range(2))
            gx = F.conv_transpose2d(grad, weight, None, stride, padding, out_pad, groups, dilation)
        if not ctx.phase.input_only:
            if ctx.needs_input_grad[1]:
                gw = torch.nn.grad.conv2d_weight(x, weight.shape, grad, stride, padding, dilation, groups)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Mode(TorchFunctionMode):
    _ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    _DEFAULTS = (None, None, None, 1, 0, 1, 1)

    def __init__(self, phase: Phase):
        super().__init__()
        self.phase = phase
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            n = len(args)
            x, w, b, s, p, d, g = list(args) + [kwargs.get(k, v) for k, v in zip(self._ARGS[n:], self._DEFAULTS[n:])]
            if not isinstance(p, str) and w.dim() == 4 and x.dim() == 4:
                self.calls += 1
                return _Conv2d.apply(x, w, b, _pair(s), _pair(p), _pair(d), int(g), self.phase)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_double_backward() -> Iterator[tuple[Phase, "_Mode"]]:
    """Record the convolutions of the forward pass run inside with :class:`_Conv2d`.

    Yields ``(phase, mode)``: set ``phase.input_only = True`` while taking the input gradient
    with ``create_graph=True`` (and back to False before the parameters' backward);
    ``mode.calls`` counts the rerouted convolutions.
    """
    phase = Phase()
    mode = _Mode(phase)
    with mode:
        yield phase, mode
