"""Diverse masks per person (Eq. 19) and the M-O / M-M evaluation of Table 6, on a toy embedding."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import ascent
from opomjax.core import diverse
from opomjax.core import objectives
from opomjax.pipeline import diverse as diverse_pipeline

K, N, SIZE, DIM = 2, 3, 16, 12
EPS, ALPHA, STEPS = 8.0, 2.0, 4

_W = jnp.asarray(np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, DIM)) / np.sqrt(SIZE * SIZE * 3),
                 jnp.float32)


def embed(images):
  """A toy recogniser: a fixed random projection of the centred pixels through tanh, unit features."""
  x = images.reshape(images.shape[0], -1) / 127.5 - 1.0
  f = jnp.tanh(4.0 * x @ _W)
  return f / jnp.linalg.norm(f, axis=-1, keepdims=True)


def apply_embed(params, images):
  return embed(images * params["scale"])


IMAGES = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (K, N, SIZE, SIZE, 3)), jnp.float32)


@functools.cache
def make(num_masks, weight=1.0, method="opom-center", **kw):
  options = dict(epsilon=EPS, step_size=ALPHA, steps=STEPS, key=jax.random.key(7))
  options.update(kw)
  return diverse.generate_diverse_masks(embed, IMAGES, num_masks=num_masks, diversity_weight=weight,
                                        method=method, **options)


def masked_features(masks):
  """``(K, M, n, d)``: the training images of each identity under each of its masks."""
  masked = jnp.clip(IMAGES[:, None] + masks[:, :, None], 0.0, 255.0)
  return jax.vmap(jax.vmap(embed))(masked)


def test_masks_are_in_budget_and_differ_pairwise():
  masks = make(3)
  assert masks.shape == (K, 3, SIZE, SIZE, 3) and masks.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(masks))) <= EPS
  m = np.asarray(masks)
  for k in range(K):
    for p in range(3):
      for q in range(p + 1, 3):
        assert np.mean(m[k, p] != m[k, q]) > 0.5, (k, p, q)


def test_diversity_term_pushes_masked_features_apart():
  """Same keys, same starts: the weighted diversity term raises the features' pairwise distance."""
  without = masked_features(make(3, weight=0.0))
  with_term = masked_features(make(3, weight=1.0))
  for k in range(K):
    apart = diverse.pairwise_feature_distance(with_term[k])
    assert apart > 2 * diverse.pairwise_feature_distance(without[k]), k
    # pairwise_feature_distance is d times Eq. 19 of objectives.diversity.
    np.testing.assert_allclose(apart, DIM * float(objectives.diversity(with_term[k])), rtol=1e-4)


def test_each_mask_stays_protective():
  """The masks still move their features away from the class centre (each its own OPOM objective)."""
  masks = make(3, weight=1.0)
  clean = jax.vmap(embed)(IMAGES)
  init_key, _ = jax.random.split(jax.random.key(7))
  init = jax.random.uniform(init_key, masks.shape, jnp.float32, -EPS, EPS)
  before, after = masked_features(init), masked_features(masks)
  for k in range(K):
    for p in range(3):
      assert (objectives.opom_class_center(after[k, p], clean[k])
              > objectives.opom_class_center(before[k, p], clean[k])), (k, p)


@pytest.mark.parametrize("method,options,start", [
    ("opom-center", {}, "key"),
    ("fi-uap+", {}, "init"),
    ("fi-uap", {"momentum": 0.5}, "key"),
])
def test_one_mask_equals_generate_masks(method, options, start):
  """Same random start (from the key, or given) and settings: bit for bit the mask of generate_masks."""
  common = dict(method=method, epsilon=EPS, step_size=ALPHA, steps=STEPS, **options)
  if start == "key":
    expected = ascent.generate_masks(embed, IMAGES, key=jax.random.key(3), **common)
    got = diverse.generate_diverse_masks(embed, IMAGES, num_masks=1, diversity_weight=5.0, key=jax.random.key(3),
                                         **common)
  else:  # with parameters passed apart from the function
    init = jnp.asarray(np.random.default_rng(4).uniform(-EPS, EPS, (K, SIZE, SIZE, 3)), jnp.float32)
    expected = ascent.generate_masks(apply_embed, IMAGES, init=init, params={"scale": 0.9}, **common)
    got = diverse.generate_diverse_masks(apply_embed, IMAGES, num_masks=1, diversity_weight=5.0,
                                         init=init[:, None], params={"scale": 0.9}, **common)
  assert got.shape == (K, 1, SIZE, SIZE, 3)
  np.testing.assert_array_equal(np.asarray(got[:, 0]), np.asarray(expected))


