"""Image decoding (issue 27, item 1): every mode the readers accept becomes the pixels the model
should see, by the rule in docs/architecture.md, "Image decoding"; what cannot be mapped is refused
with the file and the reason."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import digits_tree
from PIL import Image

from ood_core.data import DataError
from ood_core.data import readers as R
from ood_core.data.streamed import _decode, decode
from ood_core.models import Preprocess

pytestmark = pytest.mark.hostile


def _inputs(ds, pp) -> torch.Tensor:
    return torch.cat(list(ds.batches(pp, 16, workers=0)))


def test_16bit_png_folder_gives_the_8bit_folders_model_inputs(tmp_path):
    """The bar: the same digits as 8-bit and as 16-bit PNGs (with noise in the low byte, as a real
    16-bit scan has) give equal model inputs. Pillow's convert("L") clipped the 16-bit ones white."""
    eight = digits_tree(tmp_path / "d8", n_train=0, n_test=30) / "test"
    sixteen = tmp_path / "d16"
    rng = np.random.default_rng(0)
    for f in sorted(eight.rglob("*.png")):
        v = np.asarray(Image.open(f), np.int64) * 257 + rng.integers(-128, 129, (28, 28))
        out = sixteen / f.relative_to(eight)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(v, 0, 65535).astype(np.uint16)).save(out)
        assert Image.open(out).mode == "I;16"
    a, b = R.load_local(eight), R.load_local(sixteen)
    assert len(a) == len(b) == 30 and b.gray and b.meta["skipped"] == 0
    np.testing.assert_array_equal(a.labels, b.labels)
    for pp in (Preprocess((28, 28), 1), Preprocess((32, 32), 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))):
        assert torch.equal(_inputs(a, pp), _inputs(b, pp))
    np.testing.assert_array_equal(a.image(3), b.image(3))


@pytest.mark.parametrize("kind", ["float01", "float255", "int32_8bit", "int32_16bit", "I;16B"])
def test_float_and_int32_tiffs_decode_to_their_8bit_pixels(tmp_path, kind):
    rng = np.random.default_rng(1)
    a8 = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    p = tmp_path / "x.tif"
    if kind == "float01":  # decoded black before
        Image.fromarray(a8.astype(np.float32) / 255).save(p)
    elif kind == "float255":
        Image.fromarray(a8.astype(np.float32)).save(p)
    elif kind == "int32_8bit":
        Image.fromarray(a8.astype(np.int32)).save(p)
    elif kind == "int32_16bit":  # decoded white before
        Image.fromarray(a8.astype(np.int32) * 257).save(p)
    else:
        Image.frombytes("I;16B", (11, 9), (a8.astype(">u2") * 257).tobytes()).save(p)
    assert Image.open(p).mode in ("F", "I", "I;16B")
    np.testing.assert_array_equal(decode(str(p), True)[..., 0], a8)
    np.testing.assert_array_equal(decode(str(p), False), np.repeat(a8[..., None], 3, axis=2))


def test_values_in_no_recognisable_range_are_refused_with_file_and_reason(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(root / "good.tif")
    Image.fromarray(np.linspace(-3, 700, 64, dtype=np.float32).reshape(8, 8)).save(root / "wild.tif")
    nan = np.zeros((8, 8), np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(root / "nan.tif")
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32)).save(root / "huge.tif")
    ds = R.load_local(root)
    assert len(ds) == 1 and ds.meta["skipped"] == 3
    notes = " | ".join(ds.meta["skipped_files"])
    assert "wild.tif (a 32-bit float image with values from -3 to 700" in notes
    assert "nan.tif (a 32-bit float image holding NaN" in notes
    assert "huge.tif (a 32-bit integer image with values from 1.049e+06" in notes
    assert ds.image(0)[0, 0, 0] == 128  # 0.5 of full scale
    (root / "good.tif").unlink()
    with pytest.raises(DataError, match=r"none of the 3 image files .* could be read \(e\.g\. .*\.tif \(a 32-bit"):
        R.load_local(root)


def test_alpha_is_composited_over_black(tmp_path):
    """A transparent pixel is black whatever colour the file stores under it."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[0], [64], [128], [255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    want = np.round(np.array([200, 100, 50])[None, :] * rgba[:, 0, 3:4] / 255).astype(np.uint8)
    got = decode(str(tmp_path / "rgba.png"), False)
    np.testing.assert_array_equal(got[:, 0], want)
    la = np.stack([np.full((4, 4), 240, np.uint8), rgba[..., 3]], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(decode(str(tmp_path / "la.png"), True)[:, 0, 0], [0, 60, 120, 240])
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "pal.png", transparency=0)  # index 0 (white) is transparent
    np.testing.assert_array_equal(decode(str(tmp_path / "pal.png"), False)[0], [[0, 0, 0], [10, 20, 30]])


@pytest.mark.parametrize("fast", [True, False])
def test_exif_orientation_is_applied_on_both_decoders(tmp_path, monkeypatch, fast):
    from PIL import ImageOps

    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)).resize((40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    root = tmp_path / "rot"
    root.mkdir()
    base.save(root / "r.jpg", quality=95, exif=exif.tobytes())
    if not fast:
        monkeypatch.setattr("ood_core.data.streamed._jpeg_decoder", lambda: None)
    with Image.open(root / "r.jpg") as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert want.shape == (40, 24, 3)
    got = decode(str(root / "r.jpg"), False)
    assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1
    assert _decode(str(root / "r.jpg"), False).shape == (3, 40, 24)
    assert R.load_local(root).shape == (40, 24, 3)  # the scan's size is the displayed one
