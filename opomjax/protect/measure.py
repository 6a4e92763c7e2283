"""Measuring the protection: what a face-recognition system sees in the protected photos.

:func:`measure_protection` does what such a system would do with the protected photos: detect the face again,
align it, embed it, and compare it with the person's *other* clean photos.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

import opomjax
from opomjax import faces as faces_lib
from opomjax.protect import photos as photos_lib

#: Cosine-similarity thresholds at which a target declares two faces the same person, where the model's
#: authors publish one: OpenCV's SFace sample accepts ``cos >= 0.363``.
MATCH_THRESHOLDS: dict[str, float] = {"sface_onnx": 0.363, "sface": 0.363}

#: A face found in the protected photo is the protected one when their boxes overlap this much (IoU).
SAME_FACE_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class TargetSimilarity:
  """How similar a target finds each photo to the person's other clean photos, before and after protection.

  Attributes:
    target: the target's name.
    before: ``(n,)`` mean cosine similarity of clean photo ``i`` to the clean photos ``j != i`` (NaN where
      photo ``i`` has no face or no other photo has one).
    after: ``(n,)`` the same for protected photo ``i``, its face detected again (NaN where it is not found).
    threshold: the target's published match threshold on the cosine similarity, or None.
    match_before: fraction of clean pairs ``(i, j != i)`` at or above ``threshold`` (None without one).
    match_after: fraction of (protected ``i``, clean ``j != i``) pairs at or above ``threshold``.
    lost_faces: indices of photos whose clean face was found but whose protected face was not.
  """

  target: str
  before: np.ndarray
  after: np.ndarray
  threshold: float | None
  match_before: float | None
  match_after: float | None
  lost_faces: list[int]

  @property
  def mean_before(self) -> float:
    return _nanmean(self.before)

  @property
  def mean_after(self) -> float:
    return _nanmean(self.after)

  @property
  def drop(self) -> float:
    """Mean similarity before minus after, over the photos measured both ways (positive: protection)."""
    both = ~np.isnan(self.before) & ~np.isnan(self.after)
    return float(np.mean(self.before[both] - self.after[both])) if both.any() else float("nan")

  @property
  def unmeasured(self) -> list[int]:
    """Photos measured before but not after (their protected face lost, or its similarity not a number)."""
    return [int(i) for i in np.flatnonzero(~np.isnan(self.before) & np.isnan(self.after))]

  def to_dict(self) -> dict:
    return dict(target=self.target, mean_before=_finite_or_none(self.mean_before),
                mean_after=_finite_or_none(self.mean_after), drop=_finite_or_none(self.drop),
                threshold=self.threshold, match_before=self.match_before, match_after=self.match_after,
                lost_faces=self.lost_faces, before=_floats(self.before), after=_floats(self.after))


def _nanmean(x: np.ndarray) -> float:
  return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")


def _floats(x: np.ndarray) -> list:
  return [None if np.isnan(v) else float(v) for v in x]


def _finite_or_none(v: float | None) -> float | None:
  return None if v is None or not np.isfinite(v) else float(v)


def similarity_to_others(probe: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Cosine similarities of each probe ``i`` to the gallery rows ``j != i``.

  Args:
    probe: ``(n, d)`` unit embeddings, NaN rows for missing faces.
    gallery: ``(n, d)`` unit embeddings of the clean photos, NaN rows for missing faces.

  Returns:
    ``(mean, pairs)``: ``(n,)`` the mean over the valid ``j != i`` (NaN when none), and ``(n, n)`` the pair
    similarities with NaN on the diagonal and wherever a face is missing.
  """
  pairs = probe @ gallery.T
  np.fill_diagonal(pairs, np.nan)
  valid = ~np.isnan(pairs)
  counts = valid.sum(1)
  mean = np.where(counts > 0, np.where(valid, pairs, 0.0).sum(1) / np.maximum(counts, 1), np.nan)
  return mean, pairs


