"""Faces in, aligned chips out, and the way back: loading, YuNet detection, dlib landmarks, similarity alignment.

Example:
  >>> from opomjax import faces  # doctest: +SKIP
  >>> photo = faces.load_photo("alice.jpg")  # doctest: +SKIP
  >>> face = faces.align_photo(photo)  # doctest: +SKIP
  >>> protected = faces.apply_mask_to_photo(photo, mask, face.transform)  # doctest: +SKIP
"""

from opomjax.faces.align import (
    DEFAULT_MIN_FACE_SIZE,
    AlignedFace,
    NoFaceError,
    align_face,
    align_photo,
    apply_mask_to_photo,
    apply_transform,
    frame_footprint,
    invert_transform,
    similarity_transform,
    warp_from_frame,
    warp_to_frame,
)
from opomjax.faces.detect import Detection, YuNetDetector, default_yunet_path, detect_faces, nms
from opomjax.faces.io import load_photo
from opomjax.faces.landmarks import CANONICAL_DLIB5_LANDMARKS, DlibLandmarks

__all__ = [
    "CANONICAL_DLIB5_LANDMARKS",
    "DEFAULT_MIN_FACE_SIZE",
    "AlignedFace",
    "Detection",
    "DlibLandmarks",
    "NoFaceError",
    "YuNetDetector",
    "align_face",
    "align_photo",
    "apply_mask_to_photo",
    "apply_transform",
    "default_yunet_path",
    "detect_faces",
    "frame_footprint",
    "invert_transform",
    "load_photo",
    "nms",
    "similarity_transform",
    "warp_from_frame",
    "warp_to_frame",
]
