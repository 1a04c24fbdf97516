"""How an image file becomes the uint8 pixels a model sees (docs/architecture.md, "Image decoding").

One rule for every mode Pillow opens, applied by the scan (:func:`check`, which refuses a file
whose pixels cannot be mapped) and by every decode (:func:`pixels`):

- EXIF orientation is applied (the picture as a viewer shows it);
- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``) convert with Pillow, as before;
  other modes (CIELAB, Pillow's raw bit layouts) are refused: Pillow has no colour-correct conversion;
- 16-bit greyscale (``I;16``, ``I;16B`` …) is scaled by its full range: ``v * 255 / 65535``, rounded,
  so a 16-bit file and its 8-bit copy give the same pixels;
- 32-bit integer (``I``) and float (``F``) images carry no declared range: values in 0–255 are
  taken as 8-bit, integers up to 65535 as 16-bit, floats in 0–1 as fractions of full scale; any
  other range (negative values, NaN, larger numbers) is refused with the file and its range;
- alpha (``LA``, ``RGBA``, a palette with transparency) is composited over black, i.e. the colour
  is premultiplied by its opacity: a transparent pixel is black whatever colour the file hides
  under it, so two files that look the same give the same input;
- a multi-frame file (GIF, TIFF) gives its first frame.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import DataError

GRAY_BANDS = {("1",), ("L",), ("I",), ("F",), ("L", "A"), ("L", "a")}
SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes Pillow converts to "L"/"RGB" correctly (the conversions used before this module).
PLAIN = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")
ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
ORIENTATION = 0x0112
# Tolerances of the value ranges of I and F images: float rounding just past 0 or 1 (0-1 images)
# and values that round into 0-255 (0-255 images) are kept.
FLOAT_EPS = 1e-3


class UnmappableImage(DataError):
    """An image whose pixel values have no recognisable range (or whose mode has no mapping)."""


def is_gray(im: Any) -> bool:
    """Whether ``im`` has one colour channel (a greyscale palette counts)."""
    if im.mode in ("P", "PA"):
        return _palette_gray(im)
    return tuple(im.getbands()) in GRAY_BANDS


def _palette_gray(im: Any) -> bool:
    try:
        pal = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
        return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
    except Exception:  # noqa: BLE001 - an odd palette: treated as colour
        return False


def orientation(im: Any) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or unreadable)."""
    try:
        o = int(im.getexif().get(ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF: shown as stored, as viewers do
        return 1
    return o if 1 <= o <= 8 else 1


def transposed(o: int) -> bool:
    """Whether orientation ``o`` swaps height and width (5-8: a quarter turn)."""
    return o >= 5


def check(im: Any, name: str) -> None:
    """Raise :class:`UnmappableImage` when :func:`pixels` would refuse ``im``. Reads the pixels
    only for the modes whose mapping depends on the values (``I``, ``F``); cheap otherwise."""
    if im.mode in ("I", "F"):
        _wide_to_uint8(im, name)
    elif im.mode not in PLAIN + ALPHA + SIXTEEN:
        raise UnmappableImage(f"{name}: images of mode {im.mode} are not mapped to pixels "
                              "(save it as 8- or 16-bit greyscale, RGB or RGBA)")


def pixels(im: Any, gray: bool, name: str) -> np.ndarray:
    """``im`` as uint8 ``(H, W, 1)`` (``gray``) or ``(H, W, 3)`` by the module's rule."""
    from PIL import ImageOps

    if orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    want = "L" if gray else "RGB"
    mode = im.mode
    if mode in PLAIN and not (mode == "P" and "transparency" in im.info):
        arr = np.asarray(im.convert(want))
    elif mode in SIXTEEN or mode in ("I", "F"):
        one = _wide_to_uint8(im, name)
        arr = one if gray else np.repeat(one[..., None], 3, axis=2)
    elif mode in ALPHA or mode == "P":
        arr = _over_black(im, gray)
    else:
        check(im, name)  # raises with the reason
        arr = np.asarray(im.convert(want))
    arr = np.asarray(arr, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _wide_to_uint8(im: Any, name: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float greyscale image as uint8 ``(H, W)``."""
    a = np.asarray(im)
    if im.mode in SIXTEEN:
        return _scaled(a, 255.0 / 65535.0)
    kind = "32-bit float" if im.mode == "F" else "32-bit integer"
    if a.size == 0:
        return a.astype(np.uint8)
    if im.mode == "F" and not np.isfinite(a).all():
        raise UnmappableImage(f"{name}: a {kind} image holding NaN or infinite values; its pixels cannot be mapped")
    lo, hi = float(a.min()), float(a.max())
    if im.mode == "F" and lo >= -FLOAT_EPS and hi <= 1 + FLOAT_EPS:
        return _scaled(a, 255.0)
    if lo >= (-0.5 if im.mode == "F" else 0) and hi <= 255.5:
        return _scaled(a, 1.0)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return _scaled(a, 255.0 / 65535.0)
    expected = "0–1 or 0–255" if im.mode == "F" else "0–255 or 0–65535"
    raise UnmappableImage(f"{name}: a {kind} image with values from {lo:.4g} to {hi:.4g}, in no range "
                          f"the workbench recognises ({expected}); save it as 8- or 16-bit, or scale it to 0–1")


def _scaled(a: np.ndarray, k: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * k), 0, 255).astype(np.uint8)


def _over_black(im: Any, gray: bool) -> np.ndarray:
    """Composite over black: Pillow's premultiplied modes (``La``, ``RGBa``) are exactly that."""
    if is_gray(im):
        la = np.asarray(im.convert("LA"), np.uint16)
        one = ((la[..., 0] * la[..., 1] + 127) // 255).astype(np.uint8)  # rounded premultiplication
        return one if gray else np.repeat(one[..., None], 3, axis=2)
    rgba = np.asarray(im.convert("RGBA"), np.uint16)
    rgb = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    if not gray:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
