"""Photo files -> canonical-frame chips, once per dataset, over several processes.

Each photo is detected and aligned by :func:`opomjax.faces.align_photo` (YuNet's box, dlib's 5 points in it).
A photo in which no face is found is aligned by a *fallback*: a fixed landmark template for the kind of photo
(see :data:`FALLBACKS`), mapped into the canonical frame by the same similarity warp as a detected face. Every
chip records how it was aligned (``"detected"``, ``"fallback"``, or ``"given"`` for photos that arrive already
aligned) so that fallbacks can be counted.
"""

from __future__ import annotations

from concurrent import futures
import dataclasses
import functools
import multiprocessing
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tqdm

from opomjax import frame as frame_lib
from opomjax.faces.landmarks import DEFAULT_LANDMARKS

#: Mean YuNet landmarks of the LFW deep-funneled photos, as fractions of the photo's (width, height), measured
#: on every 10th photo in name order (1,324 photos, a face found in each; per-coordinate spread 0.015-0.033).
#: The deep-funneled photos are centred on their subject, so this fixed template is a sound alignment for the
#: few photos in which the detector finds no face.
LFW_DEEPFUNNELED_LANDMARKS = np.array(
    [[0.4175, 0.4505], [0.5906, 0.4474], [0.5050, 0.5471], [0.4335, 0.6256], [0.5817, 0.6249]])


def lfw_fallback_frame(height: int, width: int) -> frame_lib.Frame:
  """The LFW deep-funneled template scaled to a ``height x width`` photo."""
  return frame_lib.make_frame("lfw_deepfunneled", (height, width),
                              LFW_DEEPFUNNELED_LANDMARKS * np.array([width, height]))


def centered_arcface_frame(height: int, width: int) -> frame_lib.Frame:
  """The ArcFace template scaled to the photo's central square.

  The frame of a photo that is already ArcFace-aligned (the 112x112 images of the OPOM releases), and a
  fallback for photos framed around one face.
  """
  side = min(height, width)
  offset = np.array([(width - side) / 2, (height - side) / 2])
  landmarks = frame_lib.ARCFACE_112_LANDMARKS * (side / 112.0) + offset
  return frame_lib.make_frame("center", (height, width), landmarks)


#: Fallback name -> (photo height, width) -> the frame the photo is assumed to be in.
FALLBACKS: dict[str, Callable[[int, int], frame_lib.Frame]] = {
    "lfw": lfw_fallback_frame,
    "center": centered_arcface_frame,
}


@dataclasses.dataclass(frozen=True)
class Chip:
  """One aligned photo: ``image`` (H, W, 3) uint8, ``transform`` (2, 3) photo -> chip, and how it was aligned."""

  image: np.ndarray
  transform: np.ndarray
  alignment: str


def to_uint8(images) -> np.ndarray:
  return np.clip(np.rint(np.asarray(images)), 0, 255).astype(np.uint8)


def template_chip(photo: np.ndarray, src: frame_lib.Frame, dst: frame_lib.Frame, alignment: str) -> Chip:
  """Maps a photo whose landmarks sit where ``src`` says into ``dst`` (no detection)."""
  from opomjax import faces  # pylint: disable=g-import-not-at-top

  # Rounded so that exact maps stay exact (a 112x112 ArcFace image lands as a pure shift, rim included).
  transform = np.round(faces.similarity_transform(src.landmarks_array, dst.landmarks_array), 9)
  return Chip(to_uint8(faces.warp_to_frame(photo, transform, dst)), transform.astype(np.float32), alignment)


def align_one(path: str, *, frame: frame_lib.Frame, fallback: str | None, detector=None,
              landmarks=DEFAULT_LANDMARKS) -> Chip:
  """Detects and aligns the face of one photo file; uses the ``fallback`` template where none is found."""
  from opomjax import faces  # pylint: disable=g-import-not-at-top

  photo = faces.load_photo(path)
  try:
    face = faces.align_photo(photo, frame=frame, detector=detector, landmarks=landmarks)
    return Chip(to_uint8(face.chip), np.asarray(face.transform, np.float32), "detected")
  except faces.NoFaceError:
    if fallback is None:
      raise
    return template_chip(photo, FALLBACKS[fallback](*photo.shape[:2]), frame, "fallback")


_WORKER_DETECTOR = None


def _init_worker(detector_path):
  global _WORKER_DETECTOR
  from opomjax import faces  # pylint: disable=g-import-not-at-top

  _WORKER_DETECTOR = faces.YuNetDetector(detector_path, num_threads=1)


def _align_in_worker(path, frame, fallback, landmarks):
  return align_one(path, frame=frame, fallback=fallback, detector=_WORKER_DETECTOR, landmarks=landmarks)


def default_num_workers() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def align_files(paths: Sequence[str], *, frame: frame_lib.Frame | None = None,
                fallback: str | None = "center", num_workers: int | None = None,
                detector_path: str | None = None, desc: str = "Aligning faces",
                landmarks: str = DEFAULT_LANDMARKS) -> Iterator[Chip]:
  """Aligns photo files in order, with a progress bar.

  Args:
    paths: photo files.
    frame: the output frame (default: :data:`opomjax.frame.CANONICAL`).
    fallback: a key of :data:`FALLBACKS`, or None to raise :class:`opomjax.faces.NoFaceError`.
    num_workers: processes; ``0`` or ``1`` aligns in this process (default: every available core).
    detector_path: the YuNet ONNX file (None: the detector's default).
    desc: progress-bar label.
    landmarks: the points faces are aligned by, a name in :data:`opomjax.faces.landmarks.LANDMARK_MODELS`
      (see :func:`opomjax.faces.align_face`).

  Yields:
    One :class:`Chip` per path, in the order of ``paths``.
  """
  if fallback is not None and fallback not in FALLBACKS:
    raise ValueError(f"fallback must be one of {sorted(FALLBACKS)} or None, got {fallback!r}")
  frame = frame or frame_lib.CANONICAL
  num_workers = default_num_workers() if num_workers is None else num_workers
  bar = tqdm.tqdm(total=len(paths), desc=desc, unit="photo")
  try:
    if num_workers <= 1 or len(paths) < 2 * num_workers:
      from opomjax import faces  # pylint: disable=g-import-not-at-top

      detector = faces.YuNetDetector(detector_path)
      for path in paths:
        yield align_one(path, frame=frame, fallback=fallback, detector=detector, landmarks=landmarks)
        bar.update()
      return
    # "spawn": the parent may hold JAX / onnxruntime thread pools that a fork would copy in a broken state.
    work = functools.partial(_align_in_worker, frame=frame, fallback=fallback, landmarks=landmarks)
    with futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(detector_path,)) as pool:
      try:
        for chip in pool.map(work, paths, chunksize=16):
          yield chip
          bar.update()
      except futures.process.BrokenProcessPool as e:
        raise RuntimeError(
            "the alignment worker processes died. With num_workers > 1 the calling script must guard its entry "
            "point with `if __name__ == '__main__':` (workers are spawned); or pass num_workers=1.") from e
  finally:
    bar.close()
