"""Face frames: an image size plus where the five facial landmarks sit in it.

The five landmarks are, in order: left eye centre, right eye centre, nose tip, left mouth corner, right mouth
corner, as (x, y) pixel coordinates (x right, y down) in the image as seen by a viewer.

Every image the library hands between layers lives in the *canonical frame* (``CANONICAL``). Each model
declares its own input frame; :func:`resample` maps canonical-frame images into it differentiably, so a mask
computed on one model can be evaluated on another in the same frame.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

#: The standard 112x112 ArcFace alignment template (InsightFace ``arcface_dst``).
ARCFACE_112_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclasses.dataclass(frozen=True)
class Frame:
  """An image geometry: ``size`` = (height, width) and the 5 landmarks ``(5, 2)`` as (x, y) pixels."""

  name: str
  size: tuple[int, int]
  landmarks: tuple[tuple[float, float], ...]

  @property
  def landmarks_array(self) -> np.ndarray:
    return np.asarray(self.landmarks, dtype=np.float64)


def make_frame(name: str, size: tuple[int, int], landmarks) -> Frame:
  return Frame(name, (int(size[0]), int(size[1])), tuple(map(tuple, np.asarray(landmarks, float).tolist())))


#: The ArcFace template itself (the input frame of SFace, IR-50, MobileFaceNet, ...).
ARCFACE_112 = make_frame("arcface112", (112, 112), ARCFACE_112_LANDMARKS)

#: The canonical frame: the ArcFace template at its own scale, padded so that the wider crops some models
#: use (dlib's 150x150 chip reaches below the ArcFace chin line) still lie inside it.
CANONICAL = make_frame("arcface128", (128, 128), ARCFACE_112_LANDMARKS + np.array([8.0, 4.0]))


def fit_scale_translation(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
  """Least-squares ``dst ≈ s * src + t`` (no rotation): returns (s, t) with t of shape (2,)."""
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  src_c = src - src.mean(0)
  dst_c = dst - dst.mean(0)
  scale = float((src_c * dst_c).sum() / (src_c**2).sum())
  return scale, dst.mean(0) - scale * src.mean(0)


def resample(images: jax.Array, src: Frame, dst: Frame, *, antialias: bool = True) -> jax.Array:
  """Maps images ``(..., H, W, C)`` in frame ``src`` to frame ``dst`` (scale + translation, bilinear).

  Differentiable with respect to ``images``. Pixel centres follow the convention of
  ``jax.image.scale_and_translate`` (continuous coordinate = index + 0.5), landmarks use index coordinates.
  """
  if src == dst:
    return images
  scale, t = fit_scale_translation(src.landmarks_array, dst.landmarks_array)
  # index coords: p_dst = s * p_src + t  ->  continuous: (p_dst + .5) = s * (p_src + .5) + (t + .5 - .5 s)
  tx, ty = t + 0.5 - 0.5 * scale
  lead = images.shape[:-3]
  h, w, c = images.shape[-3:]
  flat = images.reshape((-1, h, w, c))
  out_h, out_w = dst.size
  out = jax.image.scale_and_translate(
      flat,
      (flat.shape[0], out_h, out_w, c),
      spatial_dims=(1, 2),
      scale=jnp.array([scale, scale], images.dtype),
      translation=jnp.array([ty, tx], images.dtype),
      method="linear",
      antialias=antialias,
  )
  return out.reshape(lead + (out_h, out_w, c))