def _embed_faces(target, found: Sequence[faces_lib.AlignedFace | None], dim_hint: int | None = None) -> np.ndarray:
  present = [i for i, f in enumerate(found) if f is not None]
  emb = photos_lib.embed_chips(target, np.stack([found[i].chip for i in present])) if present else None
  d = emb.shape[1] if emb is not None else (dim_hint or 1)
  full = np.full((len(found), d), np.nan)
  if emb is not None:
    full[present] = emb
  return full


def _pair_rate(pairs: np.ndarray, threshold: float | None) -> float | None:
  if threshold is None:
    return None
  valid = ~np.isnan(pairs)
  return float((pairs[valid] >= threshold).mean()) if valid.any() else float("nan")


def load_targets(targets, *, allow_random_weights: bool = False) -> list:
  """Targets by name (:func:`opomjax.load_target`) or as objects with ``name`` and ``embed``.

  Names are checked first (registry names, or paths of existing ``.onnx`` files); a registered architecture
  without real weights is refused unless ``allow_random_weights``.
  """
  if isinstance(targets, (str, os.PathLike)) or hasattr(targets, "embed"):
    targets = (targets,)
  targets = list(targets)
  for t in targets:
    if isinstance(t, (str, os.PathLike)):
      photos_lib.check_model_name(t, what="target", targets=True)
    elif not (hasattr(t, "embed") and hasattr(t, "name")):
      raise ValueError(f"targets must be names or models with .name and .embed, got {type(t).__name__}")
  if not targets:
    raise ValueError("targets is empty; name at least one, e.g. ('dlib_resnet', 'sface_onnx')")
  return [opomjax.load_target(os.fspath(t), allow_random_weights=allow_random_weights)
          if isinstance(t, (str, os.PathLike)) else t for t in targets]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
  union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
  return float(inter / union) if union > 0 else 0.0


def refind_faces(photos: Sequence, reference: Sequence[faces_lib.AlignedFace | None], *, detector=None,
                 show_progress: bool = False, desc: str = "faces in protected photos"
                 ) -> list[faces_lib.AlignedFace | None]:
  """The face in each photo at the place of ``reference[i]`` (box IoU >= :data:`SAME_FACE_IOU`), or None.

  Every detected face counts, however small: a recognition system would try it too.
  """
  found: list[faces_lib.AlignedFace | None] = []
  for photo, ref in tqdm(list(zip(photos, reference)), desc=desc, unit="photo", disable=not show_progress):
    if ref is None:
      found.append(None)
      continue
    try:
      rgb = photo.rgb if isinstance(photo, faces_lib.Photo) else faces_lib.load_photo(photo)
      candidates = faces_lib.align_photo(rgb, detector=detector, min_face_size=0, select="all")
    except faces_lib.NoFaceError:
      found.append(None)
      continue
    overlaps = [_iou(np.asarray(f.box), np.asarray(ref.box)) for f in candidates]
    best = int(np.argmax(overlaps))
    found.append(candidates[best] if overlaps[best] >= SAME_FACE_IOU else None)
  return found


