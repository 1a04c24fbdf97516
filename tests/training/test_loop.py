"""The training loop: a 2-epoch smoke run per method (reference presets), a 1-epoch run of each earlier
preset, cancellation, divergence, the CLI, presets and the penalty's batch-norm mode.

Runs use 64 ID training images, batch 16 (4 steps an epoch) and 100 evaluation images,
fine-tuning the embedded default (trained once per test cache).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ood_core.jobs import Cancelled, Job, JobContext
from ood_core.knobs import KnobError
from ood_core.training import METHODS, TrainConfig, Trainer, TrainingDiverged, TrainingError, sampling, train
from ood_core.training import losses as L

SMALL = dict(n_train=64, n_eval=100)


def _cfg(method: str, epochs: int = 2, **params) -> TrainConfig:
    return TrainConfig(method, init="default", epochs=epochs, seed=0, params={"batch_size": 16, **params}, **SMALL)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def runs(out, default_bundle):
    """One 2-epoch run per method, shared by the checks below."""
    return {m: train(_cfg(m), out_dir=out) for m in METHODS}


@pytest.mark.parametrize("method", list(METHODS))
def test_smoke_two_epochs(runs, method):
    res = runs[method]
    meta = res.meta
    assert res.path.exists() and res.path.with_suffix(".json").exists()
    assert meta["method"] == method and meta["complete"] and meta["epochs_done"] == 2
    assert meta["label"].startswith(f"{method} · fine-tuned default · 2 ep · seed 0")
    if METHODS[method].presets:  # the form that ran: label, sidecar, the job's setup row
        assert "· reference form" in meta["label"] and meta["form"] == "reference"
        assert meta["training"]["params"]["preset"] == "reference"
    else:
        assert meta["form"] is None
    steps = meta["history"]["steps"]
    assert len(steps) == 2 * 4  # drop_last: 64 // 16 steps an epoch
    for term in METHODS[method].terms:  # every declared term is logged every step and finite
        assert all(math.isfinite(r[term]) for r in steps), term
    epochs = meta["history"]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(0 <= e["accuracy"] <= 1 and 0 <= e["auroc"] <= 1 for e in epochs)
    cfg = meta["training"]
    assert cfg["method"] == method and cfg["seed"] == 0 and cfg["epochs"] == 2
    assert set(cfg["params"]) == {k.name for k in METHODS[method].all_knobs}  # full config, defaults included


@pytest.mark.parametrize("method", ["greg", "greg_plus", "gq"])
def test_reference_presets_keep_every_term_live(runs, method):
    steps = runs[method].meta["history"]["steps"]
    for term in METHODS[method].terms[1:]:
        assert any(r[term] > 0 for r in steps), f"{term} never fired"
        assert len({r[term] for r in steps}) > 1, f"{term} is constant"
    if method != "gq":
        assert all({"ce", "ls", "grad", "frac_in", "frac_aux", "lr", "grad_norm"} <= set(r) for r in steps)
        assert runs[method].meta["penalty_mode"] == "train mode, no batch norm (rows independent)"


@pytest.fixture(scope="module")
def earlier_runs(out, default_bundle):
    """One 1-epoch run of each earlier preset."""
    return {m: train(_cfg(m, epochs=1, preset="earlier"), out_dir=out) for m in ("greg", "greg_plus", "gq")}


@pytest.mark.parametrize("method", ["greg", "greg_plus", "gq"])
def test_earlier_presets_smoke(earlier_runs, method):
    meta = earlier_runs[method].meta
    assert meta["complete"] and meta["form"] == "earlier"
    assert meta["label"].startswith(f"{method} · fine-tuned default · 1 ep · seed 0 · earlier form")
    assert "preset" not in meta["label"] and "penalty=" not in meta["label"]  # the preset's own values aren't "extra"
    params = meta["training"]["params"]
    assert params == METHODS[method].resolve({"batch_size": 16, "preset": "earlier"})
    for term in METHODS[method].terms:
        assert all(math.isfinite(r[term]) for r in meta["history"]["steps"]), term


def test_preset_defaults_are_the_documented_ones():
    """docs/methods.md, "Training methods": the reference presets follow train_sea.py and learning_odin_trainer.py."""
    greg = METHODS["greg"].resolve()
    assert {k: greg[k] for k in ("preset", "penalty", "lam_s", "lam_grad", "m_in", "m_out", "norm")} == \
        {"preset": "reference", "penalty": "reference", "lam_s": 0.1, "lam_grad": 1.0, "m_in": -25.0, "m_out": -7.0,
         "norm": "l2"}
    plus = METHODS["greg_plus"].resolve()
    assert {k: plus[k] for k in ("penalty", "selection", "pool_factor", "drop_lowest", "two_way", "lam_s",
                                 "lam_grad")} == \
        {"penalty": "reference", "selection": "reference", "pool_factor": 6.0, "drop_lowest": 0, "two_way": True,
         "lam_s": 0.1, "lam_grad": 1.0}  # the published commands' selection (test_recipes.py: code_defaults)
    assert int(plus["pool_factor"] * 64) == 384 and sampling.N_INIT == 3
    gq = METHODS["gq"].resolve()
    assert {k: gq[k] for k in ("form", "operand", "lam")} == {"form": "batch", "operand": "logits", "lam": 1e-6}
    # The earlier readings, by name.
    assert METHODS["greg"].resolve({"preset": "earlier"})["penalty"] == "per_sample"
    early = METHODS["greg_plus"].resolve({"preset": "earlier"})
    assert (early["selection"], early["penalty"], early["drop_lowest"]) == ("split", "per_sample", 0)
    early = METHODS["gq"].resolve({"preset": "earlier"})
    assert (early["form"], early["operand"], early["lam"]) == ("per_sample", "softmax", 1.0)
    # An explicit knob wins over its preset; the form then names the mix.
    mixed = METHODS["greg_plus"].resolve({"preset": "earlier", "selection": "reference"})
    assert METHODS["greg_plus"].form(mixed) == "penalty=per_sample, selection=reference"
    assert METHODS["ce"].form(METHODS["ce"].resolve()) is None


def test_saved_experiments_keep_their_form(tmp_path):
    """A version-1 config (before the presets) reproduces what ran then; gq's old form name is accepted."""
    old = {"version": 1, "method": "greg_plus", "params": {"pool_factor": 8, "lr": 0.001}}
    cfg = TrainConfig.from_dict(old).resolved()
    assert (cfg.params["selection"], cfg.params["penalty"], cfg.params["drop_lowest"]) == ("split", "per_sample", 0)
    gq = TrainConfig.from_dict({"version": 1, "method": "gq", "params": {"form": "sample", "operand": "softmax",
                                                                          "lam": 1.0}}).resolved()
    assert gq.params["form"] == "per_sample" and METHODS["gq"].form(gq.params) == "earlier"
    now = TrainConfig("greg").to_dict()
    assert now["version"] == 3 and TrainConfig.from_dict(now).resolved().params["penalty"] == "reference"


