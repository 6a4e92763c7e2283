"""Faces in, aligned chips out, and the way back: loading, YuNet detection, dlib landmarks, similarity alignment.

The photo <-> canonical-frame round trip of a mask, as a differentiable filter, is in
:mod:`opomjax.faces.roundtrip` (imported on its own: it needs JAX).

Example:
  >>> from opomjax import faces  # doctest: +SKIP
  >>> photo = faces.load_photo("alice.jpg")  # doctest: +SKIP
  >>> face = faces.align_photo(photo)  # doctest: +SKIP
  >>> protected = faces.apply_mask_to_photo(photo, mask, face.transform)  # doctest: +SKIP
"""

from opomjax.faces.align import (
    DEFAULT_MIN_FACE_SIZE,
    MASK_INSERTION,
    MASK_INSERTIONS,
    MASK_REFINE_STEPS,
    AlignedFace,
    NoFaceError,
    align_face,
    align_photo,
    apply_mask_to_photo,
    apply_transform,
    frame_footprint,
    invert_transform,
    refine_insertion,
    sign_insertion,
    similarity_transform,
    warp_from_frame,
    warp_to_frame,
)
from opomjax.faces.detect import Detection, YuNetDetector, default_yunet_path, detect_faces, nms
from opomjax.faces.io import Photo, encode_photo, load_photo, read_photo
from opomjax.faces.landmarks import CANONICAL_DLIB5_LANDMARKS, DlibLandmarks

__all__ = [
    "CANONICAL_DLIB5_LANDMARKS",
    "DEFAULT_MIN_FACE_SIZE",
    "MASK_INSERTION",
    "MASK_INSERTIONS",
    "MASK_REFINE_STEPS",
    "AlignedFace",
    "Detection",
    "DlibLandmarks",
    "Photo",
    "NoFaceError",
    "YuNetDetector",
    "align_face",
    "align_photo",
    "apply_mask_to_photo",
    "apply_transform",
    "default_yunet_path",
    "detect_faces",
    "encode_photo",
    "frame_footprint",
    "invert_transform",
    "load_photo",
    "nms",
    "read_photo",
    "refine_insertion",
    "sign_insertion",
    "similarity_transform",
    "warp_from_frame",
    "warp_to_frame",
]
