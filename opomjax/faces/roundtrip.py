"""The photo round trip of a canonical-frame mask: warped into the photo, then cut out again as a chip.

A mask :math:`\\delta` added to a photo (:func:`opomjax.faces.apply_mask_to_photo`, before rounding) and cut
out again with the same alignment (:func:`opomjax.faces.warp_to_frame`) reaches the chip as :math:`B\\delta`,
where ``B`` (warp back, footprint, warp in) is linear and local. :func:`roundtrip_weights` reads ``B`` off
as a per-pixel filter (numpy, once per photo); :func:`apply_roundtrip` applies it (JAX, differentiable), so an
ascent can optimise the mask as a recognition system will meet it in the protected photos.

Example:
  >>> import numpy as np  # doctest: +SKIP
  >>> w = roundtrip_weights(face.transform, photo.shape)  # doctest: +SKIP
  >>> seen = apply_roundtrip(jnp.asarray(mask), jnp.asarray(w))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from opomjax.faces.align import MASK_SAMPLING, frame_footprint, transform_scale, warp_from_frame, warp_to_frame
from opomjax.frame import CANONICAL, Frame


def roundtrip_weights(transform, photo_shape, *, frame: Frame = CANONICAL, feather: float = 0.0,
                      radius: int | None = None, pixel_weights: np.ndarray | None = None,
                      sampling: str = MASK_SAMPLING) -> np.ndarray:
  """The photo round trip of a chip-space mask as a local linear filter: ``(2r+1)^2`` weight maps.

  ``B`` gathers, for chip pixel ``q``, only mask pixels ``q + o`` with ``|o| <= r``:

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
    pixel_weights: optional ``(h, w)`` factor in [0, 1] on what each photo pixel passes on, e.g. ``alpha / 255``
      of a transparent photo, whose face is seen composited over a background.
    sampling: how the photo reads the mask, as in :func:`opomjax.faces.apply_mask_to_photo`.

  Returns:
    ``(2r+1, 2r+1, H, W)`` float32: ``W[r + oy, r + ox]`` weighs ``delta(q + (oy, ox))``.
  """
  transform = np.asarray(transform, np.float64)
  if radius is None:
    radius = int(np.ceil(max(1.0, transform_scale(transform)))) + 2
  height, width = frame.size
  spacing = 2 * radius + 2
  footprint = frame_footprint(transform, frame, photo_shape, feather=feather)
  if pixel_weights is not None:
    pixel_weights = np.asarray(pixel_weights, np.float32)
    if pixel_weights.shape != footprint.shape:
      raise ValueError(f"pixel_weights must have shape {footprint.shape}, got {pixel_weights.shape}")
    footprint = footprint * pixel_weights
  footprint = footprint[..., None]
  probes = [(a, b) for a in range(spacing) for b in range(spacing)]
  responses = np.zeros((spacing, spacing, height, width), np.float32)
  for start in range(0, len(probes), 3):  # three combs at once, one per colour channel
    batch = probes[start:start + 3]
    comb = np.zeros((height, width, 3), np.float32)
    for c, (a, b) in enumerate(batch):
      comb[a::spacing, b::spacing, c] = 1.0
    back, _ = warp_from_frame(comb, transform, photo_shape, sampling=sampling)
    chip = warp_to_frame(back * footprint, transform, frame)
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


def apply_roundtrip(delta: jax.Array, weights: jax.Array, *, grey: jax.Array | None = None) -> jax.Array:
  """``B delta`` of :func:`roundtrip_weights`.

  Args:
    delta: ``(..., H, W, 3)`` masks.
    weights: ``(..., 2r+1, 2r+1, H, W)`` from :func:`roundtrip_weights` (leading axes as ``delta``'s).
    grey: optional ``(...)`` bools: where True the photo is greyscale, so it receives the channel mean of the
      mask (:func:`opomjax.faces.apply_mask_to_photo`), which every channel of its chip then carries.

  Returns:
    ``(..., H, W, 3)``.
  """
  if grey is not None:
    grey = jnp.asarray(grey)[..., None, None, None]
    delta = jnp.where(grey, jnp.broadcast_to(jnp.mean(delta, axis=-1, keepdims=True), delta.shape), delta)
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


def pad_weights(weights: Sequence[np.ndarray]) -> np.ndarray:
  """Stacks round-trip weights of different radii, zero-padded to the largest: ``(n, K, K, H, W)``."""
  size = max(w.shape[0] for w in weights)
  out = []
  for w in weights:
    p = (size - w.shape[0]) // 2
    out.append(np.pad(w, ((p, p), (p, p), (0, 0), (0, 0))))
  return np.stack(out)


def roundtrip_apply(apply: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``apply(params, images, key=None)`` that first takes the images through the photo round trip.

  The wrapped function takes ``params = (model_params, chips (n, H, W, 3), weights (n, K, K, H, W), grey (n,))``;
  the images an ascent passes are ``clip(chips + delta)`` of the same ``n`` faces in the same order, so
  ``images - chips`` is the (clipped) mask and the network sees ``chips + B(images - chips)``: what it will
  find in the protected photos.
  """

  def wrapped(params, images, key=None):
    model_params, chips, weights, grey = params
    return apply(model_params, chips + apply_roundtrip(images - chips, weights, grey=grey), key)

  return wrapped
