"""``train``: a training job with a progress bar; prints the checkpoint's path last."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UserError, first_line
from .common import (
    _fail,
    _progress_bar,
    _seed_arg,
)


def _add_train_parser(sub: Any) -> None:
    from ..training import DEFAULT_EPOCHS, METHODS

    t = sub.add_parser("train", help=f"train or fine-tune with {', '.join(METHODS)}")
    t.add_argument("--method", choices=list(METHODS), help="training method")
    t.add_argument("--init", default="default", help="'default' (fine-tune the embedded model), 'scratch' (with "
                   "--arch: that architecture's own preprocessing), a workbench checkpoint path, a state_dict file with "
                   "--arch, or an uploaded model's key upload:NAME@HASH (with the options it was loaded with)")
    t.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS['finetune']} fine-tuning, {DEFAULT_EPOCHS['scratch']} from "
                        "scratch; 1 is a quick run)")
    t.add_argument("--seed", type=_seed_arg, default=0, help="0 to 2**63-1 (default 0)")
    t.add_argument("--param", action="append", help="method.knob=value (repeatable), e.g. greg.lr=0.01")
    t.add_argument("--recipe", choices=("default", "paper"), default=None,
                   help="paper: the authors' optimiser, schedule, epochs and batch sizes (docs/methods.md, Paper recipes)")
    t.add_argument("--arch", default=None, help="architecture of a state_dict given to --init, or of --init scratch")
    t.add_argument("--id", default="mnist", help="ID dataset (its :train split trains)")
    t.add_argument("--aux", default="aux", help="auxiliary outlier dataset (any registered dataset)")
    t.add_argument("--aux-val", dest="aux_val", default="aux_val",
                   help="held-out OOD set for the per-epoch Energy AUROC (any registered dataset; keep it apart from "
                        "your OOD test sets)")
    t.add_argument("--n-train", dest="n_train", type=int, default=0, help="train on a random subset (0 = all)")
    t.add_argument("--n-eval", dest="n_eval", type=int, default=0, help="per-epoch metrics on a subset (0 = all)")
    t.add_argument("--config", help="a training config JSON or a checkpoint's .json sidecar: reproduce that run")
    t.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun on GPUs: synchronise batch-norm statistics across the ranks")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)


def _train_params(method: str, items: list[str]) -> dict[str, Any]:
    from ..training import TrainingError
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
    """Train with a progress bar on stderr; the checkpoint's path is the last line of stdout."""
    from ..training import METHODS, TrainConfig, Trainer, TrainingError, get_method

    try:
        if a.config:
            cfg = TrainConfig.from_file(a.config)
            if a.method and a.method != cfg.method:
                raise TrainingError(f"--method {a.method} contradicts the config's method {cfg.method}")
        else:
            if not a.method:
                raise TrainingError(f"train needs --method (one of {', '.join(METHODS)}) or --config FILE.json")
            get_method(a.method)
            params = _train_params(a.method, a.param or [])
            if a.recipe:
                params.setdefault("recipe", a.recipe)
            extra: dict[str, Any] = {"arch": a.arch, "load": {"arch": a.arch}} if a.arch else {}
            init = a.init
            if init.startswith("upload:"):  # an upload trains from its file with the options it was loaded with
                if a.arch:
                    raise TrainingError(f"--arch applies to a model file; {init!r} keeps the architecture and "
                                        "preprocessing it was loaded with (drop --arch)")
                from ..persist import upload_init

                start = upload_init(init)
                init, extra = start["init"], {"load": start["load"]}
            cfg = TrainConfig(a.method, init=init, epochs=a.epochs, seed=a.seed, id_dataset=a.id, aux=a.aux,
                              aux_val=a.aux_val, params=params, n_train=a.n_train, n_eval=a.n_eval, **extra)
        trainer = Trainer(cfg, progress=None if a.quiet else _progress_bar(), sync_bn=a.sync_bn)
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
    except UserError as exc:  # TrainingError, or an upload key not remembered
        if not a.quiet:
            sys.stderr.write("\n")
        _fail(f"error: {first_line(exc)}")
        return 2
    ep = res.meta["history"]["epochs"][-1]
    print(f"{res.meta['label']}: ID accuracy {100 * ep['accuracy']:.2f}%, "
          f"Energy AUROC vs {cfg.aux_val} {100 * ep['auroc']:.2f}%")
    print(str(res.path))
    return 0
