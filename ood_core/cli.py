"""``python -m ood_core``: the workbench headless (docs/architecture.md, "Command line").

This module owns every subcommand: ``datasets``, ``detectors``, ``evaluate``, ``extract``,
``train`` and ``register``; each handler calls down into ``ood_core`` (mostly the
:mod:`~ood_core.workbench` front door). :func:`main` restores the datasets and uploads saved
by earlier sessions before it dispatches. Exit code 0 on success; 2 with one line on stderr
for bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .cache import standard_json
from .errors import UserError, first_line


class CLIError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        raise CLIError(f"{self.prog}: {message}")


# "rank R: " under torchrun (set by _main_distributed), so each failure line names its rank.
_PREFIX = ""


def _fail(msg: str) -> None:
    """One line on stderr for a failure (docs/architecture.md, "Errors")."""
    print(f"{_PREFIX}{msg}", file=sys.stderr)


def _progress_bar() -> Callable[[float, str], None]:
    """A single-line progress bar on stderr."""
    last = {"msg": ""}

    def cb(frac: float, msg: str) -> None:
        bar = "#" * int(30 * max(0.0, min(1.0, frac)))
        line = f"\r[{bar:<30}] {100 * frac:5.1f}% {msg[:80]:<80}"
        sys.stderr.write(line)
        if frac >= 1.0 and last["msg"] != msg:
            sys.stderr.write("\n")
        last["msg"] = msg
        sys.stderr.flush()

    return cb


def _split_csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def _model_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The model-load options given on the command line, validated once (models.load_options)."""
    from .models.load_options import NAMES, load_kwargs

    return load_kwargs({k: getattr(a, k) for k in NAMES if getattr(a, k, None) is not None})


def _load(a: argparse.Namespace, progress):
    from . import workbench as wb
    return wb.load_model(a.model, progress, **_model_kwargs(a))


def cmd_datasets(a: argparse.Namespace) -> int:
    from .data import list_datasets
    for s in list_datasets():
        splits = "" if s.splits == ("test",) else f" [splits: {', '.join(s.splits)}]"
        print(f"{s.name}\t{s.role}\t{s.description}{splits}")
    return 0