def test_training_runs_channels_last_and_checkpoints_load_into_plain_models(runs, default_bundle):
    import torch

    from ood_core.models import SmallCNN
    from ood_core.models.checkpoints import load_checkpoint

    tr = Trainer(_cfg("greg"))
    assert tr.model.features[2].weight.is_contiguous(memory_format=torch.channels_last)
    assert tr.sample_independent  # no batch norm: ID and aux rows run as separate B-row passes
    plain = SmallCNN()
    plain.load_state_dict(torch.load(runs["greg"].path, weights_only=True))
    assert plain.features[2].weight.is_contiguous()  # the checkpoint imposes no layout
    loaded = load_checkpoint(runs["greg"].path).model
    assert loaded.features[2].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), plain.eval()(x), rtol=1e-5, atol=1e-5)  # same values, either layout


def test_checkpoint_loads_and_config_reproduces_it(runs, out, tmp_path):
    from ood_core.models.checkpoints import load_checkpoint

    first = runs["greg_plus"]
    b1 = load_checkpoint(first.path)
    assert b1.info["method"] == "greg_plus"
    # The sidecar alone reproduces the weights (k-means selection and augmentation included).
    again = train(TrainConfig.from_dict(json.loads(first.path.with_suffix(".json").read_text())), out_dir=tmp_path)
    assert again.path.name == first.path.name
    assert load_checkpoint(again.path).fingerprint == b1.fingerprint


