"""The low-dimensional gradient settings, declared once as knobs, and the gradient errors.

Owns: :data:`GRAD_KNOBS` (the one declaration of ``loss``, ``param_set``, ``kernel``,
``subspace``, ``r``, ``T``, ``power_iters`` and ``precision`` that the lowdim detectors,
the Maps page and :func:`resolve_params` all share, so they cannot drift), the
``reference`` preset (the defaults: the authors' code, repository
``snowien/Low-dimensional-Gradient-Helps-OOD-Detection``, files ``github_main.py``,
``github_PCA.py``, ``github_Average_gradient.py``), the workbench's earlier reading as a
second preset, and the error classes. See ``docs/methods.md``, section
"Low-dimensional gradients".
"""
from __future__ import annotations

from typing import Any, Callable

from ..jobs import Cancelled
from ..knobs import Knob, KnobError, Resolved, resolve
from ..models import ModelError
from ..resources import env_number

Progress = Callable[[float, str], None]

LOSSES = ("lse", "kl_uniform", "ce_pred")
PARAM_SETS = ("last_weight", "last", "last_block", "all")
KERNELS = ("nfk", "ntk")
SUBSPACES = ("pca", "avg", "avg_orth")
PRECISIONS = ("auto", "fp32", "bf16")


class GradientError(ModelError):
    """Per-sample gradients cannot be computed as asked; the message says what to change."""


class MemoryBudgetError(GradientError):
    """The chosen parameter set × chunk (or the P×r subspace) would not fit the memory budget."""


class GradientKnobError(GradientError, KnobError):
    """A gradient setting outside its declaration: raised as is by ``knobs.resolve`` (never re-wrapped)."""


class FitCancelled(GradientError, Cancelled):
    """A gradient pass stopped by the user: nothing was cached. A job reads it as cancelled, the CLI as a user error."""


# Power iterations of the randomized SVD. The reference runs 10; each costs two passes over the
# fit set. Measured by bench/lowdim_scale.py (default CNN, last block, N = 1,000, against an exact
# SVD): the share of the best rank-r subspace's energy kept is 0.925 / 0.992 / 0.9974 / 0.9999 at
# q = 0 / 1 / 2 / 10 for r = 200 (0.9988 and 0.9948 at q = 2 for r = 10 and 50), while the largest
# principal angle stays large at the cut, where singular values are nearly equal and no method
# can tell the directions apart. q = 2 keeps over 99.4% for 2 of the reference's 10 iterations' cost.
DEFAULT_POWER_ITERS = 2

GRAD_KNOBS: tuple[Knob, ...] = (
    Knob("loss", "lse", kind="choice", choices=LOSSES,
         help="per-sample scalar that is differentiated: lse = LSE(f/T), the paper's code (reference); kl_uniform "
              "(GradNorm's KL(u‖softmax)) and ce_pred (cross-entropy to the prediction) are the workbench's own variants"),
    Knob("param_set", "all", kind="choice", choices=("all", "last", "last_block"),
         help="parameters differentiated: all (reference), or the workbench's smaller sets: head weight+bias, "
              "the last block plus the head"),
    Knob("kernel", "nfk", kind="choice", choices=KERNELS,
         help="gradient normalisation: nfk = (g − mean training gradient) / √(diagonal Fisher) (reference); "
              "ntk = raw gradients"),
    Knob("subspace", "pca", kind="choice", choices=SUBSPACES,
         help="pca: top-r right singular vectors of the normalised training gradients (reference, CIFAR); avg: "
              "unit-norm class-mean gradients, r = C (reference, ImageNet); avg_orth: the workbench's earlier "
              "orthonormalised class means"),
    Knob("r", 200, 1, 5000, kind="int", help="subspace dimension for pca (avg uses r = number of classes)"),
    Knob("T", 1.0, 0.1, 100.0, "log", help="temperature inside the loss (the reference uses T = 1)"),
    Knob("power_iters", DEFAULT_POWER_ITERS, 0, 20, kind="int",
         help="power iterations of the randomized SVD (reference: 10; each costs two passes over the training set)"),
    Knob("precision", "auto", kind="choice", choices=PRECISIONS,
         help="dtype of the G·V products: bf16 halves V's memory and is ~4× faster on CPUs with AMX/AVX512-BF16 "
              "and on GPUs; auto = bf16 when V is over 256 MB on such hardware, fp32 otherwise"),
)
GRAD_KNOB_NAMES = tuple(k.name for k in GRAD_KNOBS)
REFERENCE: dict[str, Any] = {k.name: k.default for k in GRAD_KNOBS}
DEFAULT_PARAMS = REFERENCE  # the defaults are the reference preset
# The workbench's earlier reading (before the authors' code was public): GradNorm's loss on
# the head, 10 raw-gradient directions. lowdim_norm / lowdim_react / lowdim_ens default to it.
EARLIER: dict[str, Any] = {**REFERENCE, "loss": "kl_uniform", "param_set": "last", "kernel": "ntk", "r": 10}
MAX_FIT = 50_000  # training samples a subspace is fitted on (the reference: 50,000 on CIFAR); a seeded subset beyond


def max_fit() -> int:
    """Training samples a subspace is fitted on: :data:`MAX_FIT`, or ``$OOD_GRAD_MAX_FIT`` where set (a
    smaller cap makes a first fit on a laptop cheaper; the subspace's cache key records the number used)."""
    return int(env_number("OOD_GRAD_MAX_FIT", MAX_FIT, "a positive whole number of training samples", integer=True))


def grad_knobs(**defaults: Any) -> tuple[Knob, ...]:
    """:data:`GRAD_KNOBS` with other defaults (a preset), the ranges unchanged."""
    unknown = set(defaults) - set(GRAD_KNOB_NAMES)
    if unknown:
        raise KeyError(f"not gradient knobs: {sorted(unknown)}")
    return tuple(k.with_range(default=defaults[k.name]) if k.name in defaults else k for k in GRAD_KNOBS)


def resolve_params(params: dict[str, Any] | None = None) -> Resolved:
    """The reference preset overlaid with ``params``, validated once by ``knobs.resolve``
    (:class:`GradientKnobError` on bad values); settings it already resolved pass through.

    ``param_set`` may also be ``last_weight`` or an explicit list of parameter names: wider than
    its knob's choices (which the widgets offer), so it is checked here and the rest by the resolver.
    """
    if isinstance(params, Resolved) and params.fits(GRAD_KNOBS):
        return params
    given = dict(params or {})
    extra = set(given) - set(GRAD_KNOB_NAMES)
    if extra:
        raise GradientKnobError(f"unknown low-dimensional gradient setting(s) {sorted(extra)}; "
                                f"known: {', '.join(GRAD_KNOB_NAMES)}")
    ps = given.pop("param_set", REFERENCE["param_set"])
    if isinstance(ps, str):
        if ps not in PARAM_SETS:
            raise GradientKnobError(f"param_set must be one of {', '.join(PARAM_SETS)}; got {ps!r}")
        given["param_set"] = ps if ps != "last_weight" else "all"  # validated above; the knob's choices are narrower
    elif not ps or not all(isinstance(n, str) for n in ps):
        raise GradientKnobError(f"param_set must be a set name or a list of parameter names; got {ps!r}")
    p = resolve(GRAD_KNOBS, given, "gradients", GradientKnobError)
    return Resolved({**p, "param_set": ps if isinstance(ps, str) else list(ps)}, "gradients", GRAD_KNOBS)
