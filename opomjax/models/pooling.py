"""Max pooling with a hand-written backward pass: one strided slice per window position.

JAX differentiates ``lax.reduce_window(..., lax.max, ...)`` through ``select_and_scatter_add``, which XLA:CPU
expands into a variadic reduce-window carrying four ``iota`` index arrays the size of the input, then a
scatter. On dlib's ResNet (one 3x3/2 max pool after the 7x7/2 stem, batch 10, 2 cores) that expansion was about
40 ms of a 190 ms forward + backward. :func:`max_pool` computes the same forward pass and routes the gradient
with ``prod(window)`` strided slices instead: the output gradient goes to the first input of each window, in
row-major window order, that equals the window's maximum — the element ``select_and_scatter_add`` with JAX's
``>=`` selector picks — and each slice's share is put back with one interior-padded ``lax.pad`` (XLA fuses
them into one loop). Where an input is the maximum of several overlapping windows its shares are summed in
that window order, so the gradient can differ from JAX's in the last bit, not more.

Measured with ``bench/bench_max_pool.py`` (docs/performance.md).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _valid_size(size: int, window: int, stride: int) -> int:
  return (size - window) // stride + 1


def _window_slice(x: jax.Array, offset: Sequence[int], out: Sequence[int], strides: Sequence[int]) -> jax.Array:
  """The inputs at window position ``offset`` of every output: ``x[o + offset]`` for ``o`` on the stride grid."""
  limit = [o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides)]
  return jax.lax.slice(x, tuple(offset), tuple(limit), tuple(strides))


def _valid_max(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...]) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _valid_max_pool(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...]) -> jax.Array:
  return _valid_max(x, window, strides)


def _valid_max_pool_fwd(x, window, strides):
  y = _valid_max(x, window, strides)
  return y, (x, y)


def _valid_max_pool_bwd(window, strides, residuals, g):
  x, y = residuals
  out = y.shape
  taken = jnp.zeros(out, bool)
  dx = jnp.zeros_like(x)
  for offset in itertools.product(*(range(w) for w in window)):
    hit = (_window_slice(x, offset, out, strides) == y) & ~taken
    taken = taken | hit
    share = jnp.where(hit, g, jnp.zeros_like(g))
    config = [(o, size - o - ((n - 1) * s + 1), s - 1) for o, size, n, s in zip(offset, x.shape, out, strides)]
    dx = dx + jax.lax.pad(share, jnp.zeros((), g.dtype), config)
  return (dx,)


_valid_max_pool.defvjp(_valid_max_pool_fwd, _valid_max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]] | None = None) -> jax.Array:
  """``lax.reduce_window(x, -inf, lax.max, window, strides, padding)`` with the backward pass above.

  ``window``, ``strides`` and ``padding`` (``(low, high)`` pairs, padded with ``-inf``; ``None`` = none) give
  one entry per axis of ``x``, as for ``lax.reduce_window``.
  """
  window, strides = tuple(int(w) for w in window), tuple(int(s) for s in strides)
  if not len(window) == len(strides) == x.ndim:
    raise ValueError(f"max_pool: window {window} and strides {strides} need one entry per axis of {x.shape}")
  if padding is not None and any(lo or hi for lo, hi in padding):
    x = jnp.pad(x, [tuple(p) for p in padding], constant_values=-jnp.inf)
  if any(_valid_size(n, w, s) < 1 for n, w, s in zip(x.shape, window, strides)):
    raise ValueError(f"max_pool: window {window} larger than the (padded) input {x.shape}")
  return _valid_max_pool(x, window, strides)


def max_pool_2d(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """NHWC ``VALID`` max pooling (``flax.linen.max_pool(x, window, strides, "VALID")``) via :func:`max_pool`."""
  return max_pool(x, (1,) + tuple(window) + (1,), (1,) + tuple(strides) + (1,))
