"""The command line (DESIGN.md contract 6), run as a user would: a subprocess (``cli``); tests that compare
several runs' numbers call ``main`` in-process (``run_main``): the same code from argv to the printed JSON,
without a Python start per run."""
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


def run_main(capsys, *args, check=True) -> tuple[int, str, str]:
    """``python -m ood_core ARGS`` in this process: (exit code, stdout, stderr)."""
    from ood_core.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    if check:
        assert rc == 0, err
    return rc, out, err


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


def test_param_changes_the_result(default_bundle, capsys):
    a = json.loads(run_main(capsys, "evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--json",
                            "--quiet")[1])
    b = json.loads(run_main(capsys, "evaluate", "--id", "mnist", "--ood", "letters", "--detectors", "msp", "--param",
                            "msp.T=50", "--json", "--quiet")[1])
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


def test_experiment_json_round_trip(tmp_path, default_bundle, capsys):
    from ood_core.experiment import Experiment
    exp = Experiment(ood_datasets=["letters", "faces"], detectors=["rg"], params={"rg": {"q": 80.0, "T": 2.0}})
    p = exp.save(tmp_path / "exp.json")
    out = json.loads(run_main(capsys, "evaluate", "--experiment", str(p), "--json", "--quiet")[1])
    direct = json.loads(run_main(capsys, "evaluate", "--id", "mnist", "--ood", "letters,faces", "--detectors", "rg",
                                 "--param", "rg.q=80", "--param", "rg.T=2", "--json", "--quiet")[1])
    assert [r["auroc"] for r in out["results"]] == [r["auroc"] for r in direct["results"]]
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "default", "colour": "red"}')
    rc, _, err = run_main(capsys, "evaluate", "--experiment", str(bad), "--json", check=False)
    assert rc == 2 and "unknown experiment fields: colour" in err


# --- issue 27, item 7: hostile inputs that escaped the one-line boundary ------------------------

def _zip_variants(tmp_path: Path) -> dict[str, Path]:
    """A valid zip of three PNGs, and copies damaged one way each (bytes patched in the headers)."""
    import io
    import struct
    import zipfile

    from PIL import Image

    def png() -> bytes:
        b = io.BytesIO()
        Image.new("L", (8, 8), 7).save(b, "PNG")
        return b.getvalue()

    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for i in range(3):
            z.writestr(f"d/{i}.png", png())
    raw = good.read_bytes()

    def patched(name: str, local: int, central: int, value: bytes, xor: bool = False) -> Path:
        b = bytearray(raw)
        for sig, off in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
            j = 0
            while (j := b.find(sig, j)) >= 0:
                if xor:
                    b[j + off] |= value[0]
                else:
                    b[j + off:j + off + len(value)] = value
                j += 4
        p = tmp_path / name
        p.write_bytes(bytes(b))
        return p

    crc = bytearray(raw)
    crc[crc.find(b"\x89PNG") + 20] ^= 0xFF  # a flipped byte inside the first image
    (tmp_path / "crc.zip").write_bytes(bytes(crc))
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as z:
        z.writestr("/".join(["a"] * 1500) + "/x.png", png())
    return {"crc": tmp_path / "crc.zip", "encrypted": patched("enc.zip", 6, 8, b"\x01", xor=True),
            "method": patched("method.zip", 8, 10, b"\x63\x00"), "nested": nested,
            "undersized": patched("under.zip", 22, 24, struct.pack("<I", 10))}


_EXP = {"model": "default", "id_dataset": "mnist", "ood_datasets": ["gaussian"], "detectors": ["msp"]}
_RUN = ["evaluate", "--id", "mnist", "--ood", "gaussian", "--detectors", "msp", "--quiet"]


def _experiment(tmp_path: Path, text: str | bytes) -> list[str]:
    p = tmp_path / "exp.json"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return ["evaluate", "--experiment", str(p), "--quiet"]