def cmd_detectors(a: argparse.Namespace) -> int:
    from .detectors import detector_classes
    for name, cls in detector_classes().items():
        det = cls()
        knobs = ", ".join(f"{k.name}={k.default}" for k in det.knobs)
        needs = "+".join(sorted(det.needs))
        print(f"{name}\t{det.describe()}\tneeds: {needs}\tknobs: {knobs or '-'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from . import workbench as wb
    from .experiment import Experiment

    if a.benchmark or "," in a.model or a.paper == "openood":
        return _evaluate_benchmark(a)
    progress = _progress_bar() if not a.quiet else None
    if a.experiment:
        exp = Experiment.load(a.experiment)
        model, id_name, ood, dets, params = exp.model, exp.id_dataset, exp.ood_datasets, exp.detectors, exp.params
    else:
        if not a.id or not a.ood or not a.detectors:
            raise CLIError("evaluate needs --id, --ood and --detectors (or --experiment FILE.json)")
        model, id_name, ood, dets = a.model, a.id, _split_csv(a.ood), _split_csv(a.detectors)
        params = wb.parse_params(a.param or [])
    subsample, seed = (exp.subsample, exp.seed) if a.experiment else ({}, a.seed)
    subsample = {**subsample, **_subsample_args(a.subsample or [])}
    bundle = wb.load_model(model, progress, **_model_kwargs(a))
    out = wb.evaluate(bundle, id_name, ood, dets, params, progress, subsample=subsample, seed=seed)
    out["model"] = model
    if a.check_setup:  # only on request: the default JSON stays as it was
        from .data import get_dataset
        from .models.setup_checks import check_setup_named

        ext = wb.get_extraction(bundle, get_dataset(id_name))  # cached: the pass evaluate just ran
        out["setup_checks"] = [c.to_dict() for c in check_setup_named(bundle, id_name, ext)]
    if a.paper:
        _add_paper(out, a.paper)
    if a.json:  # standard JSON: an undefined metric (no ID labels) is null, never NaN
        print(standard_json(out, indent=None if a.compact else 2))
    else:
        acc = out["id_accuracy"]
        acc_txt = f"{100 * acc:.2f}%" if acc == acc else "n/a (no labels)"
        print(f"model {out['model']}  ID {out['id_dataset']}  accuracy {acc_txt}")
        used = [f"{k} {v['used']:,}" + (f" of {v['of']:,} (seed {v['seed']})" if v["used"] < v["of"] else "")
                for k, v in out["samples"].items()]
        print("samples: " + "; ".join(used))
        paper = f"{'paper FPR95':>12}{'paper AUROC':>12}" if a.paper else ""
        print(f"{'detector':<16}{'ood':<14}{'AUROC':>8}{'FPR95':>8}{'AUPR-In':>9}{'AUPR-Out':>9}{paper}")
        for r in out["results"]:
            ref = r.get("paper")
            ref_txt = (f"{ref[0]:12.2f}{ref[1]:12.2f}" if ref else f"{'-':>12}{'-':>12}") if a.paper else ""
            print(f"{r['detector']:<16}{r['ood_dataset']:<14}{100 * r['auroc']:8.2f}{100 * r['fpr95']:8.2f}"
                  f"{100 * r['aupr_in']:9.2f}{100 * r['aupr_out']:9.2f}{ref_txt}")
        for m in out.get("means", []):
            ref = m.get("paper")
            ref_txt = (f"{ref[0]:12.2f}{ref[1]:12.2f}" if ref else f"{'-':>12}{'-':>12}")
            print(f"{m['detector']:<16}{'mean':<14}{100 * m['auroc']:8.2f}{100 * m['fpr95']:8.2f}"
                  f"{'':9}{'':9}{ref_txt}")
        _print_checks(out.get("setup_checks", []))
    return 0


# --- archs, check-setup ------------------------------------------------------------------

def cmd_archs(a: argparse.Namespace) -> int:
    """One line per architecture: name, label, published preprocessing, where it is published."""
    from .models.archs_published import archs_table

    print("\n".join(archs_table()))
    return 0


def _print_checks(rows: list[dict[str, str]]) -> None:
    from .models.setup_checks import format_checks

    for line in format_checks(rows):
        print(line)


def cmd_check_setup(a: argparse.Namespace) -> int:
    """Checks of the loaded model against its published setup; exit 0 also when some warn."""
    from .models.setup_checks import check_setup_named

    bundle = _load(a, _progress_bar() if not a.quiet else None)
    rows = [c.to_dict() for c in check_setup_named(bundle, a.id, n_images=a.images)]
    if a.json:
        print(standard_json({"model": a.model, "arch": bundle.arch, "id_dataset": a.id,
                             "preprocess": bundle.preprocess.to_dict(), "setup_checks": rows}))
    else:
        print(f"model {a.model}  arch {bundle.arch}  ID {a.id}")
        _print_checks(rows)
    return 0


def _subsample_args(items: list[str]) -> dict[str, float]:
    """``["id_train=12811", "ood_test=0.5"]`` -> ``{"id_train": 12811.0, "ood_test": 0.5}``."""
    out: dict[str, float] = {}
    for item in items:
        role, eq, val = item.partition("=")
        try:
            out[role.strip()] = float(val)
        except ValueError:
            raise CLIError(f"--subsample must look like ROLE=COUNT or ROLE=FRACTION (e.g. id_train=12811); "
                           f"got {item!r}") from None
        if not eq:
            raise CLIError(f"--subsample must look like ROLE=COUNT; got {item!r}")
    return out


def _add_paper(out: dict[str, Any], paper: str) -> None:
    """The seed paper's numbers beside each row, and a mean per detector (docs/methods.md)."""
    from .published import reference

    by_det: dict[str, list[dict[str, Any]]] = {}
    for r in out["results"]:
        r["paper"] = reference(paper, r["detector"], r["ood_dataset"])
        by_det.setdefault(r["detector"], []).append(r)
    out["means"] = [{"detector": d, "auroc": sum(r["auroc"] for r in rs) / len(rs),
                     "fpr95": sum(r["fpr95"] for r in rs) / len(rs), "paper": reference(paper, d, "mean")}
                    for d, rs in by_det.items() if len(rs) > 1]
    out["paper"] = paper


def cmd_extract(a: argparse.Namespace) -> int:
    from . import workbench as wb
    from .data import get_dataset

    progress = _progress_bar() if not a.quiet else None
    base = a.dataset.partition(":")[0]
    ds = get_dataset(base, a.split)
    bundle = _load(a, progress)
    if a.batch_size is not None or a.workers is not None or a.autocast != "off":
        from .extract import extract
        ext = extract(bundle, ds, a.batch_size, a.device, progress, autocast=a.autocast, workers=a.workers)
    else:
        ext = wb.get_extraction(bundle, ds, progress, device=a.device)
    from . import distributed as D

    path = ext.save_npz(a.out) if D.is_writer() else a.out  # only rank 0 writes ("Distributed passes")
    check = ext.extra.get("autocast_check")
    if check:
        print(f"autocast {check['dtype']}: first batch of {check['rows']} vs fp32: largest logit difference "
              f"{check['max_abs_logit_diff']:.3g} ({100 * check['max_rel_logit_diff']:.2f}% of the largest logit), "
              f"top-1 agreement {100 * check['top1_agreement']:.1f}%", file=sys.stderr)
    failed = ext.extra.get("decode_failed")
    if failed:
        print(f"{len(failed)} files could not be decoded and were scored as blank images "
              f"(sample ids {', '.join(map(str, failed[:5]))}{'…' if len(failed) > 5 else ''})", file=sys.stderr)
    print(str(path))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' or a model file (.pt2, TorchScript, state_dict); "
                   "evaluate takes several, comma-separated, and reports their mean ± std")
    _add_load_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_load_options(p: argparse.ArgumentParser) -> None:
    """``--arch``, ``--input-size``, ``--mean``, … generated from their one declaration (models.load_options)."""
    from .models.load_options import AUTO, LOAD_OPTIONS

    for k in LOAD_OPTIONS.knobs:
        kw: dict[str, Any] = {"dest": k.name, "help": k.help or None}
        if k.kind in ("floats", "ints"):
            kw.update(type=float if k.kind == "floats" else int, nargs="+")
        elif k.kind == "choice":
            picks = tuple(c for c in k.choices if c != AUTO)
            kw.update(choices=picks, type=type(picks[0]))
        p.add_argument("--" + k.name.replace("_", "-"), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ood_core", description="Gradient-OOD workbench, headless")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)
    sub.add_parser("detectors", help="list detectors").set_defaults(fn=cmd_detectors)

    e = sub.add_parser("evaluate", help="score ID vs OOD sets and print metrics")
    _add_model_args(e)
    e.add_argument("--id")
    e.add_argument("--ood", help="comma-separated OOD dataset names")
    e.add_argument("--detectors", help="comma-separated detector names")
    e.add_argument("--param", action="append", help="detector.knob=value (repeatable)")
    e.add_argument("--experiment", help="an experiment JSON saved by the app or `evaluate --save`")
    e.add_argument("--subsample", action="append", metavar="ROLE=N",
                   help="use a fixed random subset for a role: id_train (the statistics), id_test or ood_test; "
                        "a count or a fraction (repeatable), e.g. id_train=12811")
    e.add_argument("--seed", type=int, default=0, help="seed of the subsets (default 0)")
    e.add_argument("--paper", choices=("gradnorm", "rg", "openood"),
                   help="print published numbers beside ours: the seed papers' ImageNet tables (gradnorm, rg) or "
                        "OpenOOD v1.5's leaderboard (openood, with --benchmark)")
    e.add_argument("--benchmark", help="an OpenOOD benchmark registered with `benchmark add` (e.g. openood-cifar10): "
                   "its ID set and all its OOD sets, with the near/far means")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--compact", action="store_true", help="JSON on one line")
    e.add_argument("--check-setup", dest="check_setup", action="store_true",
                   help="also check the setup against the published one (adds setup_checks; see `check-setup`)")
    e.set_defaults(fn=cmd_evaluate)

    sub.add_parser("archs", help="list the architectures a state_dict loads into, with their published "
                   "preprocessing").set_defaults(fn=cmd_archs)
    c = sub.add_parser("check-setup", help="does the loaded model's setup match the published one?")
    _add_model_args(c)
    c.add_argument("--id", required=True, help="ID dataset (its test split)")
    c.add_argument("--images", type=int, default=300, help="ID images the normalisation check runs (default 300)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(fn=cmd_check_setup)

    x = sub.add_parser("extract", help="write the Extraction arrays of one dataset to .npz")
    _add_model_args(x)
    x.add_argument("--dataset", required=True)
    x.add_argument("--split", default="test", choices=("train", "test"))
    x.add_argument("--out", required=True)
    x.add_argument("--batch-size", dest="batch_size", type=int, help="forward batch (default: measured once per model)")
    x.add_argument("--workers", type=int, help="decoding worker processes for a streamed set (default: none on a CPU, "
                   "where a thread per core decodes between forwards; one per core up to 8 on a GPU)")
    x.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                   help="reduced-precision forward (checked against fp32 on the first batch)")
    x.set_defaults(fn=cmd_extract)

    _add_train_parser(sub)
    _add_register_parser(sub)
    _add_benchmark_parser(sub)
    return p


# --- train -------------------------------------------------------------------------------

def _add_train_parser(sub: Any) -> None:
    from .training import DEFAULT_EPOCHS, METHODS

    t = sub.add_parser("train", help=f"train or fine-tune with {', '.join(METHODS)}")
    t.add_argument("--method", choices=list(METHODS), help="training method")
    t.add_argument("--init", default="default", help="'default' (fine-tune the embedded model), 'scratch', a "
                   "workbench checkpoint path, or a state_dict file with --arch")
    t.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS['finetune']} fine-tuning, {DEFAULT_EPOCHS['scratch']} from "
                        "scratch; 1 is a quick run)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--param", action="append", help="method.knob=value (repeatable), e.g. greg.lr=0.01")
    t.add_argument("--recipe", choices=("default", "paper"), default=None,
                   help="paper: the authors' optimiser, schedule, epochs and batch sizes (docs/methods.md, Paper recipes)")
    t.add_argument("--arch", default=None, help="architecture of a state_dict given to --init, or of --init scratch")
    t.add_argument("--id", default="mnist", help="ID dataset (its :train split trains)")
    t.add_argument("--aux", default="aux", help="auxiliary outlier dataset (any registered dataset)")
    t.add_argument("--n-train", dest="n_train", type=int, default=0, help="train on a random subset (0 = all)")
    t.add_argument("--n-eval", dest="n_eval", type=int, default=0, help="per-epoch metrics on a subset (0 = all)")
    t.add_argument("--config", help="a training config JSON or a checkpoint's .json sidecar: reproduce that run")
    t.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun on GPUs: synchronise batch-norm statistics across the ranks")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)


