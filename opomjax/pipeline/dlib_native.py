"""dlib's own photo-to-descriptor pipeline, as a photo-space target (``dlib_native``).

A deployed dlib system never sees the project's chips: it finds the face with dlib's HOG frontal detector, places
dlib's 5 landmarks with its shape predictor, cuts ``get_face_chip(photo, shape, 150, 0.25)`` and runs dlib's C++
ResNet (``face_recognition_model_v1``, the same released weights the JAX port carries). This target does exactly
that, on whole photos, so a mask is judged by dlib's reference pipeline end to end. The descriptor of the chip is
computed by the JAX port of the same network (equal to dlib's C++ output to 3e-7, ``tests/test_dlib_resnet.py``)
in batches: ~40x faster here than dlib's one-chip-at-a-time C++ call, which costs 0.3 s per photo on this CPU. Gallery photos (clean test
photos, distractors) in which the detector finds no face are cut around the photo's centre (LFW photos are
centred on the face), as an enrolment would insist on a face; a protected probe without a detected face is lost.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from opomjax.models import checkpoints
from opomjax.models import registry

NAME = "dlib_native"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Half the side of the box used for a gallery photo without a detection (LFW: 250x250, face ~110 px).
FALLBACK_HALF_SIDE = 55


class DlibNative:
  """dlib's detector, shape predictor, ``get_face_chip`` and C++ descriptor; unit 128-D descriptors."""

  name = NAME

  def __init__(self):
    import dlib  # pylint: disable=g-import-not-at-top

    self._dlib = dlib
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(str(checkpoints.resolve_file("dlib_shape_predictor5")))
    self.model = registry.load_model("dlib_resnet")
    self._forward = jax.jit(lambda params, chips: self.model.net_fn(params, chips)[0])

  def chip(self, photo: np.ndarray, *, fallback: bool) -> np.ndarray | None:
    """dlib's 150x150 chip of the largest detected face of an RGB uint8 photo; without a detection, the chip of
    the photo's centre when ``fallback``, else None."""
    photo = np.ascontiguousarray(photo, np.uint8)
    detections = list(self._detector(photo, 1))
    if detections:
      rect = max(detections, key=lambda d: d.area())
    elif fallback:
      h, w = photo.shape[:2]
      s = FALLBACK_HALF_SIDE
      rect = self._dlib.rectangle(w // 2 - s, h // 2 - s, w // 2 + s, h // 2 + s)
    else:
      return None
    shape = self._predictor(photo, rect)
    return np.asarray(self._dlib.get_face_chip(photo, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

  def chips(self, photos: Sequence[np.ndarray], *, fallback: bool, desc: str | None = None):
    """dlib's chips ``(N, 150, 150, 3)`` uint8 of ``photos`` (zeros where lost) and the lost mask ``(N,)``."""
    chips = np.zeros((len(photos), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    lost = np.zeros(len(photos), bool)
    for i, photo in enumerate(tqdm(photos, desc=desc, disable=desc is None, unit="photo", leave=False)):
      chip = self.chip(photo, fallback=fallback)
      if chip is None:
        lost[i] = True
      else:
        chips[i] = chip
    return chips, lost

  def describe_chips(self, chips: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Unit descriptors ``(N, 128)`` of dlib chips ``(N, 150, 150, 3)`` (a zero chip gives a zero row)."""
    out = []
    for start in range(0, len(chips), batch_size):
      x = np.asarray(chips[start:start + batch_size], np.float32)
      m = len(x)
      x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], np.float32)])  # one compiled shape
      d = np.asarray(self._forward(self.model.params, x), np.float32)[:m]
      norm = np.linalg.norm(d, axis=-1, keepdims=True)
      out.append(np.where(chips[start:start + m].any(axis=(1, 2, 3))[:, None], d / np.maximum(norm, 1e-12), 0.0))
    return np.concatenate(out).astype(np.float32)
