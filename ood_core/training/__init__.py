"""Training with gradient regularizers: losses, outlier sampling, the loop, the ``train`` command.

``python -m ood_core train --method NAME [--init default|scratch|PATH] [--epochs N] [--seed S]
[--param method.knob=value …]`` trains with a progress bar on stderr and prints the
checkpoint's path as the last line of stdout (DESIGN.md contract 6). Importing this
package registers the subcommand with :mod:`ood_core.cli`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import cli as _cli
from ..errors import first_line
from .config import DEFAULT_EPOCHS, TrainConfig, TrainResult
from .loop import Trainer, job_fn, train
from .methods import METHODS, Method, TrainingDiverged, TrainingError, get_method, knob_view

__all__ = ["DEFAULT_EPOCHS", "METHODS", "Method", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingError",
           "TrainResult", "get_method", "job_fn", "knob_view", "train"]


def _params_for(method: str, items: list[str]) -> dict[str, Any]:
    from ..workbench import WorkbenchError, parse_params

    try:
        parsed = parse_params(items)
    except WorkbenchError as exc:
        raise TrainingError(str(exc).replace("detector.knob", "method.knob")) from None
    for name in parsed:
        if name != method:
            raise TrainingError(f"--param names method {name!r} but --method is {method!r}")
    return parsed.get(method, {})


def cmd_train(a: argparse.Namespace) -> int:
    try:
        if a.config:
            cfg = TrainConfig.load(a.config)
            if a.method and a.method != cfg.method:
                raise TrainingError(f"--method {a.method} contradicts the config's method {cfg.method}")
        else:
            if not a.method:
                raise TrainingError(f"train needs --method (one of {', '.join(METHODS)}) or --config FILE.json")
            get_method(a.method)
            cfg = TrainConfig(a.method, init=a.init, epochs=a.epochs, seed=a.seed, id_dataset=a.id, aux=a.aux,
                              params=_params_for(a.method, a.param or []), n_train=a.n_train, n_eval=a.n_eval)
        trainer = Trainer(cfg, progress=None if a.quiet else _cli._progress_bar())
        try:
            res = trainer.run()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            if trainer.epochs_done:
                print(f"stopped after epoch {trainer.epochs_done}; last good checkpoint:", file=sys.stderr)
                print(str(trainer.path))
                return 130
            print("stopped before the first epoch finished; no checkpoint written", file=sys.stderr)
            return 130
    except TrainingError as exc:
        if not a.quiet:
            sys.stderr.write("\n")
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    ep = res.meta["history"]["epochs"][-1]
    print(f"{res.meta['label']}: ID accuracy {100 * ep['accuracy']:.2f}%, "
          f"Energy AUROC vs {cfg.aux_val} {100 * ep['auroc']:.2f}%")
    print(str(res.path))
    return 0


@_cli.add_command
def _register(sub: Any) -> None:
    t = sub.add_parser("train", help="train or fine-tune with ce, oe, energy_oe, greg, greg_plus or gq")
    t.add_argument("--method", choices=list(METHODS), help="training method")
    t.add_argument("--init", default="default", help="'default' (fine-tune the embedded model), 'scratch', or a "
                   "workbench checkpoint path")
    t.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS['finetune']} fine-tuning, {DEFAULT_EPOCHS['scratch']} from "
                        "scratch; 1 is a quick run)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--param", action="append", help="method.knob=value (repeatable), e.g. greg.lr=0.01")
    t.add_argument("--id", default="mnist", help="ID dataset (its :train split trains)")
    t.add_argument("--aux", default="aux", help="auxiliary outlier dataset (any registered dataset)")
    t.add_argument("--n-train", dest="n_train", type=int, default=0, help="train on a random subset (0 = all)")
    t.add_argument("--n-eval", dest="n_eval", type=int, default=0, help="per-epoch metrics on a subset (0 = all)")
    t.add_argument("--config", help="a training config JSON or a checkpoint's .json sidecar: reproduce that run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)
