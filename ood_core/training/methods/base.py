"""What a training method is: :class:`TrainingMethod`, the registry ``METHODS`` and the errors training raises.

A method is one class in one module of this package, registered with :func:`register` (the
detectors' pattern, ``ood_core/detectors/base.py``): it declares its knobs, papers and presets
as class attributes, like a detector, so the Train page builds its widgets from the declaration
and the CLI validates ``--param method.knob=value`` against it; and it owns its update's loss
(:meth:`TrainingMethod.loss`), so :class:`ood_core.training.Trainer` runs any method without
knowing its name. docs/architecture.md, "Where to add things"; formulas: docs/methods.md,
"Training methods".

Presets. A method may carry presets, bundles of knob values chosen with the ``preset`` knob
(e.g. ``--param greg.preset=earlier``), the first being the default; a knob given explicitly
wins over its preset. :meth:`TrainingMethod.form` names the form a set of values runs (a
preset's name, or the mix of form knobs), which the label, the job's log and the checkpoint's
sidecar record.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from ...errors import UserError
from ...knobs import Knob, Paper, find
from ...knobs import resolve as resolve_knobs
from ..augment import ALIASES as AUGMENT_ALIASES
from ..augment import AUGMENTATIONS
from ..recipes import RECIPES, recipe_knobs

SCHEDULES = ("cosine", "cosine_epoch", "step", "multistep")


class TrainingError(UserError):
    """Bad training input (method, init, knob, dataset); the message says what to do."""


class TrainingDiverged(TrainingError):
    """A loss term (or the gradient) became NaN/inf or exploded; the message names term and step."""


COMMON_KNOBS: tuple[Knob, ...] = (
    Knob("recipe", "default", kind="choice", choices=RECIPES,
         help="default: the workbench's short budgets; paper: the authors' published optimiser, learning rate, schedule, "
              "weight decay, epochs, batch sizes and method settings (the \"Paper recipes\" table of the methods guide). A knob set "
              "explicitly wins over its recipe"),
    Knob("optimizer", "sgd", kind="choice", choices=("sgd", "adam"),
         help="sgd: SGD with momentum (and optional Nesterov) and weight decay; adam: torch.optim.Adam (GReg+'s "
              "train_sea.py), weight decay as Adam's L2 term"),
    Knob("lr", 0.01, 1e-5, 10.0, "log", help="initial learning rate. The GReg paper's fine-tuning recipe says 1, which gave "
         "NaN in the reproduction; 0.01 is the default"),
    Knob("lr_min", 1e-4, 1e-7, 1.0, "log", help="final learning rate of the cosine schedule"),
    Knob("schedule", "cosine", kind="choice", choices=SCHEDULES,
         help="cosine from lr to lr_min per step; cosine_epoch: the same per epoch (CosineAnnealingLR); step: lr for "
              "5/6 of the epochs then lr/10 (GReg+); multistep: ×0.1 at 50%, 75% and 90% of the epochs (train_sea.py)"),
    Knob("momentum", 0.9, 0.0, 0.99, help="SGD momentum"),
    Knob("nesterov", False, kind="bool", help="SGD with Nesterov momentum (energy_ood, GReg on CIFAR)"),
    Knob("weight_decay", 1e-4, 0.0, 0.01, help="weight decay (L2 penalty)"),
    Knob("batch_size", 64, 8, 512, kind="int", help="B: ID samples per step (paired with B auxiliary outliers)"),
    Knob("augment", "shift", kind="choice", choices=AUGMENTATIONS,
         help="on ID and auxiliary images: shift, random shifts of up to 2 pixels; crop_flip, the papers' CIFAR "
              "augmentation (random crop from a 4-pixel padding of zero pixels, horizontal flip); none"),
)
# Retired values of common knobs (saved configs, --param spellings): augment was a bool.
COMMON_ALIASES: Mapping[str, Mapping[Any, Any]] = {"augment": AUGMENT_ALIASES}

PRESET_HELP = ("reference: the authors' loss with their published commands' settings (the default); code_defaults "
               "(GReg+): the same loss with train_sea.py's argparse selection defaults; earlier: our first reading of the "
               "paper. A knob set explicitly wins over its preset")

class TrainerView(Protocol):
    """What a method's hooks may use of :class:`ood_core.training.Trainer` (declared here, not imported:
    the loop imports the methods)."""

    k: Mapping[str, Any]  # the resolved knobs
    cfg: Any  # the resolved TrainConfig
    model: torch.nn.Module  # in train mode during a step
    bundle: Any  # a ModelBundle sharing the model's parameters (``bundle.logits``, ``bundle.forward``)
    x_aux: Any  # the auxiliary rows (a tensor or RowSource), None for a method without ``uses_aux``
    np_rng: np.random.Generator  # the run's outlier draws
    world: int  # torchrun ranks (1: one process)
    rank: int
    step_no: int
    sample_independent: bool  # no batch norm: rows do not interact in a forward pass

    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]: ...

    def logits(self, *parts: torch.Tensor) -> torch.Tensor: ...

    def aux_batch(self, n: int) -> torch.Tensor: ...

    def augment(self, x: torch.Tensor, total: int | None = None, start: int | None = None) -> torch.Tensor: ...


# A step's loss: "total" (what backward runs on) and each declared term as a scalar tensor; plain
# numbers beside them are diagnostics, logged with the step (GReg's fractions of penalised rows).
StepLoss = Mapping[str, "torch.Tensor | float"]


class TrainingMethod:
    """Base class of a training method. A subclass sets the class attributes, implements :meth:`loss`
    and is decorated with :func:`register`; the registry holds one instance.

    ``terms`` names the logged loss terms, ``"total"`` first. ``overrides`` are this method's defaults
    for common knobs (``scratch_defaults`` for ``init='scratch'``). ``presets`` maps a preset name to
    knob values, the first being the default; ``form_knobs`` are the knobs that make a form (the
    rest of a preset are its defaults); ``conflicts`` are (knob values, message) pairs refused
    together; ``aliases`` map a knob's retired values (saved experiments) to today's.
    ``penalises_input_gradient``: the loss differentiates an input gradient in the model's train
    mode, so the job records which mode that ran in (batch norm couples the rows).
    """

    name: str = ""
    title: str = ""
    terms: tuple[str, ...] = ("total",)
    knobs: tuple[Knob, ...] = ()
    paper: Paper | None = None
    uses_aux: bool = True
    overrides: Mapping[str, Any] = {}
    scratch_defaults: Mapping[str, Any] = {}
    recommended_detector: str = "energy"
    help: str = ""
    presets: Mapping[str, Mapping[str, Any]] = {}
    form_knobs: tuple[str, ...] = ()
    conflicts: tuple[tuple[Mapping[str, Any], str], ...] = ()
    aliases: Mapping[str, Mapping[Any, Any]] = {}
    penalises_input_gradient: bool = False

    # -- the update: what the Trainer calls --
    def prepare(self, trainer: TrainerView) -> None:
        """Check the run's data against the knobs once, before the first step (raise :class:`TrainingError`)."""

    def loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """This step's loss on the (augmented) ID batch ``x`` with labels ``y``: ``"total"`` and each
        of ``terms``. ``trainer`` gives the knobs (``trainer.k``), the forward passes
        (``trainer.forward``, ``trainer.logits``) and auxiliary outliers (``trainer.aux_batch``)."""
        raise NotImplementedError(f"{type(self).__name__} implements no loss")

    def runs_ddp_forward(self, k: Mapping[str, Any]) -> bool:
        """Whether the loss's forward ran through ``trainer.forward`` (DistributedDataParallel under torchrun,
        which then averages the gradients); False: the Trainer averages them over the ranks itself."""
        return True

    # -- the declaration --
    @property
    def all_knobs(self) -> tuple[Knob, ...]:
        if not self.presets:
            return COMMON_KNOBS + self.knobs
        names = tuple(self.presets)
        return COMMON_KNOBS + (Knob("preset", names[0], kind="choice", choices=names, help=PRESET_HELP),) + self.knobs

    def knob(self, name: str) -> Knob:
        return find(self.all_knobs, name, self.name)

    def defaults(self, init: str = "default", preset: str | None = None, recipe: str = "default") -> dict[str, Any]:
        """Every knob's default for this init under ``preset`` (None: the first preset) and ``recipe``
        (``paper``: :data:`ood_core.training.recipes.PAPER_RECIPES` over the preset)."""
        out = {k.name: k.default for k in self.all_knobs}
        out.update(self.overrides)
        if init == "scratch":
            out.update(self.scratch_defaults)
        if self.presets:
            preset = preset or next(iter(self.presets))
            out.update(self.presets[preset])
            out["preset"] = preset
        out.update(recipe_knobs(self.name, recipe))
        out["recipe"] = recipe
        return out

    def resolve(self, params: Mapping[str, Any] | None = None, init: str = "default") -> dict[str, Any]:
        """The preset's defaults (for this init) overlaid with ``params``, each validated by
        :func:`ood_core.knobs.resolve` (a :class:`~ood_core.knobs.KnobError` names a bad one);
        refused combinations raise :class:`TrainingError`."""
        aliases = {**COMMON_ALIASES, **self.aliases}
        params = {k: aliases.get(k, {}).get(v, v) if _hashable(v) else v for k, v in (params or {}).items()}
        given = resolve_knobs(self.all_knobs, params, self.name)
        out = self.defaults(init, given["preset"] if "preset" in params else None,
                            given["recipe"] if "recipe" in params else "default")
        out.update({key: given[key] for key in params})
        for when, why in self.conflicts:
            if all(out.get(k) == v for k, v in when.items()):
                setting = ", ".join(f"{self.name}.{k}={v}" for k, v in when.items())
                raise TrainingError(f"{setting}: {why}")
        return out

    def form(self, params: Mapping[str, Any]) -> str | None:
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


Method = TrainingMethod  # the name the package exported before methods owned their loss


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


METHODS: dict[str, TrainingMethod] = {}


def register(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: add a training method (one instance) to ``METHODS`` under ``cls.name``."""
    if not cls.name or cls.terms[:1] != ("total",):
        raise ValueError(f"{cls.__name__} needs a name and terms starting with 'total'")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> TrainingMethod:
    m = METHODS.get(name)
    if m is None:
        raise TrainingError(f"unknown training method {name!r}; available: {', '.join(METHODS)}")
    return m


class _KnobView:
    """What ``ui.common.knob_widgets`` expects (``name`` + ``knobs``) for a method's knobs."""

    def __init__(self, name: str, knobs: tuple[Knob, ...]):
        self.name, self.knobs = name, knobs


def knob_view(method: str, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> _KnobView:
    """An object with ``name`` and ``knobs`` for widget builders (optionally only some knobs, or all but some)."""
    m = get_method(method)
    knobs = tuple(k for k in m.all_knobs if (only is None or k.name in only) and k.name not in skip)
    return _KnobView(m.name, knobs)
