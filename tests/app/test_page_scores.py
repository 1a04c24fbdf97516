"""AppTest: the landing page and the Scores page, as a user drives them."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / name), default_timeout=300)


def _table(at):
    return at.dataframe[0].value


def test_scores_page_knob_moves_the_table(default_bundle):
    at = _page("pages/1_Scores.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    before = _table(at)
    assert list(before["OOD set"]) == ["letters", "textures", "faces", "gaussian", "uniform", "mean"]
    T = at.select_slider(key="scores.energy.T")
    T.set_value(20.0).run()
    after = _table(at)
    assert not at.exception
    assert (before["AUROC %"] != after["AUROC %"]).any()
    assert at.session_state["detector_knobs"]["energy"]["T"] == 20.0


def test_scores_page_switch_detector_builds_its_knobs(default_bundle):
    at = _page("pages/1_Scores.py").run()
    at.selectbox(key="detector").set_value("rg").run()
    assert not at.exception, at.exception
    labels = [s.label for s in at.slider]
    assert "q" in labels
    before = _table(at)
    at.slider(key="scores.rg.q").set_value(60.0).run()
    assert (before["AUROC %"] != _table(at)["AUROC %"]).any()
    assert any("k (absolute)" in c.value for c in at.caption)


def test_threshold_counts_update(default_bundle):
    at = _page("pages/1_Scores.py").run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["TPR (ID kept)"] == "95.0%"
    at.slider(key="thr_tpr").set_value(0.8).run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["TPR (ID kept)"] == "80.0%"
    assert metric["ID called OOD"] == "200 / 1000"


def test_no_ood_sets_gives_a_hint(default_bundle):
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = []
    at.run()
    assert not at.exception
    assert any("at least one OOD" in i.value for i in at.info)


def test_landing_page(default_bundle):
    at = _page("app.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Gradient-OOD workbench"
    assert any(m.label == "Model" for m in at.metric)


def test_figures_label_curves_with_the_table_metrics():
    import numpy as np

    from ood_core import metrics
    from ood_core.figures.scores import pr_figure, roc_figure

    rng = np.random.default_rng(0)
    a, ood = rng.normal(1, 1, 200), {"x": rng.normal(0, 1, 150), "y": rng.normal(-1, 1, 100)}
    table = metrics.metrics_table(a, ood)
    for fig, key, label in [(roc_figure(a, ood, 0.0, table), "auroc", "AUROC"), (pr_figure(a, ood, table), "aupr_in", "AUPR-In")]:
        names = [t.name for t in fig.data if t.name]
        for n in ood:
            want = f"{n} ({label} {100 * metrics.ood_metrics(a, ood[n])[key]:.1f})"
            assert want in names


def test_model_time_detector_runs_as_a_job_then_reads_the_cache(default_bundle):
    """ODIN needs the model: the first run scores in a background job, the table appears when it ends."""
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = ["faces"]
    at.session_state["detector"] = "odin"
    at.session_state["detector_knobs"] = {"odin": {"T": 10.0, "eps": 0.0007}}
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    first = _table(at)
    assert list(first["OOD set"]) == ["faces"] and first["AUROC %"].iloc[0] > 90
    from ood_core import workbench as wb
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert wb.is_cached(default_bundle, det, "faces", {"T": 10.0, "eps": 0.0007})


def test_a_long_model_time_job_says_its_cost_and_waits_for_a_click(default_bundle, monkeypatch):
    """Over LONG_JOB_S the page shows the dry run's estimate and a Run button instead of starting."""
    from ood_core import workbench as wb

    calls = []
    monkeypatch.setattr(wb, "model_time_estimate", lambda *a, **k: calls.append(a) or {
        "seconds": 600.0, "bytes": 3 * 2**30, "n_images": 2000, "pending": ["faces"], "detail": "dry run"})
    at = _page("pages/1_Scores.py")
    at.session_state["ood_datasets"] = ["faces"]
    at.session_state["detector"] = "odin"
    at.session_state["detector_knobs"] = {"odin": {"T": 12.5, "eps": 0.0003}}
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert calls and any("≈ 10 min 00 s, ≈ 3.00 GB peak, 2,000 images (dry run)" in c.value for c in at.caption)
    assert [b.label for b in at.button if b.key == "scores.run_mt"] == ["Run odin as a job"]
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert not wb.is_cached(default_bundle, det, "faces", {"T": 12.5, "eps": 0.0003})  # nothing ran


