"""Photos in and out: any common image file (or array) in, an upright 8-bit RGB view for the face finder, and
the photo's own samples (channels, alpha, bit depth) kept to be written back as they came.

:func:`read_photo` returns a :class:`Photo`: ``pixels``, the upright samples in the photo's own layout, and
``rgb``, the 8-bit RGB view every face function works on (what :func:`load_photo` returns). Conversions, in
order:

* EXIF orientation: the pixels are rotated/flipped so that the photo is upright as a viewer sees it
  (``PIL.ImageOps.exif_transpose``); neither array carries an orientation tag any more.
* Layout of ``pixels``: greyscale ``(h, w)``, greyscale + alpha ``(h, w, 2)``, RGB ``(h, w, 3)``, RGBA
  ``(h, w, 4)``; uint8, or uint16 for 16-bit data (16-bit greyscale; 48/64-bit RGB(A) PNGs, whose low bytes
  Pillow's decoder drops and which are decoded a second time for them). A transparency entry of a palette,
  greyscale or RGB image becomes an alpha channel; palette, CMYK, YCbCr, LAB and HSV become RGB(A); 1-bit
  becomes 8-bit greyscale; 32-bit integer and float greyscale become 16-bit. Each such change is recorded in
  ``Photo.notes``: a protected photo cannot be written back in that form.
* The ``rgb`` view: 16-bit values scaled to 8 bits with ``round(v / 257)`` (65535 maps to 255); greyscale
  repeated over three channels; transparency composited over a **white** background:
  ``out = a * rgb + (1 - a) * 255`` with ``a = alpha / 255``.

:func:`encode_photo` writes ``pixels`` back: PNG keeps every layout and 16 bits; JPEG keeps greyscale and RGB
at 8 bits and cannot hold transparency.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PhotoSource = Union[str, os.PathLike, BinaryIO, np.ndarray, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Pillow's raw modes of 16-bit colour PNG data, and the raw mode that reads the low byte of each sample.
_PNG16_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
#: PNG colour type per channel count (greyscale, greyscale + alpha, RGB, RGBA).
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
IMAGE_FORMATS = ("png", "jpeg")


@dataclasses.dataclass(frozen=True, eq=False)
class Photo:
  """A photo as it was stored (upright), and the 8-bit RGB view the face functions work on.

  Attributes:
    pixels: ``(h, w)`` greyscale, ``(h, w, 2)`` greyscale + alpha, ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA;
      uint8 or uint16.
    rgb: ``(h, w, 3)`` uint8 RGB (see the module docstring): what :func:`load_photo` returns.
    source_mode: the Pillow mode of the file (``"RGB"``, ``"P"``, ``"I;16"``, ...), or ``"array"``.
    notes: what of the source cannot be written back as it was (e.g. ``"palette image written as RGB"``).
  """

  pixels: np.ndarray
  rgb: np.ndarray
  source_mode: str = "array"
  notes: tuple[str, ...] = ()

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of ``rgb``, ``(h, w, 3)``."""
    return self.rgb.shape

  @property
  def channels(self) -> int:
    """Samples per pixel of ``pixels``: 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)."""
    return 1 if self.pixels.ndim == 2 else self.pixels.shape[-1]

  @property
  def is_grey(self) -> bool:
    return self.channels in (1, 2)

  @property
  def has_alpha(self) -> bool:
    return self.channels in (2, 4)

  @property
  def bit_depth(self) -> int:
    return 16 if self.pixels.dtype == np.uint16 else 8

  @property
  def alpha(self) -> np.ndarray | None:
    """``(h, w)`` float32 opacity in [0, 1], or None for an opaque photo."""
    if not self.has_alpha:
      return None
    return self.pixels[..., -1].astype(np.float32) / (65535.0 if self.bit_depth == 16 else 255.0)

  def describe(self) -> str:
    """``"8-bit RGB"``, ``"16-bit greyscale + alpha"``, ..."""
    kind = {1: "greyscale", 2: "greyscale + alpha", 3: "RGB", 4: "RGBA"}[self.channels]
    return f"{self.bit_depth}-bit {kind}"


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
  """Composites ``(h, w, 4)`` uint8 RGBA over a white background; returns ``(h, w, 3)`` uint8 RGB."""
  rgb = rgba[..., :3].astype(np.float32)
  alpha = rgba[..., 3:4].astype(np.float32) / 255.0
  return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def to_eight_bit(pixels: np.ndarray) -> np.ndarray:
  """uint16 samples scaled to uint8 with ``round(v / 257)``; uint8 unchanged."""
  if pixels.dtype == np.uint8:
    return pixels
  return np.rint(pixels.astype(np.float64) / 257.0).astype(np.uint8)


