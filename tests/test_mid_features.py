"""The intermediate-feature term of the objectives (objectives.mid_feature_distortion in the ascent), checked
against numpy loops and against the objectives computed by hand outside the ascent's plumbing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import ascent
from opomjax.core import objectives
from tests.test_ascent import EPS, IMAGES, PARAMS, SIZE, activations, apply_embed, embed, tiny_model


def test_distortion_equals_a_numpy_loop_over_images():
  rng = np.random.default_rng(0)
  clean = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
  adv = clean + 0.3 * rng.normal(size=clean.shape).astype(np.float32)
  expected = np.mean([np.linalg.norm(a - c) / np.linalg.norm(c) for a, c in zip(adv, clean)])
  got = float(objectives.mid_feature_distortion(jnp.asarray(adv), jnp.asarray(clean)))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # No units: scaling both activations leaves it unchanged.
  np.testing.assert_allclose(float(objectives.mid_feature_distortion(jnp.asarray(7 * adv), jnp.asarray(7 * clean))),
                             expected, rtol=1e-5)


def test_distortion_refuses_activations_of_different_shapes():
  with pytest.raises(ValueError, match="shapes differ"):
    objectives.mid_feature_distortion(jnp.zeros((2, 4)), jnp.zeros((2, 5)))


@pytest.mark.parametrize("count, depth, index", [(5, 0.0, 0), (5, 1.0, 4), (5, 0.5, 2), (4, 0.5, 2), (2, 0.4, 0),
                                                 (2, 0.5, 1), (1, 0.5, 0)])
def test_mid_layer_index_picks_the_layer_at_that_relative_depth(count, depth, index):
  assert objectives.mid_layer_index(count, depth) == index


def run(**options):
  kw = dict(method="opom-center", epsilon=EPS, step_size=2.0, steps=3, key=jax.random.key(7), return_trace=True,
            activations_fn=activations)
  kw.update(options)
  return ascent.generate_masks(embed, IMAGES, **kw)


@pytest.mark.parametrize("depth, layer", [(0.0, 0), (1.0, 1)])
def test_first_step_objective_is_the_method_plus_the_weighted_distortion(depth, layer):
  weight = 0.7
  init = jax.random.uniform(jax.random.key(3), (IMAGES.shape[0], SIZE, SIZE, 3), jnp.float32, -EPS, EPS)
  _, trace = run(init=init, mid_feature_weight=weight, mid_feature_depth=depth)
  for k in range(IMAGES.shape[0]):
    masked = jnp.clip(IMAGES[k] + init[k], 0.0, 255.0)
    distortion = np.mean([np.linalg.norm(a - c) / np.linalg.norm(c) for a, c in
                          zip(np.asarray(activations(masked)[layer]), np.asarray(activations(IMAGES[k])[layer]))])
    by_hand = (objectives.opom_class_center(embed(masked), embed(IMAGES[k])) + weight * distortion) / (1 + weight)
    np.testing.assert_allclose(float(trace[k, 0]), float(by_hand), rtol=1e-5)


def test_term_changes_the_masks_keeps_them_in_budget_and_is_deterministic():
  plain, _ = run()
  masks, trace = run(mid_feature_weight=2.0)
  again, _ = run(mid_feature_weight=2.0)
  assert float(jnp.abs(masks).max()) <= EPS and bool(jnp.all(jnp.isfinite(trace)))
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(again))
  assert np.any(np.asarray(plain) != np.asarray(masks))
  # Weight 0 is the method alone, bit for bit, with or without activations_fn.
  np.testing.assert_array_equal(np.asarray(run(mid_feature_weight=0.0, activations_fn=None)[0]), np.asarray(plain))


def test_term_rises_under_momentum_and_dfanet_with_its_clean_activations_taken_per_step():
  masks, trace = run(mid_feature_weight=1.0, momentum=1.0, dfanet=True, steps=4, dfanet_clean_once=False)
  assert float(jnp.abs(masks).max()) <= EPS and bool(jnp.all(jnp.isfinite(trace)))
  once, _ = run(mid_feature_weight=1.0, momentum=1.0, dfanet=True, steps=4)  # the default: clean ones taken once
  assert np.any(np.asarray(once) != np.asarray(masks))


def test_ensemble_of_one_equals_the_single_surrogate_with_the_term():
  single, _ = run(mid_feature_weight=1.0)
  one, _ = ascent.generate_masks((apply_embed,), IMAGES, method="opom-center", epsilon=EPS, step_size=2.0, steps=3,
                                 key=jax.random.key(7), return_trace=True, params=(PARAMS,),
                                 activations_fn=(lambda p, x, key=None: tiny_model()[0](p, x, key)[1],),
                                 mid_feature_weight=1.0)
  np.testing.assert_array_equal(np.asarray(one), np.asarray(single))


def test_ensemble_members_each_read_their_own_activations():
  apply2, params2 = tiny_model(seed=5)
  acts = lambda apply: (lambda p, x, key=None: apply(p, x, key)[1])
  emb = lambda apply: (lambda p, x, key=None: apply(p, x, key)[0])
  kw = dict(method="opom-center", epsilon=EPS, step_size=2.0, steps=3, key=jax.random.key(7),
            params=(PARAMS, params2))
  plain = ascent.generate_masks((apply_embed, emb(apply2)), IMAGES, **kw)
  masks = ascent.generate_masks((apply_embed, emb(apply2)), IMAGES, activations_fn=(acts(tiny_model()[0]),
                                                                                    acts(apply2)),
                                mid_feature_weight=1.0, **kw)
  assert float(jnp.abs(masks).max()) <= EPS and np.any(np.asarray(plain) != np.asarray(masks))


@pytest.mark.parametrize("change, match", [
    (dict(activations_fn=None), "needs activations_fn"),
    (dict(mid_feature_weight=-1.0), "mid_feature_weight must be a non-negative"),
    (dict(mid_feature_weight=float("nan")), "mid_feature_weight must be a non-negative"),
    (dict(mid_feature_depth=1.5), "mid_feature_depth must lie in"),
    (dict(method="gd-uap"), "does not apply to gd-uap"),
])
def test_bad_arguments_raise_one_line_naming_them(change, match):
  with pytest.raises(ValueError, match=match):
    run(**{"mid_feature_weight": 1.0, **change})


def test_first_step_follows_the_normalised_gradients_of_both_terms():
  """One step without momentum: the sign of g_J / mean|g_J| + w g_mid / mean|g_mid|, each gradient taken by hand
  on the identity's masked images (the mean over images as in Alg. 1)."""
  weight = 0.5
  init = jax.random.uniform(jax.random.key(4), (IMAGES.shape[0], SIZE, SIZE, 3), jnp.float32, -EPS, EPS)
  masks, _ = run(init=init, steps=1, mid_feature_weight=weight, mid_feature_depth=1.0)
  for k in range(IMAGES.shape[0]):
    clean, clean_act = embed(IMAGES[k]), activations(IMAGES[k])[1]
    masked = jnp.clip(IMAGES[k] + init[k], 0.0, 255.0)
    g_obj = np.asarray(jax.grad(lambda x: objectives.opom_class_center(embed(x), clean))(masked))
    g_mid = np.asarray(jax.grad(lambda x: objectives.mid_feature_distortion(activations(x)[1], clean_act))(masked))
    direction = (g_obj / np.abs(g_obj).mean() + weight * g_mid / np.abs(g_mid).mean()).mean(axis=0)
    expected = np.clip(np.asarray(init[k]) + 2.0 * np.sign(direction), -EPS, EPS)
    decided = np.abs(direction) > 1e-6 * np.abs(direction).max()  # away from ties of the sign
    np.testing.assert_allclose(np.asarray(masks[k])[decided], expected[decided], atol=1e-5)


