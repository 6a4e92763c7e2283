"""Protect your own photos: one OPOM mask for a person, added to each of their photos.

The way through (each step a function of its own):

1. :func:`opomjax.faces.align_photo` finds the largest face in every photo and cuts a chip in the canonical
   frame out of it. A photo without a usable face is set aside and handed back unchanged.
2. :func:`opomjax.generate_masks` computes one universal mask for the person from all the chips, on one
   surrogate model or on an ensemble of them (:func:`ensemble_embedding`), as the mask will look after it has
   been warped into each photo and cut out again (:func:`roundtrip_weights`).
3. :func:`opomjax.faces.apply_mask_to_photo` warps the mask back into each photo, inside the face's footprint
   only; every pixel outside it keeps its bytes.

:func:`measure_protection` then does what a face-recognition system would do with the protected photos: detect
the face again, align it, embed it, and compare it with the person's *other* clean photos.

Example:
  >>> from opomjax import protect  # doctest: +SKIP
  >>> result = protect.protect_photos(["me_1.jpg", "me_2.jpg", "me_3.jpg"])  # doctest: +SKIP
  >>> report = protect.measure_protection(["me_1.jpg", "me_2.jpg", "me_3.jpg"], result.photos)  # doctest: +SKIP
  >>> print(protect.format_table(report))  # doctest: +SKIP

What the mask can and cannot do: it is computed on the surrogate models only. Against those (white-box) it
works reliably; against a system it has never seen it *usually lowers* the similarity (the transfer the paper
measures), but no protection against an unseen system is guaranteed, and lossy re-compression or resizing of
the protected photo weakens it.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import io
import json
import logging
import math
import os
import pathlib
import time
import warnings
from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

import opomjax
from opomjax import faces as faces_lib
from opomjax.frame import CANONICAL
from opomjax.models import base
from opomjax.pipeline import masks as masks_lib

log = logging.getLogger(__name__)

#: The paper's setting: ``epsilon = 8`` of 255, step 1, 16 steps.
DEFAULT_STEPS = 16

#: File name endings :func:`find_photos` picks up in a folder.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Cosine-similarity thresholds at which a target declares two faces the same person, where the model's
#: authors publish one: OpenCV's SFace sample accepts ``cos >= 0.363``.
MATCH_THRESHOLDS: dict[str, float] = {"sface_onnx": 0.363, "sface": 0.363}

Surrogate = Union[str, base.FaceModel]


@dataclasses.dataclass(frozen=True)
class ProtectionResult:
  """What :func:`protect_photos` returns.

  Attributes:
    photos: the protected photos, ``(h, w, 3)`` uint8 RGB each, in input order; a photo without a usable face
      is the loaded input, unchanged.
    mask: ``(H, W, 3)`` float32, the person's mask in the canonical frame, ``|mask| <= epsilon``.
    faces: per photo, the :class:`~opomjax.faces.AlignedFace` the mask was computed on and applied to, or None.
    skipped: index -> reason (``"no_face"`` or ``"too_small"``) of every photo left unchanged.
    trace: ``(steps,)`` the objective before each ascent step (it should grow).
    metadata: the settings (method, epsilon, steps, surrogates, seed, ...), as stored with the mask.
  """

  photos: list[np.ndarray]
  mask: np.ndarray
  faces: list[faces_lib.AlignedFace | None]
  skipped: dict[int, str]
  trace: np.ndarray
  metadata: dict[str, Any]

  @property
  def protected(self) -> list[int]:
    """Indices of the photos that carry the mask."""
    return [i for i, f in enumerate(self.faces) if f is not None]


def ensemble_embedding(embeddings: Sequence[jax.Array], weights: Sequence[float] | None = None) -> jax.Array:
  """Joins the unit embeddings of ``M`` models into one unit embedding: ``concat(e_1, .., e_M) / sqrt(M)``.

  With :math:`z = [e_1; \\dots; e_M] / \\sqrt{M}` and each :math:`e_m` of unit norm, :math:`\\lVert z
  \\rVert = 1` and every squared distance splits over the models:

  .. math::
     \\lVert \\hat z - z' \\rVert^2 = \\frac{1}{M} \\sum_{m=1}^{M} \\lVert \\hat e_m - e'_m \\rVert^2 .

  So an objective built from squared feature distances to fixed points, evaluated on ``z``, *is* the average
  of that objective over the models (up to a positive constant, which the signed-gradient ascent ignores):
  FI-UAP (Eq. 17) and the class centre (Eq. 11; the mean of the ``z`` is the joined, scaled means of the
  ``e_m``) exactly, in the paper's sum form; in the per-entry mean form of :mod:`opomjax.core.objectives`
  too when the models' embedding sizes ``d_m`` are equal (otherwise model ``m`` is weighted by ``d_m``).
  For the hulls (Eqs. 8, 13) the coefficients are shared: the objective is the distance to the hull of the
  joint features, :math:`\\min_a \\frac{1}{M} \\sum_m \\lVert F_m^\\top a - \\hat e_m \\rVert^2 \\ge
  \\frac{1}{M} \\sum_m \\min_a \\lVert F_m^\\top a - \\hat e_m \\rVert^2`: the masked face must leave the
  hull of the person's photos as *every* model sees them through the same convex combination.

  The ascent follows the *sign* of the summed gradient, so a model whose gradients are larger steers it
  more (measured: SFace's over dlib's). ``weights`` ``w_m`` (normalised to sum to 1) join
  :math:`z = [\\sqrt{w_1} e_1; \\dots; \\sqrt{w_M} e_M]`, still of unit norm, whose squared distances are
  :math:`\\sum_m w_m \\lVert \\hat e_m - e'_m \\rVert^2`: the weighted average.

  Args:
    embeddings: ``M`` arrays ``(..., d_m)`` of unit embeddings of the same images.
    weights: ``M`` non-negative weights, not all 0 (default: equal).

  Returns:
    ``(..., sum_m d_m)`` unit embeddings.
  """
  if not embeddings:
    raise ValueError("embeddings is empty; give at least one model's embeddings")
  if len(embeddings) == 1:
    return embeddings[0]
  if weights is None:
    return jnp.concatenate(embeddings, axis=-1) / math.sqrt(len(embeddings))
  w = np.asarray(weights, np.float64)
  if w.shape != (len(embeddings),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {len(embeddings)} non-negative numbers, not all 0; got {weights!r}")
  w = np.sqrt(w / w.sum())
  return jnp.concatenate([float(wm) * e for wm, e in zip(w, embeddings)], axis=-1)


@functools.lru_cache(maxsize=8)
def _ensemble_apply(models: tuple[base.FaceModel, ...], weights: tuple[float, ...] | None = None):
  """``apply(params_tuple, images, key=None)`` of the models joined by :func:`ensemble_embedding` (cached)."""

  def apply(params, images, key=None):
    keys = [None] * len(models) if key is None else list(jax.random.split(key, len(models)))
    return ensemble_embedding([m.apply(p, images, k) for m, p, k in zip(models, params, keys)], weights)

  return apply


def load_surrogates(surrogates: Sequence[Surrogate], dropout: float = 0.0) -> tuple[base.FaceModel, ...]:
  """Loads the surrogate models (registry names or :class:`~opomjax.models.base.FaceModel`), DFANet rate set."""
  if isinstance(surrogates, (str, base.FaceModel)):
    surrogates = (surrogates,)
  if not surrogates:
    raise ValueError("surrogates is empty; name at least one model, e.g. ('dlib_resnet',)")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  models = []
  for s in surrogates:
    if isinstance(s, str):
      s = opomjax.load_model(s)
    elif not isinstance(s, base.FaceModel):
      raise ValueError(f"surrogates must be model names or FaceModel instances, got {type(s).__name__}")
    models.append(dataclasses.replace(s, dropout_rate=float(dropout)) if s.dropout_rate != dropout else s)
  return tuple(models)


def _as_key(key) -> tuple[jax.Array, Any]:
  """(PRNG key, seed for the metadata) from an int seed, a key, or None (seed 0)."""
  if key is None:
    key = 0
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key)), int(key)
  return key, "key"


def roundtrip_weights(transform, photo_shape, *, frame=CANONICAL, feather: float = 0.0,
                      radius: int | None = None) -> np.ndarray:
  """The photo round trip of a chip-space mask as a local linear filter: ``(2r+1)^2`` weight maps.

  A mask :math:`\\delta` added to a photo (:func:`opomjax.faces.apply_mask_to_photo`, before rounding) and
  cut out again with the same alignment (:func:`opomjax.faces.warp_to_frame`) reaches the chip as
  :math:`B\\delta`, where ``B`` (warp back, footprint, warp in) is linear and local: chip pixel ``q`` only
  gathers mask pixels ``q + o`` with ``|o| <= r``. Then

  .. math::
     (B\\delta)(q) = \\sum_{o} W_o(q)\\, \\delta(q + o),

  and ``W`` is read off by pushing combs of unit impulses, ``2r + 2`` pixels apart (their responses do not
  overlap), through the same functions that protect the photo.

  Args:
    transform: ``(2, 3)`` photo -> chip similarity of the face.
    photo_shape: ``(h, w[, c])`` of the photo.
    frame: the mask's frame.
    feather: as in :func:`opomjax.faces.apply_mask_to_photo`.
    radius: ``r``; default ``ceil(max(1, s)) + 2`` for the chip-per-photo-pixel scale ``s``.

  Returns:
    ``(2r+1, 2r+1, H, W)`` float32: ``W[r + oy, r + ox]`` weighs ``delta(q + (oy, ox))``.
  """
  transform = np.asarray(transform, np.float64)
  if radius is None:
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    radius = int(np.ceil(max(1.0, scale))) + 2
  height, width = frame.size
  spacing = 2 * radius + 2
  footprint = faces_lib.frame_footprint(transform, frame, photo_shape, feather=feather)[..., None]
  probes = [(a, b) for a in range(spacing) for b in range(spacing)]
  responses = np.zeros((spacing, spacing, height, width), np.float32)
  for start in range(0, len(probes), 3):  # three combs at once, one per colour channel
    batch = probes[start:start + 3]
    comb = np.zeros((height, width, 3), np.float32)
    for c, (a, b) in enumerate(batch):
      comb[a::spacing, b::spacing, c] = 1.0
    back, _ = faces_lib.warp_from_frame(comb, transform, photo_shape)
    chip = faces_lib.warp_to_frame(back * footprint, transform, frame)
    for c, (a, b) in enumerate(batch):
      responses[a, b] = chip[..., c]
  yy, xx = np.mgrid[0:height, 0:width]
  weights = np.zeros((2 * radius + 1, 2 * radius + 1, height, width), np.float32)
  for oy in range(-radius, radius + 1):
    for ox in range(-radius, radius + 1):
      ty, tx = yy + oy, xx + ox
      inside = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
      weights[oy + radius, ox + radius] = np.where(inside, responses[ty % spacing, tx % spacing, yy, xx], 0.0)
  return weights


def apply_roundtrip(delta: jax.Array, weights: jax.Array) -> jax.Array:
  """``B delta`` of :func:`roundtrip_weights`: ``delta`` ``(..., H, W, 3)``, ``weights`` ``(..., 2r+1, 2r+1, H, W)``."""
  size = weights.shape[-3]
  radius = size // 2
  height, width = delta.shape[-3:-1]
  pad = [(0, 0)] * (delta.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
  padded = jnp.pad(delta, pad)
  out = jnp.zeros_like(delta)
  for i in range(size):
    for j in range(size):
      out = out + weights[..., i, j, :, :, None] * padded[..., i:i + height, j:j + width, :]
  return out


def _pad_weights(weights: Sequence[np.ndarray]) -> np.ndarray:
  """Stacks round-trip weights of different radii, zero-padded to the largest."""
  size = max(w.shape[0] for w in weights)
  out = []
  for w in weights:
    p = (size - w.shape[0]) // 2
    out.append(np.pad(w, ((p, p), (p, p), (0, 0), (0, 0))))
  return np.stack(out)


@functools.lru_cache(maxsize=8)
def _roundtrip_apply(models: tuple[base.FaceModel, ...], weights: tuple[float, ...] | None = None):
  """Like :func:`_ensemble_apply`, but the images are first taken through the photo round trip.

  ``params = (model_params, chips (n, H, W, 3), weights (n, K, K, H, W))``; the images the ascent passes are
  ``clip(chips + delta)`` of the same ``n`` faces in the same order, so ``images - chips`` is the (clipped)
  mask and the network sees ``chips + B(images - chips)``: what it will find in the protected photos.
  """
  inner = _ensemble_apply(models, weights)

  def apply(params, images, key=None):
    model_params, chips, weights = params
    return inner(model_params, chips + apply_roundtrip(images - chips, weights), key)

  return apply


def find_faces(photos: Sequence[np.ndarray], *, detector=None, min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE,
               select: str = "largest", show_progress: bool = False, desc: str = "finding faces"
               ) -> tuple[list[faces_lib.AlignedFace | None], dict[int, str]]:
  """One face per photo (``select``: see :func:`opomjax.faces.align_photo`) aligned to the canonical frame.

  Returns:
    ``(faces, skipped)``: per photo an :class:`~opomjax.faces.AlignedFace` or None, and index -> reason
    (``"no_face"``, ``"too_small"``) for the Nones.
  """
  if select == "all":
    raise ValueError("select='all' is not supported here: the mask is for one person, one face per photo")
  found, skipped = [], {}
  for i, photo in enumerate(tqdm(photos, desc=desc, unit="photo", disable=not show_progress)):
    try:
      found.append(faces_lib.align_photo(photo, detector=detector, min_face_size=min_face_size, select=select))
    except faces_lib.NoFaceError as e:
      found.append(None)
      skipped[i] = e.reason
  return found, skipped


def _load_all(photos) -> list[np.ndarray]:
  if isinstance(photos, (str, os.PathLike, np.ndarray)) and not (isinstance(photos, np.ndarray) and photos.ndim == 4):
    raise ValueError("photos must be a sequence of photos (paths or arrays), not a single photo")
  photos = list(photos)
  if not photos:
    raise ValueError("photos is empty; give at least one photo of the person")
  loaded = []
  for i, p in enumerate(photos):
    try:
      loaded.append(faces_lib.load_photo(p))
    except ValueError as e:
      raise ValueError(f"photos[{i}]: {e}") from e
  return loaded


def protect_photos(photos, *, surrogates: Sequence[Surrogate] = ("dlib_resnet",), method: str = "opom-convex",
                   epsilon: float = 8.0, steps: int = DEFAULT_STEPS, step_size: float = 1.0,
                   momentum: float | None = None, dropout: float = 0.0, key=None, detector=None,
                   min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "largest",
                   feather: float = 0.0, roundtrip: bool = True, surrogate_weights: Sequence[float] | None = None,
                   show_progress: bool = True) -> ProtectionResult:
  """Computes one privacy mask for a person from their photos and adds it to each of them.

  Args:
    photos: the person's photos: paths, files or arrays (anything :func:`opomjax.faces.load_photo` takes).
      The more (and more varied) photos, the better the mask generalises to new ones.
    surrogates: the models the mask is computed on: registry names (``"dlib_resnet"``, ``"sface"``, ...) or
      :class:`~opomjax.models.base.FaceModel` instances. Several are combined by averaging their objectives
      (see :func:`ensemble_embedding`), which usually transfers better to unseen systems.
    surrogate_weights: one weight per surrogate for the average (:func:`ensemble_embedding`); None: equal.
    method: a method of :func:`opomjax.generate_masks` (default OPOM-ConvexHull).
    epsilon: the largest change of any pixel value, in [0, 255] units (paper: 8).
    steps: ascent steps (paper: 16).
    step_size: change of each mask pixel per step (paper: 1).
    momentum: momentum decay (Eq. 14), or None.
    dropout: DFANet dropout rate (Eq. 15), the same for every surrogate; 0 turns DFANet off.
    key: an int seed or a PRNG key (default: seed 0); the same key gives the same mask.
    detector: face detector for :func:`opomjax.faces.detect_faces` (default: the shared YuNet).
    min_face_size: faces with a shorter box side (pixels) are not protected (flagged ``"too_small"``).
    select: which face of a photo with several is the person's: ``"largest"``, ``"central"`` (nearest the
      centre) or ``"best"`` (detector score); only that face is protected.
    feather: width in photo pixels over which the mask fades out at the face region's border.
    roundtrip: optimise the mask as it will reach a recognition system: warped into each photo and cut out
      again (:func:`roundtrip_weights`), instead of as added to the aligned chips. The two warps blur the
      fine-grained mask; without this, much of its effect is lost in the protected photos.
    show_progress: progress bars and log lines.

  Returns:
    A :class:`ProtectionResult`. Photos without a usable face come back unchanged, listed in ``skipped``,
    with a ``UserWarning``.

  Raises:
    ValueError: for bad arguments or an unreadable photo (the message names it).
    opomjax.faces.NoFaceError: when no photo has a usable face.
  """
  loaded = _load_all(photos)
  models = load_surrogates(surrogates, dropout)
  if not (isinstance(steps, (int, np.integer)) and steps >= 1):
    raise ValueError(f"steps must be a positive integer, got {steps!r}")
  prng, seed = _as_key(key)
  if surrogate_weights is not None:
    surrogate_weights = tuple(float(w) for w in surrogate_weights)
    ensemble_embedding([jnp.zeros((1, 1))] * len(models), surrogate_weights)  # validates them

  found, skipped = find_faces(loaded, detector=detector, min_face_size=min_face_size, select=select,
                              show_progress=show_progress)
  if len(skipped) == len(loaded):
    raise faces_lib.NoFaceError(f"none of the {len(loaded)} photos has a usable face (reasons: "
                                f"{sorted(set(skipped.values()))}); nothing to protect", reason="no_face")
  if skipped:
    warnings.warn(f"{len(skipped)} of {len(loaded)} photos have no usable face and are returned unchanged: "
                  f"{dict(sorted(skipped.items()))}", UserWarning, stacklevel=2)
  # bilinear sampling can overshoot [0, 255] by float rounding; the ascent wants the images inside it
  chips = np.clip(np.stack([f.chip for f in found if f is not None]), 0.0, 255.0)[None]
  names = [m.name for m in models]
  if show_progress:
    log.info("computing the mask: %s, %d steps on %s from %d faces", method, steps, "+".join(names),
             chips.shape[1])
  start = time.time()
  model_params = tuple(m.params for m in models)
  if roundtrip:
    weights = _pad_weights([roundtrip_weights(f.transform, p.shape, feather=feather)
                            for p, f in zip(loaded, found) if f is not None])
    embed = _roundtrip_apply(models, surrogate_weights)
    params = (model_params, jnp.asarray(chips[0]), jnp.asarray(weights))
  else:
    embed, params = _ensemble_apply(models, surrogate_weights), model_params
  mask, trace = opomjax.generate_masks(
      embed, jnp.asarray(chips, jnp.float32), params=params, method=method, key=prng, epsilon=epsilon,
      step_size=step_size, steps=steps, momentum=momentum, dfanet=dropout > 0, return_trace=True)
  mask, trace = np.asarray(mask[0], np.float32), np.asarray(trace[0])
  if show_progress:
    log.info("mask computed in %.1f s", time.time() - start)

  protected = [photo if face is None else
               faces_lib.apply_mask_to_photo(photo, mask, face.transform, frame=CANONICAL, feather=feather)
               for photo, face in zip(loaded, found)]
  metadata = dict(frame=CANONICAL.name, epsilon=float(epsilon), method=method, surrogate="+".join(names),
                  steps=int(steps), seed=seed, step_size=float(step_size), momentum=float(momentum or 0.0),
                  dropout=float(dropout), roundtrip=bool(roundtrip),
                  surrogate_weights=None if surrogate_weights is None else list(surrogate_weights),
                  faces=len(loaded) - len(skipped))
  return ProtectionResult(photos=protected, mask=mask, faces=found, skipped=skipped, trace=trace,
                          metadata=metadata)


# ---------------------------------------------------------------------------------------------------------------
# Measuring: what a face-recognition system sees in the protected photos.


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

  def to_dict(self) -> dict:
    return dict(target=self.target, mean_before=self.mean_before, mean_after=self.mean_after, drop=self.drop,
                threshold=self.threshold, match_before=self.match_before, match_after=self.match_after,
                lost_faces=self.lost_faces, before=_floats(self.before), after=_floats(self.after))


def _nanmean(x: np.ndarray) -> float:
  return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")


def _floats(x: np.ndarray) -> list:
  return [None if np.isnan(v) else float(v) for v in x]


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


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: base.FaceModel):
  return jax.jit(model.apply)


def embed_chips(target, chips: np.ndarray, batch_size: int = 32) -> np.ndarray:
  """Unit embeddings ``(b, d)`` float64 of canonical chips ``(b, H, W, 3)`` by a model or a black-box target."""
  out = []
  for s in range(0, len(chips), batch_size):
    x = np.asarray(chips[s:s + batch_size], np.float32)
    if isinstance(target, base.FaceModel):
      out.append(np.asarray(_jitted_apply(target)(target.params, jnp.asarray(x))))
    else:
      out.append(np.asarray(target.embed(x)))
  return np.concatenate(out).astype(np.float64)


def _embed_faces(target, found: Sequence[faces_lib.AlignedFace | None], dim_hint: int | None = None) -> np.ndarray:
  present = [i for i, f in enumerate(found) if f is not None]
  emb = embed_chips(target, np.stack([found[i].chip for i in present])) if present else None
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


def load_targets(targets) -> list:
  """Targets by name (:func:`opomjax.load_target`) or as objects with ``name`` and ``embed``."""
  if isinstance(targets, str) or hasattr(targets, "embed"):
    targets = (targets,)
  loaded = []
  for t in targets:
    if isinstance(t, str):
      t = opomjax.load_target(t)
    elif not (hasattr(t, "embed") and hasattr(t, "name")):
      raise ValueError(f"targets must be names or models with .name and .embed, got {type(t).__name__}")
    loaded.append(t)
  if not loaded:
    raise ValueError("targets is empty; name at least one, e.g. ('dlib_resnet', 'sface_onnx')")
  return loaded


def measure_protection(clean_photos, protected_photos, targets=("dlib_resnet", "sface_onnx"), *, detector=None,
                       min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "largest",
                       thresholds: Mapping[str, float] | None = None,
                       show_progress: bool = False) -> dict[str, TargetSimilarity]:
  """How well the protected photos hide the person from each target, as a real system would see them.

  Faces are detected and aligned again in *both* the clean and the protected photos (a system does not know
  where the mask put the face). For each photo ``i`` and target, the mean cosine similarity of its face to
  the faces of the person's other clean photos ``j != i`` is measured for the clean photo (``before``) and
  for the protected one (``after``).

  Args:
    clean_photos: the original photos (paths or arrays), ``n >= 2``.
    protected_photos: the protected photos, in the same order.
    targets: target names (:func:`opomjax.load_target`: ``"dlib_resnet"``, ``"sface_onnx"``, ...) or model
      objects with ``name`` and ``embed``.
    detector: face detector (default: the shared YuNet).
    min_face_size: see :func:`opomjax.faces.align_photo`.
    select: see :func:`protect_photos`.
    thresholds: target name -> cosine match threshold (default :data:`MATCH_THRESHOLDS`).
    show_progress: progress bars.

  Returns:
    target name -> :class:`TargetSimilarity`.

  Raises:
    ValueError: mismatched lengths, or fewer than two clean photos with a face.
  """
  clean = _load_all(clean_photos)
  protected = _load_all(protected_photos)
  if len(clean) != len(protected):
    raise ValueError(f"protected_photos has {len(protected)} photos but clean_photos has {len(clean)}")
  thresholds = dict(MATCH_THRESHOLDS if thresholds is None else thresholds)
  targets = load_targets(targets)
  clean_faces, _ = find_faces(clean, detector=detector, min_face_size=min_face_size, select=select,
                              show_progress=show_progress, desc="faces in clean photos")
  if sum(f is not None for f in clean_faces) < 2:
    raise ValueError("clean_photos needs at least two photos with a face to compare a photo with the others")
  protected_faces, _ = find_faces(protected, detector=detector, min_face_size=min_face_size, select=select,
                                  show_progress=show_progress, desc="faces in protected photos")
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
  """A plain-text table of mean cosine similarity before/after per target (and match rates where known)."""
  header = f"{'target':<16} {'cos before':>10} {'cos after':>10} {'drop':>7} {'match before':>13} {'match after':>12}"
  lines = [header, "-" * len(header)]
  pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
  for name, m in measurements.items():
    lines.append(f"{name:<16} {m.mean_before:>10.3f} {m.mean_after:>10.3f} {m.drop:>7.3f} "
                 f"{pct(m.match_before):>13} {pct(m.match_after):>12}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Files: a folder (or glob) of photos in, protected photos, the mask and a report out.


def find_photos(spec: str | os.PathLike) -> list[pathlib.Path]:
  """The photo files a folder holds (not recursive, by suffix) or a glob pattern matches, sorted.

  Raises:
    ValueError: nothing matches.
  """
  spec = os.fspath(spec)
  if os.path.isdir(spec):
    paths = [p for p in pathlib.Path(spec).iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES]
  else:
    paths = [pathlib.Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
  if not paths:
    raise ValueError(f"no photos found at {spec!r} (a folder holding {'/'.join(PHOTO_SUFFIXES)} files, or a "
                     "glob pattern such as 'photos/*.jpg')")
  return sorted(paths)


def output_paths(inputs: Sequence[pathlib.Path], out_dir: str | os.PathLike, image_format: str) -> list[pathlib.Path]:
  """Output path per input: same file name in ``out_dir``, the suffix of ``image_format`` (png/jpeg)."""
  suffix = {"png": ".png", "jpeg": ".jpg"}.get(image_format)
  if suffix is None:
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  out_dir = pathlib.Path(out_dir)
  outs = [out_dir / (p.stem + suffix) for p in inputs]
  seen: dict[pathlib.Path, pathlib.Path] = {}
  for src, dst in zip(inputs, outs):
    if dst in seen:
      raise ValueError(f"{seen[dst]} and {src} would both be written to {dst}; rename one of them")
    if dst.resolve() == src.resolve():
      raise ValueError(f"writing {dst} would overwrite the original photo; choose another out folder")
    seen[dst] = src
  return outs


def encode_photo(photo: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
  """PNG (lossless) or JPEG (no chroma subsampling) bytes of a ``(h, w, 3)`` uint8 photo, without metadata."""
  buf = io.BytesIO()
  image = Image.fromarray(np.asarray(photo, np.uint8), "RGB")
  if image_format == "png":
    image.save(buf, format="PNG")
  elif image_format == "jpeg":
    if not 1 <= jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality must lie in [1, 100], got {jpeg_quality}")
    image.save(buf, format="JPEG", quality=int(jpeg_quality), subsampling=0)
  else:
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  return buf.getvalue()


def load_photo_files(paths: Sequence[pathlib.Path]) -> list[np.ndarray]:
  """Loads every file; one ValueError naming all the unreadable ones."""
  photos, bad = [], []
  for p in paths:
    try:
      photos.append(faces_lib.load_photo(p))
    except (ValueError, OSError) as e:
      bad.append(f"{p}: {e}")
  if bad:
    raise ValueError(f"{len(bad)} unreadable photo(s):\n  " + "\n  ".join(bad))
  return photos


def protect_files(photos: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  image_format: str = "png", jpeg_quality: int = 95,
                  targets=("dlib_resnet", "sface_onnx"), **protect_options) -> dict:
  """Protects photo files: writes the protected photos, ``mask.npz`` and ``report.json`` to ``out_dir``.

  Args:
    photos: a folder, a glob pattern, or a list of files.
    out_dir: the output folder (created). Protected photos keep their file names (suffix ``.png``, or ``.jpg``
      for ``image_format="jpeg"``); they carry no EXIF data (the pixels are already upright).
    image_format: ``"png"`` (lossless, keeps the mask intact) or ``"jpeg"`` (quality ``jpeg_quality``).
    jpeg_quality: JPEG quality in [1, 100].
    targets: models to measure the protection with (see :func:`measure_protection`), measured on the files as
      written; empty to skip.
    **protect_options: passed to :func:`protect_photos` (surrogates, method, epsilon, steps, key, ...).

  Returns:
    The report (also written to ``report.json``): settings, per-photo results, per-target summaries, times.
  """
  if isinstance(photos, (str, os.PathLike)):
    paths = find_photos(photos)
  else:
    paths = [pathlib.Path(p) for p in photos]
    if not paths:
      raise ValueError("photos is empty; give a folder, a glob pattern or a list of files")
  outs = output_paths(paths, out_dir, image_format)
  out_dir = pathlib.Path(out_dir)
  loaded = load_photo_files(paths)
  start = time.time()
  result = protect_photos(loaded, **protect_options)
  seconds_protect = time.time() - start
  show = protect_options.get("show_progress", True)
  for dst, photo in tqdm(list(zip(outs, result.photos)), desc="writing", unit="photo", disable=not show):
    masks_lib.atomic_write_bytes(dst, encode_photo(photo, image_format, jpeg_quality))
  masks_lib.save_mask(out_dir / "mask.npz", result.mask,
                      {**result.metadata, "photos": [p.name for p in paths]})

  measurements, seconds_measure = {}, 0.0
  if targets:
    start = time.time()
    measurements = measure_protection(loaded, [str(o) for o in outs], targets,
                                      detector=protect_options.get("detector"),
                                      min_face_size=protect_options.get("min_face_size",
                                                                        faces_lib.DEFAULT_MIN_FACE_SIZE),
                                      select=protect_options.get("select", "largest"), show_progress=show)
    seconds_measure = time.time() - start
  per_photo = []
  for i, (src, dst) in enumerate(zip(paths, outs)):
    face = result.faces[i]
    entry = dict(input=str(src), output=str(dst), protected=face is not None, skipped=result.skipped.get(i))
    if face is not None:
      entry["face"] = dict(box=face.box.tolist(), landmarks=face.landmarks.tolist(), score=face.score,
                           transform=face.transform.tolist())
    entry["similarity"] = {name: dict(before=_floats(m.before[i:i + 1])[0], after=_floats(m.after[i:i + 1])[0])
                           for name, m in measurements.items()}
    per_photo.append(entry)
  report = dict(settings={**result.metadata, "image_format": image_format,
                          "jpeg_quality": jpeg_quality if image_format == "jpeg" else None},
                photos=per_photo, targets={name: m.to_dict() for name, m in measurements.items()},
                objective=[float(v) for v in result.trace],
                seconds=dict(protect=seconds_protect, measure=seconds_measure),
                table=format_table(measurements) if measurements else "")
  masks_lib.atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
  return report
