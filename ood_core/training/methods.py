"""The training methods declared as data: their knobs, papers, presets and the errors training raises.

Owns the registry ``METHODS`` (``ce``, ``oe``, ``energy_oe``, ``greg``, ``greg_plus``,
``gq``; docs/methods.md, "Training methods"). Each :class:`Method` declares its knobs like a
detector does, so the Train page builds its widgets from the declaration and the CLI
validates ``--param method.knob=value`` against it.

Presets. ``greg``, ``greg_plus`` and ``gq`` each carry a ``reference`` preset that follows the
authors' code (GReg/GReg+: repository ``o4lc/Greg-OOD``, ``train_sea.py``; Learning ODIN:
``ajevnisek/learning-odin``, ``learning_odin_trainer.py``) and is the default, and an
``earlier`` preset, our first reading of the papers. A preset is a bundle of knob values
(chosen with the ``preset`` knob, e.g. ``--param greg.preset=earlier``); a knob given
explicitly wins over its preset. :meth:`Method.form` names the form a set of values runs
(``reference``, ``earlier`` or the mix of form knobs), which the label, the job's log and
the checkpoint's sidecar record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..knobs import Knob, KnobError, Paper
from . import losses as L
from .sampling import SELECTIONS


class TrainingError(UserError):
    """Bad training input (method, init, knob, dataset); the message says what to do."""


class TrainingDiverged(TrainingError):
    """A loss term (or the gradient) became NaN/inf or exploded; the message names term and step."""


COMMON_KNOBS: tuple[Knob, ...] = (
    Knob("lr", 0.01, 1e-5, 10.0, "log", help="initial learning rate (SGD). The GReg paper's fine-tuning recipe says 1, which gave "
         "NaN in the reproduction; 0.01 is the default"),
    Knob("lr_min", 1e-4, 1e-7, 1.0, "log", help="final learning rate of the cosine schedule"),
    Knob("schedule", "cosine", kind="choice", choices=("cosine", "step"),
         help="cosine from lr to lr_min per step, or step: lr for 5/6 of the epochs then lr/10 (GReg+ from scratch)"),
    Knob("momentum", 0.9, 0.0, 0.99, help="SGD momentum"),
    Knob("weight_decay", 1e-4, 0.0, 0.01, help="SGD weight decay (L2 penalty)"),
    Knob("batch_size", 64, 8, 512, kind="int", help="B: ID samples per step (paired with B auxiliary outliers)"),
    Knob("augment", True, kind="bool", help="random shifts of up to 2 pixels on ID and auxiliary images"),
)

_LAM_S = Knob("lam_s", 0.1, 0.0, 10.0, help="λ_S, weight of the energy-margin loss L_S")
_M_IN = Knob("m_in", -25.0, -100.0, 0.0, help="m_in: ID energies above it are penalised (CIFAR-10 value; depends on "
             "the logit scale: the embedded default's ID energies sit around -15)")
_M_OUT = Knob("m_out", -7.0, -100.0, 0.0, help="m_out: auxiliary energies below it are penalised")
_LAM_GRAD = Knob("lam_grad", 1.0, 0.0, 100.0, help="λ_∇S, weight of the gradient penalty L_∇S")
_PENALTY = Knob("penalty", "reference", kind="choice", choices=L.PENALTY_FORMS,
                help="reference: the input gradient of ONE batch scalar φ = -mean_in[relu(m_in - E)] + "
                     "mean_aux[relu(E - m_out)], per-row norm, mean over all N rows (train_sea.py; N times weaker "
                     "than per_sample at the same λ_∇S). per_sample: mean_in[1{E ≤ m_in}·‖∇E‖] + "
                     "mean_aux[1{E ≥ m_out}·‖∇E‖] (our earlier reading)")
# With the CIFAR-10 margins the embedded default's first L_S is ~130 (its ID energies sit near -15):
# fine-tuning at the papers' lr 0.01 explodes within 10 steps (measured), so the energy-margin
# methods default to energy_ood's fine-tuning lr, 0.001.
_MARGIN_LR = {"lr": 0.001}
_NORM = Knob("norm", "l2", kind="choice", choices=L.NORMS,
             help="norm of each row's input gradient in L_∇S (train_sea.py: L2)")
_GREG_PAPER = Paper("Gradient-Regularized Out-of-Distribution Detection", "Sharifi, Entesari, Safaei, Patel, Fazlyab",
                    "ECCV", 2024, "https://github.com/o4lc/Greg-OOD")

PRESET_HELP = ("reference: the authors' code (the default); earlier: our first reading of the paper. A knob set "
               "explicitly wins over its preset")


@dataclass(frozen=True)
class Method:
    """A training method declared as data.

    ``presets`` maps a preset name to knob values, the first (``reference``) being the default;
    ``form_knobs`` are the knobs that make a form (the rest of a preset are its defaults);
    ``conflicts`` are (knob values, message) pairs refused together; ``aliases`` map a knob's
    retired values (saved experiments) to today's.
    """

    name: str
    title: str
    terms: tuple[str, ...]
    knobs: tuple[Knob, ...] = ()
    paper: Paper | None = None
    uses_aux: bool = True
    overrides: dict = field(default_factory=dict)  # this method's defaults for common knobs
    scratch_defaults: dict = field(default_factory=dict)  # ... and for init='scratch'
    recommended_detector: str = "energy"
    help: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    form_knobs: tuple[str, ...] = ()
    conflicts: tuple[tuple[dict[str, Any], str], ...] = ()
    aliases: dict[str, dict[Any, Any]] = field(default_factory=dict)

    @property
    def all_knobs(self) -> tuple[Knob, ...]:
        if not self.presets:
            return COMMON_KNOBS + self.knobs
        names = tuple(self.presets)
        return COMMON_KNOBS + (Knob("preset", names[0], kind="choice", choices=names, help=PRESET_HELP),) + self.knobs

    def knob(self, name: str) -> Knob:
        for k in self.all_knobs:
            if k.name == name:
                return k
        raise TrainingError(f"{self.name} has no knob {name!r}; knobs: {', '.join(k.name for k in self.all_knobs)}")

    def defaults(self, init: str = "default", preset: str | None = None) -> dict[str, Any]:
        """Every knob's default for this init under ``preset`` (None: the reference preset)."""
        out = {k.name: k.default for k in self.all_knobs}
        out.update(self.overrides)
        if init == "scratch":
            out.update(self.scratch_defaults)
        if self.presets:
            preset = preset or next(iter(self.presets))
            out.update(self.presets[preset])
            out["preset"] = preset
        return out

    def resolve(self, params: dict[str, Any] | None = None, init: str = "default") -> dict[str, Any]:
        """The preset's defaults (for this init) overlaid with ``params``, each validated against its range;
        refused combinations raise :class:`TrainingError`."""
        params = {k: self.aliases.get(k, {}).get(v, v) if _hashable(v) else v for k, v in (params or {}).items()}
        try:
            preset = self.knob("preset").validate(params["preset"], self.name) if "preset" in params else None
            out = self.defaults(init, preset)
            for key, value in params.items():
                out[key] = self.knob(key).validate(value, self.name)
        except KnobError as exc:
            raise TrainingError(str(exc)) from None
        for when, why in self.conflicts:
            if all(out.get(k) == v for k, v in when.items()):
                setting = ", ".join(f"{self.name}.{k}={v}" for k, v in when.items())
                raise TrainingError(f"{setting}: {why}")
        return out

    def form(self, params: dict[str, Any]) -> str | None:
        """The preset whose form knobs ``params`` match (``reference``, ``earlier``), else the form knobs'
        values; None for a method without presets."""
        if not self.presets:
            return None
        for name, values in self.presets.items():
            if all(params.get(k) == values[k] for k in self.form_knobs):
                return name
        return ", ".join(f"{k}={params.get(k)}" for k in self.form_knobs)

    def describe(self) -> str:
        ref = f" ({self.paper.cite()})" if self.paper else ""
        return f"{self.title}{ref}"


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


