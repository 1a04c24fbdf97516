"""The command line (DESIGN.md contract 6), run as a user would: a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "ood_core", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_evaluate_json_contract(default_bundle):
    r = cli("evaluate", "--model", "default", "--id", "mnist", "--ood", "letters,textures,faces,gaussian",
            "--detectors", "msp,energy,gradnorm,rg", "--json", "--quiet")
    out = json.loads(r.stdout)
    assert set(out) >= {"model", "id_dataset", "id_accuracy", "results"}
    assert out["model"] == "default" and out["id_dataset"] == "mnist" and out["id_accuracy"] >= 0.97
    assert len(out["results"]) == 16
    for row in out["results"]:
        assert set(row) >= {"detector", "params", "ood_dataset", "auroc", "fpr95", "aupr_in", "aupr_out"}
        assert all(0.0 <= row[k] <= 1.0 for k in ["auroc", "fpr95", "aupr_in", "aupr_out"])
    tex = [r for r in out["results"] if r["ood_dataset"] == "textures" and r["detector"] == "energy"][0]
    assert tex["auroc"] > 0.95


def test_param_changes_the_result(default_bundle):
    a = json.loads(cli("evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--json", "--quiet").stdout)
    b = json.loads(cli("evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--param", "msp.T=50",
                       "--json", "--quiet").stdout)
    assert b["results"][0]["params"] == {"T": 50}
    assert a["results"][0]["auroc"] != b["results"][0]["auroc"]


@pytest.mark.parametrize("args, msg", [
    (["evaluate", "--id", "mnist", "--ood", "cifar", "--detectors", "msp"], "unknown dataset 'cifar'"),
    (["evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "magic"], "unknown detector 'magic'"),
    (["evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--param", "msp.T=-1"], "msp.T must be in"),
    (["evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--param", "oops"], "detector.knob=value"),
    (["evaluate", "--model", "/nonexistent.pt", "--id", "mnist", "--ood", "letters", "--detectors", "msp"], "no model file"),
    (["evaluate", "--bogus"], "unrecognized arguments"),
    (["extract", "--dataset", "mnist"], "required: --out"),
])
def test_bad_input_exits_2_with_one_line(args, msg, capsys):
    from ood_core.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert msg in lines[0]
    assert "Traceback" not in err


def test_bad_input_in_a_real_process():
    r = cli("evaluate", "--id", "mnist", "--ood", "cifar", "--detectors", "msp", check=False)
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: unknown dataset 'cifar'; available: " + r.stderr.split("available: ")[1].strip()


def test_extract_writes_contract_arrays(tmp_path, default_bundle):
    out = tmp_path / "faces.npz"
    r = cli("extract", "--model", "default", "--dataset", "faces", "--out", str(out), "--quiet")
    assert r.stdout.strip().splitlines()[-1] == str(out)
    with np.load(out) as z:
        assert z["logits"].shape == (400, 10) and z["features"].shape == (400, 128)
        assert z["head_weight"].shape == (10, 128) and z["head_bias"].shape == (10,)
        assert z["labels"].dtype == np.int64


def test_listings(capsys):
    from ood_core.cli import main
    assert main(["datasets"]) == 0
    ds = capsys.readouterr().out.splitlines()
    names = [ln.split("\t")[0] for ln in ds]
    for n in ["mnist", "letters", "textures", "faces", "gaussian", "uniform", "digits8x8"]:
        assert n in names
    assert main(["detectors"]) == 0
    dets = [ln.split("\t")[0] for ln in capsys.readouterr().out.splitlines()]
    for n in ["msp", "maxlogit", "energy", "gradnorm", "rg", "react"]:
        assert n in dets


def test_experiment_json_round_trip(tmp_path, default_bundle):
    from ood_core.experiment import Experiment
    exp = Experiment(ood_datasets=["letters", "faces"], detectors=["rg"], params={"rg": {"q": 80.0, "T": 2.0}})
    p = exp.save(tmp_path / "exp.json")
    out = json.loads(cli("evaluate", "--experiment", str(p), "--json", "--quiet").stdout)
    direct = json.loads(cli("evaluate", "--id", "mnist", "--ood", "letters,faces", "--detectors", "rg",
                            "--param", "rg.q=80", "--param", "rg.T=2", "--json", "--quiet").stdout)
    assert [r["auroc"] for r in out["results"]] == [r["auroc"] for r in direct["results"]]
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "default", "colour": "red"}')
    r = cli("evaluate", "--experiment", str(bad), "--json", check=False)
    assert r.returncode == 2 and "unknown experiment fields: colour" in r.stderr
