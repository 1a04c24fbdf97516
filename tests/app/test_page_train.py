"""AppTest: the Train page loads, launches a tiny job, shows progress, and hands the checkpoint to the picker."""
from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def _start_short_job(at: AppTest, method: str):
    """Set a one-epoch job on 32 images (batch 16) for ``method``'s knobs, start it, and return the job."""
    from ood_core.jobs import JOBS

    at.number_input(key="train.epochs.finetune").set_value(1)
    at.number_input(key="train.n_train").set_value(32)
    at.number_input(key="train.n_eval").set_value(50)
    at.slider(key=f"train.finetune.{method}.batch_size").set_value(16)
    at.button(key="train.start").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    job = JOBS.get(at.session_state["train_job_id"])
    assert job is not None
    return job


def test_train_page_launches_a_job_and_offers_the_checkpoint(default_bundle):
    at = AppTest.from_file(str(ROOT / "pages" / "6_Train.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert any("Choose a method" in i.value for i in at.info)
    at.selectbox(key="train.method").set_value("greg").run()
    assert not at.exception, at.exception
    # Widgets come from the declared knobs, with the method's defaults: the reference preset first.
    assert at.selectbox(key="train.greg.preset").value == "reference"
    assert at.selectbox(key="train.finetune.reference.greg.penalty").value == "reference"
    assert at.selectbox(key="train.finetune.reference.greg.norm").value == "l2"
    at.selectbox(key="train.greg.preset").set_value("earlier").run()  # the form knobs follow the preset
    assert at.selectbox(key="train.finetune.earlier.greg.penalty").value == "per_sample"
    at.selectbox(key="train.greg.preset").set_value("reference").run()
    job = _start_short_job(at, "reference.greg")
    path = None
    try:
        # The live view (the job needs seconds to prepare its data, so it is still running here):
        # a progress bar with the job's title and a Stop button.
        assert any("train greg" in (p.proto.text or "") for p in at.get("progress")), "no progress bar"
        assert any(b.label == "Stop" for b in at.button)
        job.wait(120)
        assert job.state == "done", job.error
        path = job.result.path
        at.run()
        assert not at.exception, at.exception
        assert any("greg · fine-tuned default · 1 ep · seed 0 · reference form" in s.value for s in at.success)
        assert any("Form: reference; gradient penalty in train mode" in c.value for c in at.caption)
        label = job.result.meta["label"]
        assert label in at.selectbox(key="model").options  # in the sidebar's model picker (shown by label)
        at.button(key="train.use").click().run()
        assert not at.exception, at.exception
        assert at.session_state["model"] == str(path)
        assert at.selectbox(key="model").value == str(path)
        assert len(at.get("plotly_chart")) >= 2  # loss terms and per-epoch metrics
    finally:
        if path is not None:
            for p in (Path(path), Path(path).with_suffix(".json")):
                p.unlink(missing_ok=True)


def test_train_page_rejects_bad_settings_with_one_line(default_bundle):
    at = AppTest.from_file(str(ROOT / "pages" / "6_Train.py"), default_timeout=120).run()
    at.number_input(key="train.n_train").set_value(8)  # fewer images than a batch
    at.button(key="train.start").click().run()
    assert not at.exception, at.exception
    shown = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]  # as read: Markdown's escapes of user text removed
    assert any("fewer than batch_size" in e for e in shown), shown
    assert "train_job_id" not in at.session_state


def test_train_page_fine_tunes_an_uploaded_state_dict(default_bundle, tmp_path):
    """Start from a state_dict registered as an upload (with its own preprocessing): the job loads that file
    with those options, and the checkpoint it writes loads back with the same preprocessing."""
    import json

    import torch

    from ood_core import facade as fc
    from ood_core import persist
    from ood_core.models.checkpoints import load_checkpoint

    sd = tmp_path / "mine.pt"
    torch.save(default_bundle.model.state_dict(), sd)
    key, up = fc.load_model_file(sd, {"arch": "small_cnn", "mean": 0.25, "std": 0.5}, name="mine_sd")
    path = None
    try:
        assert (key, "mine_sd (uploaded)") in fc.trainable_models()
        at = AppTest.from_file(str(ROOT / "pages" / "6_Train.py"), default_timeout=120).run()
        assert not at.exception, at.exception
        assert "fine-tune mine_sd (uploaded)" in at.selectbox(key="train.init").options
        at.selectbox(key="train.method").set_value("ce").run()
        at.selectbox(key="train.init").set_value(key).run()
        assert not at.exception, at.exception
        job = _start_short_job(at, "ce")
        job.wait(120)
        assert job.state == "done", job.error
        path = job.result.path
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        assert meta["training"]["init"] == str(sd.resolve())
        assert meta["training"]["load"]["mean"] == [0.25] and meta["training"]["load"]["arch"] == "small_cnn"
        assert meta["init_fingerprint"] == up.fingerprint  # it started from the uploaded weights
        assert "fine-tuned mine" in meta["label"]
        back = load_checkpoint(path)
        assert back.preprocess.to_dict() == up.preprocess.to_dict() and tuple(back.preprocess.mean) == (0.25,)
    finally:
        persist.forget_upload(key)
        if path is not None:
            for p in (Path(path), Path(path).with_suffix(".json")):
                p.unlink(missing_ok=True)


def test_train_page_recipe_sets_the_knobs_and_the_held_out_set_is_chosen(default_bundle):
    """Recipe 'paper' starts every knob widget (and the epochs) at the recipe's values, so the run is the
    recipe rather than the widgets' defaults given explicitly; the held-out OOD set of the per-epoch AUROC
    is a choice (the CLI's --aux-val) that reaches the run's config."""
    from ood_core.training.recipes import PAPER_RECIPES

    at = AppTest.from_file(str(ROOT / "pages" / "6_Train.py"), default_timeout=120).run()
    at.selectbox(key="train.method").set_value("greg_plus").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train.greg_plus.recipe").value == "default"
    assert at.selectbox(key="train.finetune.reference.greg_plus.optimizer").value == "sgd"
    at.selectbox(key="train.greg_plus.recipe").set_value("paper").run()
    assert not at.exception, at.exception
    rec = PAPER_RECIPES["greg_plus"]
    assert at.number_input(key="train.epochs.finetune.paper").value == rec["epochs"]
    assert at.selectbox(key="train.finetune.paper.reference.greg_plus.optimizer").value == "adam"
    assert at.selectbox(key="train.finetune.paper.reference.greg_plus.augment").value == "crop_flip"
    assert at.slider(key="train.finetune.paper.reference.greg_plus.batch_size").value == rec["batch_size"]

    at.selectbox(key="train.method").set_value("ce").run()
    assert at.selectbox(key="train.aux_val").value == "aux_val"  # the held-out set of the ood_val role first
    at.selectbox(key="train.aux_val").set_value("gaussian").run()
    job = _start_short_job(at, "ce")
    job.wait(120)
    assert job.state == "done", job.error
    path = job.result.path
    try:
        assert job.result.meta["training"]["aux_val"] == "gaussian"
        at.run()
        assert any("Energy AUROC vs gaussian" in s.value for s in at.success)
        assert any("Recipe: default; augmentation: shift" in c.value for c in at.caption)
    finally:
        for p in (Path(path), Path(path).with_suffix(".json")):
            p.unlink(missing_ok=True)
