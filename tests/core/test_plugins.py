"""Plugins (docs/architecture.md, "Plugins"): a detector from a file, a module or an installed entry point
joins the registry, the CLI and the app; a broken one is one line and the rest works; the worked example
(examples/my_detector.py) scores what its formula says, through ``evaluate --plugin … --json``."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_core import cli, plugins
from ood_core.detectors import detector_classes, get_detector

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_detector.py"

PLUGIN = textwrap.dedent('''
    import numpy as np
    from ood_core.api import Detector, Knob, register_detector

    @register_detector
    class {cls}(Detector):
        name, title = "{name}", "Max logit, scaled"
        knobs = (Knob("a", 1.0, 0.5, 2.0, help="scale"),)
        def _score(self, ext, a):
            return a * np.asarray(ext.logits, np.float64).max(1)
''')


@pytest.fixture
def loaded():
    """Plugins loaded in a test, unloaded afterwards (the registry as it was)."""
    before = list(detector_classes())
    infos: list[plugins.PluginInfo] = []
    yield infos
    for i in infos:
        plugins.forget(i)
    assert list(detector_classes()) == before


def test_a_file_plugin_is_discovered_once(tmp_path, loaded):
    f = tmp_path / "scaled_max.py"
    f.write_text(PLUGIN.format(cls="ScaledMax", name="scaled_max_file"))
    info = plugins.load(str(f))
    loaded.append(info)
    assert info.ok and info.detectors == ("scaled_max_file",) and info.kind == "file"
    assert plugins.source_of("scaled_max_file").source == "scaled_max.py"
    assert plugins.load(str(f)) is info  # idempotent
    ext = get_detector("scaled_max_file")
    assert ext.resolve()["a"] == 1.0


def test_an_installed_entry_point_is_discovered(tmp_path, loaded, monkeypatch):
    (tmp_path / "ep_plugin_pkg.py").write_text(PLUGIN.format(cls="EpMax", name="scaled_max_ep").replace(
        "@register_detector\n", ""))  # an entry point naming an undecorated class: the loader registers it
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("scaled_max_ep", "ep_plugin_pkg:EpMax", plugins.GROUPS["detectors"])
    real = importlib.metadata.entry_points
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group=None, **kw: [ep] if group == plugins.GROUPS["detectors"] else real(group=group))
    infos = plugins.load_entry_points()
    loaded.extend(infos)
    (info,) = [i for i in infos if i.detectors]
    assert info.kind == "entry point" and "scaled_max_ep" in detector_classes()
    assert plugins.source_of("scaled_max_ep") is info
    sys.modules.pop("ep_plugin_pkg", None)


@pytest.mark.parametrize("body, why", [
    ("def broken(:\n", "SyntaxError"),
    ("import numpy\n", "declares no detector"),
    (PLUGIN.format(cls="Energy2", name="energy"), "'energy' is a built-in's name"),
    (PLUGIN.format(cls="BadKnob", name="bad_knob").replace('Knob("a", 1.0,', 'Knob("a", 9.0,'), "default 9.0"),
])
def test_a_broken_plugin_is_one_line_and_the_rest_works(tmp_path, loaded, capsys, body, why):
    f = tmp_path / "broken_plugin.py"
    f.write_text(body)
    energy_cls = detector_classes()["energy"]
    rc = cli.main(["detectors", "--plugin", str(f)])
    out, err = capsys.readouterr()
    assert rc == 0 and err.count("\n") == 1 and why in err and "broken_plugin.py" in err, err
    assert "energy\t" in out and detector_classes()["energy"] is energy_cls and "bad_knob" not in detector_classes()
    loaded.extend(i for i in plugins.plugins() if i.spec == str(f))


def test_env_lists_split_on_commas_and_the_path_separator():
    import os
    assert plugins.split_env(f"a.py, b.mod{os.pathsep}c.py,,") == ["a.py", "b.mod", "c.py"]


def test_the_example_through_evaluate_json_equals_its_formula(default_bundle, capsys, loaded):
    from ood_core import workbench as wb

    rc = cli.main(["evaluate", "--plugin", str(EXAMPLE), "--id", "mnist", "--ood", "gaussian",
                   "--detectors", "energy_norm,energy", "--param", "energy_norm.alpha=1.5", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    loaded.append(plugins.load(str(EXAMPLE)))
    assert rc == 0
    row = next(r for r in out["results"] if r["detector"] == "energy_norm")
    # independently: energy by torch's logsumexp, norms from the training features' mean norm
    import torch
    train = wb.get_extraction(default_bundle, "mnist:train")
    ref = np.linalg.norm(train.features.astype(np.float64), axis=1).mean()

    def s(ext):
        e = torch.logsumexp(torch.tensor(ext.logits, dtype=torch.float64), 1).numpy()
        return e + 1.5 * np.log(np.linalg.norm(ext.features.astype(np.float64), axis=1) / ref)

    ids, ood = (s(wb.get_extraction(default_bundle, n)) for n in ("mnist", "gaussian"))
    want = roc_auc_score(np.r_[np.ones(len(ids)), np.zeros(len(ood))], np.r_[ids, ood])
    assert row["auroc"] == pytest.approx(want, abs=1e-9)


def test_app_shows_a_plugin_on_scores_and_compare(default_bundle, loaded):
    from streamlit.testing.v1 import AppTest

    loaded.append(plugins.load(str(EXAMPLE)))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/1_Scores.py")
    at.session_state["detector"] = "energy_norm"
    at.run()
    assert not at.exception, at.exception
    labels = [s.label for s in at.slider] + [n.label for n in at.number_input]
    assert "alpha" in labels, labels  # its knob as a slider
    assert any("never runs an uploaded file" in c.value for c in at.caption)  # beside the "plugin · my_detector.py" badge

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/2_Compare.py")
    at.session_state["cmp_detectors"] = ["energy", "energy_norm"]
    at.run()
    assert not at.exception, at.exception
    shown = " ".join(str(df.value.to_dict()) for df in at.dataframe)
    assert "energy_norm" in shown


APP_DRIVER = textwrap.dedent('''
    """Start the app in this fresh process (as `streamlit run` does), open Scores and Compare, report what shows."""
    import json, sys
    from streamlit.testing.v1 import AppTest
    from ood_core import plugins

    app = sys.argv[1]
    before = [i.spec for i in plugins.plugins()]
    at = AppTest.from_file(app, default_timeout=300)
    at.switch_page("pages/1_Scores.py")
    at.session_state["detector"] = "env_scaled_max"
    at.run()
    out = {"before": before, "exception": [str(e.value) for e in at.exception],
           "source": getattr(plugins.source_of("env_scaled_max"), "spec", None),
           "sliders": [[s.label, s.value, s.min, s.max] for s in at.slider],
           "markdown": [m.value for m in at.markdown], "warnings": [w.value for w in at.sidebar.warning],
           "detector": at.selectbox(key="detector").value}
    at = AppTest.from_file(app, default_timeout=300)
    at.switch_page("pages/2_Compare.py")
    at.session_state["cmp_detectors"] = ["energy", "env_scaled_max"]
    at.run()
    out["compare_exception"] = [str(e.value) for e in at.exception]
    out["compare"] = " ".join(str(df.value.to_dict()) for df in at.dataframe)
    print(json.dumps(out))
''')


def test_app_reads_ood_plugins_at_start_up(default_bundle, tmp_path):
    """OOD_PLUGINS names a plugin file: the app loads it at start-up (nothing imported it before), and the
    detector shows on Scores with its knob as a slider and its "plugin" badge naming the file, and has its
    row on Compare; a missing entry in the list is one sidebar line. In a fresh process, as the app starts
    (the app loads plugins once per process, through st.cache_resource)."""
    import os
    import subprocess

    f = tmp_path / "env_plugin.py"
    f.write_text(PLUGIN.format(cls="EnvMax", name="env_scaled_max"))
    driver = tmp_path / "drive_app.py"
    driver.write_text(APP_DRIVER)
    env = {**os.environ, plugins.ENV: f"{tmp_path / 'absent_plugin.py'},{f}", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(driver), str(ROOT / "app.py")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] == [] and out["exception"] == [] and out["compare_exception"] == []
    assert out["source"] == str(f)  # loaded by the app's start-up, from the environment
    assert ["a", 1.0, 0.5, 2.0] in out["sliders"]  # its knob, as a slider at its default
    assert any("plugin · env_plugin.py" in m for m in out["markdown"]), out["markdown"]  # its badge
    assert any("absent_plugin.py" in w for w in out["warnings"]), out["warnings"]  # the refused entry: one line
    assert out["detector"] == "env_scaled_max"
    assert "env_scaled_max" in out["compare"]  # its row beside Energy
