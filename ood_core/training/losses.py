"""Training losses as pure functions of tensors: the value terms and the two input-gradient terms.

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
- ``gradient_penalty`` (GReg, Sharifi et al., ECCV 2024; ``train_sea.py``): the reference form
  takes the input gradient of ONE batch scalar ``φ = -mean_in[relu(m_in - E)] + mean_aux[relu(E - m_out)]``,
  the per-row L2 norm and the mean over all N rows; ``per_sample`` is our earlier reading
  ``mean_in[1{E ≤ m_in} ‖∇_x E‖] + mean_aux[1{E ≥ m_out} ‖∇_x E‖]``. Either is differentiated with
  ``create_graph=True`` so the penalty trains the parameters (double backward).
- ``gradient_quotient`` (Learning ODIN, Jevnisek & Avidan; ``learning_odin_trainer.py``): the
  reference ``form='batch'`` on logits, ``‖∇_x Σ_n o_{y_n}‖_1 / ‖∇_x Σ_n Σ_{j≠y_n} o_j‖_1`` over
  the batch; ``form='per_sample'`` is the earlier per-sample quotient of softmax gradients.

Formulas and defaults: docs/methods.md, "Training methods".
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
GQ_FORMS = ("batch", "per_sample")  # the first: learning_odin_trainer.py
PENALTY_FORMS = ("reference", "per_sample")  # the first: train_sea.py


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


def _row_norms(g: torch.Tensor, norm: str) -> torch.Tensor:
    g = g.flatten(1)
    return g.norm(p=2, dim=1) if norm == "l2" else g.abs().sum(1)


def gradient_penalty(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, e: torch.Tensor,
                     is_aux: torch.Tensor, m_in: float, m_out: float, norm: str = "l2",
                     graph: PenaltyGraph | None = None, reuse_from: float = REUSE_FROM, form: str = "reference",
                     rows_independent: bool = True, shards: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_∇S`` and its bookkeeping (fraction of ID/aux samples on the right side of their margin).

    ``form='reference'`` (``train_sea.py``): ``φ = -mean_in[relu(m_in - E)] + mean_aux[relu(E - m_out)]``
    over the batch, ``L_∇S = (1/N) Σ_n ‖∂φ/∂x_n‖``. Since ``∂φ/∂E_n`` is ``1/n_in`` on detected ID
    rows, ``1/n_aux`` on detected aux rows and 0 elsewhere, ``∇_x φ = ∇_x Σ_n c_n E_n`` with those
    weights ``c_n``. ``form='per_sample'`` (our earlier reading):
    ``mean_in[1{E ≤ m_in}·‖∇_x E‖] + mean_aux[1{E ≥ m_out}·‖∇_x E‖]``; for a model whose rows are
    independent the reference form is this divided by N.

    ``e`` are the batch's energies from the step's main forward pass; they pick the "correctly
    detected" rows. The input gradients are taken with ``create_graph=True`` (the penalty trains the
    parameters by a double backward), by one of two exact routes:

    - ``graph`` given (``x``, ``e`` from :func:`penalised_forward`) and at least ``reuse_from`` of
      the rows detected, or rows coupled: differentiate the main forward itself. No second forward,
      and the penalty's first-order path joins the main loss's one backward.
    - otherwise, with ``rows_independent``: re-forward the detected rows alone (a forward and a
      backward more per detected row; skipped while no row is detected).

    The crossover (``REUSE_FROM``) was measured on the default CNN: re-forwarding was cheaper at
    35% of rows detected, reuse from 60% on. ``rows_independent=False`` (batch norm in train mode:
    batch statistics couple the rows, as in the authors' runs) always differentiates the whole
    batch as it ran, so an undetected row still gets the gradient that flows through the batch
    statistics (re-forwarding the whole batch when no ``graph`` is given).
    """
    if norm not in NORMS:
        raise LossError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if form not in PENALTY_FORMS:
        raise LossError(f"penalty form must be one of {', '.join(PENALTY_FORMS)}; got {form!r}")
    mask = detected_mask(e, is_aux, m_in, m_out)
    n_in = int((~is_aux).sum())
    n_aux = int(is_aux.sum())
    stats = {
        "frac_in": float(mask[~is_aux].float().mean()) if n_in else 0.0,
        "frac_aux": float(mask[is_aux].float().mean()) if n_aux else 0.0,
    }
    if not bool(mask.any()):
        return e.new_zeros(()), stats
    # c_n: ∂φ/∂E_n for the reference form; 1 on detected rows for per_sample.
    # ``shards``: this batch is one of that many equal shards of the global batch (torchrun); φ's
    # weights are over the global groups, so the ranks' penalties average to the global one.
    per_group = torch.where(is_aux, e.new_tensor(1.0 / max(n_aux * shards, 1)),
                            e.new_tensor(1.0 / max(n_in * shards, 1)))
    c = (per_group if form == "reference" else torch.ones_like(per_group)) * mask.to(e.dtype)
    rows = mask if rows_independent else torch.ones_like(mask)
    if graph is not None and (not rows_independent or float(mask.float().mean()) >= reuse_from):
        g = _input_grad((c * e).sum(), graph.x, graph.phase)[rows]
    else:
        xs = x[rows].detach().requires_grad_(True)
        with fast_double_backward() as (phase, _):
            e_sel = free_energy(model_fn(xs))
        g = _input_grad((c[rows] * e_sel).sum(), xs, phase)
    per = _row_norms(g, norm)
    if form == "reference":  # the undetected rows of an independent-row model have zero gradient
        return per.sum() / len(e), stats
    if not rows_independent:
        per = per[mask]
    aux_sel = is_aux[mask]
    loss = e.new_zeros(())
    if n_in:
        loss = loss + per[~aux_sel].sum() / n_in
    if n_aux:
        loss = loss + per[aux_sel].sum() / n_aux
    return loss, stats


