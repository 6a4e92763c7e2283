"""opomjax.models.pooling: max pooling's hand-written backward pass against JAX's own and a brute-force loop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.models import pooling


def _brute_force_vjp(x: np.ndarray, g: np.ndarray, window, strides) -> np.ndarray:
  """Each output's gradient to the first maximum of its window (row-major order), one window at a time."""
  dx = np.zeros_like(x, dtype=np.float64)
  for out in itertools.product(*(range(n) for n in g.shape)):
    start = [o * s for o, s in zip(out, strides)]
    block = x[tuple(slice(a, a + w) for a, w in zip(start, window))]
    first = np.unravel_index(np.argmax(block), block.shape)  # argmax returns the first maximum
    dx[tuple(a + f for a, f in zip(start, first))] += g[out]
  return dx


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 9, 3), (1, 3, 3, 1), (1, 2, 2, 1), None),            # dlib's stem pool, overlapping windows
    ((2, 8, 8, 3), (1, 2, 2, 1), (1, 2, 2, 1), None),            # non-overlapping
    ((1, 10, 7, 2), (1, 3, 2, 1), (1, 1, 2, 1), None),           # rectangular, stride 1 in one axis
    ((2, 3, 9, 8), (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (0, 1)]),  # NCHW, padded (ONNX)
])
def test_max_pool_matches_reduce_window_and_its_gradient(shape, window, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 3, shape), jnp.float32)  # small integers: many tied maxima
  pads = padding or [(0, 0)] * len(shape)
  reference = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
  ours = lambda x: pooling.max_pool(x, window, strides, padding)
  y = ours(x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(reference(x)))
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  dx = np.asarray(jax.vjp(ours, x)[1](g)[0])
  dx_jax = np.asarray(jax.vjp(reference, x)[1](g)[0])
  # the same element of every window receives the gradient; shares summed in another order (last bit)
  np.testing.assert_allclose(dx, dx_jax, rtol=0, atol=1e-6)
  assert np.array_equal(dx != 0, dx_jax != 0)
  padded = np.pad(np.asarray(x, np.float64), pads, constant_values=-np.inf)
  brute = _brute_force_vjp(padded, np.asarray(g, np.float64), window, strides)
  brute = brute[tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))]
  np.testing.assert_allclose(dx, brute, rtol=0, atol=1e-5)


def test_max_pool_2d_is_flax_valid_max_pool_under_jit():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 15, 15, 4)), jnp.float32)
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
  flax_pool = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
  ours = lambda x: pooling.max_pool_2d(x, (3, 3), (2, 2))
  np.testing.assert_array_equal(np.asarray(jax.jit(ours)(x)), np.asarray(flax_pool(x)))
  np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss(ours)))(x)), np.asarray(jax.grad(loss(flax_pool))(x)),
                             rtol=0, atol=1e-6)


def test_max_pool_refuses_mismatched_window():
  with pytest.raises(ValueError, match="one entry per axis"):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2), (2, 2))
  with pytest.raises(ValueError, match="larger than"):
    pooling.max_pool(jnp.zeros((1, 2, 2, 1)), (1, 3, 3, 1), (1, 1, 1, 1))
