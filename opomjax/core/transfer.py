"""Differentiable versions of what a photo goes through after it is saved: expectation over transformation.

A mask is computed on float images but judged on photos that were rounded to 8 bits, maybe re-encoded as JPEG,
shrunk or smoothed (:mod:`opomjax.faces.channel` applies the real codecs). Averaging the ascent gradient over
random differentiable versions of those channels (expectation over transformation, EOT: Athalye et al.,
"Synthesizing Robust Adversarial Examples", ICML 2018) makes the mask survive them. Every function here is pure
JAX on float images ``(..., H, W, 3)`` in [0, 255]:

* :func:`round_ste` / :func:`round_cubic`: 8-bit rounding with a straight-through gradient (Bengio et al. 2013)
  or the smooth cubic approximation of Shin & Song ("JPEG-resistant adversarial images", NIPS 2017 workshop);
* :func:`jpeg_approx`: baseline JPEG as libjpeg computes it (JFIF YCbCr, 4:2:0 chroma, 8x8 orthonormal DCT, the
  IJG-scaled Annex K quantisation tables of a given quality, rounding, and back), differentiable through the
  rounding;
* :func:`resize_round_trip`: down-scaling and back (antialiased bicubic, as Pillow resizes);
* :func:`gaussian_blur`: a separable Gaussian of a given sigma;
* :func:`photo_round_trip`: the way through a whole photo and back: the chip resampled onto the photo's pixel
  grid (the protect tool warps the mask into the photo) and cut out again by a face alignment that the mask
  itself moves a little (re-detection), both bilinear;
* :func:`random_channel`: one of those drawn at random with random parameters from a key, then rounded to 8
  bits; :func:`eot_gradient` averages a gradient over ``K`` such draws.

The same file holds the input-side transformations that transfer attacks on face recognition use to make a
perturbation fit models it was not computed on (each the identity at zero strength):

* :func:`input_diversity`: DI, a random shrink and placement with probability ``p`` (Xie et al., "Improving
  Transferability of Adversarial Examples with Input Diversity", CVPR 2019);
* :func:`scale_copies`: SI, the copies ``x / 2^i`` whose gradients are averaged (Lin et al., "Nesterov
  Accelerated Gradient and Scale Invariance for Adversarial Attacks", ICLR 2020);
* :func:`spectrum_simulation`: SSA, Gaussian noise and a random rescaling of every DCT coefficient (Long et al.,
  "Frequency Domain Model Augmentation for Adversarial Attack", ECCV 2022);
* :func:`expected_gradient`: the mean gradient over random draws of any such transformation.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Channels :func:`random_channel` can draw; "none" is the 8-bit rounding alone; "photo_jpeg" is the photo round
#: trip followed by JPEG (a photo saved as JPEG, approximated in the chip's pixel grid).
EOT_CHANNELS = ("none", "jpeg", "resize", "blur", "photo", "photo_jpeg")

#: Ranges of the random parameters: JPEG quality, resize factor (one of these, static shapes), blur sigma.
JPEG_QUALITY_RANGE = (50.0, 95.0)
RESIZE_FACTORS = (0.5, 0.625, 0.75, 0.875)
BLUR_SIGMA_RANGE = (0.5, 1.5)
#: The photo round trip (:func:`photo_round_trip`): chip pixels per photo pixel (LFW's aligned faces: 0.75-1.13,
#: mean 0.87, over 19 photos), and the re-alignment's change of the face's similarity transform, uniform within
#: +-: scale, rotation (degrees), shift (chip pixels). Measured on 24 LFW photos with a random +-8 mask saved as
#: PNG and the face found again: rms 1.4 % (max 4.4 %), 0.56 degrees (max 1.7), 0.43 px at the centre (max 1.6).
PHOTO_SCALE_RANGE = (0.75, 1.15)
PHOTO_JITTER = (0.03, 1.5, 1.0)

ROUNDINGS = ("ste", "cubic")

# ITU-T T.81 Annex K tables (quality 50), rows of the 8x8 block in natural order.
_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_CHROMA_TABLE = np.full((8, 8), 99.0, np.float32)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def round_ste(x: jax.Array) -> jax.Array:
  """``round(x)`` forward, identity backward (straight-through estimator)."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def round_cubic(x: jax.Array) -> jax.Array:
  """Shin & Song's smooth rounding ``round(x) + (x - round(x))^3``: equal to ``round(x)`` within 0.125, with a
  gradient ``3 (x - round(x))^2`` that is zero at integers and 0.75 half-way between them."""
  r = jax.lax.stop_gradient(jnp.round(x))
  return r + (x - r) ** 3


