"""DFANet dropout masks from the keyed hash: the rate, uniform and uncorrelated bits, keys that decide."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

from opomjax.models import dropout

from conftest import canonical_lfw_chips

SHAPE = (16, 64, 32, 32)  # 1,048,576 draws, laid out like a batch of feature maps


def _fmix32_python(h: int) -> int:
  """MurmurHash3's fmix32 on Python integers (the reference for the uint32 arithmetic)."""
  h ^= h >> 16
  h = (h * 0x85EBCA6B) & 0xFFFFFFFF
  h ^= h >> 13
  h = (h * 0xC2B2AE35) & 0xFFFFFFFF
  return h ^ (h >> 16)


def test_hash_bits_are_the_keyed_fmix32_of_each_index():
  key = jax.random.PRNGKey(7)
  s0, s1 = (int(w) for w in np.asarray(key))
  bits = np.asarray(dropout.hash_bits(key, (3, 5)))
  expected = [_fmix32_python((_fmix32_python(i ^ s0) + s1) & 0xFFFFFFFF) for i in range(15)]
  np.testing.assert_array_equal(bits.ravel(), np.array(expected, np.uint32))


def test_typed_and_raw_keys_give_the_same_mask():
  raw = jax.random.PRNGKey(3)
  typed = jax.random.wrap_key_data(raw)
  np.testing.assert_array_equal(np.asarray(dropout.keep_mask(raw, 0.1, (40, 50))),
                                np.asarray(dropout.keep_mask(typed, 0.1, (40, 50))))


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_keep_fraction_is_one_minus_the_rate(rate):
  kept = np.asarray(dropout.keep_mask(jax.random.key(0), rate, SHAPE))
  sigma = np.sqrt(rate * (1 - rate) / kept.size)
  assert abs((1 - kept.mean()) - rate) < 5 * sigma


def test_every_bit_is_fair_and_the_top_byte_is_uniform():
  bits = np.asarray(dropout.hash_bits(jax.random.key(1), SHAPE)).ravel()
  n = bits.size
  for b in range(32):
    assert abs(((bits >> b) & 1).mean() - 0.5) < 5 * 0.5 / np.sqrt(n), b
  counts = np.bincount(bits >> 24, minlength=256)
  assert stats.chisquare(counts).pvalue > 1e-4


def test_neighbouring_units_are_uncorrelated():
  kept = np.asarray(dropout.keep_mask(jax.random.key(2), 0.3, SHAPE)).astype(np.float64)
  flat = kept.ravel()
  band = 5 / np.sqrt(flat.size)  # 5 sigma of a correlation estimate of independent draws
  for lag in (1, 2, SHAPE[-1], SHAPE[-1] * SHAPE[-2]):  # along a row, down a column, across channels
    assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < band, lag


def test_keys_decide_the_mask_and_unrelated_keys_give_independent_masks():
  key = jax.random.key(4)
  a = np.asarray(dropout.keep_mask(jax.random.fold_in(key, 0), 0.3, SHAPE))
  again = np.asarray(dropout.keep_mask(jax.random.fold_in(key, 0), 0.3, SHAPE))
  b = np.asarray(dropout.keep_mask(jax.random.fold_in(key, 1), 0.3, SHAPE))
  np.testing.assert_array_equal(a, again)
  both = (a & b).mean()  # independent masks keep a unit in both with probability 0.7 ** 2
  assert abs(both - 0.49) < 5 * np.sqrt(0.49 * 0.51 / a.size)


def test_dropout_rescales_the_kept_units_and_refuses_bad_rates():
  x = np.random.default_rng(0).normal(size=(8, 30, 30)).astype(np.float32)
  key = jax.random.key(5)
  y = np.asarray(dropout.dfanet_dropout(x, key, 0.25))
  kept = np.asarray(dropout.keep_mask(key, 0.25, x.shape))
  np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
  assert np.all(y[~kept] == 0)
  np.testing.assert_array_equal(np.asarray(dropout.dfanet_dropout(x, key, 0.0)), x)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    dropout.keep_mask(key, 1.0, (2,))


def test_feature_cosine_under_dropout_is_the_mean_cosine_over_the_draws():
  import dataclasses  # pylint: disable=import-outside-toplevel
  import opomjax  # pylint: disable=import-outside-toplevel
  model = opomjax.load_model("mobilefacenet", allow_random_weights=True)
  images = np.random.default_rng(0).uniform(0, 255, (3, 128, 128, 3)).astype(np.float32)
  key = jax.random.PRNGKey(5)
  dropped = dataclasses.replace(model, dropout_rate=0.05)
  clean = np.asarray(model.apply(model.params, images), np.float64)
  expected = np.mean([np.mean(np.sum(np.asarray(dropped.apply(dropped.params, images, k), np.float64) * clean, -1))
                      for k in jax.random.split(key, 2)])
  assert dropout.feature_cosine_under_dropout(model, images, 0.05, key) == pytest.approx(expected, abs=1e-5)
  assert dropout.feature_cosine_under_dropout(model, images, 0.0, key) == pytest.approx(1.0, abs=1e-5)


def test_dropout_that_destroys_a_surrogate_s_features_is_refused_by_name(lfw_root):
  import opomjax  # pylint: disable=import-outside-toplevel
  from opomjax.models import checkpoints  # pylint: disable=import-outside-toplevel
  if not (checkpoints.shared_dir() / "models" / "faceres.json").is_file():
    pytest.skip("faceres.json not found (set OPOMJAX_SHARED)")
  chips = jax.numpy.asarray(canonical_lfw_chips(lfw_root, 6))
  dlib, faceres = opomjax.load_model("dlib_resnet"), opomjax.load_model("faceres")
  dropout.check_dropout_tolerance((dlib,), chips, 0.1)  # a residual network keeps its features (cosine ~0.9)
  dropout.check_dropout_tolerance((dlib, faceres), chips, 0.01)
  with pytest.raises(ValueError, match=r"DFANet dropout 0.1 destroys faceres's features \(mean cosine 0\.[0-5]"):
    dropout.check_dropout_tolerance((dlib, faceres), chips, 0.1)
