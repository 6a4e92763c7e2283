"""Depthwise 2-D convolution as a sum of shifted, strided slices with a hand-written backward pass.

XLA:CPU runs a depthwise convolution (``lax.conv_general_dilated`` with ``feature_group_count = channels``)
through a slow generic kernel, and JAX's own backward pass of the slice formulation goes through one
scatter-like ``pad`` per kernel tap, several times slower again. :func:`depthwise_conv` computes the same
sums as ``kh * kw`` shifted, strided slices times one kernel tap each (XLA fuses them into one loop) and
gives them a custom VJP: the input gradient is a stride-1 depthwise correlation of the dilated output
gradient with the flipped kernel (the transposed convolution), the kernel gradient one reduction per tap.
Both layouts are served: ``NHWC`` (TensorFlow.js graphs) and ``NCHW`` (ONNX graphs).

Measured with ``bench/bench_tfjs.py --depthwise`` and ``bench/bench_models.py`` (batch 10, 2 cores): faceres
forward + backward 1.99 s against 9.50 s with the grouped convolution; SFace (ONNX, NCHW) 0.68 s against
1.93 s with JAX's backward of the slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

LAYOUTS = ("NHWC", "NCHW")


def _spatial_axes(layout: str) -> tuple[int, int]:
  return (1, 2) if layout == "NHWC" else (2, 3)


def _tap(w_ij: jax.Array, layout: str) -> jax.Array:
  """One kernel tap ``(C,)`` shaped to broadcast over a feature map of ``layout``."""
  return w_ij if layout == "NHWC" else jnp.reshape(w_ij, (-1, 1, 1))


def _pad_spatial(x: jax.Array, pads, layout: str) -> jax.Array:
  config = [(0, 0)] * 4
  for axis, pad in zip(_spatial_axes(layout), pads):
    config[axis] = tuple(pad)
  return jnp.pad(x, config)


def _window(x: jax.Array, offset, out, strides, dilations, layout: str) -> jax.Array:
  """The strided slice of a padded ``x`` that kernel tap ``offset = (i, j)`` multiplies for ``out`` outputs."""
  start, limit, step = [0] * 4, list(x.shape), [1] * 4
  for a, axis in enumerate(_spatial_axes(layout)):
    start[axis] = offset[a] * dilations[a]
    limit[axis] = start[axis] + (out[a] - 1) * strides[a] + 1
    step[axis] = strides[a]
  return jax.lax.slice(x, start, limit, step)


def _taps(x: jax.Array, w: jax.Array, strides, dilations, layout: str) -> jax.Array:
  """``sum_ij slice_ij(x) * w[i, j]`` on an already padded ``x``, kernel ``(kh, kw, C)``."""
  kh, kw, _ = w.shape
  axes = _spatial_axes(layout)
  out = [(x.shape[axes[a]] - ((kh, kw)[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(2)]
  y = None
  for i in range(kh):
    for j in range(kw):
      term = _window(x, (i, j), out, strides, dilations, layout) * _tap(w[i, j], layout)
      y = term if y is None else y + term
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _depthwise(x, w, strides, pads, dilations, layout):
  return _taps(_pad_spatial(x, pads, layout), w, strides, dilations, layout)


def _depthwise_fwd(x, w, strides, pads, dilations, layout):
  return _depthwise(x, w, strides, pads, dilations, layout), (x, w)


def _depthwise_bwd(strides, pads, dilations, layout, residuals, g):
  x, w = residuals
  kh, kw, _ = w.shape
  axes = _spatial_axes(layout)
  config = [(0, 0, 0)] * 4
  for a, axis in enumerate(axes):
    size, kernel, out = x.shape[axis], (kh, kw)[a], g.shape[axis]
    padded = size + pads[a][0] + pads[a][1]
    reach = (kernel - 1) * dilations[a]
    unused = padded - ((out - 1) * strides[a] + reach + 1)  # input rows past the last window
    config[axis] = (reach, reach + unused, strides[a] - 1)
  dilated = jax.lax.pad(g, jnp.zeros((), g.dtype), config)
  dx_padded = _taps(dilated, w[::-1, ::-1], (1, 1), dilations, layout)
  index = [slice(None)] * 4
  for a, axis in enumerate(axes):
    index[axis] = slice(pads[a][0], pads[a][0] + x.shape[axis])
  dx = dx_padded[tuple(index)]
  xp = _pad_spatial(x, pads, layout)
  reduce_axes = tuple(a for a in range(4) if a != (3 if layout == "NHWC" else 1))
  out = [g.shape[axis] for axis in axes]
  dw = [jnp.sum(_window(xp, (i, j), out, strides, dilations, layout) * g, axis=reduce_axes)
        for i in range(kh) for j in range(kw)]
  return dx, jnp.stack(dw).reshape(w.shape)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x: jax.Array, w: jax.Array, strides, pads, dilations, layout: str = "NHWC") -> jax.Array:
  """Depthwise 2-D convolution (one filter per channel), equal to ``lax.conv_general_dilated`` with
  ``feature_group_count = C``.

  Args:
    x: the feature map, ``(N, H, W, C)`` for ``layout="NHWC"`` or ``(N, C, H, W)`` for ``"NCHW"``.
    w: one ``(kh, kw)`` filter per channel, shaped ``(kh, kw, C)``.
    strides, dilations: ``(sh, sw)``, ``(dh, dw)``.
    pads: ``[(top, bottom), (left, right)]``.
    layout: ``"NHWC"`` or ``"NCHW"``.

  Differentiable in reverse mode (custom VJP) with respect to ``x`` and ``w``.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
  return _depthwise(x, w, tuple(int(s) for s in strides), tuple((int(lo), int(hi)) for lo, hi in pads),
                    tuple(int(d) for d in dilations), layout)
