"""One memory-budget rule (ood_core/resources.py; docs/architecture.md, "Memory"): the variable,
the default fraction of free memory, bad values, and the deprecated names of earlier releases."""
import os
import warnings
from pathlib import Path

import pytest

from ood_core import resources as R
from ood_core.errors import UserError
from ood_core.batching import forward_budget_bytes
from ood_core.gradients import engine, hooks, per_sample, subspace

CALLERS = {"forward": forward_budget_bytes, "grad_chunk": per_sample.memory_budget_bytes,
           "grad_fit": subspace.available_bytes, "grad_hold": engine.hold_budget_bytes}
ALL_VARS = [R.env_var(k) for k in R.KINDS] + list(R.DEPRECATED)


@pytest.fixture()
def clean_env(monkeypatch):
    """No budget variable set, 1000 MB free on every device, and the once-per-variable warnings reset."""
    for v in ALL_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(R, "free_bytes", lambda device="cpu": 1000 * 2**20)
    monkeypatch.setattr(R, "_warned", set())
    return monkeypatch


@pytest.mark.parametrize("kind", list(R.KINDS))
def test_default_is_the_kinds_fraction_of_free_memory(clean_env, kind):
    want = int(R.KINDS[kind][0] * 1000 * 2**20)
    assert R.memory_budget(kind) == want
    assert CALLERS[kind]("cpu") == want
    if kind == "grad_chunk":
        assert hooks.work_budget_bytes("cpu") == want  # the hook engine's chunk budget is the same one


@pytest.mark.parametrize("kind", list(R.KINDS))
def test_variable_sets_the_budget_in_megabytes(clean_env, kind):
    clean_env.setenv(f"OOD_MEM_{kind.upper()}_MB", "12.5")
    assert CALLERS[kind]("cpu") == int(12.5 * 2**20)
    clean_env.setenv(f"OOD_MEM_{kind.upper()}_MB", "  ")  # blank counts as unset
    assert CALLERS[kind]("cpu") == int(R.KINDS[kind][0] * 1000 * 2**20)


@pytest.mark.parametrize("bad", ["abc", "-5", "0", "inf", "nan", "1e400"])
def test_bad_value_is_a_user_error_naming_the_variable(clean_env, bad):
    clean_env.setenv("OOD_MEM_GRAD_FIT_MB", bad)
    with pytest.raises(UserError, match=rf"^OOD_MEM_GRAD_FIT_MB must be a positive number of megabytes; got '{bad}'"):
        subspace.available_bytes("cpu")


def test_bad_deprecated_value_names_the_old_variable(clean_env):
    clean_env.setenv("OOD_GRAD_WORK_MB", "lots")
    with pytest.warns(FutureWarning), pytest.raises(UserError, match="OOD_GRAD_WORK_MB must be"):
        hooks.work_budget_bytes("cpu")


@pytest.mark.parametrize("old,kind", list(R.DEPRECATED.items()))
def test_deprecated_names_still_work_with_one_warning(clean_env, old, kind):
    clean_env.setenv(old, "7")
    with pytest.warns(FutureWarning, match=rf"{old} is deprecated; set {R.env_var(kind)} instead"):
        assert R.memory_budget(kind) == 7 * 2**20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second read is silent
        assert R.memory_budget(kind) == 7 * 2**20
    clean_env.setenv(R.env_var(kind), "3")  # the new name wins
    assert R.memory_budget(kind) == 3 * 2**20


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown memory kind"):
        R.memory_budget("gpu_stuff")


def test_free_bytes_on_this_machine_is_positive():
    assert R.free_bytes("cpu") > 0


# --- issue 27, item 11: one parser for every numeric environment variable --------------------------

NUMERIC_VARS = {  # variable -> what reads it (the memory budgets are checked above)
    "OOD_MAX_DATASET_BYTES": lambda: __import__("ood_core.data.safety", fromlist=["x"]).max_dataset_bytes(),
    "OOD_MAX_MODEL_BYTES": lambda: __import__("ood_core.models.formats", fromlist=["x"]).max_model_bytes(),
    "OOD_NUM_WORKERS": lambda: __import__("ood_core.data.streamed", fromlist=["x"]).default_workers("cpu"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("var, bad", [(v, b) for v in ("OOD_MAX_DATASET_BYTES", "OOD_MAX_MODEL_BYTES")
                                      for b in ("abc", "-1", "inf", "nan", "1e400")] + [("OOD_NUM_WORKERS", "-1")])
def test_every_numeric_variable_refuses_a_bad_value_naming_it(clean_env, monkeypatch, var, bad):
    """``OOD_MAX_DATASET_BYTES=abc`` was ignored silently and ``-1`` printed "-0 MiB"; ``inf`` escaped
    as OverflowError; ``OOD_NUM_WORKERS=-1`` became 0 silently. Each now refuses naming the variable."""
    monkeypatch.setenv(var, bad)
    with pytest.raises(UserError, match=var):
        NUMERIC_VARS[var]()


@pytest.mark.hostile
def test_blank_means_unset_and_whole_numbers_are_required(monkeypatch):
    monkeypatch.setenv("OOD_X", "  ")
    assert R.env_number("OOD_X", 7) == 7
    monkeypatch.setenv("OOD_X", "2.5")
    with pytest.raises(R.EnvValueError, match="OOD_X must be a whole"):
        R.env_number("OOD_X", 7, "a whole number", integer=True)
    monkeypatch.setenv("OOD_X", "0")
    assert R.env_number("OOD_X", 7, integer=True, allow_min=True) == 0


@pytest.mark.hostile
@pytest.mark.parametrize("bad", ["inf", "abc", "0", str(10**9)])
def test_dist_timeout_is_refused_naming_the_variable(monkeypatch, bad):
    """``OOD_DIST_TIMEOUT_S=inf`` overflowed a timedelta under torchrun with a message naming nothing."""
    import torch

    from ood_core import distributed as D

    monkeypatch.setattr(D, "launched", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("not refused"))
    monkeypatch.setenv("OOD_DIST_TIMEOUT_S", bad)
    with pytest.raises(UserError, match="OOD_DIST_TIMEOUT_S must be a positive number of seconds"):
        D.init()


@pytest.mark.hostile
def test_cache_dir_blank_is_unset_and_a_file_is_refused(tmp_path, monkeypatch):
    """``OOD_CACHE_DIR=`` put the cache in the current folder; a file there gave a bare "File exists"."""
    from ood_core import cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OOD_CACHE_DIR", "")
    try:
        assert cache.cache_dir() == Path(cache._DEFAULT_DIR)
        f = tmp_path / "afile"
        f.write_text("x")
        for given, why in ((f, "is a file"), (f / "sub", "lies under")):
            monkeypatch.setenv("OOD_CACHE_DIR", str(given))
            with pytest.raises(UserError, match=f"OOD_CACHE_DIR={given} {why}"):
                cache.cache_dir()
    finally:
        cache.reset()


def test_thread_policy_fills_in_only_what_the_user_left_unset():
    env = {"OMP_NUM_THREADS": "7"}
    done = R.configure_threads(env)
    assert done == {"OMP_WAIT_POLICY": "passive"} and env["OMP_NUM_THREADS"] == "7"
    env = {"OMP_WAIT_POLICY": " "}
    R.configure_threads(env)
    assert env == {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": str(R.available_cpus())}
    assert 1 <= R.available_cpus() <= (os.cpu_count() or 1)
