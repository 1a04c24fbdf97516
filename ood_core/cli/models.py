"""``detectors``, ``archs`` and ``check-setup``: what the workbench can load and score, and whether a
model's setup matches the published one."""
from __future__ import annotations

import argparse
from typing import Any

from ..stores import standard_json
from .common import (
    _add_model_args,
    _load,
    _progress_bar,
)


def cmd_detectors(a: argparse.Namespace) -> int:
    from ..detectors import detector_classes
    for name, cls in detector_classes().items():
        det = cls()
        knobs = ", ".join(f"{k.name}={k.default}" for k in det.knobs)
        needs = "+".join(sorted(det.needs))
        print(f"{name}\t{det.describe()}\tneeds: {needs}\tknobs: {knobs or '-'}")
    return 0


def cmd_archs(a: argparse.Namespace) -> int:
    """One line per architecture: name, label, published preprocessing, where it is published."""
    from ..models.archs_published import archs_table

    print("\n".join(archs_table()))
    return 0


def _print_checks(rows: list[dict[str, str]]) -> None:
    from ..models.setup_checks import format_checks

    for line in format_checks(rows):
        print(line)


def cmd_check_setup(a: argparse.Namespace) -> int:
    """Checks of the loaded model against its published setup; exit 0 also when some warn."""
    from ..models.setup_checks import check_setup_named

    bundle = _load(a, _progress_bar() if not a.quiet else None)
    rows = [c.to_dict() for c in check_setup_named(bundle, a.id, n_images=a.images)]
    if a.json:
        print(standard_json({"model": a.model, "arch": bundle.arch, "id_dataset": a.id,
                             "preprocess": bundle.preprocess.to_dict(), "setup_checks": rows}))
    else:
        print(f"model {a.model}  arch {bundle.arch}  ID {a.id}")
        _print_checks(rows)
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``detectors``, ``archs`` and ``check-setup``."""
    sub.add_parser("detectors", help="list detectors").set_defaults(fn=cmd_detectors)


    sub.add_parser("archs", help="list the architectures a state_dict loads into, with their published "
                   "preprocessing").set_defaults(fn=cmd_archs)
    c = sub.add_parser("check-setup", help="does the loaded model's setup match the published one?")
    _add_model_args(c)
    c.add_argument("--id", required=True, help="ID dataset (its test split)")
    c.add_argument("--images", type=int, default=300, help="ID images the normalisation check runs (default 300)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(fn=cmd_check_setup)
