"""What every subcommand shares: the one-line failure, the progress bar, the model-load options
(generated from ``models.load_options``), the subsample argument."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from ..errors import UserError


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
    from ..models.load_options import NAMES, load_kwargs

    return load_kwargs({k: getattr(a, k) for k in NAMES if getattr(a, k, None) is not None})


def _load(a: argparse.Namespace, progress):
    from .. import workbench as wb
    return wb.load_model(a.model, progress, **_model_kwargs(a))


def _subsample_args(items: list[str]) -> dict[str, float]:
    """``["id_train=12811", "ood_test=0.5"]`` -> ``{"id_train": 12811, "ood_test": 0.5}``: a whole number
    is a count, a number in (0, 1) a fraction (``experiment.sample_size`` refuses the rest)."""
    from ..experiment import sample_size

    out: dict[str, float] = {}
    for item in items:
        role, eq, val = item.partition("=")
        if not eq or not role.strip():
            raise CLIError(f"--subsample must look like ROLE=COUNT or ROLE=FRACTION (e.g. id_train=12811); got {item!r}")
        out[role.strip()] = sample_size(val, f"--subsample {role.strip()}")
    return out


def _names_arg(s: str, flag: str) -> list[str]:
    """A comma-separated list of names, each given once (a repeat would give duplicate rows)."""
    from ..experiment import check_unique

    names = _split_csv(s)
    check_unique(names, flag)
    return names


def _seed_arg(s: str) -> int:
    """``--seed``: a whole number in [0, 2**63 - 1] (argparse type)."""
    from ..experiment import check_seed

    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63-1; got {s[:40]!r}") from None
    try:
        return check_seed(v)
    except UserError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63-1; got {s[:40]}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' or a model file (.pt2, TorchScript, state_dict); "
                   "evaluate takes several, comma-separated, and reports their mean ± std")
    _add_load_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_load_options(p: argparse.ArgumentParser) -> None:
    """``--arch``, ``--input-size``, ``--mean``, … generated from their one declaration (models.load_options)."""
    from ..models.load_options import AUTO, LOAD_OPTIONS

    for k in LOAD_OPTIONS.knobs:
        kw: dict[str, Any] = {"dest": k.name, "help": k.help or None}
        if k.kind in ("floats", "ints"):
            kw.update(type=float if k.kind == "floats" else int, nargs="+")
        elif k.kind == "choice":
            picks = tuple(c for c in k.choices if c != AUTO)
            kw.update(choices=picks, type=type(picks[0]))
        p.add_argument("--" + k.name.replace("_", "-"), **kw)
