"""The shipped default weights: what trained them, that they load without training, the fallbacks.

docs/architecture.md, "First launch": the default model's deterministic weights ship with the
package; ``train_default`` is the code that produced them and runs only when the shipped copy is
missing, damaged or stale.
"""
from __future__ import annotations

import json
import shutil

import pytest

from ood_core.models import checkpoints as ck


def _copy_shipped(tmp_path):
    dst = tmp_path / "shipped" / ck.SHIPPED_DEFAULT.name
    dst.parent.mkdir()
    shutil.copy(ck.SHIPPED_DEFAULT, dst)
    shutil.copy(ck.SHIPPED_DEFAULT.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _no_training(monkeypatch):
    calls = []
    monkeypatch.setattr(ck, "train_default", lambda progress=None, **kw: calls.append(1) or "trained")
    return calls


def test_shipped_default_records_what_train_default_uses():
    meta = json.loads(ck.SHIPPED_DEFAULT.with_suffix(".json").read_text())
    want = ck.default_training_config()
    assert want["training_source"] is not None  # the tests run from source
    assert {k: meta.get(k) for k in want} == want, (
        "train_default changed since the shipped weights were made: run bench/regenerate_default_model.py "
        "(and bump DEFAULT_TRAINING_VERSION if the weights change)")
    assert "train_seconds" not in meta  # wall-clock time is not part of what was shipped
    assert ck.shipped_default_problem() is None


def test_first_load_copies_the_shipped_weights_without_training(tmp_cache, monkeypatch):
    calls = _no_training(monkeypatch)
    assert ck.default_needs_training() is False
    bundle = ck.load_default()
    assert calls == []
    assert ck.default_model_path().read_bytes() == ck.SHIPPED_DEFAULT.read_bytes()
    assert bundle.fingerprint == ck.load_checkpoint(ck.default_model_path()).fingerprint
    assert bundle.info["id_test_accuracy"] > 0.97


@pytest.mark.parametrize("damage, reason", [
    ("missing", "unreadable"),
    ("flipped", "damaged"),
    ("sidecar", "unreadable"),
    ("stale", "other settings (epochs)"),
])
def test_unusable_shipped_weights_fall_back_to_training(tmp_cache, tmp_path, monkeypatch, damage, reason):
    shipped = _copy_shipped(tmp_path)
    if damage == "missing":
        shipped.unlink()
    elif damage == "flipped":
        data = bytearray(shipped.read_bytes())
        data[len(data) // 2] ^= 1  # one bit in the weights: torch.load would still accept it
        shipped.write_bytes(bytes(data))
    elif damage == "sidecar":
        shipped.with_suffix(".json").write_text("{not json")
    else:
        meta = json.loads(shipped.with_suffix(".json").read_text())
        shipped.with_suffix(".json").write_text(json.dumps({**meta, "epochs": 3}))
    monkeypatch.setattr(ck, "SHIPPED_DEFAULT", shipped)
    assert reason in ck.shipped_default_problem()
    assert ck.default_needs_training() is True
    calls = _no_training(monkeypatch)
    assert ck.load_default() == "trained" and calls == [1]


def test_damaged_cached_default_is_replaced_by_the_shipped_one(tmp_cache, monkeypatch):
    path = ck.default_model_path()
    path.write_bytes(b"not a checkpoint")
    path.with_suffix(".json").write_text(ck.SHIPPED_DEFAULT.with_suffix(".json").read_text())
    calls = _no_training(monkeypatch)
    ck.load_default()
    assert calls == [] and path.read_bytes() == ck.SHIPPED_DEFAULT.read_bytes()


@pytest.mark.slow
def test_retraining_gives_the_shipped_weights(tmp_cache):
    """train_default is deterministic: on the machine that made them, the bytes are equal."""
    bundle = ck.train_default()
    assert ck.default_model_path().read_bytes() == ck.SHIPPED_DEFAULT.read_bytes(), (
        "retrained default weights differ from ood_core/assets/default_small_cnn.pt")
    meta = json.loads(ck.SHIPPED_DEFAULT.with_suffix(".json").read_text())
    assert bundle.info["id_test_accuracy"] == meta["id_test_accuracy"]
