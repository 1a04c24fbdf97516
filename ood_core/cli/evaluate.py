"""``evaluate``: metrics of detectors on ID vs OOD sets; ``--benchmark`` groups them near/far and
``--paper`` prints the published numbers beside (docs/architecture.md, "Command line", "Benchmarks")."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..stores import standard_json
from .common import (
    CLIError,
    _add_model_args,
    _model_kwargs,
    _progress_bar,
    _names_arg,
    _seed_arg,
    _split_csv,
    _subsample_args,
)
from .models import _print_checks


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .. import workbench as wb
    from ..experiment import Experiment

    if a.benchmark or "," in a.model or a.paper == "openood":
        return _evaluate_benchmark(a)
    progress = _progress_bar() if not a.quiet else None
    if a.experiment:
        exp = Experiment.load(a.experiment)
        model, id_name, ood, dets, params = exp.model, exp.id_dataset, exp.ood_datasets, exp.detectors, exp.params
    else:
        if not a.id or not a.ood or not a.detectors:
            raise CLIError("evaluate needs --id, --ood and --detectors (or --experiment FILE.json)")
        model, id_name, ood, dets = a.model, a.id, _names_arg(a.ood, "--ood"), _names_arg(a.detectors, "--detectors")
        params = wb.parse_params(a.param or [])
    subsample, seed = (exp.subsample, exp.seed) if a.experiment else ({}, a.seed)
    subsample = {**subsample, **_subsample_args(a.subsample or [])}
    bundle = wb.load_model(model, progress, **_model_kwargs(a))
    if a.experiment:
        differs = wb.model_differences(exp, bundle)
        if differs:  # one line; the run goes on with the model given
            print(f"warning: {differs}", file=sys.stderr)
    out = wb.evaluate(bundle, id_name, ood, dets, params, progress, subsample=subsample, seed=seed)
    out["model"] = model
    if a.check_setup:  # only on request: the default JSON stays as it was
        from ..data import get_dataset
        from ..models.setup_checks import check_setup_named

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


def _add_paper(out: dict[str, Any], paper: str) -> None:
    """The seed paper's numbers beside each row, and a mean per detector (docs/methods.md)."""
    from ..published import reference

    by_det: dict[str, list[dict[str, Any]]] = {}
    for r in out["results"]:
        r["paper"] = reference(paper, r["detector"], r["ood_dataset"])
        by_det.setdefault(r["detector"], []).append(r)
    out["means"] = [{"detector": d, "auroc": sum(r["auroc"] for r in rs) / len(rs),
                     "fpr95": sum(r["fpr95"] for r in rs) / len(rs), "paper": reference(paper, d, "mean")}
                    for d, rs in by_det.items() if len(rs) > 1]
    out["paper"] = paper


def _evaluate_benchmark(a: argparse.Namespace) -> int:
    """``evaluate --benchmark B`` and/or several ``--model``s: per-set rows, near/far means, mean ± std."""
    from .. import benchmarks as B
    from .. import workbench as wb

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
        id_name, ood = a.id, _names_arg(a.ood, "--ood")
    progress = _progress_bar() if not a.quiet else None
    specs = _split_csv(a.model)
    kw = _model_kwargs(a)
    bundles = [wb.load_model(m, progress, **kw) for m in specs]
    out = B.evaluate(bundles, id_name, ood, _names_arg(a.detectors, "--detectors"), wb.parse_params(a.param or []), progress,
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
    from ..published import published_accuracy, published_value, reference

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


def add_parsers(sub: Any) -> None:
    """Register ``evaluate``."""
    e = sub.add_parser("evaluate", help="score ID vs OOD sets and print metrics")
    _add_model_args(e)
    e.add_argument("--id")
    e.add_argument("--ood", help="comma-separated OOD dataset names")
    e.add_argument("--detectors", help="comma-separated detector names")
    e.add_argument("--param", action="append", help="detector.knob=value (repeatable)")
    e.add_argument("--experiment", help="an experiment JSON saved by the app (its experiment download)")
    e.add_argument("--subsample", action="append", metavar="ROLE=N",
                   help="use a fixed random subset for a role: id_train (the statistics), id_test or ood_test "
                        "(repeatable), e.g. id_train=12811. A whole number is a count of samples (1 is one "
                        "sample), a number strictly between 0 and 1 a fraction (0.1 is 10%%); 0 and 1.0 are "
                        "refused: leave the role out to use every sample")
    e.add_argument("--seed", type=_seed_arg, default=0, help="seed of the subsets, 0 to 2**63-1 (default 0)")
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
