"""The 1:N kernel against a per-search loop written like the official evaluation script."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opomjax
from opomjax.core import evaluation


def _normalise(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def official_loop_psr(masked, clean, distractors, ks, ties="distractor_first"):
  """One search at a time, as the official script does: build the gallery, sort it, look for the mate.

  Features are flattened identity-major, L2-normalised, and for every identity and ordered pair i != j the
  gallery is the clean image j plus all distractors, sorted by similarity to masked image i with a stable
  sort. The genuine mate is placed after the distractors (ties rank it behind them) or before them.
  """
  num_ids, num_images, dim = masked.shape
  probes = _normalise(np.reshape(masked, (-1, dim)))
  mates = _normalise(np.reshape(clean, (-1, dim)))
  others = _normalise(distractors)
  hits = dict.fromkeys(ks, 0)
  for identity in range(num_ids):
    for i in range(num_images):
      for j in range(num_images):
        if i == j:
          continue
        mate = mates[identity * num_images + j][None]
        if ties == "distractor_first":
          gallery, mate_index = np.concatenate([others, mate]), len(others)
        else:
          gallery, mate_index = np.concatenate([mate, others]), 0
        order = np.argsort(-(gallery @ probes[identity * num_images + i]), kind="stable")
        for k in ks:
          hits[k] += int(mate_index in order[:k])
  searches = num_ids * num_images * (num_images - 1)
  return {k: 1.0 - hits[k] / searches for k in ks}


def random_features(seed, num_ids=4, num_images=5, num_distractors=40, dim=16, spread=0.8):
  """Gaussian features with identity structure (so hits and misses both occur), arbitrary norms."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_ids, 1, dim))
  clean = centres + spread * rng.normal(size=(num_ids, num_images, dim))
  masked = clean + 1.2 * rng.normal(size=clean.shape)
  distractors = rng.normal(size=(num_distractors, dim))
  scale = rng.uniform(0.5, 3.0, size=(num_ids, num_images, 1))
  return (masked * scale).astype(np.float32), clean.astype(np.float32), distractors.astype(np.float32)


def lattice_features(seed, num_ids=3, num_images=4, num_distractors=24, dim=8):
  """Unit features with four entries of +-1/2: every similarity is a multiple of 1/4, computed exactly.

  Similarities tie all the time, and a few distractors are copies of clean images, so some distractor is
  exactly as similar to a probe as its genuine mate.
  """
  rng = np.random.default_rng(seed)

  def draw(n):
    x = np.zeros((n, dim), np.float32)
    for row in x:
      row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x

  clean = draw(num_ids * num_images).reshape(num_ids, num_images, dim)
  masked = np.where(rng.random(clean.shape) < 0.8, clean, draw(num_ids * num_images).reshape(clean.shape))
  copies = clean.reshape(-1, dim)[rng.choice(num_ids * num_images, 4, replace=False)]
  distractors = np.concatenate([draw(num_distractors - 4), copies])
  return masked, clean, distractors


KS = (1, 5, 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_loop_on_random_features(seed):
  masked, clean, distractors = random_features(seed)
  want = official_loop_psr(masked, clean, distractors, KS)
  assert 0.0 < want[1] < 1.0  # the case is not degenerate
  assert opomjax.protection_success_rate(masked, clean, distractors, KS) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("ties", evaluation.TIES)
def test_matches_official_loop_with_exact_ties(seed, ties):
  masked, clean, distractors = lattice_features(seed)
  want = official_loop_psr(masked, clean, distractors, KS, ties=ties)
  got = evaluation.protection_success_rate(masked, clean, distractors, KS, ties=ties)
  assert got == pytest.approx(want, abs=1e-12)


def test_lattice_case_exercises_ties():
  masked, clean, distractors = lattice_features(3)
  against = official_loop_psr(masked, clean, distractors, KS, ties="distractor_first")
  behind = official_loop_psr(masked, clean, distractors, KS, ties="genuine_first")
  assert any(against[k] > behind[k] for k in KS)


def test_rank_beyond_all_distractors_always_identifies():
  masked, clean, distractors = random_features(6, num_distractors=12)
  got = evaluation.protection_success_rate(masked, clean, distractors, ks=(12, 13))
  assert got == pytest.approx(official_loop_psr(masked, clean, distractors, (12, 13)), abs=1e-12)
  assert got[13] == 0.0


def test_clean_baseline_is_one_minus_protection():
  masked, clean, distractors = random_features(7)
  accuracy = evaluation.identification_rate(clean, clean, distractors, KS)
  want = official_loop_psr(clean, clean, distractors, KS)
  assert accuracy == pytest.approx({k: 1.0 - want[k] for k in KS}, abs=1e-12)
  masked_accuracy = evaluation.identification_rate(masked, clean, distractors, KS)
  psr = evaluation.protection_success_rate(masked, clean, distractors, KS)
  assert all(masked_accuracy[k] + psr[k] == pytest.approx(1.0) for k in KS)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 20, 1000])