def test_cancel_keeps_last_good_checkpoint(out, default_bundle):
    job = Job(lambda ctx: None, "t")
    ctx = JobContext(job)
    trainer = Trainer(_cfg("energy_oe", epochs=3), ctx=ctx, out_dir=out / "cancel")

    def stop_in_epoch_two(frac, msg):
        if trainer.step_no == 6:  # two steps into the second epoch
            job.cancel()

    trainer.rep.cb = stop_in_epoch_two
    with pytest.raises(Cancelled):
        trainer.run()
    meta = json.loads(trainer.path.with_suffix(".json").read_text())
    assert meta["epochs_done"] == 1 and not meta["complete"]
    assert "1/3 ep, stopped" in meta["label"]
    assert job.info["checkpoint"] == str(trainer.path)
    assert any(r.get("kind") == "step" for r in job.rows)  # live rows reached the job


def test_a_training_job_whose_session_has_gone_stops_and_keeps_its_checkpoint(out, default_bundle, monkeypatch):
    """The Train page passes its session's probe unless "Keep training after this tab closes" is
    ticked (docs/architecture.md, "Concurrency and cancellation"): the run stops at its next step once
    the session has been gone for the grace period, and the finished epoch's checkpoint stays."""
    import time

    from ood_core import facade as fc
    from ood_core import jobs

    monkeypatch.setattr(jobs, "OWNER_GRACE_S", 0.0)
    monkeypatch.setattr(fc, "job_fn", lambda cfg: (lambda ctx: train(cfg, ctx, out_dir=out / "gone")))
    alive = {"v": True}
    job = fc.JOBS.get(fc.start_training(_cfg("energy_oe", epochs=30), owner_alive=lambda: alive["v"]))
    t0 = time.monotonic()
    while not job.info.get("checkpoint") and job.active and time.monotonic() - t0 < 120:
        time.sleep(0.05)  # the first epoch's checkpoint is written
    alive["v"] = False  # the tab closed
    job.wait(60)
    assert job.state == "cancelled" and "session" in job.snapshot()["message"], job.snapshot()
    meta = json.loads(Path(job.info["checkpoint"]).with_suffix(".json").read_text())
    assert 1 <= meta["epochs_done"] < 30 and not meta["complete"]
    kept = fc.JOBS.get(fc.start_training(_cfg("energy_oe", epochs=1)))  # no probe: nothing watches it
    kept.wait(120)
    assert kept.state == "done", kept.error


def test_nan_names_the_term_and_step(monkeypatch, out, default_bundle):
    calls = {"n": 0}
    real = L.oe_loss

    def flaky(logits):
        calls["n"] += 1
        return real(logits) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(L, "oe_loss", flaky)
    with pytest.raises(TrainingDiverged) as err:
        train(_cfg("oe"), out_dir=out / "nan")
    msg = str(err.value)
    assert "the oe term became NaN at step 3" in msg and "lower the learning rate" in msg
    assert "oe.lr=0.001" in msg and "\n" not in msg


def test_collapsed_cross_entropy_stops_the_job(monkeypatch, out, default_bundle):
    """A CE far above a uniform guess's ln C stops the job, though it is nowhere near MAX_LOSS."""
    calls = {"n": 0}
    real = L.ce_loss

    def collapsing(logits, labels):
        calls["n"] += 1
        return real(logits, labels) + (40.0 if calls["n"] >= 2 else 0.0)  # 40 > 10·ln 10 ≈ 23

    monkeypatch.setattr(L, "ce_loss", collapsing)
    with pytest.raises(TrainingDiverged) as err:
        train(_cfg("ce"), out_dir=out / "collapse")
    msg = str(err.value)
    assert "the ce term (above 23" in msg and "collapsed classifier" in msg and "at step 2 " in msg
    assert "exploding" in msg and "ce.lr=0.001" in msg


def test_huge_lr_explodes_with_a_message(out, default_bundle):
    with pytest.raises(TrainingDiverged, match=r"became .* at step \d+ .*lower the learning rate"):
        train(_cfg("energy_oe", epochs=3, lr=10.0), out_dir=out / "boom")


