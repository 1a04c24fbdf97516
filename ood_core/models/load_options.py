"""The model-load options, declared once as knobs: the CLI's options, the Models & data page's
fields and an experiment's ``preprocess`` are all read from :data:`LOAD_OPTIONS`.

Every option is "auto" (``None``) unless the user sets it: the loader then detects it from the
file (``models.files.load_model_file``). Values are validated once by ``knobs.resolve`` (the
facade or the CLI); :func:`load_kwargs` turns them into the loader's keyword arguments.
No torch here, so the CLI and the pages can read the declaration cheaply.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..knobs import Knob, KnobSet

AUTO = "auto"

LOAD_OPTIONS = KnobSet("model", (
    Knob("arch", None, kind="text", label="Architecture", help="architecture for a state_dict file (`python -m ood_core archs` lists them; detected when left out)"),
    Knob("input_size", None, 1, 4096, kind="ints", label="Input size (H or H,W)", help="H [W] of the model's input"),
    Knob("channels", AUTO, kind="choice", choices=(AUTO, 1, 3), label="Channels",
         help="input channels (auto: from the model's first layer)"),
    Knob("mean", None, kind="floats", label="Mean (one value or one per channel)",
         help="normalisation mean: one value or one per channel"),
    Knob("std", None, 1e-12, None, kind="floats", label="Std (one value or one per channel)",
         help="normalisation std: one value or one per channel"),
    Knob("head", None, kind="text", label="Final linear layer (feature layer = its input)",
         help="name of the final linear layer when it cannot be found automatically"),
    Knob("resize", AUTO, kind="choice", choices=(AUTO, "stretch", "crop"), label="Resize",
         help="stretch: resize to the input size (GradNorm/RG's 480x480); crop: shorter side to "
              "size/0.875, then the centre crop (torchvision's ImageNet evaluation)"),
))
NAMES = tuple(k.name for k in LOAD_OPTIONS.knobs)


def load_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options the user set (not "auto"), as ``load_model_file``'s keyword arguments."""
    return {k: v for k, v in LOAD_OPTIONS.resolve(values).items() if v is not None and v != AUTO}