HOSTILE_CLI = {
    # experiment JSON
    "nested 100k deep": (lambda t: _experiment(t, "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "nested in a field": (lambda t: _experiment(t, '{"notes": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                          "nested too deeply"),
    "not UTF-8": (lambda t: _experiment(t, b'{"model": "\xff\xfe"}'), "not UTF-8"),
    **{f"seed {s[:8]}": (lambda t, s=s: _experiment(t, json.dumps(_EXP)[:-1] + f', "seed": {s}}}'), why)
       for s, why in (('"abc"', "seed must be a whole number"), ("Infinity", "Infinity is not a JSON number"),
                      ("NaN", "NaN is not a JSON number"), ("-1", "seed must be a whole number"),
                      ("9" * 5000, "not valid JSON"), ("1.5", "seed must be a whole number"))},
    "id_dataset null": (lambda t: _experiment(t, json.dumps({**_EXP, "id_dataset": None})), "id_dataset must be"),
    "id_dataset list": (lambda t: _experiment(t, json.dumps({**_EXP, "id_dataset": ["mnist"]})), "id_dataset must be"),
    "ood_datasets [1]": (lambda t: _experiment(t, json.dumps({**_EXP, "ood_datasets": [1]})), "ood_datasets must be"),
    "ood_datasets null": (lambda t: _experiment(t, json.dumps({**_EXP, "ood_datasets": None})), "ood_datasets must be"),
    "subsample 0 in JSON": (lambda t: _experiment(t, json.dumps({**_EXP, "subsample": {"id_test": 0}})), "no samples"),
    # arguments
    "--subsample nan": (lambda t: [*_RUN, "--subsample", "ood_test=nan"], "count or a fraction"),
    "--subsample inf": (lambda t: [*_RUN, "--subsample", "ood_test=inf"], "count or a fraction"),
    "--subsample 0": (lambda t: [*_RUN, "--subsample", "id_test=0"], "would use no samples"),
    "--subsample 1.0": (lambda t: [*_RUN, "--subsample", "id_test=1.0"], "ambiguous"),
    "--subsample 2.5": (lambda t: [*_RUN, "--subsample", "id_test=2.5"], "must be whole"),
    "--seed -1": (lambda t: [*_RUN, "--seed", "-1"], "--seed: must be a whole number"),
    "--ood g,g": (lambda t: ["evaluate", "--id", "mnist", "--ood", "gaussian,gaussian", "--detectors", "msp"],
                  "--ood names 'gaussian' twice"),
    "--detectors msp,msp": (lambda t: ["evaluate", "--id", "mnist", "--ood", "gaussian", "--detectors", "msp,msp"],
                            "--detectors names 'msp' twice"),
    # zips
    **{f"zip {k}": (lambda t, k=k: ["register", "--path", str(_zip_variants(t)[k]), "--name", f"z{k}"], why)
       for k, why in (("crc", "damaged: Bad CRC"), ("encrypted", "is encrypted"), ("method", "compression method 99"),
                      ("nested", "1500 folders deep"), ("undersized", "damaged"))},
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(HOSTILE_CLI))
def test_hostile_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    """Each case escaped ``cli.main`` with a traceback (exit 1), or ran silently, before issue 27."""
    from ood_core import cache
    from ood_core.cli import main
    from ood_core.data import registry as data_registry

    tmp_cache = tmp_path / "cache"
    if case.startswith("zip"):  # uploads unpack under a private cache; the others use the shared one (its model)
        monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_cache))
        cache.reset()
    make, msg = HOSTILE_CLI[case]
    argv = make(tmp_path)
    try:
        code = main(argv)
    finally:
        for n in [n for n in data_registry._REGISTRY if n.startswith("z")]:
            data_registry.unregister(n)
        if case.startswith("zip"):
            monkeypatch.undo()
            cache.reset()
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert msg in lines[0], lines[0]
    if case.startswith("zip"):
        assert not any((tmp_cache / "uploads" / "datasets").glob("*/d/*.png")), "a damaged zip left files behind"


@pytest.mark.hostile
@pytest.mark.parametrize("var, value", [("OOD_MAX_DATASET_BYTES", "inf"), ("OOD_MAX_DATASET_BYTES", "abc"),
                                        ("OOD_MAX_DATASET_BYTES", "-1"), ("OOD_MAX_MODEL_BYTES", "inf"),
                                        ("OOD_MAX_MODEL_BYTES", "abc")])
def test_bad_environment_number_is_one_line_naming_it(var, value, tmp_path, capsys, monkeypatch):
    """``OOD_MAX_*_BYTES=abc`` was ignored silently and ``=-1`` printed "-0 MiB"; each now refuses."""
    from ood_core.cli import main

    monkeypatch.setenv(var, value)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8, 8), np.uint8))
    model = tmp_path / "m.pt"
    import torch
    torch.save({"w": torch.zeros(1)}, model)
    argv = {"OOD_MAX_DATASET_BYTES": ["register", "--path", str(data), "--name", "zenv"],
            "OOD_MAX_MODEL_BYTES": ["evaluate", "--model", str(model), *_RUN[1:]]}[var]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and var in lines[0] and "Traceback" not in err, err