# --- issue 27, items 8 and 13: hostile experiment uploads on Home; a model raising on a real batch --

def _upload_experiment(at: AppTest, exp: dict | bytes) -> AppTest:
    import json

    data = exp if isinstance(exp, bytes) else json.dumps(exp).encode()
    at.file_uploader(key="exp_upload").set_value(("e.json", data, "application/json"))
    return at.run()


def _read(bodies) -> list[str]:
    import re

    return [re.sub(r"\\(.)", r"\1", b.value) for b in bodies]


_GOOD = {"model": "default", "id_dataset": "mnist", "ood_datasets": ["faces"], "detectors": ["msp"]}


@pytest.mark.hostile
@pytest.mark.parametrize("change, msg", [
    ({"params": {"msp": {"T": "abc"}}}, "msp.T must be a number"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"id_dataset": ["mnist"]}, "id_dataset must be a non-empty string"),
    ({"ood_datasets": [1, 2]}, "ood_datasets must be a list of names"),
    (None, "nested too deeply"),
])
def test_home_refuses_a_hostile_experiment_in_one_line(default_bundle, change, msg):
    at = _page("app.py").run()
    exp = json_deep() if change is None else {**_GOOD, **change}
    _upload_experiment(at, exp)
    assert not at.exception, at.exception
    assert any(msg in e for e in _read(at.error)), _read(at.error)
    assert at.session_state["ood_datasets"] != ["faces"]  # nothing was applied


def json_deep() -> bytes:
    return b'{"notes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.hostile
def test_an_experiment_recording_another_model_warns_once(default_bundle):
    at = _page("app.py").run()
    _upload_experiment(at, {**_GOOD, "model_fingerprint": "deadbeef", "preprocess": {"mean": [0.1]}})
    assert not at.exception and not at.error, _read(at.error)
    assert at.session_state["ood_datasets"] == ["faces"]
    warned = [w for w in _read(at.warning) if "the model differs from the experiment's" in w]
    assert len(warned) == 1 and "fingerprint deadbeef" in warned[0] and "mean [0.1]" in warned[0], _read(at.warning)
    at.run()
    assert not [w for w in _read(at.warning) if "differs" in w]  # said once


def test_the_experiment_the_app_writes_records_its_model_and_loads_back_quietly(default_bundle):
    """Scores' "Reproduce" experiment carries the model's fingerprint and load options (so running it
    on another model warns), and loading it back with the same model says nothing."""
    import json

    from ood_core import workbench as wb

    at = _page("pages/1_Scores.py").run()
    assert not at.exception, at.exception
    exps = [json.loads(c.value) for c in at.code if '"schema"' in c.value]
    assert len(exps) == 1
    assert exps[0]["model_fingerprint"] == default_bundle.fingerprint
    assert exps[0]["preprocess"] == wb.model_record(default_bundle)["preprocess"]
    assert exps[0]["preprocess"]["mean"] == list(default_bundle.preprocess.mean)
    home = _upload_experiment(_page("app.py").run(), exps[0])
    assert not home.exception and not home.error, _read(home.error)
    assert not [w for w in _read(home.warning) if "differs" in w], _read(home.warning)
    from ood_core.experiment import Experiment

    changed = Experiment.from_dict({**exps[0], "preprocess": {**exps[0]["preprocess"], "std": [0.25]}})
    assert wb.model_differences(changed, default_bundle).endswith(
        f"std [0.25] in the experiment, [{default_bundle.preprocess.std[0]}] loaded")


@pytest.mark.hostile
def test_a_model_raising_on_the_real_batch_is_one_error(tmp_cache, tmp_path):
    """It passed the load-time dry run, then raised inside the forward pass: a traceback on Home and Scores."""
    from fixtures_models import picky_torchscript

    from ood_core import persist

    p = tmp_path / "picky.pt"
    picky_torchscript(p)
    key, _ = persist.register_upload(p)
    try:
        for page in ("app.py", "pages/1_Scores.py"):
            at = _page(page)
            at.session_state["model"] = key
            at.run()
            assert not at.exception, (page, at.exception)
            assert any("the model 'picky' failed on a batch" in e and "boom on the real batch" in e
                       for e in _read(at.error)), (page, _read(at.error))
    finally:
        persist.forget_upload(key)