def test_bad_input_messages(default_bundle):
    with pytest.raises(TrainingError, match="unknown training method"):
        TrainConfig("nope").resolved()
    with pytest.raises(KnobError, match=r"greg\.lr must be in"):  # knobs.resolve's own error, not re-wrapped
        TrainConfig("greg", params={"lr": 100}).resolved()
    with pytest.raises(KnobError, match="has no knob"):
        TrainConfig("ce", params={"lam": 1}).resolved()
    with pytest.raises(TrainingError, match="no model file at"):
        TrainConfig("ce", init="/no/such.pt").resolved()
    with pytest.raises(TrainingError, match="epochs"):
        TrainConfig("ce", epochs=0).resolved()
    with pytest.raises(TrainingError, match=r"gq\.form=batch, gq\.operand=softmax: .*identically 1"):
        TrainConfig("gq", params={"operand": "softmax"}).resolved()  # the reference form with softmax operands
    with pytest.raises(TrainingError, match="two_way applies to selection=reference"):
        TrainConfig("greg_plus", params={"preset": "earlier", "two_way": True}).resolved()
    with pytest.raises(TrainingError, match="drop_lowest"):
        Trainer(_cfg("greg_plus", pool_factor=1.5))  # 24 candidates less 16 dropped < B = 16
    assert METHODS["greg_plus"].defaults("scratch")["schedule"] == "step"


