"""The hand-written convolution backward (training/double_backward.py) against autograd's own.

Every gradient GReg needs, the input gradient and the parameters' gradient of its norm (the
double backward), must equal what PyTorch's built-in convolution derivative gives.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ood_core.models import SmallCNN
from ood_core.training import losses as L
from ood_core.training.double_backward import fast_double_backward

CONFIGS = [
    dict(),
    dict(stride=2),
    dict(stride=2, padding=(1, 2)),
    dict(dilation=2, padding=2),
    dict(groups=2),
    dict(bias=False),
    dict(padding_mode="reflect"),
    dict(stride=(2, 1), padding=0),
    dict(padding="same"),  # string padding: PyTorch's own path, still inside the block
]


def _net(cfg: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"padding": 1, **cfg}
    return nn.Sequential(nn.Conv2d(2, 4, 3, **kw), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1, groups=cfg.get("groups", 1)),
                         nn.Softplus(), nn.Flatten(), nn.LazyLinear(5)).double()


def _penalty_and_grads(model: nn.Module, x: torch.Tensor, fast: bool):
    """(logits, input gradient of Σ E, parameters' gradients of Σ_i ‖∇_x E_i‖)."""
    xs = x.clone().requires_grad_(True)
    params = list(model.parameters())
    if fast:
        with fast_double_backward() as (phase, mode):
            logits = model(xs)
        phase.input_only = True
        (g,) = torch.autograd.grad(L.free_energy(logits).sum(), xs, create_graph=True)
        phase.input_only = False
    else:
        logits = model(xs)
        (g,) = torch.autograd.grad(L.free_energy(logits).sum(), xs, create_graph=True)
        mode = None
    # The primal path matters too: add a value term so the ordinary backward runs through the same nodes.
    loss = g.flatten(1).norm(dim=1).sum() + 0.3 * L.free_energy(logits).pow(2).mean()
    grads = torch.autograd.grad(loss, params)
    return logits.detach(), g.detach(), grads, mode


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) or "default" for c in CONFIGS])
def test_fast_double_backward_matches_autograd(cfg):
    x = torch.randn(5, 2, 10, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = _net(cfg)
    model(x)  # materialise the lazy layer
    ref_logits, ref_g, ref_grads, _ = _penalty_and_grads(model, x, fast=False)
    logits, g, grads, mode = _penalty_and_grads(model, x, fast=True)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert mode.calls == (1 if cfg.get("padding") == "same" else 2)


@pytest.mark.parametrize("form", ["reference", "per_sample"])
def test_gradient_penalty_parameter_gradients_equal_plain_double_backward(form):
    """The training loss itself, on the default CNN's architecture (ReLU, max-pool, float32), by plain autograd."""
    torch.manual_seed(0)
    model = SmallCNN(width=8, feat_dim=16)
    x = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    is_aux = torch.arange(12) >= 6
    e = L.free_energy(model(x)).detach()
    m_in, m_out = float(e[:6].median()), float(e[6:].median())
    loss, _ = L.gradient_penalty(model, x, e, is_aux, m_in, m_out, form=form)
    fast = torch.autograd.grad(loss, list(model.parameters()))

    mask = L.detected_mask(e, is_aux, m_in, m_out)
    xs = x[mask].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(L.free_energy(model(xs)).sum(), xs, create_graph=True)
    per = g.flatten(1).norm(dim=1)
    sel = is_aux[mask]
    ref_loss = per[~sel].sum() / 6 + per[sel].sum() / 6
    if form == "reference":  # rows independent: each detected row's gradient is its own, over n_group, then / N
        ref_loss = ref_loss / 12
    ref = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-6)


def test_channels_last_model_and_blocks_outside_are_untouched():
    model = _net({})
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    model(x)
    model.to(memory_format=torch.channels_last)
    ref = _penalty_and_grads(model, x, fast=False)
    got = _penalty_and_grads(model, x, fast=True)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # Only the forward run inside the block records the hand-written node.
    with fast_double_backward():
        inside = model(x.clone().requires_grad_(True))
    outside = model(x.clone().requires_grad_(True))
    assert "_Conv2dBackward" in _node_names(inside)
    assert "_Conv2dBackward" not in _node_names(outside) and "ConvolutionBackward0" in _node_names(outside)


def _node_names(t: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("form", ["reference", "per_sample"])
@pytest.mark.parametrize("reuse_from", [0.0, 1.01])
def test_gradient_penalty_routes_agree(reuse_from, form):
    """Reusing the main forward and re-forwarding the penalised rows give the same loss and gradients."""
    torch.manual_seed(1)
    model = SmallCNN(width=8, feat_dim=16)
    x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    is_aux = torch.arange(10) >= 5
    params = list(model.parameters())

    def run(graph_route: bool):
        if graph_route:
            logits, graph = L.penalised_forward(model, x)
        else:
            logits, graph = model(x), None
        e = L.free_energy(logits)
        m_in, m_out = float(e[:5].detach().median()), float(e[5:].detach().median())
        pen, stats = L.gradient_penalty(model, x, e, is_aux, m_in, m_out, graph=graph, reuse_from=reuse_from,
                                        form=form)
        total = pen + 0.1 * L.energy_margin_loss(e[:5], e[5:], m_in, m_out)
        return pen.item(), stats, torch.autograd.grad(total, params)

    ref_pen, ref_stats, ref = run(False)
    pen, stats, got = run(True)
    assert pen == pytest.approx(ref_pen, rel=1e-6) and stats == ref_stats and 0 < stats["frac_in"] < 1
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-6)


def test_input_gradient_skips_the_weight_gradient(monkeypatch):
    """While the input gradient is taken, no first-order weight gradient is computed (it is unused)."""
    calls = []
    real = torch.nn.grad.conv2d_weight
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = SmallCNN(width=4, feat_dim=8)
    logits, graph = L.penalised_forward(model, torch.randn(3, 1, 28, 28))
    e = L.free_energy(logits)
    pen, _ = L.gradient_penalty(model, None, e, torch.tensor([False, True, True]), 1e9, -1e9, graph=graph, reuse_from=0)
    assert calls == []
    (pen + e.sum()).backward()
    assert len(calls) == 4 and all(p.grad is not None for p in model.parameters())

