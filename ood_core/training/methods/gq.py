"""Gradient Quotient (Learning ODIN, ``gq``): cross-entropy plus the quotient of input gradients.

Presets: ``reference`` follows the authors' ``learning_odin_trainer.py`` (repository
``ajevnisek/learning-odin``), ``earlier`` is our first reading of the paper. docs/methods.md,
"Training methods".
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ...knobs import Knob, Paper
from .. import losses as L
from .base import StepLoss, TrainerView, TrainingError, TrainingMethod, register


def pixel_space(fwd: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mean: Sequence[float],
                std: Sequence[float]) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(the model as a function of the [0, 1] pixels, the pixels of the normalised batch ``x``): input
    gradients taken through it are with respect to the pixels, ``∂/∂p = (∂/∂x) / std`` per channel."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (lambda p: fwd((p - m) / s)), x * s + m


@register
class GradientQuotient(TrainingMethod):
    name, title, terms = "gq", "Gradient Quotient (Learning ODIN)", ("total", "ce", "gq")
    knobs = (
        Knob("form", "batch", kind="choice", choices=L.GQ_FORMS,
             help="batch: ‖∇_x Σ_n o_y(x_n)‖₁ / ‖∇_x Σ_n Σ_{j≠y} o_j(x_n)‖₁ over the whole batch "
                  "(learning_odin_trainer.py); per_sample: the quotient per sample, averaged (our earlier reading)"),
        Knob("operand", "logits", kind="choice", choices=L.GQ_OPERANDS,
             help="o: the logits (the authors' grad-over-grad runs) or the softmax (the paper's formula)"),
        Knob("lam", 1e-6, 1e-8, 10.0, "log",
             help="λ, weight of the Gradient Quotient (the authors' CIFAR runs: 1e-6; their parser default: 1)"),
        Knob("pixel_space", False, kind="bool",
             help="differentiate with respect to the [0, 1] pixels before normalisation (the authors' network takes "
                  "un-normalised pixels; recipe=paper); off: with respect to the model's normalised input. The two "
                  "agree for one channel and differ with per-channel std"),
    )
    paper = Paper("Learning ODIN", "Jevnisek, Avidan", "BMVC", 2022, "https://github.com/ajevnisek/learning-odin")
    # Fine-tuning the embedded default at lr 0.01 diverged in 1 of 3 seeds (CE up to 648, ID
    # accuracy 11.8%; one epoch, earlier form) and the run that landed at 97.4% flipped to 74.8% under
    # float rounding alone; at 0.001 all three seeds ended at 98.1-98.2% (measured). From scratch the
    # logits are small and the common 0.01 stays.
    overrides = {"lr": 0.001}
    scratch_defaults = {"lr": 0.01}
    uses_aux = False
    recommended_detector = "odin"
    presets = {"reference": {"form": "batch", "operand": "logits", "lam": 1e-6},
               "earlier": {"form": "per_sample", "operand": "softmax", "lam": 1.0}}
    form_knobs = ("form", "operand")
    conflicts = (({"form": "batch", "operand": "softmax"},
                  "the batch quotient of softmax gradients is identically 1 (Σ_{j≠y} S_j = 1 - S_y, so the two "
                  "gradients are opposite); use operand=logits or form=per_sample"),)
    aliases = {"form": {"sample": "per_sample"}}  # the name before the presets (saved experiments)
    help = ("L_CE + λ·L_GQ, the Gradient Quotient of the target's input gradient over the other classes'; "
            "then score with ODIN")

    def runs_ddp_forward(self, k: Mapping[str, Any]) -> bool:
        # per_sample runs the model under torch.func.vmap, which DDP's forward cannot enter.
        return k["form"] != "per_sample"

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        k = trainer.k
        fwd = trainer.forward if self.runs_ddp_forward(k) else trainer.bundle.logits
        if k.get("pixel_space"):
            fwd, x = pixel_space(fwd, x, trainer.bundle.preprocess.mean, trainer.bundle.preprocess.std)
        try:
            gq, logits = L.gradient_quotient(fwd, x, y, k["operand"], k["form"])
        except L.LossError as exc:
            raise TrainingError(str(exc)) from None
        ce = L.ce_loss(logits, y)
        return {"total": ce + k["lam"] * gq, "ce": ce, "gq": gq}