def _train_params(method: str, items: list[str]) -> dict[str, Any]:
    from .training import TrainingError
    from .workbench import WorkbenchError, parse_params

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
    from .training import METHODS, TrainConfig, Trainer, TrainingError, get_method

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
            extra = {"arch": a.arch, "load": {"arch": a.arch}} if a.arch else {}
            cfg = TrainConfig(a.method, init=a.init, epochs=a.epochs, seed=a.seed, id_dataset=a.id, aux=a.aux,
                              params=params, n_train=a.n_train, n_eval=a.n_eval, **extra)
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
    except TrainingError as exc:
        if not a.quiet:
            sys.stderr.write("\n")
        _fail(f"error: {first_line(exc)}")
        return 2
    ep = res.meta["history"]["epochs"][-1]
    print(f"{res.meta['label']}: ID accuracy {100 * ep['accuracy']:.2f}%, "
          f"Energy AUROC vs {cfg.aux_val} {100 * ep['auroc']:.2f}%")
    print(str(res.path))
    return 0


# --- register ----------------------------------------------------------------------------

def _add_register_parser(sub: Any) -> None:
    from .data.readers import FORMATS
    from .data.registry import USER_ROLES

    p = sub.add_parser("register", help="register a local dataset folder/file (remembered across restarts)")
    p.add_argument("--path", help="folder or file (.npz, .mat, .zip)")
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=USER_ROLES, default="ood_test")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS)
    p.add_argument("--split", help="which split of the source to use (default: test, or train for id_train)")
    p.add_argument("--limit", type=int, help="keep a fixed random subset of this many samples")
    p.add_argument("--unlabelled", action="store_true", help="ignore labels (folder names)")
    p.add_argument("--remove", action="store_true", help="forget the dataset NAME instead")
    p.add_argument("--replace", action="store_true", help="replace a dataset already registered as NAME")
    p.add_argument("--content-hash", dest="content_hash", action="store_true",
                   help="fingerprint a folder by its files' bytes too, not only names, sizes and mtimes (reads every file)")
    p.set_defaults(fn=cmd_register)