def test_chunking_does_not_change_hits(chunk_size):
  masked, clean, distractors = random_features(8)
  reference = evaluation.identification_hits(masked, clean, distractors, KS, chunk_size=20)
  chunked = evaluation.identification_hits(masked, clean, distractors, KS, chunk_size=chunk_size)
  np.testing.assert_array_equal(chunked, reference)


def test_default_chunk_size_matches_explicit():
  masked, clean, distractors = random_features(9)
  assert evaluation.protection_success_rate(masked, clean, distractors, KS) == (
      evaluation.protection_success_rate(masked, clean, distractors, KS, chunk_size=3)
  )


def test_hits_are_per_identity_counts():
  masked, clean, distractors = random_features(10)
  hits = np.asarray(evaluation.identification_hits(masked, clean, distractors, KS, chunk_size=4))
  for identity in range(masked.shape[0]):
    want = official_loop_psr(masked[identity : identity + 1], clean[identity : identity + 1], distractors, KS)
    searches = masked.shape[1] * (masked.shape[1] - 1)
    np.testing.assert_allclose(hits[identity], [(1.0 - want[k]) * searches for k in KS], atol=1e-9)


def test_jax_inputs_under_jit_and_float64_numpy_inputs():
  masked, clean, distractors = random_features(11)
  want = np.asarray(evaluation.identification_hits(masked, clean, distractors, KS, chunk_size=5))
  under_jit = jax.jit(lambda m, c, g: evaluation.identification_hits(m, c, g, KS, chunk_size=5))
  np.testing.assert_array_equal(under_jit(jnp.asarray(masked), jnp.asarray(clean), jnp.asarray(distractors)), want)
  as_float64 = evaluation.protection_success_rate(
      masked.astype(np.float64), clean.astype(np.float64), distractors.astype(np.float64), KS, chunk_size=5
  )
  assert as_float64 == evaluation.protection_success_rate(jnp.asarray(masked), clean, distractors, KS, chunk_size=5)


@pytest.mark.parametrize(
    "masked_shape, clean_shape, distractor_shape, ks, kwargs, match",
    [
        ((2, 3, 4), (2, 3), (5, 4), (1,), {}, "clean must have 3 axes"),
        ((2, 3, 4), (2, 4, 4), (5, 4), (1,), {}, "same shape"),
        ((2, 1, 4), (2, 1, 4), (5, 4), (1,), {}, "M >= 2"),
        ((0, 3, 4), (0, 3, 4), (5, 4), (1,), {}, "at least one identity"),
        ((2, 3, 4), (2, 3, 4), (5, 3), (1,), {}, "d=3"),
        ((2, 3, 4), (2, 3, 4), (0, 4), (1,), {}, "distractors must hold"),
        ((2, 3, 4), (2, 3, 4), (5,), (1,), {}, "distractors must have 2 axes"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (0,), {}, "ks must be integers"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (7,), {}, "ks must be integers"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (1.5,), {}, "ks must be integers"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (True,), {}, "ks must be integers"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (1, -1), {}, "ks must be integers"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (), {}, "at least one rank"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (1,), {"chunk_size": 0}, "chunk_size"),
        ((2, 3, 4), (2, 3, 4), (5, 4), (1,), {"ties": "random"}, "ties"),
    ],
)
def test_bad_arguments_raise(masked_shape, clean_shape, distractor_shape, ks, kwargs, match):
  with pytest.raises(ValueError, match=match):
    evaluation.protection_success_rate(
        np.ones(masked_shape), np.ones(clean_shape), np.ones(distractor_shape), ks, **kwargs
    )


