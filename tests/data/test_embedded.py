import numpy as np
import pytest

from ood_core.data import DataError, ImageDataset, get_dataset, list_datasets

EMBEDDED = ["mnist", "mnist:train", "letters", "textures", "faces", "gaussian", "uniform", "digits8x8", "aux_val"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_sets_are_28x28_uint8_and_fingerprinted(name):
    ds = get_dataset(name)
    assert ds.images.dtype == np.uint8
    assert ds.images.shape[1:] == (28, 28, 1)
    assert len(ds) >= 400
    assert len(ds.fingerprint) == 16
    assert ds.images.std() > 5  # not blank


def test_mnist_split_is_stratified_fixed_and_disjoint():
    tr, te = get_dataset("mnist:train"), get_dataset("mnist")
    assert len(tr) == 4000 and len(te) == 1000
    assert not set(tr.sample_ids) & set(te.sample_ids)
    counts = np.bincount(te.labels, minlength=10) / 1000
    full = np.bincount(np.concatenate([tr.labels, te.labels]), minlength=10) / 5000
    assert np.abs(counts - full).max() < 0.005


def test_builders_are_deterministic():
    from ood_core.data import embedded
    a, b = embedded.letters(seed=3, n=50), embedded.letters(seed=3, n=50)
    assert a.fingerprint == b.fingerprint
    assert embedded.letters(seed=4, n=50).fingerprint != a.fingerprint
    assert embedded.textures(seed=1, n=20).fingerprint == embedded.textures(seed=1, n=20).fingerprint


def test_letters_exclude_digit_like_glyphs():
    ds = get_dataset("letters")
    assert not set(ds.meta["chars"]) & set("OoIlSsZzBbg")


def test_aux_pool_is_large_and_disjoint_from_test_sets():
    aux = get_dataset("aux")
    assert len(aux) >= 20000
    test_fps = {get_dataset(n).fingerprint for n in ["letters", "textures", "faces", "gaussian", "uniform"]}
    assert aux.fingerprint not in test_fps
    # no aux image equals any texture/face image
    tex = {im.tobytes() for im in get_dataset("textures").images}
    assert not any(im.tobytes() in tex for im in aux.images[:2000])


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(DataError, match="available: .*mnist"):
        get_dataset("cifar11")
    with pytest.raises(DataError, match="no 'train' split"):
        get_dataset("letters:train")


def test_imagedataset_rejects_bad_shapes():
    with pytest.raises(DataError, match="empty"):
        ImageDataset("x", np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0))
    with pytest.raises(DataError, match="C in"):
        ImageDataset("x", np.zeros((2, 4, 4, 2), np.uint8), None)
    with pytest.raises(DataError, match="uint8"):
        ImageDataset("x", np.zeros((2, 4, 4), np.float32), None)
    with pytest.raises(DataError, match="labels"):
        ImageDataset("x", np.zeros((2, 4, 4), np.uint8), np.zeros(3))


def test_registry_lists_roles():
    roles = {s.name: s.role for s in list_datasets()}
    assert roles["mnist"] == "id_test" and roles["letters"] == "ood_test" and roles["digits8x8"] == "shifted_id"
    assert roles["aux"] == "aux" and roles["aux_val"] == "ood_val"
