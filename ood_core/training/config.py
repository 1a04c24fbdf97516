"""A training run's configuration: what the sidecar stores and :func:`ood_core.training.train` accepts back.

Owns :class:`TrainConfig` (method, init, epochs, seed, datasets, knob values) and its
validation and (de)serialisation. Version 2 added the methods' presets (docs/methods.md,
"Training methods"); a version-1 config of ``greg``, ``greg_plus`` or ``gq`` reproduces its run
under the ``earlier`` preset, the form that ran then. Version 3 added ``recipe`` and made GReg+'s
``reference`` preset the published commands' selection (drop 0, two-way, k = min(64, B)); a
version-2 ``greg_plus`` config reruns as it ran then (``code_defaults``, k = B).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .methods import METHODS, TrainingError, get_method
from .recipes import paper_recipe

CONFIG_VERSION = 3

DEFAULT_EPOCHS = {"finetune": 2, "scratch": 6}


@dataclass
class TrainConfig:
    """Everything a run depends on; the sidecar stores it and :func:`train` accepts it back."""

    method: str
    init: str = "default"  # "default" | "scratch" | path of a workbench checkpoint
    epochs: int | None = None  # None: DEFAULT_EPOCHS for the init
    seed: int = 0
    id_dataset: str = "mnist"  # its ":train" split trains, the test split measures accuracy
    aux: str = "aux"
    aux_val: str = "aux_val"  # held-out OOD for the per-epoch AUROC
    params: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0  # 0: the whole ID training split; else a seeded random subset
    n_eval: int = 0  # 0: all of ID test and aux_val for the per-epoch metrics
    arch: str = "small_cnn"  # only for init='scratch'
    # Load options (ood_core.models.load_options: arch, mean, std, input_size, channels, head) for an init
    # that is a model file other than a workbench checkpoint, e.g. a published state_dict with its arch.
    load: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with method knobs and epochs filled in and validated."""
        m = get_method(self.method)
        if self.init != "scratch" and self.init != "default" and not Path(self.init).exists():
            raise TrainingError(f"no model file at {self.init!r}; --init takes 'default', 'scratch' or a model file "
                                "(a workbench checkpoint, or a state_dict with --arch)")
        params = m.resolve(self.params, self.init)
        epochs = self.epochs
        if epochs is None:  # the paper recipe's epochs, else the workbench's short budget for the init
            epochs = paper_recipe(self.method).get("epochs") if params.get("recipe") == "paper" else None
        if epochs is None:
            epochs = DEFAULT_EPOCHS["scratch" if self.init == "scratch" else "finetune"]
        if not isinstance(epochs, (int, np.integer)) or epochs < 1 or epochs > 1000:
            raise TrainingError(f"epochs must be a whole number in [1, 1000]; got {epochs!r}")
        if int(self.n_train) < 0 or int(self.n_eval) < 0:
            raise TrainingError("n_train and n_eval must be >= 0 (0 means all)")
        init = self.init if self.init in ("default", "scratch") else str(Path(self.init).resolve())
        if self.n_train and int(self.n_train) < int(params["batch_size"]):
            raise TrainingError(f"n_train={self.n_train} training images are fewer than batch_size="
                                f"{params['batch_size']}; lower batch_size or raise n_train")
        return replace(self, init=init, epochs=int(epochs), seed=int(self.seed), params=params)

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = d.get("training", d) if isinstance(d, dict) else d  # a checkpoint sidecar or a bare config
        if not isinstance(d, dict) or not isinstance(d.get("params", {}), dict):
            raise TrainingError("a training config is a JSON object whose 'params' is an object {knob: value}")
        d = dict(d)
        version = int(d.pop("version", CONFIG_VERSION))
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise TrainingError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        if not isinstance(d.get("load", {}), dict):
            # Sidecars written while a method shadowed the field hold its repr here: no load options.
            d["load"] = {}
        if "method" not in d:
            raise TrainingError("a training config needs a 'method'")
        if version < 2 and d["method"] in METHODS and METHODS[d["method"]].presets:
            # Written before the presets: those runs used what is now the 'earlier' form.
            d["params"] = {"preset": "earlier", **dict(d.get("params") or {})}
        if version < 3 and d["method"] == "greg_plus":
            # Before version 3 the reference preset selected with train_sea.py's argparse defaults and k = B.
            p = {"max_clusters": 4096, **dict(d.get("params") or {})}
            if p.get("preset", "reference") == "reference":
                p["preset"] = "code_defaults"
            d["params"] = p
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """A config (or a checkpoint's sidecar) from a JSON file. Not named ``load``: a method of that
        name became the ``load`` field's default (a dataclass reads the class attribute)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"could not read training config {path}: {exc}") from None


@dataclass
class TrainResult:
    path: Path
    meta: dict[str, Any]
