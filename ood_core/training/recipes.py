"""The papers' training recipes: one shared table, read by the methods (``recipe=paper``), the docs test and the docs.

``reference`` (a method's preset) names the form of its loss; ``recipe=paper`` sets everything else
the authors' published runs used: optimiser, learning rate and schedule, weight decay, momentum and
Nesterov, epochs, the ID batch and the auxiliary batch, the augmentation (the CIFAR crop and flip,
``augment=crop_flip``) and method settings (GReg+'s pool and clusters, GQ's pixel-space input).
Where the authors' code and their published commands disagree the published commands win. Each value's source (file and line, or the quoted statement where the
file's line could not be read) is in docs/methods.md, "Paper recipes", whose table
``tests/training/test_recipes.py`` compares with :data:`PAPER_RECIPES`.

Knob values only: a key here is a knob of the method (``COMMON_KNOBS`` or its own), except
``epochs``, which fills ``TrainConfig.epochs`` when that is not given.
"""
from __future__ import annotations

from typing import Any, Mapping

RECIPES = ("default", "paper")

PAPER_RECIPES: Mapping[str, Mapping[str, Any]] = {
    # wetliu/energy_ood CIFAR/train.py: fine-tunes a pretrained WRN-40-2 with energy-bounded learning.
    "energy_oe": {"optimizer": "sgd", "lr": 0.001, "lr_min": 1e-6, "schedule": "cosine", "weight_decay": 5e-4,
                  "momentum": 0.9, "nesterov": True, "epochs": 10, "batch_size": 128, "aux_factor": 2.0,
                  "augment": "crop_flip"},
    # o4lc/Greg-OOD train_sea.py with --noCluster on CIFAR (no published CIFAR GReg command): Nesterov SGD.
    "greg": {"optimizer": "sgd", "lr": 0.1, "schedule": "multistep", "weight_decay": 1e-4, "momentum": 0.9,
             "nesterov": True, "epochs": 100, "batch_size": 64, "bn_double_update": True,
             "augment": "crop_flip"},
    # o4lc/Greg-OOD Scripts/cifar10ScriptGregPlus.sh (the published CIFAR-10 command) + train_sea.py: Adam.
    "greg_plus": {"optimizer": "adam", "lr": 0.1, "schedule": "step", "weight_decay": 0.0, "nesterov": False,
                  "epochs": 60, "batch_size": 32, "pool_factor": 6.0, "max_clusters": 32, "drop_lowest": 0,
                  "two_way": True, "bn_double_update": True, "augment": "crop_flip"},
    # ajevnisek/learning-odin train_all_networks.sh + parse_cmd_args.py + classical_trainer.py.
    "gq": {"optimizer": "sgd", "lr": 0.1, "lr_min": 1e-7, "schedule": "cosine_epoch", "weight_decay": 5e-4,
           "momentum": 0.9, "nesterov": False, "epochs": 200, "batch_size": 64, "pixel_space": True,
           "augment": "crop_flip"},
}


def paper_recipe(method: str) -> dict[str, Any]:
    """The paper recipe's knob values for ``method`` (``epochs`` included); empty for a method without one."""
    return dict(PAPER_RECIPES.get(method, {}))


def recipe_knobs(method: str, recipe: str) -> dict[str, Any]:
    """What ``recipe`` sets on top of a method's preset (no ``epochs``: that is the config's)."""
    if recipe != "paper":
        return {}
    return {k: v for k, v in PAPER_RECIPES.get(method, {}).items() if k != "epochs"}
