"""A training method is one file: a module dropped into ``ood_core/training/methods/`` registers a method
that the registry, the CLI and ``train`` know with no other edit (docs/architecture.md, "Where to add things").

The module below is written exactly as it would sit in the package (relative imports); the test puts
its folder on the package's path and runs the package's own discovery, then trains one short epoch
and checks the first step's loss against torch's own label-smoothed cross-entropy on the same batch.
"""
from __future__ import annotations

import sys

import pytest

NAME = "ls_ce_test"

MODULE = f'''
"""Label-smoothed cross-entropy, written from its formula: (1 - eps)·CE + eps·mean_i[-log softmax_i]."""
import torch

from ...knobs import Knob
from .base import TrainingMethod, register

SEEN = []  # (x, y) of every step, for the test


@register
class LabelSmoothing(TrainingMethod):
    name, title, terms = "{NAME}", "Label-smoothed cross-entropy", ("total", "ce")
    knobs = (Knob("eps", 0.1, 0.0, 0.5, help="smoothing mass spread uniformly over the classes"),)
    uses_aux = False

    def loss(self, trainer, x, y):
        SEEN.append((x.detach().clone(), y.clone()))
        logp = torch.log_softmax(trainer.forward(x), dim=1)
        eps = trainer.k["eps"]
        ce = -(1 - eps) * logp.gather(1, y[:, None]).mean() - eps * logp.mean()
        return {{"total": ce, "ce": ce}}
'''


@pytest.fixture
def one_file_method(tmp_path, monkeypatch):
    """The module in a folder of its own, found by the methods package's discovery; removed afterwards."""
    from ood_core.training import METHODS
    from ood_core.training import methods as pkg

    (tmp_path / f"{NAME}.py").write_text(MODULE)
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    before = list(METHODS)
    pkg._discover()
    try:
        yield sys.modules[f"{pkg.__name__}.{NAME}"]
    finally:
        METHODS.pop(NAME, None)
        sys.modules.pop(f"{pkg.__name__}.{NAME}", None)
        assert list(METHODS) == before


def test_a_method_in_one_file_registers_and_trains(one_file_method, tmp_path, default_bundle):
    import torch
    import torch.nn.functional as F

    from ood_core.cli import build_parser
    from ood_core.jobs import Job, JobContext
    from ood_core.knobs import KnobError
    from ood_core.training import METHODS, TrainConfig, knob_view, train

    assert list(METHODS)[-1] == NAME and METHODS[NAME].resolve()["eps"] == 0.1
    assert [k.name for k in knob_view(NAME, skip=("lr",)).knobs][-1] == "eps"  # the Train page's widgets
    assert build_parser().parse_args(["train", "--method", NAME]).method == NAME  # the CLI's choices
    with pytest.raises(KnobError, match=rf"{NAME}\.eps must be in"):
        METHODS[NAME].resolve({"eps": 2})

    job = Job(lambda ctx: None, "t")
    res = train(TrainConfig(NAME, init="default", epochs=1, seed=0, n_train=32, n_eval=50,
                            params={"batch_size": 16, "eps": 0.2}), ctx=JobContext(job), out_dir=tmp_path / "out")
    steps = [r for r in job.rows if r.get("kind") == "step"]
    assert len(steps) == 2 and res.meta["method"] == NAME and res.meta["complete"]
    assert res.meta["aux"] is None  # uses_aux = False: no outliers drawn
    x, y = one_file_method.SEEN[0]
    assert len(x) == 16 and x.requires_grad is False
    with torch.no_grad():  # the first step runs the init's weights: the default model itself
        want = F.cross_entropy(default_bundle.model(x.contiguous()), y, label_smoothing=0.2)
    assert steps[0]["total"] == pytest.approx(float(want), rel=1e-5) and steps[0]["ce"] == steps[0]["total"]
    assert steps[1]["total"] != steps[0]["total"]  # the update moved the weights