def test_cli_train_prints_path_last_and_model_path_evaluates(capsys, out, default_bundle):
    from ood_core.cli import main

    rc = main(["train", "--method", "ce", "--epochs", "1", "--n-train", "64", "--n-eval", "100",
               "--param", "ce.batch_size=32", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    path = Path(lines[-1])
    try:
        assert path.exists() and path.suffix == ".pt"
        from ood_core import workbench as wb
        labels = {m["spec"]: m["label"] for m in wb.list_models()}
        assert labels[str(path)].startswith("ce · fine-tuned default · 1 ep")  # in the model picker
        rc = main(["evaluate", "--model", str(path), "--id", "mnist", "--ood", "gaussian", "--detectors", "energy",
                   "--json", "--quiet"])
        assert rc == 0
        res = json.loads(capsys.readouterr().out)
        assert res["model"] == str(path) and 0 <= res["results"][0]["auroc"] <= 1
        # The sidecar alone reproduces the run from the shell too: same file, same weights.
        from ood_core.models.checkpoints import load_checkpoint
        fp = load_checkpoint(path).fingerprint
        assert main(["train", "--config", str(path.with_suffix(".json")), "--quiet"]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == str(path)
        assert load_checkpoint(path).fingerprint == fp
    finally:
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--method", "ce", "--param", "greg.lr=0.1"], "--param names method 'greg'"),
    (["train", "--method", "ce", "--param", "ce.lr=100"], "ce.lr must be in"),
    (["train", "--method", "ce", "--epochs", "0"], "epochs must be"),
    (["train", "--method", "ce", "--init", "/no/such.pt"], "no model file at"),
    (["train"], "train needs --method"),
    (["train", "--method", "magic"], "invalid choice"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, needle):
    from ood_core.cli import main

    assert main(argv + ["--quiet"] if argv[-1] != "magic" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_fine_tune_a_trained_checkpoint(runs, out):
    parent = runs["ce"].path
    res = train(TrainConfig("oe", init=str(parent), epochs=1, params={"batch_size": 16}, **SMALL), out_dir=out)
    assert res.meta["label"].startswith(f"oe · fine-tuned {parent.stem} · 1 ep")
    assert res.meta["training"]["init"] == str(parent.resolve())
    from ood_core.models.checkpoints import load_checkpoint
    assert res.meta["init_fingerprint"] == load_checkpoint(parent).fingerprint
    # A file without a sidecar loads as the workbench loads any model file (its architecture detected),
    # from the same weights.
    from ood_core.models.files import load_model_file
    bare = out / "bare.pt"
    bare.write_bytes(parent.read_bytes())
    tr = Trainer(TrainConfig("ce", init=str(bare), epochs=1, **SMALL))
    assert tr.base_meta["arch"] == "small_cnn" and tr.init_fp == load_model_file(bare).fingerprint


def test_evaluate_against_sklearn(default_bundle):
    """Per-epoch metrics: ID accuracy and the Energy score's AUROC (higher = ID), recomputed independently."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    tr = Trainer(_cfg("ce"))
    got = tr.evaluate()
    with torch.no_grad():  # the init's weights, untouched: the default model itself
        lt, lv = default_bundle.model(tr.x_test[:]).double(), default_bundle.model(tr.x_val[:]).double()
    s_in, s_out = torch.logsumexp(lt, 1).numpy(), torch.logsumexp(lv, 1).numpy()
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    assert len(s_in) == len(s_out) == 100
    assert got["accuracy"] == pytest.approx(float((lt.argmax(1) == tr.y_test).double().mean()), abs=1e-12)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, np.r_[s_in, s_out]), abs=1e-6)
    assert got["fpr95"] == pytest.approx(float(np.mean(s_out >= np.percentile(s_in, 5))), abs=0.02)
    assert 0.5 < got["auroc"] < 1.0  # the sign: ID scores higher


def test_two_greg_jobs_in_threads_train_as_if_alone(default_bundle):
    """The rerouted convolutions (a per-thread torch-function mode, a per-use switch) don't leak between jobs."""
    import threading

    import torch

    from ood_core.models import state_fingerprint

    def run(seed: int, out: dict) -> None:
        tr = Trainer(_cfg("greg"))
        tr.model.train()
        perm = torch.randperm(len(tr.x_train), generator=torch.Generator().manual_seed(seed))
        for i in range(4):
            tr.step(perm[i * 16:(i + 1) * 16])
        out[seed] = state_fingerprint(tr.model)

    alone: dict = {}
    run(0, alone)
    run(1, alone)
    together: dict = {}
    threads = [threading.Thread(target=run, args=(s, together)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and alone[0] != alone[1]


def test_cli_param_picks_the_form_and_says_so(capsys, tmp_path, default_bundle):
    from ood_core.cli import main

    rc = main(["train", "--method", "greg", "--epochs", "1", "--n-train", "32", "--n-eval", "50",
               "--param", "greg.batch_size=16", "--param", "greg.penalty=per_sample", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    path = Path(lines[-1])
    try:
        assert "· earlier form" in lines[-2] and "penalty=per_sample" in lines[-2]
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["form"] == "earlier" and meta["training"]["params"]["penalty"] == "per_sample"
        assert meta["penalty_mode"].startswith("train mode")
    finally:
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)


def _tiny_bn_arch(num_classes: int = 10, in_channels: int = 1):
    from torch import nn

    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, num_classes))


def test_batchnorm_model_penalty_follows_train_mode_and_equals_the_jacobian(monkeypatch, default_bundle):
    """A model with batch norm: the step's penalty is train_sea.py's, the Jacobian of the batch scalar
    computed in train mode (batch statistics couple the rows), and the job says which mode ran."""
    import torch

    from ood_core.jobs import Job, JobContext
    from ood_core.models import ARCHITECTURES

    monkeypatch.setitem(ARCHITECTURES, "tiny_bn", _tiny_bn_arch)
    job = Job(lambda ctx: None, "t")
    tr = Trainer(TrainConfig("greg", init="scratch", arch="tiny_bn", epochs=1, seed=0, n_train=32, n_eval=50,
                             params={"batch_size": 16, "m_in": -2.3, "m_out": -2.3}), ctx=JobContext(job))
    assert not tr.sample_independent and "rows coupled" in tr.penalty_mode
    seen = {}
    real = L.gradient_penalty

    def spy(model_fn, x, e, is_aux, m_in, m_out, norm, **kw):
        out = real(model_fn, x, e, is_aux, m_in, m_out, norm, **kw)
        assert kw["rows_independent"] is False and tr.model.training

        def phi(xx):
            en = L.free_energy(model_fn(xx))
            return -torch.relu(m_in - en[~is_aux]).mean() + torch.relu(en[is_aux] - m_out).mean()

        jac = torch.autograd.functional.jacobian(phi, x.detach())
        seen["ref"] = float(jac.flatten(1).norm(dim=1).mean())
        seen["got"] = float(out[0].detach())
        seen["mask"] = L.detected_mask(e, is_aux, m_in, m_out)
        return out

    monkeypatch.setattr(L, "gradient_penalty", spy)
    tr.model.train()
    tr.step(torch.arange(16))
    assert seen["mask"].any() and not seen["mask"].all()
    assert seen["got"] == pytest.approx(seen["ref"], rel=1e-4)
    monkeypatch.setattr(L, "gradient_penalty", real)
    res = tr.run()
    assert "rows coupled" in res.meta["penalty_mode"] and "batch-norm" in res.meta["label"]
    setup = [{k: v for k, v in r.items() if k != "t"} for r in job.rows if r.get("kind") == "setup"]
    assert setup == [{"kind": "setup", "method": "greg", "form": "reference", "preset": "reference",
                      "recipe": "default", "optimizer": "SGD", "penalty_mode": tr.penalty_mode,
                      "augmentation": "shift: random shifts of up to 2 pixels"}]
    res.path.unlink()
    res.path.with_suffix(".json").unlink()
