import numpy as np
import torch

from ood_core import extract as ex
from ood_core import workbench as wb
from ood_core.data import get_dataset


def test_extraction_contract_and_features_are_head_input(default_bundle):
    ext = wb.get_extraction(default_bundle, "letters")
    assert ext.logits.dtype == np.float32 and ext.features.dtype == np.float32
    assert ext.logits.shape == (1000, 10) and ext.features.shape == (1000, 128)
    assert ext.head_weight.shape == (10, 128) and ext.head_bias.shape == (10,)
    assert (ext.labels == -1).all()
    np.testing.assert_allclose(ext.features @ ext.head_weight.T + ext.head_bias, ext.logits, rtol=1e-4, atol=1e-4)
    ds = get_dataset("letters")
    with torch.no_grad():
        direct = default_bundle.model(default_bundle.preprocess(ds.images[:16])).numpy()
    np.testing.assert_allclose(ext.logits[:16], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ext.sample_ids, ds.sample_ids)


def test_second_extraction_does_no_forward(default_bundle, monkeypatch):
    first = wb.get_extraction(default_bundle, "faces")

    def boom(*a, **k):
        raise AssertionError("forward pass ran although the extraction was cached")

    monkeypatch.setattr(ex, "run_forward", boom)
    wb._extractions.clear()  # as a new process would: only the disk cache is left
    again = wb.get_extraction(default_bundle, "faces")
    np.testing.assert_array_equal(first.logits, again.logits)


def test_changed_input_misses_the_cache(default_bundle):
    ds = get_dataset("gaussian")
    k1 = ex.extraction_key(default_bundle, ds)
    k2 = ex.extraction_key(default_bundle, ds.subset(np.arange(10)))
    assert k1 != k2
    import copy
    other = copy.deepcopy(default_bundle)
    other.preprocess.mean = (0.5,)
    assert ex.extraction_key(other, ds) != k1


def test_npz_roundtrip(tmp_path, default_bundle):
    ext = wb.get_extraction(default_bundle, "faces")
    p = ext.save_npz(tmp_path / "e.npz")
    back = ex.Extraction.load_npz(p)
    for k in ["logits", "features", "labels", "head_weight", "head_bias", "sample_ids"]:
        np.testing.assert_array_equal(getattr(ext, k), getattr(back, k))
    assert back.dataset == "faces"


def test_default_model_accuracy(default_bundle):
    ext = wb.get_extraction(default_bundle, "mnist")
    assert ext.accuracy >= 0.97


def test_bundle_split_leaves_the_model_intact(default_bundle):
    assert isinstance(default_bundle.model.fc, torch.nn.Linear)
    assert isinstance(default_bundle.body.fc, torch.nn.Identity)
    assert default_bundle.head is default_bundle.model.fc


def test_damaged_default_checkpoint_is_retrained(tmp_cache, monkeypatch):
    from ood_core.models import checkpoints as ck
    path = ck.default_model_path()
    path.write_bytes(b"not a checkpoint")
    path.with_suffix(".json").write_text('{"arch": "small_cnn", "num_classes": 10, "preprocess": {}}')
    calls = []
    monkeypatch.setattr(ck, "train_default", lambda progress=None: calls.append(1) or "retrained")
    assert ck.load_default() == "retrained" and calls == [1]