@pytest.mark.slow
def test_one_mask_equals_generate_masks_for_the_convex_hull():
  common = dict(method="opom-convex", epsilon=EPS, step_size=ALPHA, steps=STEPS, warmup_center_steps=1)
  expected = ascent.generate_masks(embed, IMAGES, key=jax.random.key(3), **common)
  got = diverse.generate_diverse_masks(embed, IMAGES, num_masks=1, diversity_weight=1.0, key=jax.random.key(3),
                                       **common)
  np.testing.assert_array_equal(np.asarray(got[:, 0]), np.asarray(expected))


def test_one_step_matches_a_hand_written_gradient_of_eq19():
  """One step from given starts against the gradient of the written-out objective, mask by mask."""
  weight, num_masks = 2.0, 3
  init = jnp.asarray(np.random.default_rng(5).uniform(-EPS, EPS, (K, num_masks, SIZE, SIZE, 3)), jnp.float32)
  masks, trace = diverse.generate_diverse_masks(embed, IMAGES, num_masks=num_masks, diversity_weight=weight,
                                                method="opom-center", init=init, epsilon=EPS, step_size=ALPHA,
                                                steps=1, return_trace=True)
  for k in range(K):
    clean = embed(IMAGES[k])
    centre = jnp.mean(clean, axis=0)

    masked = jnp.clip(IMAGES[k][None] + init[k][:, None], 0, 255)  # (M, n, H, W, 3)

    def objective(masked):  # Alg. 1 takes the gradient at the (clipped) masked images
      feats = [embed(masked[p]) for p in range(num_masks)]
      own = sum(jnp.mean(jnp.square(f - centre)) for f in feats) / num_masks
      pairs = [(p, q) for p in range(num_masks) for q in range(num_masks) if p < q]
      div = sum(jnp.mean(jnp.square(feats[p] - feats[q])) for p, q in pairs) / len(pairs)
      return own + weight * div

    value, grad = jax.value_and_grad(objective)(masked)
    grad = np.asarray(grad).sum(axis=1)  # mask p: the sum over its images
    expected = np.clip(np.asarray(init[k]) + ALPHA * np.sign(grad), -EPS, EPS)
    decided = np.abs(grad) > 1e-6 * np.abs(grad).max()  # where the sign is not at the mercy of round-off
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(masks[k])[decided], expected[decided])
    np.testing.assert_allclose(trace[k, 0], value, rtol=1e-5)


@pytest.mark.parametrize("change,match", [
    (dict(num_masks=0), "num_masks"),
    (dict(num_masks=2.5), "num_masks"),
    (dict(diversity_weight=-1.0), "diversity_weight"),
    (dict(diversity_weight=float("nan")), "diversity_weight"),
    (dict(method="gd-uap"), "method"),
    (dict(key=None), "key"),
    (dict(epsilon=64.0), "epsilon"),
    (dict(init=jnp.zeros((K, 3, SIZE, SIZE, 3))), "init"),
    (dict(progress="yes"), "progress"),
])
def test_bad_arguments_raise_value_error_naming_them(change, match):
  kw = dict(num_masks=2, diversity_weight=1.0, method="opom-center", key=jax.random.key(0), steps=1)
  kw.update(change)
  with pytest.raises(ValueError, match=match):
    diverse.generate_diverse_masks(embed, IMAGES, **kw)


def test_progress_is_reported_after_every_step():
  seen = []
  diverse.generate_diverse_masks(embed, IMAGES, num_masks=3, diversity_weight=1.0, method="opom-center",
                                 key=jax.random.key(8), epsilon=EPS, step_size=ALPHA, steps=STEPS,
                                 progress=lambda done, total: seen.append((done, total)))
  assert seen == [(s, STEPS) for s in range(1, STEPS + 1)]


# M-O / M-M evaluation


def brute_force_psr(probes, gallery, distractors, rank):
  """1 - identification rate at ``rank``, one search per identity and ordered pair of photos i != j."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  probes, gallery, distractors = unit(probes), unit(gallery), unit(distractors)
  found = searches = 0
  for k in range(probes.shape[0]):
    for i in range(probes.shape[1]):
      for j in range(probes.shape[1]):
        if i == j:
          continue
        genuine = probes[k, i] @ gallery[k, j]
        ahead = sum(probes[k, i] @ t >= genuine for t in distractors)
        found += ahead < rank
        searches += 1
  return 1.0 - found / searches


def evaluation_features(num_masks=3, seed=0):
  """Identities with a centre each; each mask moves the photos by its own amount and direction."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(4, 1, 8))
  clean = centres + 0.3 * rng.normal(size=(4, 5, 8))
  shifts = rng.normal(size=(num_masks, 4, 1, 8)) * np.linspace(0.3, 1.5, num_masks)[:, None, None, None]
  protected = clean[None] + shifts + 0.2 * rng.normal(size=(num_masks, 4, 5, 8))
  distractors = rng.normal(size=(30, 8))
  return protected.astype(np.float32), clean.astype(np.float32), distractors.astype(np.float32)


