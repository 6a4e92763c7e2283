"""Photo-space (end-to-end) evaluation: the mask put into each original test photo, the photo saved, and the face
found and aligned again, as a deployed recognition system would see it.

For every test photo of a protocol: the photo is read from the data set's folder and its face aligned exactly as
the data set aligned it (:func:`opomjax.faces.align_photo`: YuNet's box, dlib's 5 landmarks, the canonical frame);
the identity's mask is warped into the photo inside the face's footprint (:func:`opomjax.faces.apply_mask_to_photo`,
as the protect tool does); the photo is saved under the condition (:func:`opomjax.faces.channel.save_photo`: PNG
or JPEG 75) and read back; then the face is detected and aligned again in the saved photo by the same pipeline,
which knows nothing of where the mask went. The chips that come out are what every target embeds. A photo in
which no face is found any more is *lost*: it cannot be identified, and the caller counts it as such.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
from tqdm import tqdm

from opomjax import faces
from opomjax.faces import channel


def saved_photos(protocol, masks, lfw_dir, condition: str, *, insertion: str = faces.MASK_INSERTION):
  """The protected test photos of ``protocol`` as read back after saving under ``condition``, in the order of
  the flattened test chips: yields ``(row, photo)`` with ``photo`` ``(h, w, 3)`` uint8.

  Args:
    protocol: a :class:`opomjax.data.Protocol` with ``test_files`` (paths relative to ``lfw_dir``).
    masks: ``(k, H, W, 3)`` float masks in the protocol's frame, one per identity (zeros: the photos unmasked).
    lfw_dir: the folder the test files are in.
    condition: a :data:`opomjax.faces.channel.PHOTO_CONDITIONS` name.
    insertion: how each mask goes into its photo (:func:`opomjax.faces.apply_mask_to_photo`).

  Raises:
    ValueError: the protocol has no test files, shapes disagree, or an unknown condition.
    FileNotFoundError: ``lfw_dir`` is not a folder holding the test files.
  """
  if condition not in channel.PHOTO_CONDITIONS:
    raise ValueError(f"condition must be one of {', '.join(channel.PHOTO_CONDITIONS)}, got {condition!r}")
  k, m = protocol.test.shape[:2]
  if len(protocol.test_files) != k or any(len(files) != m for files in protocol.test_files):
    raise ValueError("photo-space evaluation needs the protocol's test_files (the source photo of every test chip)")
  masks = np.asarray(masks, np.float32)
  if masks.shape != (k,) + protocol.test.shape[2:]:
    raise ValueError(f"masks must have shape {(k,) + protocol.test.shape[2:]}, got {masks.shape}")
  root = pathlib.Path(lfw_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"photo-space evaluation needs LFW as a folder of photos; {root} is not a folder")
  frame = _frame_of(protocol)
  for i in range(k):
    for j in range(m):
      path = root / protocol.test_files[i][j]
      photo = faces.load_photo(path)
      protected = faces.apply_mask_to_photo(photo, masks[i], _clean_transform(str(path), frame), frame=frame,
                                            insertion=insertion)
      yield i * m + j, channel.save_photo(protected, condition)


@functools.lru_cache(maxsize=16384)
def _clean_transform(path: str, frame) -> np.ndarray:
  """The photo -> chip transform of a clean test photo's face, found once per photo (every method and condition
  puts its mask into the same place)."""
  return faces.align_photo(faces.load_photo(path), frame=frame).transform


def realigned_chips(protocol, masks, lfw_dir, condition: str, *, insertion: str = faces.MASK_INSERTION,
                    desc: str | None = None):
  """The chips a system finds in the protected, saved test photos of ``protocol`` (:func:`saved_photos`): the
  face detected and aligned again by the data set's pipeline (YuNet, dlib's 5 points, the canonical frame).

  Returns:
    ``chips`` ``(k * m, H, W, 3)`` uint8 (zeros where lost) and ``lost`` ``(k * m,)`` bool.
  """
  k, m = protocol.test.shape[:2]
  frame = _frame_of(protocol)
  chips = np.zeros((k * m,) + protocol.test.shape[2:], np.uint8)
  lost = np.zeros(k * m, bool)
  photos = saved_photos(protocol, masks, lfw_dir, condition, insertion=insertion)
  for row, saved in tqdm(photos, total=k * m, desc=desc, disable=desc is None, unit="photo", leave=False):
    try:
      chips[row] = channel.to_uint8(faces.align_photo(saved, frame=frame).chip)
    except faces.NoFaceError:
      lost[row] = True
  return chips, lost


def _frame_of(protocol):
  from opomjax import frame as frame_lib  # pylint: disable=g-import-not-at-top

  frame = frame_lib.CANONICAL
  if protocol.frame_name != frame.name or tuple(protocol.frame_size) != tuple(frame.size):
    raise ValueError(f"photo-space evaluation supports the canonical frame {frame.name!r}; the protocol's chips are "
                     f"in {protocol.frame_name!r}")
  return frame