def cmd_register(a: argparse.Namespace) -> int:
    from . import persist
    from .data import DataError, get_dataset
    from .figures.previews import summary

    if a.remove:
        persist.unregister_local(a.name)
        print(f"removed {a.name}")
        return 0
    if not a.path:
        raise DataError("register needs --path (or --remove)")
    spec = persist.register_local(a.path, a.name, a.role, a.fmt, a.split, a.limit, labelled=not a.unlabelled,
                                  replace=a.replace, content_hash=a.content_hash)
    for s in spec.splits:
        ds = get_dataset(spec.name, s)
        info = summary(ds)
        extra = f", {info['skipped']} unreadable skipped" if info["skipped"] else ""
        extra += ", streamed from disk" if info["streamed"] else ""
        print(f"{ds.name}\t{spec.role if s == 'test' else 'id_train'}\t{info['images']} images {info['shape']}, "
              f"{info['classes']} classes, fingerprint {info['fingerprint']}{extra}")
    return 0


# --- benchmarks (OpenOOD v1.5 layouts; docs/architecture.md, "Benchmarks") ---------------

def _add_benchmark_parser(sub: Any) -> None:
    from .benchmarks import BENCHMARKS

    p = sub.add_parser("benchmark", help="register an OpenOOD v1.5 benchmark from a local data root")
    bsub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    add = bsub.add_parser("add", help="register every image list of a benchmark found under --root")
    add.add_argument("name", choices=list(BENCHMARKS))
    add.add_argument("--root", required=True, help="the folder holding benchmark_imglist/, images_classic/, "
                     "images_largescale/ (as OpenOOD's download script leaves it)")
    add.add_argument("--replace", action="store_true", help="replace datasets of the same names registered elsewhere")
    add.set_defaults(fn=cmd_benchmark)
    bsub.add_parser("list", help="the benchmarks, their sets and groups").set_defaults(fn=cmd_benchmark)


