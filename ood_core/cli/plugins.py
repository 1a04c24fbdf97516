"""``--plugin``, ``check-detector`` and ``check-method`` (docs/architecture.md, "Plugins")."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from .common import (
    _fail,
)

PLUGIN_HELP = ("a plugin to load first: a .py file or a dotted module (repeatable); trusted code, it runs when loaded. "
               "Installed packages' entry points and OOD_PLUGINS load too")


def _plugin_specs(argv: Sequence[str]) -> list[str]:
    """``--plugin`` values, read before the parser is built (``train --method`` lists the methods)."""
    out, it = [], iter(argv)
    for tok in it:
        if tok == "--plugin":
            out.append(next(it, ""))
        elif tok.startswith("--plugin="):
            out.append(tok.split("=", 1)[1])
    return [t for t in out if t]


def _load_plugins(argv: Sequence[str]) -> None:
    """Entry points, OOD_PLUGINS and --plugin; each refused plugin is one line on stderr, the rest works."""
    from .. import plugins

    for info in plugins.load_startup(_plugin_specs(argv)):
        if not info.ok:
            _fail(info.line)


def _print_report(rep: Any) -> int:
    for line in rep.lines():
        print(line)
    bad = rep.failures
    print(f"{rep.target}: {len(rep.results) - len(bad)} of {len(rep.results)} checks passed")
    return 0 if not bad else 1


def cmd_check_detector(a: argparse.Namespace) -> int:
    """The conformance battery on one detector: exit 0 all pass, 1 a check failed, 2 bad input."""
    from .. import conformance, plugins

    name, _ = plugins.resolve_target(a.target, "detectors")
    return _print_report(conformance.check_detector(name))


def cmd_check_method(a: argparse.Namespace) -> int:
    """The conformance battery on one training method."""
    from .. import conformance, plugins

    name, _ = plugins.resolve_target(a.target, "methods")
    return _print_report(conformance.check_method(name))


def _add_plugin_parsers(sub: Any) -> None:
    """``--plugin`` on the commands that use detectors or methods, and the two check commands."""
    for name in ("evaluate", "detectors", "train"):
        if name in sub.choices:
            sub.choices[name].add_argument("--plugin", action="append", metavar="FILE.py|MODULE", help=PLUGIN_HELP)
    d = sub.add_parser("check-detector", help="run the conformance battery the built-ins pass on one detector")
    d.add_argument("target", help="a registered name, module:Class or path.py:Class")
    d.add_argument("--plugin", action="append", metavar="FILE.py|MODULE", help=PLUGIN_HELP)
    d.set_defaults(fn=cmd_check_detector)
    m = sub.add_parser("check-method", help="run the conformance battery on one training method (a loss)")
    m.add_argument("target", help="a registered name, module:Class or path.py:Class")
    m.add_argument("--plugin", action="append", metavar="FILE.py|MODULE", help=PLUGIN_HELP)
    m.set_defaults(fn=cmd_check_method)