@pytest.mark.hostile
def test_model_that_raises_on_the_real_batch(tmp_path, capsys):
    """A model passing the load-time dry run but raising on the first real batch: one line naming it."""
    from fixtures_models import picky_torchscript

    p = tmp_path / "picky.pt"
    picky_torchscript(p)
    from ood_core.cli import main
    assert main(["evaluate", "--model", str(p), *_RUN[1:]]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "the model 'picky' failed on a batch" in lines[0] and "boom on the real batch" in lines[0]


# --- train: starting points and the held-out set ---------------------------------------------------------------
def _train_cli(capsys, *args: str) -> tuple[int, str, str]:
    from ood_core.cli import main

    rc = main(["train", "--epochs", "1", "--quiet", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _drop_checkpoint(out: str) -> dict:
    """The sidecar of the checkpoint a train run printed last; both files removed."""
    path = Path(out.strip().splitlines()[-1])
    meta = json.loads(path.with_suffix(".json").read_text())
    for p in (path, path.with_suffix(".json")):
        p.unlink(missing_ok=True)
    return meta


@pytest.fixture
def rgb_sets():
    """A tiny 3-channel ID set (test + train splits, 32×32) and a 3-channel held-out OOD set, in memory."""
    from ood_core.data import ImageDataset
    from ood_core.data.registry import DatasetSpec, register, unregister

    rng = np.random.default_rng(0)

    def rgb(name: str, n: int, role: str, labelled: bool = True) -> ImageDataset:
        y = rng.integers(0, 10, n) if labelled else np.full(n, -1)
        return ImageDataset(name, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y, role=role)

    sets = {"test": rgb("t_rgb", 20, "id_test"), "train": rgb("t_rgb", 32, "id_train")}
    val = rgb("t_rgb_val", 20, "ood_val", labelled=False)
    register(DatasetSpec("t_rgb", "", "id_test", lambda split: sets[split], splits=("test", "train"), embedded=False),
             replace=True)
    register(DatasetSpec("t_rgb_val", "", "ood_val", lambda split: val, embedded=False), replace=True)
    yield
    unregister("t_rgb")
    unregister("t_rgb_val")


def test_train_scratch_cifar_arch_takes_its_preprocessing_and_aux_val(capsys, rgb_sets):
    """--init scratch --arch wrn10_1 on a 3-channel set: the checkpoint's preprocessing is the architecture's
    (CIFAR mean/std, 32×32, the ID set's 3 channels), not the embedded default's (MNIST); --aux-val picks the
    set the per-epoch AUROC is measured against."""
    from ood_core.models.archs import arch_info
    from ood_core.models.checkpoints import DEFAULT_PREPROCESS

    rc, out, err = _train_cli(capsys, "--method", "ce", "--init", "scratch", "--arch", "wrn10_1", "--id", "t_rgb",
                              "--aux-val", "t_rgb_val", "--n-eval", "16", "--param", "ce.batch_size=16")
    assert rc == 0, err
    assert "Energy AUROC vs t_rgb_val" in out
    meta = _drop_checkpoint(out)
    want = arch_info("wrn10_1").preprocess(3).to_dict()
    assert meta["preprocess"] == json.loads(json.dumps(want)) and meta["preprocess"] != DEFAULT_PREPROCESS.to_dict()
    assert meta["preprocess"]["input_size"] == [32, 32] and meta["in_channels"] == 3
    assert meta["preprocess"]["mean"][0] == pytest.approx(0.4914, abs=1e-3)
    assert meta["arch"] == "wrn10_1" and meta["training"]["aux_val"] == "t_rgb_val"
    rc, _, err = _train_cli(capsys, "--method", "ce", "--aux-val", "no_such_set")
    assert rc == 2 and err.strip().count("\n") == 0 and "unknown dataset 'no_such_set'" in err


def test_train_init_upload_key(capsys, tmp_path, default_bundle):
    """--init upload:KEY trains from the uploaded file with the options it was loaded with (its own
    preprocessing), as the Train page does; an unknown key or --arch beside a key is one line, exit 2."""
    import torch

    from ood_core import persist
    from ood_core.models.checkpoints import load_checkpoint

    sd = tmp_path / "mine.pt"
    torch.save(default_bundle.model.state_dict(), sd)
    key, up = persist.register_upload(sd, arch="small_cnn", mean=0.25, std=0.5, name="mine_cli")
    try:
        rc, out, err = _train_cli(capsys, "--method", "ce", "--init", key, "--n-train", "32", "--n-eval", "50",
                                  "--param", "ce.batch_size=16")
        assert rc == 0, err
        path = Path(out.strip().splitlines()[-1])
        assert tuple(load_checkpoint(path).preprocess.mean) == (0.25,)  # loads back with the upload's preprocessing
        meta = _drop_checkpoint(out)
        assert meta["training"]["init"] == str(sd.resolve()) and meta["training"]["load"]["arch"] == "small_cnn"
        assert meta["init_fingerprint"] == up.fingerprint and "fine-tuned mine" in meta["label"]
        for args, needle in ((["--init", "upload:nope@0000"], "not remembered"),
                             (["--init", key, "--arch", "small_cnn"], "drop --arch")):
            rc, _, err = _train_cli(capsys, "--method", "ce", *args)
            assert rc == 2 and err.strip().count("\n") == 0 and needle in err, err
    finally:
        persist.forget_upload(key)