def rgb_view(pixels: np.ndarray) -> np.ndarray:
  """The ``(h, w, 3)`` uint8 RGB view of ``pixels`` in any layout of :class:`Photo` (module docstring)."""
  eight = to_eight_bit(pixels)
  if eight.ndim == 2:
    eight = eight[..., None]
  channels = eight.shape[-1]
  if channels in (1, 2):
    eight = np.concatenate([np.repeat(eight[..., :1], 3, axis=-1), eight[..., 1:]], axis=-1)
  if eight.shape[-1] == 4:
    return composite_on_white(eight)
  return np.ascontiguousarray(eight)


def _photo(pixels: np.ndarray, source_mode: str = "array", notes: tuple[str, ...] = ()) -> Photo:
  pixels = np.ascontiguousarray(pixels)
  return Photo(pixels=pixels, rgb=rgb_view(pixels), source_mode=source_mode, notes=tuple(notes))


def _sixteen_bit_colour(data: bytes, high: np.ndarray, rawmode: str) -> np.ndarray | None:
  """The full 16-bit samples of a 48/64-bit PNG whose high bytes Pillow decoded into ``high``; None if not."""
  try:
    image = Image.open(io.BytesIO(data))
    tile = image.tile[0]
    image.tile = [tile._replace(args=_PNG16_LOW_BYTES[rawmode])]
    image.load()
    low = np.asarray(ImageOps.exif_transpose(image))
  except Exception:  # an unusual PNG (interlaced, ...): keep the 8-bit reading
    return None
  if low.shape != high.shape:
    return None
  return (high.astype(np.uint16) << 8) | low.astype(np.uint16)


def _pil_to_photo(image: Image.Image, data: bytes | None = None) -> Photo:
  """A decoded (upright) Pillow image of any mode as a :class:`Photo` (see the module docstring)."""
  mode = image.mode
  rawmode = image.info.get("_opomjax_rawmode")
  if mode in _SIXTEEN_BIT_MODES:
    return _photo(np.asarray(image).astype(np.uint16), mode)
  if mode in ("I", "F"):
    values = np.asarray(image).astype(np.float64)
    notes = () if mode == "I" and values.min() >= 0 and values.max() <= 65535 else (
        f"{'32-bit integer' if mode == 'I' else 'floating-point'} greyscale written as 16-bit greyscale",)
    return _photo(np.clip(np.rint(values), 0, 65535).astype(np.uint16), mode, notes)
  if mode == "1":
    return _photo(np.asarray(image.convert("L")), mode, ("1-bit image written as 8-bit greyscale",))
  transparent = "transparency" in image.info
  if mode == "L":
    return _photo(np.asarray(image.convert("LA")) if transparent else np.asarray(image), mode)
  if mode in ("LA", "La"):
    return _photo(np.asarray(image.convert("LA")), mode)
  if mode in ("RGB", "RGBA"):
    pixels = np.asarray(image.convert("RGBA") if transparent and mode == "RGB" else image)
    notes = ()
    if rawmode in _PNG16_LOW_BYTES and data is not None and not transparent:
      full = _sixteen_bit_colour(data, pixels, rawmode)
      if full is not None:
        return _photo(full, mode)
    if rawmode == "LA;16B":  # Pillow reads 16-bit greyscale + alpha as 8-bit RGBA
      return _photo(pixels[..., [0, 3]], "LA", ("16-bit greyscale + alpha read and written at 8 bits",))
    if rawmode and ";16" in rawmode:
      notes = (f"16-bit {mode} data read and written at 8 bits",)
    return _photo(pixels, mode, notes)
  target = "RGBA" if (mode in ("PA", "RGBa") or transparent) else "RGB"
  what = {"P": "palette", "PA": "palette", "RGBa": "premultiplied RGBA"}.get(mode, mode)
  notes = () if mode == "RGBa" else (f"{what} image written as {target}",)
  return _photo(np.asarray(image.convert(target)), mode, notes)