def test_projection_equals_a_numpy_loop_and_is_the_distortion_along_the_guide_itself():
  rng = np.random.default_rng(1)
  clean = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
  guide = clean + 0.5 * rng.normal(size=clean.shape).astype(np.float32)
  adv = clean + 0.5 * rng.normal(size=clean.shape).astype(np.float32)
  expected = np.mean([np.vdot(a - c, g - c) / (np.linalg.norm(g - c) * np.linalg.norm(c))
                      for a, c, g in zip(adv, clean, guide)])
  got = objectives.mid_feature_projection(jnp.asarray(adv), jnp.asarray(clean), jnp.asarray(guide))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  along = objectives.mid_feature_projection(jnp.asarray(guide), jnp.asarray(clean), jnp.asarray(guide))
  np.testing.assert_allclose(float(along), float(objectives.mid_feature_distortion(jnp.asarray(guide),
                                                                                   jnp.asarray(clean))), rtol=1e-5)


def test_guided_term_starts_from_the_guide_and_reads_its_activations():
  weight = 3.0
  guide, _ = run(steps=2)
  masks, trace = run(init=guide, mid_feature_guide=guide, mid_feature_weight=weight, mid_feature_depth=1.0)
  assert float(jnp.abs(masks).max()) <= EPS and np.any(np.asarray(masks) != np.asarray(guide))
  for k in range(IMAGES.shape[0]):  # at the guide, the projection is the guide's own distortion
    masked = jnp.clip(IMAGES[k] + guide[k], 0.0, 255.0)
    act, clean_act = np.asarray(activations(masked)[1]), np.asarray(activations(IMAGES[k])[1])
    along = np.mean([np.linalg.norm(a - c) / np.linalg.norm(c) for a, c in zip(act, clean_act)])
    by_hand = (objectives.opom_class_center(embed(masked), embed(IMAGES[k])) + weight * along) / (1 + weight)
    np.testing.assert_allclose(float(trace[k, 0]), float(by_hand), rtol=1e-5)
  unguided, _ = run(init=guide, mid_feature_weight=weight, mid_feature_depth=1.0)
  assert np.any(np.asarray(unguided) != np.asarray(masks))


@pytest.mark.parametrize("change, match", [
    (dict(mid_feature_weight=0.0), "needs mid_feature_weight > 0"),
    (dict(mid_feature_guide=np.zeros((1, SIZE, SIZE, 3), np.float32)), r"shape \(k, H, W, 3\)"),
    (dict(mid_feature_guide=np.full((2, SIZE, SIZE, 3), 9.0, np.float32)), "exceeds epsilon"),
    (dict(mid_feature_guide=np.full((2, SIZE, SIZE, 3), np.nan, np.float32)), "NaN"),
    (dict(dfanet=True, dfanet_clean_once=False), "needs dfanet_clean_once"),
    (dict(method="fi-uap-all"), "fi-uap-all"),
])
def test_bad_guides_raise_one_line_naming_them(change, match):
  options = {"mid_feature_weight": 1.0, "mid_feature_guide": np.zeros((2, SIZE, SIZE, 3), np.float32), **change}
  with pytest.raises(ValueError, match=match):
    run(**options)
