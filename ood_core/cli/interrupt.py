"""Ctrl-C on the command line takes effect within seconds (docs/architecture.md, "Concurrency and cancellation").

Python runs a SIGINT handler only when the main thread next executes bytecode, so a model whose
forward is one long call into C++ (a TorchScript archive, a huge convolution) held Ctrl-C back
until that call returned (224 s on one model). Here the C-level handler also writes to a wakeup
pipe (``signal.set_wakeup_fd``), which a watcher thread reads at once: it cancels the process's
work (:func:`ood_core.jobs.cancel_process`, seen at the next batch), and when the main thread has
not unwound within ``GRACE_S`` (or at a second Ctrl-C) it prints the one interrupted line and
exits 130 without waiting for the call. Nothing half-written is left by that exit: cache entries,
chunks and saved files are written atomically, and locks held by the process are released by the OS.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

from .. import jobs
from .common import _fail

GRACE_S = 3.0
LINE = "interrupted; nothing was written for the unfinished step"
_said = threading.Lock()
_done = False
_installed = False


def say_interrupted() -> None:
    """Print the interrupted line (the main thread's path: every interrupt it handles says so)."""
    global _done
    with _said:
        _done = True
    _fail("\n" + LINE)


def _say_unless_said() -> None:
    """The watcher's line, unless the main thread has already said it and is only slow to exit."""
    global _done
    with _said:
        if _done:
            return
        _done = True
    _fail("\n" + LINE)


def install() -> bool:
    """Watch for Ctrl-C from a thread; False where that cannot be done (not the main thread, no pipes)."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (OSError, ValueError):  # pragma: no cover - an embedding that owns the wakeup fd
        return False
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # nohup-style runs keep ignoring it
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=_watch, args=(r,), name="sigint-watcher", daemon=True).start()
    _installed = True
    return True


def _watch(r: int) -> None:
    while SIGINT_BYTE not in os.read(r, 64):
        pass
    jobs.cancel_process()
    end = time.monotonic() + GRACE_S
    while (left := end - time.monotonic()) > 0:  # the main thread unwinds meanwhile; a second Ctrl-C ends the wait
        ready, _, _ = select.select([r], [], [], left)
        if ready and SIGINT_BYTE in os.read(r, 64):
            break
    _say_unless_said()
    sys.stderr.flush()
    os._exit(130)


SIGINT_BYTE = int(signal.SIGINT)
