"""Photo loading: any common image file (or array) in, an upright 8-bit RGB array out.

Conversions applied by :func:`load_photo`, in order:

* EXIF orientation: the pixels are rotated/flipped so that the photo is upright as a viewer sees it
  (``PIL.ImageOps.exif_transpose``); the returned array carries no orientation tag any more.
* Greyscale (``1``, ``L``, ``I``, ``I;16``, ``F``) is repeated over three channels.
* 16-bit data (``I;16*``, ``I`` and ``F`` greyscale, read as 0-65535) is scaled to 8 bits with
  ``round(v / 257)``, clipped to [0, 255], so that 65535 maps to 255. 48-bit RGB PNGs are reduced to 8 bits per
  channel by Pillow's decoder itself (it keeps the high byte).
* Transparency (``RGBA``, ``LA``, ``PA``, or a palette/greyscale image with a ``transparency`` entry) is
  composited over a **white** background: ``out = a * rgb + (1 - a) * 255`` with ``a = alpha / 255``.
* Every other mode (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, palette) is converted to RGB by Pillow.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PhotoSource = Union[str, os.PathLike, BinaryIO, np.ndarray, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
  """Composites ``(h, w, 4)`` uint8 RGBA over a white background; returns ``(h, w, 3)`` uint8 RGB."""
  rgb = rgba[..., :3].astype(np.float32)
  alpha = rgba[..., 3:4].astype(np.float32) / 255.0
  return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  """Converts a decoded Pillow image of any mode to ``(h, w, 3)`` uint8 RGB (see the module docstring)."""
  mode = image.mode
  if mode in _SIXTEEN_BIT_MODES or mode == "F":
    values = np.asarray(image).astype(np.float64)
    grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
    return composite_on_white(np.asarray(image.convert("RGBA")))
  if mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image, dtype=np.uint8)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
  """Validates an in-memory photo and converts it to ``(h, w, 3)`` uint8 RGB."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ValueError(
        f"image must have shape (h, w), (h, w, 1), (h, w, 3) or (h, w, 4); got shape {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"image is empty: shape {array.shape}")
  if array.dtype == np.uint8:
    pass
  elif array.dtype == np.uint16:
    array = np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)
  elif np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
      raise ValueError("a float image must be finite and lie in [0, 255] (RGB units, not [0, 1])")
    array = np.rint(array).astype(np.uint8)
  else:
    raise ValueError(f"image dtype must be uint8, uint16 or float in [0, 255]; got {array.dtype}")
  if array.ndim == 2:
    return np.repeat(array[..., None], 3, axis=-1)
  if array.shape[-1] == 4:
    return composite_on_white(array)
  return np.ascontiguousarray(array)


def load_photo(source: PhotoSource) -> np.ndarray:
  """Loads a photo as an upright ``(h, w, 3)`` uint8 RGB array.

  Args:
    source: a path, an open binary file, a ``PIL.Image.Image`` or an array. Arrays of shape ``(h, w)``,
      ``(h, w, 1)``, ``(h, w, 3)`` (RGB) or ``(h, w, 4)`` (RGBA) with dtype uint8, uint16 (scaled by 1/257) or
      float in [0, 255] (rounded) are accepted and converted as described in the module docstring; arrays carry
      no EXIF data, so they are assumed upright.

  Returns:
    The photo, ``(h, w, 3)`` uint8, RGB, rotated upright per its EXIF orientation tag.

  Raises:
    FileNotFoundError: the path does not exist.
    ValueError: the file is not a readable image, or the array has a bad shape, dtype or range.

  Example:
    >>> import numpy as np
    >>> load_photo(np.zeros((4, 5), np.uint8)).shape
    (4, 5, 3)
  """
  if isinstance(source, np.ndarray):
    return _array_to_rgb(source)
  if isinstance(source, Image.Image):
    image = source
  else:
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
      raise FileNotFoundError(f"photo not found: {os.fspath(source)}")
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<file>")
    try:
      image = Image.open(source)
      image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
      raise ValueError(f"cannot read photo {name!s}: {e}") from e
  image = ImageOps.exif_transpose(image)
  return _pil_to_rgb(image)
