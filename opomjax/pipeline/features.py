"""Embedding many images in fixed-size batches, and a disk cache of clean features.

Clean features (distractors, clean test images) depend only on (model, images), so they are computed once and
reused by every method evaluated against that model.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
from typing import Callable

import numpy as np
from tqdm import tqdm

from opomjax.faces import channel
from opomjax.pipeline import masks as masks_lib


def embed_in_batches(embed: Callable, images, *, batch_size: int = 64, masks=None, condition: str = "none",
                     desc: str | None = None):
  """Embeds ``images`` ``(N, H, W, 3)`` (uint8 or float, canonical frame) in batches of ``batch_size``.

  The last batch is padded to ``batch_size`` so a jitted ``embed`` compiles once. With ``masks`` (broadcastable
  to ``images``, float, 0-255 units), embeds ``images + masks`` instead. Every image goes through ``condition``
  (:mod:`opomjax.faces.channel`) first: by default ``"none"``, the photo as saved (clipped, rounded to 8 bits;
  uint8 images pass unchanged); ``"float"`` embeds ``clip(images + masks, 0, 255)`` unrounded.

  Returns float32 ``(N, d)``.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  images = np.asarray(images)
  n = images.shape[0]
  if masks is not None:
    masks = np.broadcast_to(np.asarray(masks, np.float32), images.shape)
  out = []
  for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, unit="batch", leave=False):
    x = images[start : start + batch_size].astype(np.float32)
    if masks is not None:
      x = x + masks[start : start + batch_size]
    x = channel.apply_condition(x, condition)
    m = x.shape[0]
    if m < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
    out.append(np.asarray(embed(x), np.float32)[:m])
  if not out:
    raise ValueError("no images to embed")
  return np.concatenate(out)


def fingerprint(images) -> str:
  """A content hash of an image array (shape, dtype and bytes)."""
  images = np.ascontiguousarray(images)
  h = hashlib.blake2b(digest_size=16)
  h.update(repr((images.shape, str(images.dtype))).encode())
  h.update(memoryview(images).cast("B"))
  return h.hexdigest()


def model_fingerprint(model) -> str:
  """A short hash of what makes a model's features: its name, input frame, (for JAX models) weights and the
  library version (whose code computes them).

  Part of the cache key, so that changing a model's geometry or weights never serves stale features. A
  black-box target has no weights here; the runner adds its file's hash for targets named by path.
  """
  import jax

  from opomjax import __version__

  h = hashlib.blake2b(digest_size=8)
  h.update(repr((model.name, model.input_frame, getattr(model, "embedding_size", None), __version__)).encode())
  for leaf in jax.tree_util.tree_leaves(getattr(model, "params", None)):
    h.update(memoryview(np.ascontiguousarray(leaf)).cast("B"))
  return h.hexdigest()


class FeatureCache:
  """Clean features on disk under ``root``, keyed by a model key and the images' content hash.

  The model key must name everything besides the images that the features depend on (the runner's is the
  target's name, :func:`model_fingerprint` and, for an ``.onnx`` path, the file's hash).
  """

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)

  def path(self, model_name: str, images) -> pathlib.Path:
    safe = masks_lib.identity_filename(model_name)[: -len(".npz")]
    return self.root / safe / f"{fingerprint(images)}.npy"

  def get_or_compute(self, model_name: str, images, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    path = self.path(model_name, images)
    if path.is_file():
      try:
        return np.load(path, allow_pickle=False)
      except (ValueError, OSError):
        pass  # a damaged cache entry is recomputed
    feats = np.asarray(compute(images), np.float32)
    buf = io.BytesIO()
    np.save(buf, feats)
    masks_lib.atomic_write_bytes(path, buf.getvalue())
    return feats
