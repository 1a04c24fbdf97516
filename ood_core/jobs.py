"""Long work off the UI thread: progress, ETA, cancel, errors.

A :class:`Job` runs a function in a daemon thread. The function receives a
:class:`JobContext` to report progress (``ctx.progress(frac, msg)``), publish live
metrics (``ctx.log(step=..., loss=...)``) and check for cancellation
(``ctx.check_cancel()`` raises :class:`Cancelled`). The Streamlit pages poll
``job.snapshot()``; the CLI calls the same work directly with a progress callback.

docs/architecture.md, "Concurrency and cancellation": long model work also calls
:func:`checkpoint` between batches, which raises :class:`Cancelled` when the job running on this
thread was cancelled, when the session that started it has gone (its ``owner_alive`` probe says
so for ``OWNER_GRACE_S``), or when the process was interrupted (:func:`cancel_process`, the CLI's Ctrl-C).
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable


class Cancelled(Exception):
    """Raised inside a job when the user asked it to stop."""


# A session that stops answering for this long is gone (a reload or a short network drop is not).
OWNER_GRACE_S = 10.0
_process_cancel = threading.Event()
_current = threading.local()


def cancel_process() -> None:
    """Cancel all work of this process at its next :func:`checkpoint` (the CLI's Ctrl-C)."""
    _process_cancel.set()


def checkpoint() -> None:
    """Raise :class:`Cancelled` when the work on this thread should stop; cheap, call it between batches."""
    if _process_cancel.is_set():
        raise Cancelled()
    job = getattr(_current, "job", None)
    if job is not None and job.should_stop():
        raise Cancelled()


@dataclass
class JobContext:
    job: "Job"

    def progress(self, frac: float, message: str = "") -> None:
        self.job._progress(frac, message)  # noqa: SLF001
        self.check_cancel()

    def log(self, **row: Any) -> None:
        """Append one row of live metrics (e.g. per step or per epoch)."""
        with self.job._lock:  # noqa: SLF001
            self.job.rows.append({"t": time.time() - self.job.started, **row})

    def set(self, **info: Any) -> None:
        with self.job._lock:  # noqa: SLF001
            self.job.info.update(info)

    def check_cancel(self) -> None:
        if self.job.should_stop() or _process_cancel.is_set():
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self.job._cancel.is_set()  # noqa: SLF001


@dataclass
class Job:
    """One unit of background work. States: queued, running, done, failed, cancelled."""

    fn: Callable[[JobContext], Any]
    title: str = "job"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    state: str = "queued"
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str = ""
    error_detail: str = ""
    started: float = 0.0
    finished: float = 0.0
    rows: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # Whether the session that started the job is still there (None: no owner to watch, e.g. the CLI).
    owner_alive: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_gone_at: float | None = None
        self._owner_checked = 0.0
        self.cancel_reason = ""

    def should_stop(self) -> bool:
        """Whether the job was cancelled or its owner has been gone for ``OWNER_GRACE_S`` (then it cancels)."""
        if self._cancel.is_set():
            return True
        if self.owner_alive is None:
            return False
        now = time.monotonic()
        if now - self._owner_checked < 0.25:  # the probe asks the server: not on every batch of a fast loop
            return False
        self._owner_checked = now
        try:
            alive = bool(self.owner_alive())
        except Exception:  # noqa: BLE001 - a probe that fails cannot tell: keep working
            alive = True
        if alive:
            self._owner_gone_at = None
            return False
        if self._owner_gone_at is None:
            self._owner_gone_at = now
        if now - self._owner_gone_at >= OWNER_GRACE_S:
            self.cancel_reason = "its browser session has gone"
            self._cancel.set()
            return True
        return False

    def _progress(self, frac: float, message: str) -> None:
        with self._lock:
            self.fraction = float(max(0.0, min(1.0, frac)))
            if message:
                self.message = message

    def start(self) -> "Job":
        self.started = time.time()
        self.state = "running"
        self._thread = threading.Thread(target=self._run, name=f"job-{self.id}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        _current.job = self  # checkpoint() in the work below finds this job
        try:
            self.result = self.fn(JobContext(self))
            with self._lock:
                self.state, self.fraction = "done", 1.0
        except Cancelled:
            with self._lock:
                self.state = "cancelled"
                self.message = f"stopped: {self.cancel_reason}" if self.cancel_reason else "stopped by the user"
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            with self._lock:
                self.state = "failed"
                self.error = _one_line(exc)
                self.error_detail = traceback.format_exc()
        finally:
            _current.job = None
            self.finished = time.time()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> "Job":
        if self._thread is not None:
            self._thread.join(timeout)
        return self

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def eta_seconds(self) -> float | None:
        if self.state != "running" or self.fraction <= 0.01:
            return None
        el = time.time() - self.started
        return el * (1 - self.fraction) / self.fraction

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id, "title": self.title, "state": self.state, "fraction": self.fraction,
                "message": self.message, "error": self.error, "eta": self.eta_seconds,
                "elapsed": (self.finished or time.time()) - self.started if self.started else 0.0,
                "rows": list(self.rows), "info": dict(self.info),
            }


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


class JobRegistry:
    """Process-wide list of jobs so a page re-run finds the job it started."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[JobContext], Any], title: str,
               owner_alive: Callable[[], bool] | None = None) -> Job:
        """Start ``fn`` as a job; ``owner_alive`` tells whether the session that asked is still there
        (the job cancels itself once it has been gone for ``OWNER_GRACE_S``)."""
        job = Job(fn, title, owner_alive=owner_alive)
        with self._lock:
            self._jobs[job.id] = job
        return job.start()

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        """Drop a finished job (and the result it holds); an active one is kept."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and not job.active:
                del self._jobs[job_id]


JOBS = JobRegistry()