@pytest.mark.parametrize("argument, index, value", [
    ("masked", (0, 0, 0), np.nan),
    ("clean", (2, 3, 1), np.inf),
    ("distractors", (7, 4), -np.inf),
])
@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
def test_non_finite_features_raise_naming_the_argument(argument, index, value, as_jax):
  features = dict(zip(("masked", "clean", "distractors"), random_features(12)))
  features[argument][index] = value
  if as_jax:
    features = {name: jnp.asarray(x) for name, x in features.items()}
  position = re.escape(str(index))
  match = rf"^{argument} contains non-finite values: 1 NaN or Inf of \d+, the first at index {position}"
  with pytest.raises(ValueError, match=match):
    evaluation.protection_success_rate(**features, ks=KS)
  if argument != "distractors":
    with pytest.raises(ValueError, match=match):
      evaluation.verification_summary(features["masked"], features["clean"])


def test_non_finite_features_are_refused_not_summarised_as_nan():
  masked, clean, _ = random_features(14)
  clean[1, 2, :] = np.nan  # e.g. one photo the model could not embed
  with pytest.raises(ValueError, match="^clean contains non-finite values: 16 NaN or Inf"):
    evaluation.verification_summary(masked, clean)


def test_non_numeric_features_raise_value_error_naming_them():
  masked, clean, distractors = random_features(15)
  with pytest.raises(ValueError, match="^distractors must be a numeric array"):
    evaluation.protection_success_rate(masked, clean, [["a", "b"]], KS)
  with pytest.raises(ValueError, match="^masked must be a numeric array"):
    evaluation.verification_summary(np.full(clean.shape, "x"), clean)
  with pytest.raises(ValueError, match="^masked must have a feature axis of size d >= 1"):
    evaluation.verification_summary(np.ones((2, 3, 0)), np.ones((2, 3, 0)))


def test_verification_summary_matches_numpy():
  masked, clean, _ = random_features(13)
  m, c = _normalise(masked), _normalise(clean)
  num_ids, num_images, _ = m.shape
  template = _normalise(c.mean(axis=1))
  same = [m[k, i] @ c[k, i] for k in range(num_ids) for i in range(num_images)]
  other = [m[k, i] @ c[k, j] for k in range(num_ids) for i in range(num_images) for j in range(num_images) if i != j]
  to_template = [m[k, i] @ template[k] for k in range(num_ids) for i in range(num_images)]
  clean_other = [
      c[k, i] @ c[k, j] for k in range(num_ids) for i in range(num_images) for j in range(num_images) if i != j
  ]
  want = {}
  for name, values in [("same_image", same), ("other_image", other), ("template", to_template),
                       ("clean_other_image", clean_other)]:
    want[f"{name}_mean"], want[f"{name}_std"] = np.mean(values), np.std(values)
  got = opomjax.verification_summary(masked, clean)
  assert got.keys() == want.keys()
  assert all(type(v) is float for v in got.values())
  assert got == pytest.approx(want, abs=1e-5)


def test_verification_summary_rejects_bad_shapes():
  with pytest.raises(ValueError, match="same shape"):
    evaluation.verification_summary(np.ones((2, 3, 4)), np.ones((2, 3, 5)))
  with pytest.raises(ValueError, match="M >= 2"):
    evaluation.verification_summary(np.ones((2, 1, 4)), np.ones((2, 1, 4)))
  with pytest.raises(ValueError, match="masked must have 3 axes"):
    evaluation.verification_summary(np.ones((2, 4)), np.ones((2, 3, 4)))


def test_errors_name_the_probe_argument():
  with pytest.raises(ValueError, match="probes needs M >= 2"):
    evaluation.identification_rate(np.ones((2, 1, 4)), np.ones((2, 1, 4)), np.ones((5, 4)))
