"""``python -m ood_core``: the workbench headless (docs/architecture.md, "Command line").

This package owns every subcommand, one module per family (``evaluate``, ``data``, ``models``,
``train``, ``plugins``; ``common`` holds what they share): ``datasets``, ``detectors``, ``evaluate``, ``extract``,
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
from typing import Sequence

from ..errors import UserError, first_line
from ..jobs import Cancelled
from . import common as _common
from . import data, evaluate, interrupt, models, plugins, train
from .common import CLIError, _fail, _Parser
from .data import cmd_datasets, cmd_extract, cmd_register  # noqa: F401 - the commands, as before
from .evaluate import cmd_evaluate  # noqa: F401
from .models import cmd_archs, cmd_check_setup, cmd_detectors  # noqa: F401
from .plugins import _load_plugins, cmd_check_detector, cmd_check_method  # noqa: F401
from .train import cmd_train  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, each declared by its module's ``add_parsers``/``_add_*_parser``."""
    p = _Parser(prog="python -m ood_core", description="Gradient-OOD workbench, headless")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    data.add_parsers(sub)
    models.add_parsers(sub)
    evaluate.add_parsers(sub)
    train._add_train_parser(sub)
    plugins._add_plugin_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, restore saved state, dispatch: the one fault boundary of the command line.

    docs/architecture.md, "Errors": bad input, an interrupt and the machine's own failures (a full
    disk, a file that cannot be opened, memory we should have sized) each end in one line on stderr
    and exit 2 (130 for Ctrl-C); any other exception is a bug and keeps its traceback.
    """
    from .. import distributed as D
    from ..resources import configure_threads

    configure_threads()  # before torch loads OpenMP (docs/architecture.md, "Threads")
    if D.launched():  # torchrun: docs/architecture.md, "Distributed passes"
        return _main_distributed(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    interrupt.install()  # Ctrl-C within seconds, also during a long call into C++
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        _load_plugins(sys.argv[1:] if argv is None else argv)
        parser = build_parser()
        a = parser.parse_args(argv)
        if not getattr(a, "fn", None):
            parser.print_help()
            return 2
        from .. import workbench as wb
        wb.restore_saved()  # datasets and uploads of earlier sessions (skips are logged, never fatal)
        return a.fn(a)
    except CLIError as exc:
        _fail(first_line(exc))
        return 2
    except (KeyboardInterrupt, Cancelled):
        interrupt.say_interrupted()
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

    from .. import distributed as D

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
    _common._PREFIX = f"\nrank {me}: "  # a line of its own even below rank 0's progress bar
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
