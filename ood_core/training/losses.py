"""Training losses as pure functions of tensors (METHODS.md, "Training methods").

Energy ``E(x) = -LSE(f(x))``: lower = more ID (the training papers' sign; the
``energy`` *detector* scores ``-E``). The value terms take logits from the step's one
forward pass; the gradient terms take the model function and the inputs, because they
need input gradients (GReg's penalty reuses the main forward when :func:`penalised_forward`
recorded it, else re-runs the forward on what it penalises).

- ``ce_loss``: cross-entropy on the ID batch.
- ``oe_loss`` (Hendrycks et al., ICLR 2019): ``mean_aux[-(1/C) Σ_i log softmax(f)_i]``,
  the cross-entropy from the softmax to the uniform distribution.
- ``energy_margin_loss`` (Liu et al., NeurIPS 2020):
  ``L_S = mean_in[max(0, E - m_in)^2] + mean_aux[max(0, m_out - E)^2]``.
- ``gradient_penalty`` (GReg, Sharifi et al., ECCV 2024):
  ``L_∇S = mean_in[1{E ≤ m_in} ‖∇_x E‖] + mean_aux[1{E ≥ m_out} ‖∇_x E‖]``, the input
  gradient taken with ``create_graph=True`` so the penalty trains the parameters (double
  backward). The seed gives L_∇S only as a figure; we read the norm as the per-sample L2
  norm of the input gradient (L1 as a knob).
- ``gradient_quotient`` (Learning ODIN, Jevnisek & Avidan): per sample
  ``‖∇_x S_y‖_1 / Σ_{j≠y} ‖∇_x S_j‖_1`` with ``S = softmax(f)``, averaged over the batch;
  ``operand='logits', form='batch'`` is the authors' code's batch-level variant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from ..errors import UserError
from .double_backward import Phase, fast_double_backward

# Fraction of penalised rows from which the input gradients come from the main forward (measured).
REUSE_FROM = 0.5

NORMS = ("l2", "l1")
GQ_OPERANDS = ("softmax", "logits")
GQ_FORMS = ("sample", "batch")


class LossError(UserError):
    """A loss was asked for an impossible setting; the message says what to use instead."""


def free_energy(logits: torch.Tensor) -> torch.Tensor:
    """Free energy ``E = -LSE(f)`` per sample (lower = more ID): the opposite sign of the Energy
    detector's score ``detectors.base.energy`` (higher = more ID)."""
    return -torch.logsumexp(logits, dim=1)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def oe_loss(aux_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from ``softmax(f)`` to the uniform distribution, averaged over the aux batch."""
    return -(aux_logits.mean(1) - torch.logsumexp(aux_logits, dim=1)).mean()


def energy_margin_loss(e_in: torch.Tensor, e_aux: torch.Tensor, m_in: float, m_out: float) -> torch.Tensor:
    """``L_S``: squared hinge on ID energies above ``m_in`` and aux energies below ``m_out``."""
    return F.relu(e_in - m_in).pow(2).mean() + F.relu(m_out - e_aux).pow(2).mean()


def detected_mask(e: torch.Tensor, is_aux: torch.Tensor, m_in: float, m_out: float) -> torch.Tensor:
    """"Correctly detected": ID samples with ``E ≤ m_in``, aux samples with ``E ≥ m_out``."""
    e = e.detach()
    return torch.where(is_aux, e >= m_out, e <= m_in)


@dataclass
class PenaltyGraph:
    """The step's main forward kept differentiable in its input (see :func:`penalised_forward`)."""

    x: torch.Tensor
    phase: Phase


def penalised_forward(model_fn: Callable[[torch.Tensor], torch.Tensor],
                      x: torch.Tensor) -> tuple[torch.Tensor, PenaltyGraph]:
    """The step's main forward, recorded so :func:`gradient_penalty` can take input gradients from it.

    The convolutions get the hand-written backward of ``double_backward.py``, whose own derivative
    runs on the fast first-order kernels (on the CPU that took 13-25% off a GReg step).
    """
    xg = x.detach().requires_grad_(True)
    with fast_double_backward() as (phase, _):
        logits = model_fn(xg)
    return logits, PenaltyGraph(xg, phase)


def _input_grad(e_sum: torch.Tensor, x: torch.Tensor, phase: Phase) -> torch.Tensor:
    phase.input_only = True  # the weights' first-order gradient is not wanted here
    try:
        (g,) = torch.autograd.grad(e_sum, x, create_graph=True)
    finally:
        phase.input_only = False
    return g


def gradient_penalty(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, e: torch.Tensor,
                     is_aux: torch.Tensor, m_in: float, m_out: float, norm: str = "l2",
                     graph: PenaltyGraph | None = None,
                     reuse_from: float = REUSE_FROM) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_∇S`` and its bookkeeping (fraction of ID/aux samples penalised).

    ``e`` are the batch's energies from the step's main forward pass; they pick the "correctly
    detected" rows, and the penalty is zero on the others. Two exact routes to their input
    gradients (``create_graph=True``, so the penalty trains the parameters by a double backward):

    - ``graph`` given (``x``, ``e`` from :func:`penalised_forward`) and at least ``reuse_from`` of
      the rows penalised: differentiate the main forward itself. No second forward, and the
      penalty's first-order path joins the main loss's one backward; but every row pays for the
      double backward.
    - otherwise: re-forward the penalised rows alone. It costs a forward and a backward more per
      penalised row, and is skipped entirely while no sample is on the right side of its margin.

    The crossover (``REUSE_FROM``) was measured on the default CNN: re-forwarding was cheaper at
    35% of rows penalised, reuse from 60% on (5.0x vs 5.8-7.0x a ce step). Both routes give the same
    values for models whose forward treats samples independently and deterministically (no
    dropout, no batch norm in train mode).
    """
    if norm not in NORMS:
        raise LossError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    mask = detected_mask(e, is_aux, m_in, m_out)
    n_in = int((~is_aux).sum())
    n_aux = int(is_aux.sum())
    stats = {
        "frac_in": float(mask[~is_aux].float().mean()) if n_in else 0.0,
        "frac_aux": float(mask[is_aux].float().mean()) if n_aux else 0.0,
    }
    if not bool(mask.any()):
        return e.new_zeros(()), stats
    # Each sample's energy depends only on its own input, so d(Σ E)/dx holds every per-sample gradient.
    if graph is not None and float(mask.float().mean()) >= reuse_from:
        g = _input_grad(e[mask].sum(), graph.x, graph.phase)[mask]
    else:
        xs = x[mask].detach().requires_grad_(True)
        with fast_double_backward() as (phase, _):
            e_sel = free_energy(model_fn(xs))
        g = _input_grad(e_sel.sum(), xs, phase)
    g = g.flatten(1)
    per = g.norm(p=2, dim=1) if norm == "l2" else g.abs().sum(1)
    aux_sel = is_aux[mask]
    loss = e.new_zeros(())
    if n_in:
        loss = loss + per[~aux_sel].sum() / n_in
    if n_aux:
        loss = loss + per[aux_sel].sum() / n_aux
    return loss, stats


def gradient_quotient(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
                      operand: str = "softmax", form: str = "sample",
                      eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Learning ODIN's Gradient Quotient ``L_GQ`` and the batch's logits (for the CE term).

    ``form='sample'``: ``mean_i ‖∇_x S_{y_i}(x_i)‖_1 / Σ_{j≠y_i} ‖∇_x S_j(x_i)‖_1``; the C
    input gradients of every sample come from ``torch.func`` (``vmap`` over ``jacrev``),
    which stays differentiable for the parameter update. The model must not mix samples
    (no batch norm in train mode).
    ``form='batch'``: ``‖∇_x Σ_i S_{y_i}‖_1 / ‖∇_x Σ_i Σ_{j≠y_i} S_j‖_1`` (the authors' code),
    only meaningful on logits since with softmax operands the two gradients are opposite.
    """
    if operand not in GQ_OPERANDS:
        raise LossError(f"operand must be one of {', '.join(GQ_OPERANDS)}; got {operand!r}")
    if form not in GQ_FORMS:
        raise LossError(f"form must be one of {', '.join(GQ_FORMS)}; got {form!r}")
    if operand == "softmax" and form == "batch":
        raise LossError("form=batch with operand=softmax is identically 1 (the non-target softmax sums to 1 - S_y); "
                        "use operand=logits or form=sample")
    if form == "batch":
        x = x.detach().requires_grad_(True)
        logits = model_fn(x)
        s = logits.softmax(1) if operand == "softmax" else logits
        s_y = s.gather(1, labels[:, None]).squeeze(1)
        (g_y,) = torch.autograd.grad(s_y.sum(), x, create_graph=True)
        (g_o,) = torch.autograd.grad((s.sum(1) - s_y).sum(), x, create_graph=True)
        return g_y.abs().sum() / (g_o.abs().sum() + eps), logits

    def one(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = model_fn(xi[None])[0]
        return (f.softmax(0) if operand == "softmax" else f), f

    jac, logits = vmap(jacrev(one, has_aux=True))(x.detach())  # jac: (B, C, *input)
    l1 = jac.abs().flatten(2).sum(2)  # (B, C)
    num = l1.gather(1, labels[:, None]).squeeze(1)
    den = l1.sum(1) - num
    return (num / (den + eps)).mean(), logits
