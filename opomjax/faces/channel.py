"""What happens to a protected photo between the person who saves it and the system that looks at it.

A saved photo holds 8 bits per channel; a platform may re-encode it as JPEG, shrink it or smooth it before a
recogniser embeds it. Each *condition* here is one such channel, applied to a batch of float images in
[0, 255] with the real codec (Pillow), returning the images the recogniser sees (float32 holding 8-bit values):

=============  =================================================================================================
``float``      the float image clipped to [0, 255], not rounded (how probes were embedded before 8-bit probes;
               kept only for comparison)
``none``       the saved photo: clipped to [0, 255] and rounded to 8 bits (:func:`to_uint8`)
``jpeg90``     ... then a JPEG round trip through Pillow at quality 90 (likewise ``jpeg75``, ``jpeg50``), with
               Pillow's default 4:2:0 chroma subsampling, as a platform re-encoding an upload would
``resize0.5``  ... then shrunk to half size and enlarged back (Pillow, bicubic both ways), rounded to 8 bits
``blur``       ... then a mild Gaussian blur (Pillow ``GaussianBlur(radius=1)``), rounded to 8 bits
=============  =================================================================================================

Two more conditions act on the whole photo, not on the chip (:data:`PHOTO_CONDITIONS`, evaluated by
:mod:`opomjax.pipeline.photos`): the mask is warped into the original photo, the photo is saved as PNG
(``photo_png``, lossless) or as JPEG at quality 75 (``photo_jpeg75``), and the recogniser finds and aligns the
face again itself. :func:`save_photo` is their codec step.

Example:
  >>> import numpy as np
  >>> from opomjax.faces import channel
  >>> x = np.full((1, 16, 16, 3), 100.4, np.float32)
  >>> float(channel.apply_condition(x, "none")[0, 0, 0, 0]), float(channel.apply_condition(x, "float")[0, 0, 0, 0])
  (100.0, 100.4000015258789)
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL import ImageFilter

#: Conditions applied to the chip (:func:`apply_condition`), in the order tables list them.
CHIP_CONDITIONS = ("float", "none", "jpeg90", "jpeg75", "jpeg50", "resize0.5", "blur")
#: Conditions applied to the whole photo, the face found again afterwards (:mod:`opomjax.pipeline.photos`).
PHOTO_CONDITIONS = ("photo_png", "photo_jpeg75")
#: Every condition name.
CONDITIONS = CHIP_CONDITIONS + PHOTO_CONDITIONS

JPEG_QUALITIES = {"jpeg90": 90, "jpeg75": 75, "jpeg50": 50}
RESIZE_FACTOR = 0.5
BLUR_RADIUS = 1.0


def parse_conditions(text: str | list | tuple) -> tuple[str, ...]:
  """``"none,jpeg75"`` (or a list of names) as a tuple of known condition names, duplicates dropped.

  Raises:
    ValueError: an empty list or an unknown name (the message lists the known ones).
  """
  names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if str(n).strip()]
  if not names:
    raise ValueError(f"conditions: empty; name at least one of {', '.join(CONDITIONS)}")
  unknown = [n for n in names if n not in CONDITIONS]
  if unknown:
    raise ValueError(f"conditions: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(CONDITIONS)}")
  return tuple(dict.fromkeys(names))


def to_uint8(images) -> np.ndarray:
  """Float images in 0-255 units as a saved photo holds them: clipped to [0, 255], rounded to the nearest
  integer (ties to even, ``numpy.rint``: how the protect tool writes photos), uint8.

  Rounding, not truncation: casting ``x.astype(uint8)`` (or PyTorch's ``.byte()``) truncates and so darkens every
  pixel by half a level on average.
  """
  return np.rint(np.clip(np.asarray(images, np.float32), 0.0, 255.0)).astype(np.uint8)


def jpeg_round_trip(images_uint8: np.ndarray, quality: int) -> np.ndarray:
  """Each ``(H, W, 3)`` uint8 image encoded as JPEG by Pillow at ``quality`` (default subsampling) and decoded."""
  out = np.empty_like(images_uint8)
  for i, image in enumerate(images_uint8):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out[i] = np.asarray(Image.open(buf).convert("RGB"))
  return out


def resize_round_trip(images_uint8: np.ndarray, factor: float = RESIZE_FACTOR) -> np.ndarray:
  """Each uint8 image shrunk by ``factor`` and enlarged back to its size (Pillow, bicubic), uint8."""
  out = np.empty_like(images_uint8)
  h, w = images_uint8.shape[1:3]
  small = (max(1, round(w * factor)), max(1, round(h * factor)))
  for i, image in enumerate(images_uint8):
    shrunk = Image.fromarray(image).resize(small, Image.Resampling.BICUBIC)
    out[i] = np.asarray(shrunk.resize((w, h), Image.Resampling.BICUBIC))
  return out


def gaussian_blur(images_uint8: np.ndarray, radius: float = BLUR_RADIUS) -> np.ndarray:
  """Each uint8 image smoothed by Pillow's ``GaussianBlur(radius)``, uint8."""
  out = np.empty_like(images_uint8)
  for i, image in enumerate(images_uint8):
    out[i] = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
  return out


def apply_condition(images, condition: str) -> np.ndarray:
  """``images`` ``(N, H, W, 3)`` float in 0-255 units as the recogniser sees them after ``condition``.

  Returns float32 ``(N, H, W, 3)``: integer values in [0, 255] for every condition but ``float``.

  Raises:
    ValueError: an unknown condition or images not shaped ``(N, H, W, 3)``.
  """
  (condition,) = parse_conditions([condition])
  if condition in PHOTO_CONDITIONS:
    raise ValueError(f"condition {condition!r} acts on whole photos (opomjax.pipeline.photos), not on chips")
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, H, W, 3); got {images.shape}")
  if condition == "float":
    return np.clip(images, 0.0, 255.0)
  saved = to_uint8(images)
  if condition in JPEG_QUALITIES:
    saved = jpeg_round_trip(saved, JPEG_QUALITIES[condition])
  elif condition == "resize0.5":
    saved = resize_round_trip(saved)
  elif condition == "blur":
    saved = gaussian_blur(saved)
  return saved.astype(np.float32)


def save_photo(photo: np.ndarray, condition: str) -> np.ndarray:
  """A whole ``(h, w, 3)`` uint8 photo as read back after saving it under a photo condition: ``photo_png``
  returns it unchanged (PNG is lossless), ``photo_jpeg75`` after a Pillow JPEG round trip at quality 75."""
  if condition not in PHOTO_CONDITIONS:
    raise ValueError(f"save_photo: condition must be one of {', '.join(PHOTO_CONDITIONS)}, got {condition!r}")
  photo = np.asarray(photo)
  if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
    raise ValueError(f"photo must be (h, w, 3) uint8; got {photo.shape} {photo.dtype}")
  if condition == "photo_png":
    return photo
  return jpeg_round_trip(photo[None], 75)[0]
