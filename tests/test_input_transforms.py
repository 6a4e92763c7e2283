"""Input-side transfer techniques (DI, SI, SSA in opomjax.core.transfer), the low-frequency mask, and masks
within epsilon for every combination of the techniques in generate_masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import fft

from opomjax.core import ascent
from opomjax.core import transfer

EPS = 8.0


def images(shape=(2, 16, 16, 3), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, 0.0, 255.0)


@pytest.mark.parametrize("size", [8, 16, 112])
def test_dct_matrix_equals_scipy_orthonormal_dct(size):
  x = np.random.default_rng(0).normal(size=size)
  np.testing.assert_allclose(transfer.dct_matrix(size) @ x, fft.dct(x, norm="ortho"), rtol=1e-5, atol=1e-5)


def test_di_keeps_shapes_and_is_the_identity_at_probability_zero():
  x = images()
  for seed in range(5):
    out = transfer.input_diversity(jax.random.key(seed), x, 0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  assert transfer.input_diversity(jax.random.key(0), x, 1.0).shape == x.shape


def test_di_at_probability_one_shrinks_a_flat_image_inside_the_frame():
  x = jnp.full((1, 32, 32, 3), 200.0)
  changed = 0
  for seed in range(6):
    out = np.asarray(transfer.input_diversity(jax.random.key(seed), x, 1.0, min_scale=0.5))
    covered = (out[0, ..., 0] > 100).mean()  # the placed image's area, a fraction of the frame
    assert 0.5 ** 2 - 0.1 <= covered <= 1.0
    changed += covered < 0.97
  assert changed >= 4  # most draws shrink visibly


def test_photometric_change_keeps_shapes_and_is_the_identity_at_probability_zero():
  x = images()
  for seed in range(5):
    np.testing.assert_array_equal(np.asarray(transfer.photometric_diversity(jax.random.key(seed), x, 0.0)),
                                  np.asarray(x))
  assert transfer.photometric_diversity(jax.random.key(0), x, 1.0).shape == x.shape


def test_photometric_change_is_one_contrast_and_brightness_within_strength_for_the_batch():
  """Each draw at probability 1 is x' = clip(a (x - 127.5) + 127.5 + b) for one (a, b) of the whole batch:
  fitted by least squares over the unclipped values, the fit is exact and (a, b) lie in their ranges."""
  x = np.asarray(images((2, 3, 16, 16, 3)), np.float64)
  fitted = []
  for seed in range(12):
    out = np.asarray(transfer.photometric_diversity(jax.random.key(seed), jnp.asarray(x, jnp.float32), 1.0,
                                                    strength=0.2), np.float64)
    assert out.min() >= 0.0 and out.max() <= 255.0
    inside = (out > 0.0) & (out < 255.0)
    design = np.stack([x[inside] - 127.5, np.ones(inside.sum())], axis=1)
    (a, offset), *_ = np.linalg.lstsq(design, out[inside] - 127.5, rcond=None)
    np.testing.assert_allclose(design @ [a, offset], out[inside] - 127.5, atol=1e-3)
    np.testing.assert_array_equal(out[~inside], np.clip(a * (x[~inside] - 127.5) + 127.5 + offset, 0, 255).round())
    assert 0.8 - 1e-5 <= a <= 1.2 + 1e-5 and abs(offset) <= 12.8 + 1e-3
    fitted.append((a, offset))
  assert np.std([a for a, _ in fitted]) > 0.05 and np.std([b for _, b in fitted]) > 3.0  # the draws vary


def test_si_copies_are_the_image_halved_again_and_again():
  x = images()
  copies = np.asarray(transfer.scale_copies(x, 3))
  assert copies.shape == (3,) + x.shape
  for i in range(3):
    np.testing.assert_allclose(copies[i], np.asarray(x) / 2 ** i, rtol=1e-7)


def test_ssa_at_zero_strength_is_the_identity():
  x = images()
  out = transfer.spectrum_simulation(jax.random.key(0), x, 0.0, 0.0)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=2e-3)


def test_ssa_rescales_every_dct_coefficient_within_rho():
  x = np.asarray(images((1, 16, 16, 3)))
  out = np.asarray(transfer.spectrum_simulation(jax.random.key(1), jnp.asarray(x), 0.0, 0.5))
  ratio = fft.dctn(out[0], axes=(0, 1), norm="ortho") / fft.dctn(x[0], axes=(0, 1), norm="ortho")
  assert 0.5 - 1e-3 <= ratio.min() and ratio.max() <= 1.5 + 1e-3
  assert ratio.std() > 0.2  # uniform in [0.5, 1.5]: std 0.29


def toy_embed(x):
  return jnp.tanh(x.reshape(x.shape[0], -1)[:, :24] / 100.0 - 1.0)


def upsampling_matrix(small: int, large: int) -> np.ndarray:
  """The bilinear upsampling of one axis as a matrix, from jax.image.resize on unit vectors."""
  eye = np.eye(small, dtype=np.float32)
  return np.stack([np.asarray(jax.image.resize(eye[i], (large,), "linear", antialias=False))
                   for i in range(small)], axis=1)


def test_low_frequency_mask_is_an_upsampled_grid_within_epsilon():
  x = images((2, 3, 16, 16, 3))
  coarse = ascent.generate_masks(toy_embed, x, method="fi-uap", key=jax.random.key(0), steps=3, mask_cell=4)
  fine = ascent.generate_masks(toy_embed, x, method="fi-uap", key=jax.random.key(0), steps=3)
  assert coarse.shape == fine.shape and float(jnp.abs(coarse).max()) <= EPS
  up = upsampling_matrix(4, 16)
  project = up @ np.linalg.pinv(up)  # onto the span of bilinearly upsampled 4x4 grids, per axis
  for masks, in_span in ((coarse, True), (fine, False)):
    m = np.asarray(masks[0, ..., 0])
    residual = np.abs(project @ m @ project.T - m).max()
    assert (residual < 1e-3) == in_span, residual


def test_mask_cell_must_divide_the_image():
  with pytest.raises(ValueError, match="mask_cell"):
    ascent.generate_masks(toy_embed, images((1, 2, 16, 16, 3)), method="fi-uap", key=jax.random.key(0), steps=1,
                          mask_cell=3)


def test_fill_budget_moves_every_value_of_the_same_masks_to_epsilon():
  x = images((2, 3, 16, 16, 3))
  run = lambda **kw: np.asarray(ascent.generate_masks(toy_embed, x, method="opom-center", key=jax.random.key(3),
                                                      steps=2, **kw))
  plain, full = run(), run(fill_budget=True)
  assert np.mean(np.abs(plain) < EPS) > 0.5  # two steps from a random start leave most values inside the box
  np.testing.assert_array_equal(full, np.where(plain > 0, EPS, np.where(plain < 0, -EPS, 0.0)))
  with pytest.raises(ValueError, match="fill_budget must be True or False"):
    run(fill_budget="yes")


def test_start_scale_narrows_the_random_start_and_zero_is_a_zero_init():
  x = images((2, 3, 16, 16, 3))
  run = lambda **kw: np.asarray(ascent.generate_masks(toy_embed, x, method="opom-center", key=jax.random.key(3),
                                                      steps=1, **kw))
  np.testing.assert_array_equal(run(start_scale=0.0), run(init=np.zeros((2, 16, 16, 3), np.float32)))
  assert set(np.unique(np.abs(run(start_scale=0.0)))) <= {0.0, 1.0}  # one step of 1 from zero
  half, whole = run(start_scale=0.5), run()
  assert np.abs(half).max() <= 0.5 * EPS + 1.0 < np.abs(whole).max()  # a start within +-4, then one step of 1
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match="start_scale must lie in"):
      run(start_scale=bad)


TECHNIQUES = dict(ti_width=3, vmi_samples=1, di_probability=0.7, si_copies=2, ssa_rho=0.5, mask_cell=2,
                  fill_budget=True, start_scale=0.0, photometric_probability=0.7)


@pytest.mark.parametrize("names", [()] + [(n,) for n in TECHNIQUES] + [tuple(TECHNIQUES)],
                         ids=lambda names: "+".join(names) or "plain")
def test_masks_stay_within_epsilon_for_every_combination(names):
  options = {n: TECHNIQUES[n] for n in names}
  x = images((2, 2, 16, 16, 3))
  masks, trace = ascent.generate_masks(toy_embed, x, method="opom-center", key=jax.random.key(2), steps=3,
                                       momentum=1.0, return_trace=True, **options)
  assert masks.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(trace)))
  assert float(jnp.abs(masks).max()) <= EPS
  again = ascent.generate_masks(toy_embed, x, method="opom-center", key=jax.random.key(2), steps=3, momentum=1.0,
                                **options)
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(again))  # the same key, the same masks
  if names:  # each technique changes the masks
    plain = ascent.generate_masks(toy_embed, x, method="opom-center", key=jax.random.key(2), steps=3, momentum=1.0)
    assert np.any(np.asarray(plain) != np.asarray(masks))


def test_si_gradient_is_the_mean_of_the_copies_gradients():
  cfg = ascent.AscentConfig(method="fi-uap", si_copies=3)
  net = ascent.Network(lambda x, key: toy_embed(x), None)
  x = images((3, 16, 16, 3))
  clean = toy_embed(x + 5.0)
  _, grad = ascent.member_gradient(cfg, net, clean, jnp.int32(0), None, None, x)
  plain = ascent.AscentConfig(method="fi-uap")
  want = sum(jax.grad(lambda y, i=i: ascent.image_objective(plain, net, y / 2 ** i, clean, 0, None))(x)
             for i in range(3)) / 3
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("change,match", [
    (dict(ti_width=2), "ti_width"), (dict(vmi_samples=-1), "vmi_samples"), (dict(di_probability=1.5), "di_prob"),
    (dict(si_copies=0), "si_copies"), (dict(ssa_rho=-0.1), "ssa_rho"), (dict(input_samples=0), "input_samples"),
    (dict(vmi_beta=0.0), "vmi_beta"), (dict(photometric_probability=1.5), "photometric_probability")])
def test_bad_transfer_options_are_refused_naming_them(change, match):
  with pytest.raises(ValueError, match=match):
    ascent.generate_masks(toy_embed, images((1, 2, 16, 16, 3)), method="fi-uap", key=jax.random.key(0), steps=1,
                          **change)

