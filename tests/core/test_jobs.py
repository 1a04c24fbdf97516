"""Background jobs: progress, live rows, cancel, one-line errors."""
import threading
import time

import pytest

from ood_core.jobs import JOBS, Cancelled, Job


def _wait(job, timeout=10.0):
    job.wait(timeout)
    assert not job.active, job.snapshot()


def test_progress_rows_and_result():
    gate = threading.Event()

    def work(ctx):
        ctx.progress(0.5, "half way")
        ctx.log(step=1, loss=0.25)
        ctx.set(phase="x")
        gate.wait(5)
        return 42

    job = JOBS.submit(work, "demo")
    for _ in range(200):
        if job.snapshot()["fraction"] == 0.5:
            break
        time.sleep(0.01)
    snap = job.snapshot()
    assert snap["state"] == "running" and snap["message"] == "half way" and snap["eta"] is not None
    assert snap["rows"][0]["loss"] == 0.25 and snap["info"] == {"phase": "x"}
    assert JOBS.get(job.id) is job
    gate.set()
    _wait(job)
    assert job.state == "done" and job.result == 42 and job.fraction == 1.0


def test_cancel_stops_at_the_next_check():
    started = threading.Event()

    def work(ctx):
        started.set()
        while True:
            ctx.progress(0.1, "looping")
            time.sleep(0.01)

    job = Job(work, "loop").start()
    assert started.wait(5)
    job.cancel()
    _wait(job)
    assert job.state == "cancelled" and job.snapshot()["message"] == "stopped by the user"


def test_failure_is_one_line_with_detail_kept():
    def work(ctx):
        raise ValueError("bad knob\nsecond line")

    job = Job(work, "fails").start()
    _wait(job)
    assert job.state == "failed" and job.error == "ValueError: bad knob"
    assert "Traceback" in job.error_detail


def test_check_cancel_raises():
    job = Job(lambda ctx: None, "x")
    from ood_core.jobs import JobContext
    ctx = JobContext(job)
    job.cancel()
    with pytest.raises(Cancelled):
        ctx.check_cancel()


def test_run_as_job_returns_quick_work_at_once_cancels_superseded_and_forgets(monkeypatch):
    """ui.common.run_as_job as the Maps page uses it: work that ends within ``wait_s`` comes back in
    the same run; a job under another key with the ``supersedes`` prefix is cancelled; ``forget``
    drops the finished job from the registry."""
    from ui import common

    session: dict = {}
    monkeypatch.setattr(common.state, "setdefault", lambda name, value: session.setdefault(name, value))
    stop = threading.Event()

    def slow(ctx):
        while not stop.wait(0.01):
            ctx.check_cancel()

    slow_job = JOBS.submit(slow, "slow map")
    session["job_ids"] = {"map:a": slow_job.id, "other:x": "kept"}
    try:
        got = common.run_as_job("map:b", lambda ctx: 42, "quick map", wait_s=5.0, supersedes="map:", forget=True)
        assert got == 42
        _wait(slow_job)
        assert slow_job.state == "cancelled"
        assert session["job_ids"] == {"other:x": "kept"}  # the superseded and the finished one are gone
        assert all(j.title != "quick map" for j in JOBS._jobs.values())  # forgotten: its result is not held
    finally:
        stop.set()
