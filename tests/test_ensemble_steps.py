"""Masks from an ensemble of surrogates: per-member objectives, normalised gradients, keys, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import ascent
from opomjax.core import ensemble
from opomjax.core import objectives
from test_ascent import tiny_images, tiny_model

APPLY_A, PARAMS_A = tiny_model(seed=0, size=16)
APPLY_B, PARAMS_B = tiny_model(seed=1, size=16)
IMAGES = tiny_images(k=2, n=3, size=16)
EPS, ALPHA, STEPS = 8.0, 2.0, 3


def member_a(p, x, key=None):
  return APPLY_A(p, x, key)[0]


def member_b(p, x, key=None):
  return APPLY_B(p, x, key)[0][:, :12]  # another network, another feature size


def initial_masks():
  init_key, _ = jax.random.split(jax.random.key(2))
  return jax.random.uniform(init_key, (IMAGES.shape[0], 16, 16, 3), jnp.float32, -EPS, EPS)


def reference_masks(method_objective, weights):
  """Alg. 1 with the ensemble direction written out from the equations: for each identity and step,
  g = sum_m w_m g_m / mean|g_m|, delta <- clip(delta + alpha sign(mean_i g), -eps, eps)."""
  members = [(member_a, PARAMS_A), (member_b, PARAMS_B)]
  w = np.asarray(weights, np.float64) / np.sum(weights)
  out = []
  for images, delta in zip(IMAGES, initial_masks()):
    cleans = [f(p, images) for f, p in members]
    for _ in range(STEPS):
      masked = jnp.clip(images + delta, 0.0, 255.0)
      direction = 0.0
      for (f, p), clean, wm in zip(members, cleans, w):
        g = np.asarray(jax.grad(lambda x: method_objective(f(p, x), clean))(masked), np.float64)
        direction = direction + wm * g / np.mean(np.abs(g))
      delta = jnp.clip(delta + ALPHA * jnp.sign(jnp.asarray(np.mean(direction, axis=0), jnp.float32)), -EPS, EPS)
    out.append(np.asarray(delta))
  return np.stack(out)


@pytest.mark.parametrize("method,objective", [("fi-uap", objectives.fi_uap),
                                              ("opom-center", objectives.opom_class_center)])
def test_ensemble_masks_follow_the_normalised_weighted_gradients(method, objective):
  weights = (2.0, 1.0)
  ours = ascent.generate_masks((member_a, member_b), IMAGES, method=method, params=(PARAMS_A, PARAMS_B),
                               key=jax.random.key(2), epsilon=EPS, step_size=ALPHA, steps=STEPS,
                               surrogate_weights=weights)
  ref = reference_masks(objective, weights)
  # The signs agree wherever the reference direction is not within float32 rounding of zero.
  assert np.mean(np.asarray(ours) == ref) > 0.995
  assert float(jnp.max(jnp.abs(ours))) <= EPS


def test_a_member_s_gradient_scale_does_not_change_its_say():
  rng = np.random.default_rng(0)
  ga, gb = (jnp.asarray(rng.normal(size=(3, 8, 8, 3)), jnp.float32) for _ in range(2))
  value, g = ensemble.combine_member_gradients([1.0, 3.0], [ga, gb], (1.0, 3.0))
  _, g_scaled = ensemble.combine_member_gradients([1.0, 3.0], [ga, 1000.0 * gb], (1.0, 3.0))
  np.testing.assert_allclose(np.asarray(g_scaled), np.asarray(g), rtol=1e-5, atol=1e-6)
  assert value == pytest.approx(0.25 * 1.0 + 0.75 * 3.0)
  # the weighted sum of the normalised gradients, written out
  expected = 0.25 * ga / jnp.mean(jnp.abs(ga)) + 0.75 * gb / jnp.mean(jnp.abs(gb))
  np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_a_zero_weight_member_leaves_the_single_surrogate_mask_bit_for_bit():
  common = dict(method="opom-convex", key=jax.random.key(2), steps=STEPS, warmup_center_steps=1)
  single = ascent.generate_masks(member_a, IMAGES, params=PARAMS_A, **common)
  pair = ascent.generate_masks((member_a, member_b), IMAGES, params=(PARAMS_A, PARAMS_B),
                               surrogate_weights=(1.0, 0.0), **common)
  alone = ascent.generate_masks([member_a], IMAGES, params=[PARAMS_A], **common)
  np.testing.assert_array_equal(np.asarray(pair), np.asarray(single))
  np.testing.assert_array_equal(np.asarray(alone), np.asarray(single))


def test_dfanet_ensemble_is_deterministic_per_key():
  common = dict(method="fi-uap", params=(PARAMS_A, PARAMS_B), steps=STEPS, momentum=1.0, dfanet=True)
  a = ascent.generate_masks((member_a, member_b), IMAGES, key=jax.random.key(4), **common)
  again = ascent.generate_masks((member_a, member_b), IMAGES, key=jax.random.key(4), **common)
  other = ascent.generate_masks((member_a, member_b), IMAGES, key=jax.random.key(5), **common)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(again))
  assert np.any(np.asarray(a) != np.asarray(other))


@pytest.mark.parametrize("kwargs,message", [
    (dict(params=(PARAMS_A,)), "params must be None or a sequence of 2"),
    (dict(params=(PARAMS_A, PARAMS_B), surrogate_weights=(1.0, -1.0)), "weights must be 2 non-negative"),
    (dict(params=(PARAMS_A, PARAMS_B), activations_fn=(member_a,)), "activations_fn must be None or a sequence"),
])
def test_bad_ensembles_are_refused_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ascent.generate_masks((member_a, member_b), IMAGES, method="fi-uap", key=jax.random.key(0), **kwargs)


def test_weights_need_an_ensemble_and_members_must_be_callable():
  with pytest.raises(ValueError, match="surrogate_weights needs an ensemble"):
    ascent.generate_masks(member_a, IMAGES, method="fi-uap", params=PARAMS_A, key=jax.random.key(0),
                          surrogate_weights=(1.0,))
  with pytest.raises(ValueError, match=r"embed_fn\[1\] must be callable"):
    ascent.generate_masks((member_a, "sface"), IMAGES, method="fi-uap", key=jax.random.key(0))
  with pytest.raises(ValueError, match="empty sequence"):
    ascent.generate_masks((), IMAGES, method="fi-uap", key=jax.random.key(0))
