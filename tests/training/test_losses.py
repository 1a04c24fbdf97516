"""Each training loss term against an independent computation on a tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ood_core.training import losses as L


def _tiny(seed: int = 0, c: int = 4) -> nn.Module:
    """A smooth (tanh) conv net in float64 so finite differences are accurate."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 6), nn.Tanh(),
                         nn.Linear(6, c)).double()


def _inputs(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64) * 2


def _np_lse(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


def test_energy_and_ce():
    z = np.random.default_rng(0).normal(0, 3, (7, 5))
    t = torch.as_tensor(z)
    np.testing.assert_allclose(L.free_energy(t).numpy(), -_np_lse(z), rtol=1e-12)
    y = np.array([0, 1, 2, 3, 4, 0, 1])
    ref = np.mean(_np_lse(z) - z[np.arange(7), y])
    assert L.ce_loss(t, torch.as_tensor(y)).item() == pytest.approx(ref, rel=1e-12)


def test_oe_against_formula():
    z = np.random.default_rng(1).normal(0, 2, (9, 6))
    logsm = z - _np_lse(z)[:, None]
    ref = np.mean(-logsm.mean(1))  # -(1/C) Σ_i log softmax_i, averaged over the aux batch
    assert L.oe_loss(torch.as_tensor(z)).item() == pytest.approx(ref, rel=1e-12)
    # Uniform logits are the minimum: log C.
    assert L.oe_loss(torch.zeros(3, 6, dtype=torch.float64)).item() == pytest.approx(np.log(6), rel=1e-12)


def test_energy_margins_against_formula():
    rng = np.random.default_rng(2)
    e_in, e_aux = rng.uniform(-30, 0, 11), rng.uniform(-30, 0, 13)
    m_in, m_out = -20.0, -8.0
    ref = np.mean(np.maximum(0, e_in - m_in) ** 2) + np.mean(np.maximum(0, m_out - e_aux) ** 2)
    got = L.energy_margin_loss(torch.as_tensor(e_in), torch.as_tensor(e_aux), m_in, m_out).item()
    assert got == pytest.approx(ref, rel=1e-12)
    # Samples on the right side of their margins cost nothing.
    assert L.energy_margin_loss(torch.tensor([-25.0]), torch.tensor([-3.0]), m_in, m_out).item() == 0.0


def test_detected_mask():
    e = torch.tensor([-30.0, -10.0, -30.0, -5.0])
    is_aux = torch.tensor([False, False, True, True])
    assert L.detected_mask(e, is_aux, -25.0, -7.0).tolist() == [True, False, False, True]


def _fd_input_grad(model: nn.Module, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences of each sample's energy w.r.t. its own input."""
    g = torch.zeros_like(x)
    flat = x.reshape(len(x), -1)
    with torch.no_grad():
        for j in range(flat.shape[1]):
            xp, xm = flat.clone(), flat.clone()
            xp[:, j] += h
            xm[:, j] -= h
            ep = L.free_energy(model(xp.reshape(x.shape)))
            em = L.free_energy(model(xm.reshape(x.shape)))
            g.reshape(len(x), -1)[:, j] = (ep - em) / (2 * h)
    return g


def _margins(model: nn.Module, x: torch.Tensor, is_aux: torch.Tensor) -> tuple[float, float]:
    """Margins that put about half of each group on the penalised side, far from any sample's energy."""
    with torch.no_grad():
        e = L.free_energy(model(x))
    e_in, e_aux = np.sort(e[~is_aux].numpy()), np.sort(e[is_aux].numpy())
    m_in = float((e_in[len(e_in) // 2 - 1] + e_in[len(e_in) // 2]) / 2)
    m_out = float((e_aux[len(e_aux) // 2 - 1] + e_aux[len(e_aux) // 2]) / 2)
    return m_in, m_out


def _penalty_value_fd(model, x, is_aux, m_in, m_out, norm):
    g = _fd_input_grad(model, x).reshape(len(x), -1)
    per = g.norm(dim=1) if norm == "l2" else g.abs().sum(1)
    with torch.no_grad():
        e = L.free_energy(model(x))
    mask_in = (~is_aux) & (e <= m_in)
    mask_aux = is_aux & (e >= m_out)
    return float((per * mask_in).sum() / (~is_aux).sum() + (per * mask_aux).sum() / is_aux.sum()), mask_in, mask_aux


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_gradient_penalty_value_against_finite_differences(norm):
    model = _tiny()
    x = _inputs(8)
    is_aux = torch.arange(8) >= 4
    m_in, m_out = _margins(model, x, is_aux)
    ref, mask_in, mask_aux = _penalty_value_fd(model, x, is_aux, m_in, m_out, norm)
    assert mask_in.any() and (~mask_in & ~is_aux).any() and mask_aux.any()  # the case exercises the indicator
    loss, stats = L.gradient_penalty(model, x, L.free_energy(model(x)), is_aux, m_in, m_out, norm, form="per_sample")
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert stats["frac_in"] == pytest.approx(float(mask_in.sum()) / 4)
    assert stats["frac_aux"] == pytest.approx(float(mask_aux.sum()) / 4)


def test_gradient_penalty_parameter_gradient_against_finite_differences():
    """The double backward: d L_∇S / d θ by autograd equals finite differences of the FD penalty."""
    model = _tiny(3)
    x = _inputs(6, seed=4)
    is_aux = torch.arange(6) >= 3
    m_in, m_out = _margins(model, x, is_aux)
    loss, _ = L.gradient_penalty(model, x, L.free_energy(model(x)), is_aux, m_in, m_out, "l2", form="per_sample")
    w = model[3].weight  # a middle layer: its gradient needs the full second-order path
    (auto,) = torch.autograd.grad(loss, w)
    h = 1e-5
    rng = np.random.default_rng(0)
    for _ in range(4):
        i, j = int(rng.integers(w.shape[0])), int(rng.integers(w.shape[1]))
        with torch.no_grad():
            w[i, j] += h
        up, _, _ = _penalty_value_fd(model, x, is_aux, m_in, m_out, "l2")
        with torch.no_grad():
            w[i, j] -= 2 * h
        dn, _, _ = _penalty_value_fd(model, x, is_aux, m_in, m_out, "l2")
        with torch.no_grad():
            w[i, j] += h
        assert auto[i, j].item() == pytest.approx((up - dn) / (2 * h), rel=2e-3, abs=1e-6)


def test_gradient_penalty_is_zero_when_nothing_is_detected():
    model = _tiny()
    x = _inputs(4)
    is_aux = torch.tensor([False, False, True, True])
    loss, stats = L.gradient_penalty(model, x, L.free_energy(model(x)), is_aux, m_in=-1e6, m_out=1e6)
    assert loss.item() == 0.0 and stats == {"frac_in": 0.0, "frac_aux": 0.0}
    with pytest.raises(L.LossError, match="norm"):
        L.gradient_penalty(model, x, L.free_energy(model(x)), is_aux, 0, 0, norm="l3")


def _gq_explicit(model, x, y, operand):
    """Per sample, per class: one torch.autograd.grad call each (the independent computation)."""
    qs = []
    for i in range(len(x)):
        xi = x[i: i + 1].clone().requires_grad_(True)
        out = model(xi)[0]
        s = out.softmax(0) if operand == "softmax" else out
        norms = [torch.autograd.grad(s[j], xi, create_graph=True)[0].abs().sum() for j in range(len(s))]
        num = norms[int(y[i])]
        den = sum(norms[j] for j in range(len(s)) if j != int(y[i]))
        qs.append(num / den)
    return torch.stack(qs).mean()


@pytest.mark.parametrize("operand", ["softmax", "logits"])
def test_gradient_quotient_against_per_class_loop(operand):
    model = _tiny(5)
    x = _inputs(5, seed=6)
    y = torch.tensor([0, 1, 2, 3, 1])
    got, logits = L.gradient_quotient(model, x, y, operand=operand, form="per_sample")
    ref = _gq_explicit(model, x, y, operand)
    assert got.item() == pytest.approx(ref.item(), rel=1e-9)
    np.testing.assert_allclose(logits.detach().numpy(), model(x).detach().numpy(), rtol=1e-12)
    # The parameter gradient (what training uses) matches too.
    w = model[0].weight
    (g_got,) = torch.autograd.grad(got, w)
    (g_ref,) = torch.autograd.grad(ref, w)
    np.testing.assert_allclose(g_got.numpy(), g_ref.numpy(), rtol=1e-7, atol=1e-12)


def test_gradient_quotient_batch_form():
    model = _tiny(7)
    x = _inputs(4, seed=8)
    y = torch.tensor([3, 2, 1, 0])
    got, _ = L.gradient_quotient(model, x, y, operand="logits", form="batch")
    # Independent: per-class gradients summed over the batch by a loop over samples and classes.
    num = torch.zeros_like(x)
    den = torch.zeros_like(x)
    for i in range(len(x)):
        xi = x[i: i + 1].clone().requires_grad_(True)
        out = model(xi)[0]
        for j in range(out.shape[0]):
            (g,) = torch.autograd.grad(out[j], xi, retain_graph=True)
            if j == int(y[i]):
                num[i] += g[0]
            else:
                den[i] += g[0]
    assert got.item() == pytest.approx((num.abs().sum() / den.abs().sum()).item(), rel=1e-9)
    with pytest.raises(L.LossError, match="identically 1"):
        L.gradient_quotient(model, x, y, operand="softmax", form="batch")
    with pytest.raises(L.LossError, match="operand"):
        L.gradient_quotient(model, x, y, operand="probs")


# --- reference forms (train_sea.py, learning_odin_trainer.py) ---------------------------

def _tiny_bn(seed: int = 0, c: int = 4) -> nn.Module:
    """The tiny net with batch norm, in train mode: batch statistics couple the rows."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, c)).double().train()


def _phi(model, is_aux, m_in, m_out):
    """train_sea.py's batch scalar: -mean_in[relu(m_in - E)] + mean_aux[relu(E - m_out)]."""
    def phi(x):
        e = L.free_energy(model(x))
        return -torch.relu(m_in - e[~is_aux]).mean() + torch.relu(e[is_aux] - m_out).mean()
    return phi


def _jacobian_penalty(model, x, is_aux, m_in, m_out, create_graph=False):
    """The independent computation: Jacobian of φ w.r.t. the whole batch, per-row L2 norm, mean over rows."""
    jac = torch.autograd.functional.jacobian(_phi(model, is_aux, m_in, m_out), x, create_graph=create_graph)
    return jac.reshape(len(x), -1).norm(dim=1).mean()


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("route", ["reuse", "reforward"])
def test_greg_reference_penalty_equals_the_jacobian_of_the_batch_scalar(bn, route):
    model = _tiny_bn(2) if bn else _tiny(2)
    x = _inputs(8, seed=3)
    is_aux = torch.arange(8) >= 3  # unequal groups: 3 ID, 5 aux
    m_in, m_out = _margins(model, x, is_aux)
    ref = _jacobian_penalty(model, x, is_aux, m_in, m_out)
    if route == "reuse":
        logits, graph = L.penalised_forward(model, x)
    else:
        logits, graph = model(x), None
    e = L.free_energy(logits)
    mask = L.detected_mask(e, is_aux, m_in, m_out)
    assert mask.any() and not mask.all()
    got, stats = L.gradient_penalty(model, x, e, is_aux, m_in, m_out, graph=graph, reuse_from=0.0 if bn else 1.01,
                                    form="reference", rows_independent=not bn)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert stats["frac_aux"] == pytest.approx(float(mask[is_aux].float().mean()))
    if not bn:  # independent rows: the reference form is the per-sample form divided by N
        per, _ = L.gradient_penalty(model, x, e, is_aux, m_in, m_out, form="per_sample")
        assert got.item() == pytest.approx(per.item() / 8, rel=1e-9)


def test_greg_reference_penalty_with_batchnorm_couples_rows_and_trains_like_the_jacobian():
    """In train mode an undetected row gets gradient through the batch statistics: treating rows as
    independent would be wrong. The parameter gradient equals that of the create_graph Jacobian."""
    model = _tiny_bn(4)
    x = _inputs(8, seed=5)
    is_aux = torch.arange(8) >= 4
    m_in, m_out = _margins(model, x, is_aux)
    ref = _jacobian_penalty(model, x, is_aux, m_in, m_out, create_graph=True)
    logits, graph = L.penalised_forward(model, x)
    e = L.free_energy(logits)
    got, _ = L.gradient_penalty(model, x, e, is_aux, m_in, m_out, graph=graph, form="reference",
                                rows_independent=False)
    wrong, _ = L.gradient_penalty(model, x, e.detach(), is_aux, m_in, m_out, form="reference", rows_independent=True)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert abs(wrong.item() - ref.item()) > 1e-3 * ref.item()
    params = [p for p in model.parameters()]
    g_got = torch.autograd.grad(got, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def _gq_two_backward(model, x, y):
    """learning_odin_trainer.py's quotient written out: two input gradients of batch sums, L1 over the batch."""
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    hot = torch.zeros_like(out)
    hot[torch.arange(len(y)), y] = 1.0
    (g_num,) = torch.autograd.grad((out * hot).sum(), xg, create_graph=True)
    (g_den,) = torch.autograd.grad((out * (1 - hot)).sum(), xg, create_graph=True)
    return g_num.abs().sum() / g_den.abs().sum()


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
def test_gq_reference_against_two_backward_passes(bn):
    model = _tiny_bn(9) if bn else _tiny(9)
    x = _inputs(6, seed=10)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    got, logits = L.gradient_quotient(model, x, y, operand="logits", form="batch")
    ref = _gq_two_backward(model, x, y)
    assert got.item() == pytest.approx(ref.item(), rel=1e-9)
    params = list(model.parameters())
    g_got = torch.autograd.grad(got, params, allow_unused=True, materialize_grads=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True, materialize_grads=True)
    for a, b in zip(g_got, g_ref):  # (the last bias leaves input gradients alone: zero both ways)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_gq_reference_and_per_sample_forms_differ_except_where_they_must_agree():
    model = _tiny(11)
    x = _inputs(5, seed=12)
    y = torch.tensor([3, 0, 1, 2, 0])
    batch, _ = L.gradient_quotient(model, x, y, operand="logits", form="batch")
    per, _ = L.gradient_quotient(model, x, y, operand="logits", form="per_sample")
    assert abs(batch.item() - per.item()) > 0.01 * per.item()  # norm of sums vs sum of norms, batch vs mean
    # One sample and two classes: the one other class's gradient is the whole denominator either way.
    two = _tiny(11, c=2)
    b1, _ = L.gradient_quotient(two, x[:1], y[:1] % 2, operand="logits", form="batch")
    p1, _ = L.gradient_quotient(two, x[:1], y[:1] % 2, operand="logits", form="per_sample")
    assert b1.item() == pytest.approx(p1.item(), rel=1e-9)
