"""The objectives against direct evaluations of the paper's formulas (numpy loops, cvxpy), and Danskin."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import objectives

N, M, D = 5, 6, 8


def unit_rows(rng, *shape):
  x = rng.standard_normal(shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def same_person(rng, n, d, spread=0.4):
  """Unit features clustered around a common direction, like photos of one person."""
  centre = unit_rows(rng, d)
  return unit_rows(rng, n, d) * spread + centre


@pytest.fixture(scope="module")
def feats():
  rng = np.random.default_rng(0)
  clean = unit_rows(rng, M, D)
  # Masked features: near the clean ones but outside their hull.
  adv = normalized(unit_rows(rng, N, D) * 0.7 + clean[:N] * 0.3)
  return adv.astype(np.float32), clean.astype(np.float32)


def hull_reference(clean, y, lower, upper):
  """min ||a^T F - y||^2 s.t. sum a = 1, lower <= a <= upper, by cvxpy (float64)."""
  a = cp.Variable(clean.shape[0])
  constraints = [cp.sum(a) == 1]
  if np.isfinite(lower):
    constraints.append(a >= lower)
  if np.isfinite(upper):
    constraints.append(a <= upper)
  problem = cp.Problem(cp.Minimize(cp.sum_squares(clean.T.astype(np.float64) @ a - y)), constraints)
  problem.solve()
  return clean.T.astype(np.float64) @ a.value


def normalized(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fi_uap_is_mean_squared_distance_to_own_clean_feature(feats):
  adv, clean = feats
  clean = clean[:N]
  expected = sum(np.sum((adv[i] - clean[i]) ** 2) for i in range(N)) / (N * D)
  np.testing.assert_allclose(objectives.fi_uap(adv, clean), expected, rtol=1e-5)


def test_features_are_normalised_first(feats):
  adv, clean = feats
  np.testing.assert_allclose(objectives.fi_uap(3.0 * adv, 0.5 * clean[:N]), objectives.fi_uap(adv, clean[:N]),
                             rtol=1e-5)


def test_fi_uap_plus_is_minus_mean_dot_product_and_equivalent_to_all_pair_distances(feats):
  adv, clean = feats
  dots = [adv[i] @ clean[j] for i in range(N) for j in range(M)]
  value = float(objectives.fi_uap_plus(adv, clean))
  np.testing.assert_allclose(value, -np.mean(dots), rtol=1e-5)
  # Eq. 18 (all-pair squared distances) is the same objective up to a positive affine map for unit features.
  pair_distances = [np.sum((adv[i] - clean[j]) ** 2) for i in range(N) for j in range(M)]
  np.testing.assert_allclose(value, np.mean(pair_distances) / 2 - 1, rtol=1e-5, atol=1e-6)


def test_fi_uap_all_pools_every_identity():
  rng = np.random.default_rng(1)
  adv, clean = unit_rows(rng, 3, 4, D), unit_rows(rng, 3, 4, D)
  total = sum(np.sum((adv[p, i] - clean[p, i]) ** 2) for p in range(3) for i in range(4))
  np.testing.assert_allclose(objectives.fi_uap_all(adv, clean), total / (3 * 4 * D), rtol=1e-5)


def test_class_center(feats):
  adv, clean = feats
  centre = clean.mean(axis=0)
  expected = sum(np.sum((adv[i] - centre) ** 2) for i in range(N)) / (N * D)
  np.testing.assert_allclose(objectives.opom_class_center(adv, clean), expected, rtol=1e-5)
  np.testing.assert_allclose(objectives.opom_reduced_hull(adv, clean, 1.0 / M, 1.0 / M), expected, rtol=1e-5)


def test_affine_hull_against_kkt_solution(feats):
  adv, clean = feats
  f64 = clean.astype(np.float64)
  kkt = np.block([[2 * f64 @ f64.T, np.ones((M, 1))], [np.ones((1, M)), np.zeros((1, 1))]])
  total = 0.0
  for i in range(N):
    a = np.linalg.solve(kkt, np.concatenate([2 * f64 @ adv[i], [1.0]]))[:M]
    total += np.sum((a @ f64 - adv[i]) ** 2)
  np.testing.assert_allclose(objectives.opom_affine_hull(adv, clean), total / (N * D), rtol=1e-3)


@pytest.mark.parametrize("lower,upper", [(0.0, 1.0), (0.1, 0.3), (-np.inf, np.inf)])
def test_reduced_hull_against_cvxpy(lower, upper):
  rng = np.random.default_rng(2)
  clean = same_person(rng, M, D)
  adv = normalized(clean[:N] + 0.5 * unit_rows(rng, N, D))
  clean = normalized(clean)
  expected = sum(np.sum((hull_reference(clean, adv[i], lower, upper) - adv[i]) ** 2) for i in range(N)) / (N * D)
  reduced = jax.jit(objectives.opom_reduced_hull, static_argnums=(2, 3))
  value = reduced(adv.astype(np.float32), clean.astype(np.float32), lower, upper)
  np.testing.assert_allclose(value, expected, rtol=1e-3)


def test_hull_objectives_are_ordered_by_set_size(feats):
  """Bigger set, smaller distance: affine hull <= convex hull <= reduced hull <= class centre."""
  adv, clean = feats

  @jax.jit
  def values(adv, clean):
    return (objectives.opom_affine_hull(adv, clean), objectives.opom_convex_hull(adv, clean),
            objectives.opom_reduced_hull(adv, clean, 0.1, 0.3), objectives.opom_class_center(adv, clean))

  affine, convex, reduced, centre = values(adv, clean)
  assert affine <= convex * (1 + 1e-4) and convex <= reduced * (1 + 1e-4) and reduced <= centre * (1 + 1e-4)


@pytest.mark.parametrize("name", ["opom_convex_hull", "opom_affine_hull", "fi_uap_plus"])
def test_gradient_matches_finite_differences(name):
  """Danskin: holding the recomputed coefficients constant gives the derivative of the hull distance."""
  fn = getattr(objectives, name)
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    clean = jnp.asarray(normalized(same_person(rng, M, D)))
    adv = jnp.asarray(normalized(np.asarray(clean[:N]) + 0.6 * unit_rows(rng, N, D)))
    directions = jnp.asarray(rng.standard_normal((3, N, D)))
    h = 1e-5
    grad = jax.jit(jax.grad(fn))(adv, clean)
    values = jax.jit(jax.vmap(fn, in_axes=(0, None)))(
        jnp.concatenate([adv + h * directions, adv - h * directions]), clean)
    numeric = (values[:3] - values[3:]) / (2 * h)
    np.testing.assert_allclose(jnp.sum(grad * directions, axis=(1, 2)), numeric, rtol=1e-4, atol=1e-9)


def test_hull_coefficients_get_no_gradient():
  """The gradient w.r.t. adv equals 2 (n(adv) - projection) / (n d) pushed through the normalisation."""
  rng = np.random.default_rng(4)
  clean = jnp.asarray(normalized(same_person(rng, M, D)), jnp.float32)
  adv = jnp.asarray(normalized(np.asarray(clean[:N]) + 0.6 * unit_rows(rng, N, D)), jnp.float32)

  @jax.jit
  def both_gradients(adv, clean):
    projection = objectives.hull_projection(adv, clean, 0.0, 1.0)
    residual = lambda y: jnp.mean(jnp.square(objectives.normalize(y) - projection))  # projection held fixed
    return jax.grad(objectives.opom_convex_hull)(adv, clean), jax.grad(residual)(adv)

  danskin, fixed = both_gradients(adv, clean)
  np.testing.assert_allclose(danskin, fixed, rtol=1e-5, atol=1e-8)


def test_gd_uap_sums_log_norms_over_layers():
  rng = np.random.default_rng(5)
  acts = [rng.standard_normal((3, 4, 4, 2)).astype(np.float32), rng.standard_normal((3, 7)).astype(np.float32)]
  expected = np.mean([sum(np.log(np.linalg.norm(a[i].ravel())) for a in acts) for i in range(3)])
  np.testing.assert_allclose(objectives.gd_uap(acts), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="activations"):
    objectives.gd_uap([])


def test_diversity_is_mean_pairwise_feature_distance():
  rng = np.random.default_rng(6)
  adv = unit_rows(rng, 3, 4, D)
  pairs = [(p, q) for p in range(3) for q in range(p + 1, 3)]
  expected = np.mean([np.sum((adv[p] - adv[q]) ** 2) / (4 * D) for p, q in pairs])
  np.testing.assert_allclose(objectives.diversity(adv), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="adv"):
    objectives.diversity(adv[:1])