class _KnobView:
    """What ``ui.common.knob_widgets`` expects (``name`` + ``knobs``) for a method's knobs."""

    def __init__(self, name: str, knobs: tuple[Knob, ...]):
        self.name, self.knobs = name, knobs


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ce", "Cross-entropy", ("total", "ce"), help="plain cross-entropy on ID data: the baseline", uses_aux=False),
    Method("oe", "Outlier Exposure", ("total", "ce", "oe"),
           (Knob("lam", 0.5, 0.0, 10.0, help="λ, weight of the cross-entropy to uniform on auxiliary outliers"),),
           Paper("Deep Anomaly Detection with Outlier Exposure", "Hendrycks, Mazeika, Dietterich", "ICLR", 2019,
                 "https://github.com/hendrycks/outlier-exposure"),
           help="L_CE + λ·mean_aux[-(1/C) Σ_i log softmax(f)_i]", recommended_detector="msp"),
    Method("energy_oe", "Energy-bounded learning", ("total", "ce", "ls"), (_LAM_S, _M_IN, _M_OUT),
           Paper("Energy-based Out-of-distribution Detection", "Liu, Wang, Owens, Li", "NeurIPS", 2020,
                 "https://github.com/wetliu/energy_ood"), overrides=_MARGIN_LR,
           help="L_CE + λ_S·L_S, L_S = mean_in[max(0, E - m_in)²] + mean_aux[max(0, m_out - E)²]"),
    Method("greg", "GReg", ("total", "ce", "ls", "grad"), (_PENALTY, _LAM_S, _LAM_GRAD, _M_IN, _M_OUT, _NORM),
           _GREG_PAPER, overrides=_MARGIN_LR,
           presets={"reference": {"penalty": "reference", "lam_s": 0.1, "lam_grad": 1.0},
                    "earlier": {"penalty": "per_sample", "lam_s": 0.1, "lam_grad": 1.0}},
           form_knobs=("penalty",),
           help="L_CE + λ_S·L_S + λ_∇S·L_∇S; L_∇S penalises the input gradient of the energy on samples already on "
                "the right side of their margin (double backward). Reference: the gradient of one batch scalar, "
                "per-row L2 norm, mean over all rows, with the model in train mode"),
    Method("greg_plus", "GReg+", ("total", "ce", "ls", "grad"),
           (_PENALTY,
            Knob("selection", "reference", kind="choice", choices=SELECTIONS,
                 help="reference: per k-means cluster the lowest-energy outlier (two_way: also the highest), filled "
                      "to B at random; that one batch feeds L_S and L_∇S (train_sea.py). split: lowest per cluster "
                      "for L_S, highest for L_∇S (our earlier reading)"),
            Knob("pool_factor", 6.0, 1.0, 32.0,
                 help="candidate pool = ⌊pool_factor·B⌋ auxiliary samples per step (reference: 300,000 / 50,000 = 6, "
                      "384 at B = 64)"),
            Knob("drop_lowest", 16, 0, 4096, kind="int",
                 help="the lowest-energy (most ID-looking) candidates left out of the pool (reference: 16)"),
            Knob("two_way", False, kind="bool",
                 help="selection=reference: also each cluster's highest-energy member; the batch fills to 2B"),
            _LAM_S, _LAM_GRAD, _M_IN, _M_OUT, _NORM),
           _GREG_PAPER, overrides=_MARGIN_LR,
           # The GReg+ paper's from-scratch lr 0.1 explodes within 7 steps on the embedded small CNN (no batch
           # norm; L_S starts near 500): keep the step schedule's shape at the margin methods' lr.
           scratch_defaults={"schedule": "step"},
           presets={"reference": {"penalty": "reference", "selection": "reference", "pool_factor": 6.0,
                                  "drop_lowest": 16, "two_way": False, "lam_s": 0.1, "lam_grad": 1.0},
                    "earlier": {"penalty": "per_sample", "selection": "split", "pool_factor": 8.0,
                                "drop_lowest": 0, "two_way": False, "lam_s": 0.1, "lam_grad": 1.0}},
           form_knobs=("penalty", "selection"),
           conflicts=(({"selection": "split", "two_way": True},
                       "two_way applies to selection=reference (split already takes each cluster's lowest and "
                       "highest energy)"),),
           help="GReg with energy-based k-means selection of the auxiliary batch from a candidate pool scored in "
                "eval mode"),
    Method("gq", "Gradient Quotient (Learning ODIN)", ("total", "ce", "gq"),
           (Knob("form", "batch", kind="choice", choices=L.GQ_FORMS,
                 help="batch: ‖∇_x Σ_n o_y(x_n)‖₁ / ‖∇_x Σ_n Σ_{j≠y} o_j(x_n)‖₁ over the whole batch "
                      "(learning_odin_trainer.py); per_sample: the quotient per sample, averaged (our earlier reading)"),
            Knob("operand", "logits", kind="choice", choices=L.GQ_OPERANDS,
                 help="o: the logits (the authors' grad-over-grad runs) or the softmax (the paper's formula)"),
            Knob("lam", 1e-6, 1e-8, 10.0, "log",
                 help="λ, weight of the Gradient Quotient (the authors' CIFAR runs: 1e-6; their parser default: 1)")),
           Paper("Learning ODIN", "Jevnisek, Avidan", "BMVC", 2022, "https://github.com/ajevnisek/learning-odin"),
           # Fine-tuning the embedded default at lr 0.01 diverged in 1 of 3 seeds (CE up to 648, ID
           # accuracy 11.8%; one epoch, earlier form) and the run that landed at 97.4% flipped to 74.8% under
           # float rounding alone; at 0.001 all three seeds ended at 98.1-98.2% (measured). From scratch the
           # logits are small and the common 0.01 stays.
           overrides={"lr": 0.001}, scratch_defaults={"lr": 0.01},
           uses_aux=False, recommended_detector="odin",
           presets={"reference": {"form": "batch", "operand": "logits", "lam": 1e-6},
                    "earlier": {"form": "per_sample", "operand": "softmax", "lam": 1.0}},
           form_knobs=("form", "operand"),
           conflicts=(({"form": "batch", "operand": "softmax"},
                       "the batch quotient of softmax gradients is identically 1 (Σ_{j≠y} S_j = 1 - S_y, so the two "
                       "gradients are opposite); use operand=logits or form=per_sample"),),
           aliases={"form": {"sample": "per_sample"}},  # the name before the presets (saved experiments)
           help="L_CE + λ·L_GQ, the Gradient Quotient of the target's input gradient over the other classes'; "
                "then score with ODIN"),
)}


def get_method(name: str) -> Method:
    m = METHODS.get(name)
    if m is None:
        raise TrainingError(f"unknown training method {name!r}; available: {', '.join(METHODS)}")
    return m


def knob_view(method: str, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> _KnobView:
    """An object with ``name`` and ``knobs`` for widget builders (optionally only some knobs, or all but some)."""
    m = get_method(method)
    knobs = tuple(k for k in m.all_knobs if (only is None or k.name in only) and k.name not in skip)
    return _KnobView(m.name, knobs)