def _rounder(rounding: str) -> Callable[[jax.Array], jax.Array]:
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  return round_ste if rounding == "ste" else round_cubic


def quantisation_tables(quality) -> tuple[jax.Array, jax.Array]:
  """The luminance and chrominance tables libjpeg uses at ``quality`` (1..100; may be traced).

  IJG scaling: ``s = 5000 / q`` below 50, ``200 - 2 q`` from 50; ``table = floor((T s + 50) / 100)`` in [1, 255].
  """
  q = jnp.clip(jnp.asarray(quality, jnp.float32), 1.0, 100.0)
  scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
  make = lambda t: jnp.clip(jnp.floor((jnp.asarray(t) * scale + 50.0) / 100.0), 1.0, 255.0)
  return make(_LUMA_TABLE), make(_CHROMA_TABLE)


def _blocks(x: jax.Array) -> jax.Array:
  """``(..., H, W)`` -> ``(..., H/8, W/8, 8, 8)``."""
  *lead, h, w = x.shape
  return x.reshape(*lead, h // 8, 8, w // 8, 8).swapaxes(-3, -2)


def _unblocks(x: jax.Array) -> jax.Array:
  *lead, bh, bw, _, _ = x.shape
  return x.swapaxes(-3, -2).reshape(*lead, bh * 8, bw * 8)


def _quantise_plane(plane: jax.Array, table: jax.Array, rounding: Callable) -> jax.Array:
  """One level-shifted plane ``(..., H, W)`` (H, W multiples of 8) through DCT, quantisation and back."""
  c = jnp.asarray(dct_matrix(8))
  hp = jax.lax.Precision.HIGHEST
  coeffs = jnp.einsum("kn,...nm,lm->...kl", c, _blocks(plane), c, precision=hp)
  coeffs = rounding(coeffs / table) * table
  return _unblocks(jnp.einsum("kn,...kl,lm->...nm", c, coeffs, c, precision=hp))


def rgb_to_ycbcr(rgb: jax.Array) -> jax.Array:
  """JFIF full-range YCbCr of RGB in [0, 255] (channels last)."""
  m = jnp.asarray([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
  return jnp.einsum("...c,kc->...k", rgb, m, precision=jax.lax.Precision.HIGHEST) + jnp.asarray([0.0, 128.0, 128.0])


def ycbcr_to_rgb(ycc: jax.Array) -> jax.Array:
  """The inverse of :func:`rgb_to_ycbcr`."""
  m = jnp.asarray([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
  return jnp.einsum("...c,kc->...k", ycc - jnp.asarray([0.0, 128.0, 128.0]), m,
                    precision=jax.lax.Precision.HIGHEST)


def jpeg_approx(images: jax.Array, quality, *, rounding: str = "ste") -> jax.Array:
  """A differentiable JPEG round trip of ``images`` ``(..., H, W, 3)`` in [0, 255] at ``quality``.

  As libjpeg with Pillow's defaults: JFIF YCbCr; chroma averaged over 2x2 pixels (4:2:0) and brought back by
  bilinear interpolation at half-pixel centres (libjpeg's "fancy" upsampling); each plane level-shifted by 128,
  8x8 orthonormal DCT, divided by the quality's table (:func:`quantisation_tables`), rounded, multiplied back,
  inverse DCT; RGB clipped to [0, 255] and rounded to 8 bits. Edges are padded by replication to multiples of
  16. ``rounding``: ``"ste"`` (exact rounding forward, straight-through gradient) or ``"cubic"`` (smooth).
  The gap to Pillow's real codec (integer DCT, rounding of the colour conversion) is measured in
  ``tests/test_transfer.py``.
  """
  rnd = _rounder(rounding)
  *lead, h, w, _ = images.shape
  ph, pw = -h % 16, -w % 16
  pad = [(0, 0)] * len(lead) + [(0, ph), (0, pw), (0, 0)]
  x = jnp.pad(jnp.asarray(images, jnp.float32), pad, mode="edge")
  luma_table, chroma_table = quantisation_tables(quality)
  ycc = rgb_to_ycbcr(x)
  y = _quantise_plane(ycc[..., 0] - 128.0, luma_table, rnd) + 128.0
  hh, ww = x.shape[-3], x.shape[-2]
  chroma = ycc[..., 1:].reshape(*lead, hh // 2, 2, ww // 2, 2, 2).mean(axis=(-4, -2))
  chroma = jnp.moveaxis(chroma, -1, -3)  # (..., 2, H/2, W/2)
  chroma = _quantise_plane(chroma - 128.0, chroma_table, rnd) + 128.0
  chroma = jax.image.resize(chroma, chroma.shape[:-2] + (hh, ww), method="linear", antialias=False)
  out = ycbcr_to_rgb(jnp.concatenate([y[..., None], jnp.moveaxis(chroma, -3, -1)], axis=-1))
  return rnd(jnp.clip(out, 0.0, 255.0))[..., :h, :w, :]


def resize_round_trip(images: jax.Array, factor: float) -> jax.Array:
  """``images`` ``(..., H, W, 3)`` shrunk by ``factor`` (static) and enlarged back, antialiased bicubic."""
  *lead, h, w, c = images.shape
  small = (max(1, round(h * factor)), max(1, round(w * factor)))
  down = jax.image.resize(images, (*lead, *small, c), method="cubic", antialias=True)
  return jax.image.resize(down, images.shape, method="cubic", antialias=True)


def gaussian_blur(images: jax.Array, sigma, radius: int = 4) -> jax.Array:
  """``images`` ``(..., H, W, 3)`` convolved with a normalised Gaussian of ``sigma`` (may be traced), separably,
  ``2 radius + 1`` taps, edges replicated."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kernel = kernel / kernel.sum()
  x = jnp.asarray(images, jnp.float32)
  nd = x.ndim
  for axis in (nd - 3, nd - 2):
    pad = [(0, 0)] * nd
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="edge")
    size = x.shape[axis]
    x = sum(kernel[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i in range(2 * radius + 1))
  return x


def _bilinear(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
  """``images`` ``(..., H, W, C)`` sampled bilinearly at the coordinates ``ys``, ``xs`` ``(h, w)`` (pixel
  centres at integers; outside the image the edge pixels, as with replicated borders): ``(..., h, w, C)``."""
  height, width = images.shape[-3], images.shape[-2]
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  row = lambda y: jnp.clip(y, 0, height - 1).astype(jnp.int32)
  col = lambda x: jnp.clip(x, 0, width - 1).astype(jnp.int32)
  at = lambda y, x: images[..., row(y), col(x), :]
  top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
  bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
  return top * (1 - wy) + bottom * wy


def _nearest(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
  """``images`` ``(..., H, W, C)`` at the pixel nearest each of ``ys``, ``xs`` ``(h, w)`` (ties rounded up, edge
  pixels outside, as Pillow's nearest sampling): ``(..., h, w, C)``."""
  row = jnp.clip(jnp.floor(ys + 0.5), 0, images.shape[-3] - 1).astype(jnp.int32)
  col = jnp.clip(jnp.floor(xs + 0.5), 0, images.shape[-2] - 1).astype(jnp.int32)
  return images[..., row, col, :]


def photo_round_trip(images: jax.Array, scale, phase, jitter) -> jax.Array:
  """Chips ``(..., H, W, 3)`` put into a photo and cut out again, as the protect tool and a recogniser do.

  Into the photo: photo pixel ``p`` lies at chip coordinate ``scale * p - phase`` (``scale`` chip pixels per
  photo pixel, ``phase`` ``(2,)`` the sub-pixel offset of the two grids, in chip pixels) and takes the nearest
  chip pixel, as :func:`opomjax.faces.apply_mask_to_photo` puts a mask in, on a ``ceil(H / scale) + 2`` square
  grid. Back: chip pixel ``q`` is read from the photo at ``(J(q) + phase) / scale``,
  where ``J`` is the re-alignment's similarity transform about the chip's centre, ``jitter = (relative scale
  change, rotation in radians, shift y, shift x)``; bilinear again. With ``scale = 1``, ``phase = 0`` and no
  jitter the chips come back unchanged.
  """
  height, width = images.shape[-3], images.shape[-2]
  scale = jnp.asarray(scale, jnp.float32)
  size = int(np.ceil(max(height, width) / PHOTO_SCALE_RANGE[0])) + 2  # static: the largest grid any scale needs
  grid = jnp.arange(size, dtype=jnp.float32)
  in_photo = _nearest(images, *jnp.meshgrid(scale * grid - phase[0], scale * grid - phase[1], indexing="ij"))
  dscale, angle, dy, dx = jitter[0], jitter[1], jitter[2], jitter[3]
  cy, cx = (height - 1) / 2, (width - 1) / 2
  qy = jnp.arange(height, dtype=jnp.float32)[:, None] - cy
  qx = jnp.arange(width, dtype=jnp.float32)[None, :] - cx
  cos, sin = (1 + dscale) * jnp.cos(angle), (1 + dscale) * jnp.sin(angle)
  jy = cos * qy + sin * qx + cy + dy
  jx = -sin * qy + cos * qx + cx + dx
  return _bilinear(in_photo, (jy + phase[0]) / scale, (jx + phase[1]) / scale)


def random_photo_round_trip(key: jax.Array, images: jax.Array) -> jax.Array:
  """:func:`photo_round_trip` with its parameters drawn uniformly from :data:`PHOTO_SCALE_RANGE`, a phase in
  ``[0, 1)`` chip pixels per axis and the re-alignment within :data:`PHOTO_JITTER`."""
  scale_key, phase_key, jitter_key = jax.random.split(key, 3)
  scale = jax.random.uniform(scale_key, (), minval=PHOTO_SCALE_RANGE[0], maxval=PHOTO_SCALE_RANGE[1])
  phase = jax.random.uniform(phase_key, (2,))
  bound = jnp.array([PHOTO_JITTER[0], np.radians(PHOTO_JITTER[1]), PHOTO_JITTER[2], PHOTO_JITTER[2]], jnp.float32)
  jitter = jax.random.uniform(jitter_key, (4,), minval=-1.0, maxval=1.0) * bound
  return photo_round_trip(images, scale, phase, jitter)


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
  """``channels`` as a tuple of :data:`EOT_CHANNELS` names; ValueError naming an unknown one."""
  channels = tuple(channels)
  unknown = [c for c in channels if c not in EOT_CHANNELS]
  if unknown or not channels:
    raise ValueError(f"EOT channels must be a non-empty subset of {EOT_CHANNELS}, got {channels!r}")
  return channels


def random_channel(key: jax.Array, images: jax.Array, channels: Sequence[str] = EOT_CHANNELS[1:], *,
                   rounding: str = "ste") -> jax.Array:
  """``images`` through one channel of ``channels`` drawn uniformly from ``key``, with random parameters
  (JPEG quality uniform in :data:`JPEG_QUALITY_RANGE`, a resize factor of :data:`RESIZE_FACTORS`, blur sigma
  uniform in :data:`BLUR_SIGMA_RANGE`, the photo round trip's as :func:`random_photo_round_trip`), then clipped
  and rounded to 8 bits as a saved photo. A name given twice is drawn twice as often."""
  channels = check_channels(channels)
  rnd = _rounder(rounding)
  choice_key, quality_key, sigma_key, factor_key = jax.random.split(key, 4)
  photo_key = jax.random.fold_in(key, 4)  # apart from the split, so the other channels draw as before it existed
  quality = jax.random.uniform(quality_key, (), minval=JPEG_QUALITY_RANGE[0], maxval=JPEG_QUALITY_RANGE[1])
  sigma = jax.random.uniform(sigma_key, (), minval=BLUR_SIGMA_RANGE[0], maxval=BLUR_SIGMA_RANGE[1])
  factor_index = jax.random.randint(factor_key, (), 0, len(RESIZE_FACTORS))

  def resize(x):
    return jax.lax.switch(factor_index, [functools.partial(resize_round_trip, factor=f) for f in RESIZE_FACTORS], x)

  branches = {
      "none": lambda x: x,
      "jpeg": lambda x: jpeg_approx(x, quality, rounding=rounding),
      "resize": resize,
      "blur": lambda x: gaussian_blur(x, sigma),
      "photo": lambda x: random_photo_round_trip(photo_key, x),
      "photo_jpeg": lambda x: jpeg_approx(random_photo_round_trip(photo_key, x), quality, rounding=rounding),
  }
  index = jax.random.randint(choice_key, (), 0, len(channels))
  out = jax.lax.switch(index, [branches[c] for c in channels], jnp.asarray(images, jnp.float32))
  return rnd(jnp.clip(out, 0.0, 255.0))


def expected_gradient(fn: Callable[[jax.Array], jax.Array], images: jax.Array, key: jax.Array, samples: int,
                      transform: Callable[[jax.Array, jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Mean value and gradient of ``fn(transform(key_s, images))`` over ``samples`` keys split from ``key``.

  .. math:: \\nabla_x\\, \\mathbb{E}_{T}\\, J(T(x)) \\approx \\frac{1}{K} \\sum_{s=1}^{K} \\nabla_x J(T_s(x))

  The samples are unrolled (one copy of the forward + backward per sample, no ``while`` loop): on XLA:CPU a
  ``lax.scan`` over the samples made an EOT step of dlib's network (10 images, K = 4) cost 17.9 s against
  the 4 x 0.9 s of its samples.
  """
  keys = jax.random.split(key, samples)
  total, values = jnp.zeros_like(images), []
  for s in range(samples):  # a Python loop: a lax.scan lowers to a while loop, ~3-5x slower per body on CPU
    value, grad = jax.value_and_grad(lambda x, k=keys[s]: fn(transform(k, x)))(images)
    total, values = total + grad, values + [value]
  return jnp.mean(jnp.stack(values)), total / samples


def eot_gradient(fn: Callable[[jax.Array], jax.Array], images: jax.Array, key: jax.Array, samples: int,
                 channels: Sequence[str] = EOT_CHANNELS[1:], *, rounding: str = "ste") -> tuple[jax.Array, jax.Array]:
  """Mean value and gradient of ``fn(random_channel(key_s, images))`` over ``samples`` keys ``key_s``
  (:func:`expected_gradient` over :func:`random_channel`)."""
  channel = lambda k, x: random_channel(k, x, channels, rounding=rounding)
  return expected_gradient(fn, images, key, samples, channel)


def fill_budget(mask: jax.Array, epsilon: float) -> jax.Array:
  """Every value of ``mask`` moved to the budget in its own direction: ``epsilon * sign(mask)`` (zeros stay).

  The signed steps leave part of a mask inside the box — values whose gradient sign kept changing, or that had
  not travelled from their random start when the steps ran out (after 16 steps of 1 on the dlib + faceres
  ensemble 56 % of the values sit at ``+-epsilon``, after 50 steps 75 %). Pushed out to the box's vertices
  along their own sign, the mask keeps its pattern and its L-inf bound and spends all of it, as the fast
  gradient sign method's single step does (Goodfellow et al., ICLR 2015).
  """
  return epsilon * jnp.sign(mask)


def input_diversity(key: jax.Array, images: jax.Array, probability: float, min_scale: float = 0.9) -> jax.Array:
  """DI (Xie et al., CVPR 2019): with ``probability``, ``images`` ``(..., H, W, 3)`` shrunk by a random factor
  in ``[min_scale, 1]`` and placed at a random offset on a black ``H x W`` canvas; otherwise unchanged.

  The original resizes up and pads to a larger input; the models here take a fixed canonical frame, so the image
  shrinks inside it instead (bilinear, antialiased; the same draw for every image of the batch, as the mask is
  one). Shapes are kept; at ``probability = 0`` the result is ``images`` exactly.
  """
  apply_key, scale_key, shift_key = jax.random.split(key, 3)
  h, w = images.shape[-3], images.shape[-2]
  scale = jax.random.uniform(scale_key, (), minval=min_scale, maxval=1.0)
  shift = jax.random.uniform(shift_key, (2,)) * (1.0 - scale) * jnp.asarray([h, w], jnp.float32)
  nd = images.ndim
  moved = jax.image.scale_and_translate(images, images.shape, (nd - 3, nd - 2), jnp.stack([scale, scale]), shift,
                                        method="linear", antialias=True)
  return jnp.where(jax.random.uniform(apply_key, ()) < probability, moved, images)


def photometric_diversity(key: jax.Array, images: jax.Array, probability: float,
                          strength: float = 0.2) -> jax.Array:
  """A photometric counterpart of DI (Xie et al., CVPR 2019): with ``probability``, ``images`` ``(..., H, W, 3)``
  in ``[0, 255]`` with a random contrast ``a`` in ``[1 - strength, 1 + strength]`` about mid-grey and a random
  brightness shift ``b`` in ``[-64 strength, 64 strength]``,

  .. math:: x' = \\operatorname{clip}\\big(a (x - 127.5) + 127.5 + b,\\ 0,\\ 255\\big),

  one draw for the whole batch (the mask is one); otherwise unchanged. Where DI moves the face inside the frame,
  this changes its exposure, as photos of the person under other light and cameras would. Shapes are kept; at
  ``probability = 0`` the result is ``images`` exactly.
  """
  apply_key, contrast_key, brightness_key = jax.random.split(key, 3)
  contrast = jax.random.uniform(contrast_key, (), minval=1.0 - strength, maxval=1.0 + strength)
  brightness = jax.random.uniform(brightness_key, (), minval=-64.0 * strength, maxval=64.0 * strength)
  changed = jnp.clip((images - 127.5) * contrast + 127.5 + brightness, 0.0, 255.0)
  return jnp.where(jax.random.uniform(apply_key, ()) < probability, changed, images)


def scale_copies(images: jax.Array, copies: int) -> jax.Array:
  """SI (Lin et al., ICLR 2020): ``(copies, ...)`` holding ``images / 2^i`` for ``i = 0 .. copies - 1``; the
  gradient averaged over them is the scale-invariant gradient. ``copies = 1`` is ``images`` alone."""
  return jnp.stack([images / 2.0 ** i for i in range(copies)])


def dct_matrix(size: int) -> np.ndarray:
  """The orthonormal ``size``-point DCT-II matrix ``C[k, n] = a(k) cos(pi (2n + 1) k / (2 size))``."""
  k, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  c = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
  c[0] /= np.sqrt(2.0)
  return c.astype(np.float32)


def spectrum_simulation(key: jax.Array, images: jax.Array, sigma, rho) -> jax.Array:
  """SSA (Long et al., ECCV 2022): one spectrum-transformed copy of ``images`` ``(..., H, W, 3)``.

  .. math:: T(x) = \\mathcal{D}^{-1}\\big(\\mathcal{D}(x + \\xi) \\odot M\\big), \\quad
     \\xi \\sim \\mathcal{N}(0, \\sigma^2 I), \\; M \\sim \\mathcal{U}(1 - \\rho, 1 + \\rho)

  with :math:`\\mathcal{D}` the orthonormal 2-D DCT of each channel over the whole image (the authors' code
  draws ``sigma = epsilon`` and ``rho = 0.5``). ``sigma`` is in pixel units of [0, 255]; at ``sigma = rho = 0``
  the result equals ``images`` up to float rounding (the DCT is orthonormal).
  """
  noise_key, scale_key = jax.random.split(key)
  h, w = images.shape[-3], images.shape[-2]
  ch, cw = jnp.asarray(dct_matrix(h)), jnp.asarray(dct_matrix(w))
  hp = jax.lax.Precision.HIGHEST
  x = images + sigma * jax.random.normal(noise_key, images.shape, images.dtype)
  coeffs = jnp.einsum("kh,...hwc,lw->...klc", ch, x, cw, precision=hp)
  coeffs = coeffs * jax.random.uniform(scale_key, images.shape, images.dtype, 1.0 - rho, 1.0 + rho)
  return jnp.einsum("kh,...klc,lw->...hwc", ch, coeffs, cw, precision=hp)