def test_mask_original_rates_match_a_brute_force_loop():
  protected, clean, distractors = evaluation_features()
  rates = diverse.mask_original_rates(protected, clean, distractors, ks=(1, 3))
  assert rates.shape == (3, 2)
  for p in range(3):
    for c, rank in enumerate((1, 3)):
      np.testing.assert_allclose(rates[p, c], brute_force_psr(protected[p], clean, distractors, rank), atol=1e-12)
  assert len(set(np.round(rates[:, 0], 6))) > 1 and 0 < rates.mean() < 1  # the masks differ in strength


def test_mask_mask_rates_match_a_brute_force_loop():
  protected, _, distractors = evaluation_features()
  rates = diverse.mask_mask_rates(protected, distractors, ks=(1, 3))
  pairs = diverse.mask_pairs(3)
  assert pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] and rates.shape == (6, 2)
  for row, (p, q) in enumerate(pairs):
    for c, rank in enumerate((1, 3)):
      expected = brute_force_psr(protected[p], protected[q], distractors, rank)
      np.testing.assert_allclose(rates[row, c], expected, atol=1e-12)
  mean, std = diverse.mean_std(rates)
  np.testing.assert_allclose(mean, rates.mean(0))
  np.testing.assert_allclose(std, np.sqrt(((rates - rates.mean(0)) ** 2).mean(0)))
  with pytest.raises(ValueError, match="2 masks"):
    diverse.mask_mask_rates(protected[:1], distractors)


def test_evaluate_masks_row():
  protected, clean, distractors = evaluation_features()
  row = diverse_pipeline.evaluate_masks(protected, clean, distractors, ks=(1,))
  assert row["num_masks"] == 3 and len(row["mo_per_mask"]["1"]) == 3 and len(row["mm_per_pair"]["1"]) == 6
  np.testing.assert_allclose(row["mo_top1"], np.mean(row["mo_per_mask"]["1"]))
  np.testing.assert_allclose(row["clean_top1"], brute_force_psr(clean, clean, distractors, 1))
  single = diverse_pipeline.evaluate_masks(protected[:1], clean, distractors, ks=(1,))
  assert single["mm_top1"] is None and single["mask_feature_distance"] is None
  table = diverse_pipeline.markdown_table([{"target": "toy", "seconds_per_identity": 3.0, **row},
                                           {"target": "toy", "seconds_per_identity": 1.0, **single}])
  assert table.count("\n") == 4 and "| toy | 1 |" in table and "—" in table


# Resumable generation over a protocol


class _Protocol:
  names = ["ann", "bob", "cy"]
  train = np.asarray(np.random.default_rng(2).uniform(0, 255, (3, N, SIZE, SIZE, 3)), np.float32)


def test_generation_resumes_and_refuses_other_settings(tmp_path):
  settings = {"method": "opom-center", "num_masks": 2, "diversity_weight": 1.0}
  options = dict(method="opom-center", diversity_weight=1.0, epsilon=EPS, step_size=ALPHA, steps=2)
  run = lambda group_size, s=settings: diverse_pipeline.generate(
      embed, None, _Protocol, tmp_path, num_masks=2, settings=s, group_size=group_size, seed=0,
      show_progress=False, **options)
  first = run(2)
  assert first["generated"] == 3 and first["seconds"] > 0
  masks = diverse_pipeline.load_masks(tmp_path, 2, _Protocol.names, settings)
  assert masks.shape == (3, 2, SIZE, SIZE, 3)
  assert run(2)["generated"] == 0  # everything on disk: nothing redone
  # Identity i's masks are those of generate_diverse_masks for it alone with key fold_in(PRNGKey(0), i).
  alone = diverse.generate_diverse_masks(embed, _Protocol.train[2:3], num_masks=2,
                                         key=jax.random.fold_in(jax.random.PRNGKey(0), 2), **options)
  np.testing.assert_allclose(masks[2], np.asarray(alone[0]), atol=1e-6)
  # A killed run: one identity's file lost; only it is made again, in a group of another size, identically.
  path = diverse_pipeline.masks_dir(tmp_path, 2) / "bob.npz"
  path.unlink()
  assert run(1)["generated"] == 1
  np.testing.assert_allclose(diverse_pipeline.load_masks(tmp_path, 2, _Protocol.names, settings), masks, atol=1e-6)
  with pytest.raises(ValueError, match="diversity_weight differ"):
    run(2, {**settings, "diversity_weight": 2.0})
  meta = diverse_pipeline.load_identity_masks(path)[1]
  assert meta["identity"] == "bob" and json.dumps(meta["settings"]) == json.dumps(settings, sort_keys=True)