def gradient_quotient(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
                      operand: str = "logits", form: str = "batch",
                      eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Learning ODIN's Gradient Quotient ``L_GQ`` and the batch's logits (for the CE term).

    ``form='batch'`` (``learning_odin_trainer.py``): with ``o`` the logits (or the softmax),
    ``‖∇_x Σ_n o_{y_n}(x_n)‖_1 / ‖∇_x Σ_n Σ_{j≠y_n} o_j(x_n)‖_1``, both L1 norms over the whole
    batch tensor: one number per batch, from one forward and two input gradients taken with
    ``create_graph=True`` (the convolutions' double backward on the fast kernels of
    ``double_backward.py``). Refused with softmax operands, where it is identically 1.
    ``form='per_sample'`` (our earlier reading): ``mean_n ‖∇_x S_{y_n}(x_n)‖_1 / Σ_{j≠y_n}
    ‖∇_x S_j(x_n)‖_1``; the C input gradients of every sample come from ``torch.func``
    (``vmap`` over ``jacrev``), which stays differentiable for the parameter update. The model
    must not mix samples (no batch norm in train mode).
    """
    if operand not in GQ_OPERANDS:
        raise LossError(f"operand must be one of {', '.join(GQ_OPERANDS)}; got {operand!r}")
    if form not in GQ_FORMS:
        raise LossError(f"form must be one of {', '.join(GQ_FORMS)}; got {form!r}")
    if operand == "softmax" and form == "batch":
        raise LossError("form=batch with operand=softmax is identically 1 (the non-target softmax sums to 1 - S_y); "
                        "use operand=logits or form=per_sample")
    if form == "batch":
        xg = x.detach().requires_grad_(True)
        with fast_double_backward() as (phase, _):
            logits = model_fn(xg)
        target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        g_y = _input_grad((logits * target).sum(), xg, phase)
        g_o = _input_grad((logits * (1 - target)).sum(), xg, phase)
        return g_y.abs().sum() / (g_o.abs().sum() + eps), logits

    def one(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = model_fn(xi[None])[0]
        return (f.softmax(0) if operand == "softmax" else f), f

    jac, logits = vmap(jacrev(one, has_aux=True))(x.detach())  # jac: (B, C, *input)
    l1 = jac.abs().flatten(2).sum(2)  # (B, C)
    num = l1.gather(1, labels[:, None]).squeeze(1)
    den = l1.sum(1) - num
    return (num / (den + eps)).mean(), logits