def cmd_benchmark(a: argparse.Namespace) -> int:
    from . import benchmarks as B

    if a.action == "list":
        for b in B.BENCHMARKS.values():
            groups = "; ".join(f"{g}: {', '.join(b.group_names(g))}" for g in ("val", *B.GROUPS))
            print(f"{b.name}\tID {b.id_name} ({b.num_classes} classes)\t{groups}")
        return 0
    got = B.add(a.name, a.root, replace=a.replace)
    for line in got.lines:
        print(line)
    print(f"{a.name}: {len(got.registered)} registered, {len(got.unchanged)} unchanged, {len(got.missing)} missing")
    return 0


def _evaluate_benchmark(a: argparse.Namespace) -> int:
    """``evaluate --benchmark B`` and/or several ``--model``s: per-set rows, near/far means, mean ± std."""
    from . import benchmarks as B
    from . import workbench as wb

    if a.experiment:
        raise CLIError("--experiment runs one model on its saved sets; drop --benchmark and the comma list of --model")
    if not a.detectors:
        raise CLIError("evaluate needs --detectors")
    groups = None
    if a.benchmark:
        if a.id or a.ood:
            raise CLIError("--benchmark chooses the ID and OOD sets; drop --id and --ood")
        id_name, ood, missing = B.registered_sets(a.benchmark)
        if missing:
            print(f"not registered, left out: {', '.join(missing)}", file=sys.stderr)
        groups = B.benchmark_groups(ood)
    else:
        if a.paper == "openood":
            raise CLIError("--paper openood compares OpenOOD's near/far means: add --benchmark (e.g. openood-cifar10)")
        if not a.id or not a.ood:
            raise CLIError("evaluate needs --id and --ood (or --benchmark NAME)")
        id_name, ood = a.id, _split_csv(a.ood)
    progress = _progress_bar() if not a.quiet else None
    specs = _split_csv(a.model)
    kw = _model_kwargs(a)
    bundles = [wb.load_model(m, progress, **kw) for m in specs]
    out = B.evaluate(bundles, id_name, ood, _split_csv(a.detectors), wb.parse_params(a.param or []), progress,
                     subsample=_subsample_args(a.subsample or []), seed=a.seed, groups=groups)
    if len(specs) == 1:
        out["model"] = specs[0]
    else:
        out["models"] = specs
    if a.benchmark:
        out["benchmark"] = a.benchmark
    if a.paper:
        _add_published(out, a.paper, a.benchmark)
    if a.json:
        print(standard_json(out, indent=None if a.compact else 2))
        return 0
    _print_benchmark(out, a.paper)
    return 0