def _array_to_photo(array: np.ndarray) -> Photo:
  """Validates an in-memory photo and wraps it as a :class:`Photo`."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
    raise ValueError(
        f"image must have shape (h, w), (h, w, 1), (h, w, 2), (h, w, 3) or (h, w, 4); got shape {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"image is empty: shape {array.shape}")
  if array.dtype in (np.uint8, np.uint16):
    pass
  elif np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
      raise ValueError("a float image must be finite and lie in [0, 255] (RGB units, not [0, 1])")
    array = np.rint(array).astype(np.uint8)
  else:
    raise ValueError(f"image dtype must be uint8, uint16 or float in [0, 255]; got {array.dtype}")
  return _photo(array)


def read_photo(source: PhotoSource | Photo) -> Photo:
  """Reads a photo: its upright samples in their own layout, and the 8-bit RGB view.

  Args:
    source: a path, an open binary file, a ``PIL.Image.Image``, an array (``(h, w)``, ``(h, w, 1)``, ``(h, w,
      2)``, ``(h, w, 3)`` or ``(h, w, 4)``; uint8, uint16, or float in [0, 255], rounded to uint8; assumed
      upright) or a :class:`Photo` (returned as it is).

  Returns:
    A :class:`Photo`.

  Raises:
    FileNotFoundError: the path does not exist.
    ValueError: the file is not a readable image, or the array has a bad shape, dtype or range.
  """
  if isinstance(source, Photo):
    return source
  if isinstance(source, np.ndarray):
    return _array_to_photo(source)
  data = None
  if isinstance(source, Image.Image):
    image = source
  else:
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
      raise FileNotFoundError(f"photo not found: {os.fspath(source)}")
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<file>")
    try:
      if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
          data = f.read()
      else:
        data = source.read()
      image = Image.open(io.BytesIO(data))
      rawmode = image.tile[0].args if image.format == "PNG" and image.tile else None
      image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
      raise ValueError(f"cannot read photo {name!s}: {e}") from e
    if isinstance(rawmode, str):
      image.info["_opomjax_rawmode"] = rawmode
  rawmode = image.info.get("_opomjax_rawmode")
  image = ImageOps.exif_transpose(image)
  if rawmode is not None:
    image.info["_opomjax_rawmode"] = rawmode
  return _pil_to_photo(image, data)


def load_photo(source: PhotoSource | Photo) -> np.ndarray:
  """Loads a photo as an upright ``(h, w, 3)`` uint8 RGB array (the ``rgb`` view of :func:`read_photo`).

  Args:
    source: anything :func:`read_photo` takes.

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
  return read_photo(source).rgb


def _png16_bytes(pixels: np.ndarray) -> bytes:
  """A 16-bit PNG of ``(h, w)`` or ``(h, w, c)`` uint16 samples (Pillow writes only 16-bit greyscale)."""
  samples = pixels[..., None] if pixels.ndim == 2 else pixels
  h, w, c = samples.shape
  rows = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
  raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

  def chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

  header = struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOUR_TYPES[c], 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def check_image_format(image_format: str, jpeg_quality: int = 95) -> None:
  """ValueError naming the option unless ``image_format`` is png/jpeg and ``jpeg_quality`` an int in [1, 100]."""
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer)) or not 1 <= jpeg_quality <= 100:
    raise ValueError(f"jpeg_quality must be an integer in [1, 100], got {jpeg_quality!r}")


def format_losses(photo: Photo | np.ndarray, image_format: str) -> list[str]:
  """What writing ``photo`` as ``image_format`` would lose (empty: nothing); JPEG drops alpha and 16 bits."""
  pixels = photo.pixels if isinstance(photo, Photo) else np.asarray(photo)
  if image_format != "jpeg":
    return []
  losses = []
  if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
    losses.append("transparency (JPEG has no alpha channel)")
  if pixels.dtype == np.uint16:
    losses.append("16-bit precision (JPEG holds 8 bits)")
  return losses


def encode_photo(photo: Photo | np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
  """PNG (lossless) or JPEG (no chroma subsampling) bytes of a photo's samples, without metadata.

  Args:
    photo: a :class:`Photo` (its ``pixels`` are written) or an array in one of its layouts: ``(h, w)``, ``(h,
      w, 2)``, ``(h, w, 3)``, ``(h, w, 4)``, uint8 or uint16.
    image_format: ``"png"`` keeps every layout, 16 bits included; ``"jpeg"`` writes greyscale or RGB at 8 bits
      (16-bit samples are scaled with ``round(v / 257)``).
    jpeg_quality: JPEG quality in [1, 100].

  Raises:
    ValueError: a bad format or quality, a bad array, or transparency to be written as JPEG.
  """
  check_image_format(image_format, jpeg_quality)
  pixels = photo.pixels if isinstance(photo, Photo) else np.asarray(photo)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3) or (
      pixels.ndim == 3 and pixels.shape[-1] not in (2, 3, 4)):
    raise ValueError(f"photo must be (h, w[, 2|3|4]) uint8 or uint16; got {pixels.shape} {pixels.dtype}")
  buf = io.BytesIO()
  if image_format == "png":
    if pixels.dtype == np.uint16:
      return _png16_bytes(pixels)
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")  # L, LA, RGB or RGBA by shape
    return buf.getvalue()
  if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
    raise ValueError("JPEG cannot hold transparency; write this photo as PNG (image_format='png')")
  pixels = to_eight_bit(pixels)
  Image.fromarray(np.ascontiguousarray(pixels)).save(
      buf, format="JPEG", quality=int(jpeg_quality), subsampling=0)
  return buf.getvalue()
