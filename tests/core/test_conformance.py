"""check-detector / check-method (ood_core.conformance through the CLI): built-ins pass; deliberately broken
detectors fail with a message naming the fault."""
from __future__ import annotations

import textwrap

import pytest

from ood_core import cli, plugins

BROKEN = textwrap.dedent('''
    import numpy as np
    from ood_core.api import Detector, Knob, logsumexp, register_detector

    class _Base(Detector):
        title = "broken on purpose"
        knobs = (Knob("T", 1.0, 0.5, 4.0, help="temperature"),)

    @register_detector
    class Inverted(_Base):
        name = "broken_inverted"
        def _score(self, ext, T):
            return -T * logsumexp(ext.logits, T=T)

    @register_detector
    class Noisy(_Base):
        name = "broken_noisy"
        def _score(self, ext, T):
            return T * logsumexp(ext.logits, T=T) + np.random.rand(len(ext))

    @register_detector
    class NanOnConstant(_Base):
        name = "broken_nan_constant"
        def _score(self, ext, T):
            z = np.asarray(ext.logits, np.float64)
            return (z.max(1) - z.mean(1)) / z.std(1) * T

    @register_detector
    class StaleMemo(_Base):
        name = "broken_stale_memo"
        def _score(self, ext, T):
            return ext.memo("broken_energy", lambda: T * logsumexp(ext.logits, T=T))  # key ignores T
''')


@pytest.fixture
def broken_file(tmp_path):
    f = tmp_path / "broken_detectors.py"
    f.write_text(BROKEN)
    yield f
    for i in [i for i in plugins.plugins() if i.spec.startswith(str(f))]:
        plugins.forget(i)


@pytest.mark.parametrize("cls, check, words", [
    ("Inverted", "orientation", "scores are inverted"),
    ("Noisy", "scores", "determinism"),
    ("NanOnConstant", "constant_and_nan_inputs", "constant input"),
    ("StaleMemo", "cache_keys", "ignores T"),
])
def test_check_detector_names_the_fault(broken_file, capsys, default_bundle, cls, check, words):
    rc = cli.main(["check-detector", f"{broken_file}:{cls}"])
    out = capsys.readouterr().out
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert rc == 1 and any(ln.startswith(f"FAIL {check}:") and words in ln for ln in fails), out


@pytest.mark.parametrize("name", ["energy", "knn", "odin"])
def test_check_detector_passes_built_ins(name, capsys, default_bundle):
    assert cli.main(["check-detector", name]) == 0, capsys.readouterr().out


def test_check_detector_bad_target_is_exit_2(capsys):
    assert cli.main(["check-detector", "no_such_detector"]) == 2
    assert "unknown detector 'no_such_detector'" in capsys.readouterr().err


BROKEN_METHOD = textwrap.dedent('''
    import numpy as np, torch
    from ood_core.api import TrainingMethod, register_method

    @register_method
    class NoisyCE(TrainingMethod):
        name, title, terms, uses_aux = "noisy_ce_test", "CE plus unseeded noise", ("total",), False
        def loss(self, trainer, x, y):
            ce = torch.nn.functional.cross_entropy(trainer.forward(x), y)
            return {"total": ce + float(np.random.rand())}
''')


def test_check_method_passes_ce_and_fails_a_nondeterministic_loss(tmp_path, capsys, default_bundle):
    assert cli.main(["check-method", "ce"]) == 0, capsys.readouterr().out
    f = tmp_path / "noisy_method.py"
    f.write_text(BROKEN_METHOD)
    try:
        rc = cli.main(["check-method", f"{f}:NoisyCE"])
        out = capsys.readouterr().out
        assert rc == 1 and "FAIL method_determinism: determinism" in out, out
    finally:
        for i in [i for i in plugins.plugins() if i.spec == str(f)]:
            plugins.forget(i)
