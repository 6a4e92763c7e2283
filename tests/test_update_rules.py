"""The gradient side of a mask step (opomjax.core.update_rules) against the formulas of its papers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from opomjax.core import update_rules

SHAPE = (12, 10, 3)


def gradients(count: int, seed: int = 0) -> list[jax.Array]:
  keys = jax.random.split(jax.random.key(seed), count)
  return [jax.random.normal(k, SHAPE) * 10.0 ** float(i % 3 - 1) for i, k in enumerate(keys)]


def run_rule(rule, grads, **extra_per_step):
  state = rule.init(jnp.zeros(SHAPE))
  out = []
  for t, g in enumerate(grads):
    extra = {name: values[t] for name, values in extra_per_step.items()}
    update, state = jax.jit(rule.update)(g, state, **extra)
    out.append(np.asarray(update))
  return out


@pytest.mark.parametrize("mu", [1.0, 0.9, 0.0])
def test_chain_reproduces_eq14_momentum_and_signed_step_bit_for_bit(mu):
  """The optax chain against the update the ascent made before it existed, written out (Eq. 14, Alg. 1)."""
  grads = gradients(6)
  got = run_rule(update_rules.mask_rule(0.75, mu), grads)

  @jax.jit
  def eq14(velocity, g):
    l1 = jnp.sum(jnp.abs(g))
    velocity = mu * velocity + g / jnp.maximum(l1, jnp.finfo(l1.dtype).tiny)
    return velocity, 0.75 * jnp.sign(velocity)

  velocity = jnp.zeros(SHAPE)
  for g, update in zip(grads, got):
    velocity, want = eq14(velocity, g)
    np.testing.assert_array_equal(update, np.asarray(want))


def test_plain_rule_is_the_signed_gradient():
  grads = gradients(3)
  for g, update in zip(grads, run_rule(update_rules.mask_rule(2.0), grads)):
    np.testing.assert_array_equal(update, 2.0 * np.sign(np.asarray(g)))


@pytest.mark.parametrize("width", [1, 3, 7, 15])
def test_ti_kernel_sums_to_one_and_is_the_authors_gaussian(width):
  kernel = update_rules.gaussian_kernel(width)
  assert kernel.shape == (width, width)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
  # The authors' kernel: st.norm.pdf(linspace(-3, 3, width)), outer product, normalised.
  line = np.exp(-0.5 * np.linspace(-3, 3, width) ** 2) if width > 1 else np.ones(1)
  np.testing.assert_allclose(kernel, np.outer(line, line) / np.outer(line, line).sum(), rtol=1e-5)


def test_ti_width_one_is_no_smoothing():
  grads = gradients(2)
  np.testing.assert_array_equal(run_rule(update_rules.translation_invariant(1), grads)[1], np.asarray(grads[1]))
  np.testing.assert_array_equal(np.asarray(update_rules.smooth(grads[0], update_rules.gaussian_kernel(1))),
                                np.asarray(grads[0]))


@pytest.mark.parametrize("width", [3, 5])
def test_ti_smoothing_equals_scipy_convolution_per_channel(width):
  g = np.asarray(gradients(1)[0])
  kernel = update_rules.gaussian_kernel(width)
  want = np.stack([ndimage.convolve(g[..., c], kernel, mode="constant") for c in range(3)], axis=-1)
  got = run_rule(update_rules.translation_invariant(width), [jnp.asarray(g)])[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_even_or_zero_ti_width_is_refused():
  for width in (0, 2):
    with pytest.raises(ValueError, match="odd"):
      update_rules.gaussian_kernel(width)


def test_vmi_with_zero_samples_equals_momentum():
  """Without neighbourhood gradients the variance stays zero: VMI-MI is MI, bit for bit."""
  grads = gradients(5)
  with_vmi = run_rule(update_rules.mask_rule(1.0, 1.0, vmi=True), grads)
  momentum = run_rule(update_rules.mask_rule(1.0, 1.0), grads)
  for a, b in zip(with_vmi, momentum):
    np.testing.assert_array_equal(a, b)


def test_vmi_follows_its_algorithm():
  """Wang & He Alg. 1: u_t = g_t + v_{t-1}, v_t = mean neighbour gradient - g_t (v_0 = 0)."""
  grads, neighbours = gradients(4), gradients(4, seed=1)
  got = run_rule(update_rules.variance_tuning(), grads, neighbour_gradient=neighbours)
  variance = np.zeros(SHAPE, np.float32)
  for g, nb, update in zip(grads, neighbours, got):
    np.testing.assert_allclose(update, np.asarray(g) + variance, rtol=1e-6)
    variance = np.asarray(nb) - np.asarray(g)
  assert not np.allclose(got[1], np.asarray(grads[1]))  # the variance term did act