def _add_published(out: dict[str, Any], paper: str, benchmark: str | None) -> None:
    """Published numbers beside the rows: OpenOOD's near/far AUROC and accuracy, or a seed's table."""
    from .published import published_accuracy, published_value, reference

    out["paper"] = paper
    if paper == "openood":
        for g in out.get("groups", []):
            got = published_value(benchmark or "", g["detector"], "auroc", g["group"])
            g["published"] = {"auroc": got[0], "std": got[1], "citation": got[2]} if got else None
        acc = published_accuracy(benchmark or "")
        out["published_id_accuracy"] = {"accuracy": acc[0], "std": acc[1], "citation": acc[2]} if acc else None
        return
    for r in out["results"]:
        r["paper"] = reference(paper, r["detector"], r["ood_dataset"])


def _cell(r: dict[str, Any], m: str, width: int) -> str:
    """``12.34`` or ``12.34 ± 0.56`` (percent) for one metric of a row."""
    v = f"{100 * r[m]:.2f}" + (f" ± {100 * r['std'][m]:.2f}" if "std" in r else "")
    return f"{v:>{width}}"


def _print_benchmark(out: dict[str, Any], paper: str | None) -> None:
    """Per detector: the near sets, the near mean, the far sets, the far mean (as OpenOOD prints them)."""
    multi = "models" in out and "runs" in out
    acc = out["id_accuracy"]
    acc_txt = "n/a (no labels)" if acc != acc else f"{100 * acc:.2f}" + \
        (f" ± {100 * out['id_accuracy_std']:.2f}" if multi else "") + "%"
    pub = out.get("published_id_accuracy")
    if pub:
        acc_txt += f"  (published {pub['accuracy']:.2f}" + (f" ± {pub['std']:.2f}" if pub["std"] is not None else "") + ")"
    who = ", ".join(out["models"]) if "models" in out else out["model"]
    print(f"model {who}  ID {out['id_dataset']}  accuracy {acc_txt}")
    if multi:
        print(f"mean ± std (population, ddof=0) over {len(out['models'])} checkpoints")
    w = 16 if multi else 9
    names = [r["ood_dataset"] for r in out["results"]]
    dw = max([14, *(len(n) + 2 for n in names)])
    head = f"{'detector':<16}{'ood':<{dw}}" + "".join(f"{h:>{w}}" for h in ("FPR@95", "AUROC", "AUPR-In", "AUPR-Out"))
    if paper == "openood":
        head += f"{'published AUROC':>18}"
    elif paper:
        head += f"{'paper FPR95':>12}{'paper AUROC':>12}"
    print(head)
    order = ("fpr95", "auroc", "aupr_in", "aupr_out")
    groups = out.get("groups")
    for det in dict.fromkeys(r["detector"] for r in out["results"]):
        rows = [r for r in out["results"] if r["detector"] == det]
        blocks: list[tuple[list[dict], dict | None]] = []
        if groups is not None:
            for g in (g for g in groups if g["detector"] == det):
                blocks.append(([r for r in rows if r["ood_dataset"] in g["datasets"]], g))
        else:
            blocks.append((rows, None))
        for block, g in blocks:
            for r in block:
                ref = ""
                if paper and paper != "openood":
                    p = r.get("paper")
                    ref = f"{p[0]:12.2f}{p[1]:12.2f}" if p else f"{'-':>12}{'-':>12}"
                print(f"{det:<16}{r['ood_dataset']:<{dw}}" + "".join(_cell(r, m, w) for m in order) + ref)
            if g is not None:
                ref = ""
                if paper == "openood":
                    p = g.get("published")
                    ref = f"{p['auroc']:.2f}" + (f" ± {p['std']:.2f}" if p["std"] is not None else "") if p else "-"
                    ref = f"{ref:>18}"
                label = f"{g['group']}ood" + (f" ({len(g['datasets'])} sets)" if len(g["datasets"]) < 2 else "")
                print(f"{det:<16}{label:<{dw}}" + "".join(_cell(g, m, w) for m in order) + ref)
    if paper == "openood":
        cites = {g["published"]["citation"] for g in groups or [] if g.get("published")}
        for c in sorted(cites):
            print(f"published: {c}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, restore saved state, dispatch: the one fault boundary of the command line.

    docs/architecture.md, "Errors": bad input, an interrupt and the machine's own failures (a full
    disk, a file that cannot be opened, memory we should have sized) each end in one line on stderr
    and exit 2 (130 for Ctrl-C); any other exception is a bug and keeps its traceback.
    """
    from . import distributed as D

    if D.launched():  # torchrun: docs/architecture.md, "Distributed passes"
        return _main_distributed(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        a = parser.parse_args(argv)
        if not getattr(a, "fn", None):
            parser.print_help()
            return 2
        from . import workbench as wb
        wb.restore_saved()  # datasets and uploads of earlier sessions (skips are logged, never fatal)
        return a.fn(a)
    except CLIError as exc:
        _fail(first_line(exc))
        return 2
    except KeyboardInterrupt:
        _fail("\ninterrupted; nothing was written for the unfinished step")
        return 130
    except UserError as exc:
        _fail(f"error: {first_line(exc)}")
        return 2
    except MemoryError:
        _fail("error: out of memory; use a smaller dataset (--limit when registering) or a smaller input size")
        return 2
    except OSError as exc:
        _fail(f"error: {os_message(exc)}")
        return 2


def _main_distributed(argv: Sequence[str] | None) -> int:
    """One rank of a ``torchrun`` job: join the process group, run the same subcommand, leave.

    Only rank 0 prints (stdout, the progress bar, warnings); the others run quietly. A rank that
    fails prints one line ``rank R: <cause>`` on stderr and exits nonzero; torchrun then stops the
    other ranks (a collective waiting for a dead peer fails after ``$OOD_DIST_TIMEOUT_S`` at the
    latest). A rank whose failure is only that a peer went away says so in its line.
    """
    import os
    import traceback

    from . import distributed as D

    me = D.world().rank
    real_out, real_err = sys.stdout, sys.stderr
    logging.basicConfig(level=logging.WARNING if me == 0 else logging.ERROR,
                        format=f"%(levelname)s rank {me} %(name)s: %(message)s")
    if me != 0:
        import warnings

        warnings.simplefilter("ignore")  # rank 0 says it once
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed below
        argv = [*(sys.argv[1:] if argv is None else argv)]
        if argv and argv[0] in ("evaluate", "extract", "train") and "--quiet" not in argv:
            argv.append("--quiet")
    global _PREFIX
    _PREFIX = f"\nrank {me}: "  # a line of its own even below rank 0's progress bar
    code = 1
    try:
        try:
            D.init()
        except Exception as exc:  # noqa: BLE001 - the rendezvous itself failed
            print(f"rank {me}: could not join the process group: {first_line(exc)}", file=real_err)
            return 1
        code = _main(argv)  # its one-line errors carry the rank (see _fail)
    except BaseException as exc:  # noqa: BLE001 - a bug or a dead peer: one line, not a traceback per rank
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
        elif isinstance(exc, KeyboardInterrupt):
            print(f"rank {me}: interrupted; nothing was written for the unfinished step", file=real_err)
            code = 130
        else:
            import torch.distributed as tdist

            peer = isinstance(exc, getattr(tdist, "DistBackendError", ())) or "gloo" in str(exc).lower() \
                or "nccl" in str(exc).lower()
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
            what = "stopped: another rank failed or the connection to it was lost" if peer else \
                f"{type(exc).__name__}: {first_line(exc)}{where}"
            print(f"\nrank {me}: {what}", file=real_err)  # on its own line, below rank 0's progress bar
            code = 1
    finally:
        if sys.stdout is not real_out:
            sys.stdout.close()
            sys.stdout = real_out
        try:  # also after a failure: gloo's threads left running abort the interpreter at exit
            D.destroy()
        except Exception:  # noqa: BLE001
            pass
    return code


def os_message(exc: OSError) -> str:
    """One line for a failure of the machine rather than of the input (a full disk, a folder given as a file)."""
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or first_line(exc)}{where}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