def measure_protection(clean_photos, protected_photos, targets=("dlib_resnet", "sface_onnx"), *, detector=None,
                       min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "largest",
                       faces: Sequence[faces_lib.AlignedFace | None] | None = None,
                       thresholds: Mapping[str, float] | None = None, allow_random_weights: bool = False,
                       show_progress: bool = False) -> dict[str, TargetSimilarity]:
  """How well the protected photos hide the person from each target, as a real system would see them.

  Faces are detected and aligned again in the protected photos (a system does not know where the mask put
  the face). For each photo ``i`` and target, the mean cosine similarity of its face to the faces of the
  person's other clean photos ``j != i`` is measured for the clean photo (``before``) and for the protected
  one (``after``).

  Args:
    clean_photos: the original photos (paths, arrays or :class:`opomjax.faces.Photo`), ``n >= 2``.
    protected_photos: the protected photos, in the same order.
    targets: target names (:func:`opomjax.load_target`: ``"dlib_resnet"``, ``"sface_onnx"``, ...) or model
      objects with ``name`` and ``embed``.
    detector: face detector (default: the shared YuNet).
    min_face_size: see :func:`opomjax.faces.align_photo`.
    select: how the face of a clean photo is chosen when ``faces`` is not given (see
      :func:`opomjax.protect.photos.choose_faces`; ``"similar"`` compares by the first target).
    faces: the clean faces the mask was applied to (``ProtectionResult.faces``): they are the clean faces, and
      in each protected photo the face at the same place is measured. Default: chosen by ``select`` in both.
    thresholds: target name -> cosine match threshold (default :data:`MATCH_THRESHOLDS`).
    allow_random_weights: see :func:`load_targets`.
    show_progress: progress bars.

  Returns:
    target name -> :class:`TargetSimilarity`.

  Raises:
    ValueError: mismatched lengths, or fewer than two clean photos with a face.
  """
  clean = photos_lib.read_photos(clean_photos)
  protected = photos_lib.read_photos(protected_photos)
  if len(clean) != len(protected):
    raise ValueError(f"protected_photos has {len(protected)} photos but clean_photos has {len(clean)}")
  thresholds = dict(MATCH_THRESHOLDS if thresholds is None else thresholds)
  targets = load_targets(targets, allow_random_weights=allow_random_weights)
  embed = lambda chips: photos_lib.embed_chips(targets[0], chips)
  if faces is None:
    clean_faces, _ = photos_lib.find_faces(clean, detector=detector, min_face_size=min_face_size, select=select,
                                           embed=embed, show_progress=show_progress, desc="faces in clean photos")
  else:
    clean_faces = list(faces)
    if len(clean_faces) != len(clean):
      raise ValueError(f"faces has {len(clean_faces)} entries but clean_photos has {len(clean)} photos")
  if sum(f is not None for f in clean_faces) < 2:
    raise ValueError("clean_photos needs at least two photos with a face to compare a photo with the others")
  if faces is None:
    protected_faces, _ = photos_lib.find_faces(protected, detector=detector, min_face_size=min_face_size,
                                               select=select, embed=embed, show_progress=show_progress,
                                               desc="faces in protected photos")
  else:
    protected_faces = refind_faces(protected, clean_faces, detector=detector, show_progress=show_progress)
  lost = [i for i, (c, p) in enumerate(zip(clean_faces, protected_faces)) if c is not None and p is None]
  results = {}
  for target in tqdm(targets, desc="targets", unit="model", disable=not show_progress):
    gallery = _embed_faces(target, clean_faces)
    probe = _embed_faces(target, protected_faces, gallery.shape[1])
    before, pairs_before = similarity_to_others(gallery, gallery)
    after, pairs_after = similarity_to_others(probe, gallery)
    threshold = thresholds.get(target.name)
    results[target.name] = TargetSimilarity(
        target=target.name, before=before, after=after, threshold=threshold,
        match_before=_pair_rate(pairs_before, threshold), match_after=_pair_rate(pairs_after, threshold),
        lost_faces=lost)
  return results


def format_table(measurements: Mapping[str, TargetSimilarity]) -> str:
  """A plain-text table of mean cosine similarity before/after per target (and match rates where known).

  A mean over no photo at all (every protected face lost) is shown as ``n/a``, never as a number.
  """
  header = f"{'target':<16} {'cos before':>10} {'cos after':>10} {'drop':>7} {'match before':>13} {'match after':>12}"
  lines = [header, "-" * len(header)]
  pct = lambda v: "-" if v is None else ("n/a" if np.isnan(v) else f"{100 * v:.0f}%")
  num = lambda v, width: f"{'n/a':>{width}}" if np.isnan(v) else f"{v:>{width}.3f}"
  for name, m in measurements.items():
    lines.append(f"{name:<16} {num(m.mean_before, 10)} {num(m.mean_after, 10)} {num(m.drop, 7)} "
                 f"{pct(m.match_before):>13} {pct(m.match_after):>12}")
  return "\n".join(lines)
