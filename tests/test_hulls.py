"""Hull coefficients and distances against exact references (cvxpy/Clarabel, NumPy, optax, the KKT conditions)."""

import functools
import json
import pathlib
import subprocess
import sys

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from opomjax.core import hulls

SOLVERS = ("fista", "osqp")
BOXES = ((0.0, 1.0), (-0.2, 0.5), (0.05, 0.3))  # convex hull, reduced hulls with negative / positive floor


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def person_features(rng, n=10, d=512, spread=0.5):
  """Same-person-like unit features: a mean direction, a few shared variation directions and noise.

  With ``spread=0.5`` the pairwise cosine similarities lie around 0.5-0.9, as for real face features of one
  person.
  """
  mean = unit(rng.normal(size=d))
  variation = rng.normal(size=(4, d)) / np.sqrt(d)
  features = mean + spread * 0.6 * (rng.normal(size=(n, 4)) @ variation + rng.normal(size=(n, d)) / np.sqrt(d))
  return unit(features)


def hard_queries(rng, features):
  """Queries near faces, near vertices, inside, far outside and along an adversarial push from the centre."""
  n, d = features.shape
  out = []
  for size in (2, 3, 4):  # near faces of several dimensions, pushed slightly off them
    idx = rng.choice(n, size=size, replace=False)
    out.append(rng.dirichlet(np.ones(size)) @ features[idx] + 0.05 * rng.normal(size=d) / np.sqrt(d))
  out.append(features[0] + 0.02 * rng.normal(size=d) / np.sqrt(d))  # near a vertex
  out.append(features[1])  # exactly a vertex
  out.append(rng.dirichlet(np.ones(n)) @ features)  # inside
  out.append(rng.normal(size=d))  # far outside
  out.append(-features.mean(0))  # opposite side of the sphere
  out.append(features.mean(0) + 0.5 * rng.normal(size=d) / np.sqrt(d))  # pushed away from the centre
  return unit(np.array(out))


def cvxpy_hull(features, query, lower, upper):
  """Exact reference: (coefficients, squared distance) from Clarabel with 1e-12 tolerances, in float64."""
  features = np.asarray(features, np.float64)
  a = cp.Variable(features.shape[0])
  constraints = [cp.sum(a) == 1]
  if np.isfinite(lower):
    constraints.append(a >= lower)
  if np.isfinite(upper):
    constraints.append(a <= upper)
  problem = cp.Problem(cp.Minimize(cp.sum_squares(features.T @ a - np.asarray(query, np.float64))), constraints)
  problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
  return a.value, problem.value


def squared_distance(features, queries, coefficients):
  """``||a^T F - y||^2`` per query, in float64, of the (possibly float32) inputs as given.

  Shapes: features ``(..., n, d)``, queries ``(..., m, d)`` or ``(d,)``, coefficients matching the queries.
  """
  f, y, a = (np.asarray(x, np.float64) for x in (features, queries, coefficients))
  return np.sum((np.einsum("...n,...nd->...d", a, f[..., None, :, :] if a.ndim > 1 else f) - y) ** 2, axis=-1)


@pytest.fixture(scope="module")
def people():
  """Two people (float32-representable features) with their hard queries."""
  rng = np.random.default_rng(0)
  features, queries = [], []
  for _ in range(2):
    f = person_features(rng)
    features.append(f)
    queries.append(hard_queries(rng, f))
  as32 = lambda x: np.asarray(x, np.float32).astype(np.float64)
  return as32(features), as32(queries)


@pytest.fixture(scope="module")
def references(people):
  features, queries = people
  return {
      box: np.array([[cvxpy_hull(f, y, *box)[1] for y in ys] for f, ys in zip(features, queries)])
      for box in BOXES + ((-np.inf, np.inf),)
  }


# --------------------------------------------------------------------------------------------------------
# Projection onto the capped simplex.

PROJECTION_BOXES = ((0.0, 1.0), (-0.3, 0.4), (0.1, 0.3), (0.0, np.inf), (-np.inf, 0.3), (-np.inf, np.inf))


def cvxpy_projection(v, lower, upper):
  return cvxpy_hull(np.eye(len(v)), v, lower, upper)[0]


@pytest.mark.parametrize("lower,upper", PROJECTION_BOXES)
def test_projection_matches_cvxpy_lands_in_set_and_is_idempotent(lower, upper):
  rng = np.random.default_rng(1)
  v = np.concatenate([rng.normal(size=(6, 5)), 3 * rng.normal(size=(2, 5)), np.full((1, 5), 0.2)])
  with jax.enable_x64(True):
    projected = np.asarray(hulls.project_capped_simplex(jnp.asarray(v), lower, upper))
    again = np.asarray(hulls.project_capped_simplex(jnp.asarray(projected), lower, upper))
  expected = np.array([cvxpy_projection(x, lower, upper) for x in v])
  np.testing.assert_allclose(projected, expected, atol=1e-7)
  np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-12)
  assert np.all(projected >= lower) and np.all(projected <= upper)
  np.testing.assert_allclose(again, projected, atol=1e-12)


def test_projection_equals_optax_simplex_projection_in_float32():
  v = jnp.asarray(np.random.default_rng(2).normal(size=(16, 7)), jnp.float32)
  np.testing.assert_allclose(
      hulls.project_capped_simplex(v, 0.0, 1.0), jax.vmap(optax.projections.projection_simplex)(v), atol=1e-6
  )


# --------------------------------------------------------------------------------------------------------
# The box-constrained solvers.


@functools.lru_cache(maxsize=None)
def jitted_coefficients(lower, upper, solver):
  return jax.jit(functools.partial(hulls.hull_coefficients, lower=lower, upper=upper, solver=solver))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("box", BOXES)
def test_float32_objective_within_1e5_of_exact_on_face_like_features(people, references, box, solver):
  features, queries = people
  solve = jitted_coefficients(*box, solver)
  coefficients = solve(jnp.asarray(features, jnp.float32), jnp.asarray(queries, jnp.float32))
  assert coefficients.shape == (2, queries.shape[1], 10) and coefficients.dtype == jnp.float32
  gap = squared_distance(features, queries, coefficients) - references[box]
  assert np.max(np.abs(gap)) < 1e-5, gap
  coefficients = np.asarray(coefficients, np.float64)
  np.testing.assert_allclose(coefficients.sum(-1), 1.0, atol=1e-6)
  assert np.all(coefficients >= np.float32(box[0])) and np.all(coefficients <= np.float32(box[1]))


def kkt_residual(features, query, a, lower, upper):
  """Largest violation of the KKT conditions of min ||a^T F - y||^2, sum a = 1, L <= a <= U (float64)."""
  gradient = 2 * features @ (a @ features - query)
  scale = 1e-7
  at_lower = a <= lower + scale
  at_upper = a >= upper - scale
  free = ~(at_lower | at_upper)
  nu = -np.mean(gradient[free]) if free.any() else -np.median(gradient)
  reduced = gradient + nu  # the multiplier of bound i is reduced_i (>= 0 at lower, <= 0 at upper)
  violations = np.concatenate([
      np.abs(reduced[free]),
      np.maximum(-reduced[at_lower], 0),
      np.maximum(reduced[at_upper], 0),
      [abs(a.sum() - 1)],
      np.maximum(lower - a, 0),
      np.maximum(a - upper, 0),
  ])
  return violations.max()


@pytest.mark.parametrize("solver", SOLVERS)
def test_float64_solutions_satisfy_kkt_and_match_cvxpy_coefficients(people, solver):
  features, queries = people
  lower, upper = -0.2, 0.5
  with jax.enable_x64(True):
    coefficients = np.asarray(hulls.hull_coefficients(features, queries, lower, upper, solver=solver))
  assert coefficients.dtype == np.float64
  for f, ys, rows in zip(features, queries, coefficients):
    for y, a in zip(ys, rows):
      assert kkt_residual(f, y, a, lower, upper) < 1e-6
      np.testing.assert_allclose(a, cvxpy_hull(f, y, lower, upper)[0], atol=1e-5)


DEGENERATE = ("n>d", "duplicated rows", "near-identical")


def degenerate_cases():
  """Affinely dependent or nearly dependent feature sets, all ``(10, 6)``, and a pair ``(2, 6)``."""
  rng = np.random.default_rng(3)
  few = unit(rng.normal(size=(5, 6)))
  mean = unit(rng.normal(size=6))
  cases = {
      "n>d": unit(rng.normal(size=(10, 6))),
      "duplicated rows": np.concatenate([few, few]),
      "near-identical": unit(mean + 1e-3 * rng.normal(size=(10, 6))),
      "n=2": unit(rng.normal(size=(2, 6))),
  }
  return {name: np.asarray(f, np.float32).astype(np.float64) for name, f in cases.items()}


def degenerate_queries(features):
  rng = np.random.default_rng(4)
  queries = np.concatenate([unit(rng.normal(size=(2, 6))), features[:1], features.mean(0, keepdims=True)])
  return np.asarray(queries, np.float32).astype(np.float64)


@pytest.mark.parametrize("solver", SOLVERS)
def test_degenerate_feature_sets(solver):
  cases = degenerate_cases()
  box = (-0.3, 0.6)
  for names in (DEGENERATE, ("n=2",)):  # one batched call per shape
    features = np.stack([cases[name] for name in names])
    queries = np.stack([degenerate_queries(f) for f in features])
    coefficients = hulls.hull_coefficients(
        jnp.asarray(features, jnp.float32), jnp.asarray(queries, jnp.float32), *box, solver=solver
    )
    expected = np.array([[cvxpy_hull(f, y, *box)[1] for y in ys] for f, ys in zip(features, queries)])
    gap = squared_distance(features, queries, coefficients) - expected
    assert np.max(np.abs(gap)) < 1e-5, (names, gap)


# --------------------------------------------------------------------------------------------------------
# Closed forms.


def test_affine_hull_matches_cvxpy_without_bounds(people, references):
  features, queries = people
  for solver in SOLVERS:  # the solver is not used: the closed form serves both
    coefficients = hulls.hull_coefficients(
        jnp.asarray(features, jnp.float32), jnp.asarray(queries, jnp.float32), -np.inf, np.inf, solver=solver
    )
    gap = squared_distance(features, queries, coefficients) - references[(-np.inf, np.inf)]
    assert np.max(np.abs(gap)) < 1e-5
    np.testing.assert_allclose(np.asarray(coefficients, np.float64).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", DEGENERATE + ("n=2",))
def test_affine_hull_rank_deficient_gives_minimum_norm_coefficients(name):
  features = degenerate_cases()[name]
  rng = np.random.default_rng(5)
  queries = unit(rng.normal(size=(3, features.shape[1])))
  with jax.enable_x64(True):
    coefficients = np.asarray(hulls.hull_coefficients(features, queries, -np.inf, np.inf))
    mean, basis = (np.asarray(x) for x in hulls.affine_hull_basis(features))
  for y, a in zip(queries, coefficients):
    a_ref, objective = cvxpy_hull(features, y, -np.inf, np.inf)
    assert abs(squared_distance(features, y, a) - objective) < 1e-9
    nearest = a_ref @ features
    # The shortest a with sum a = 1 and a^T F = nearest point: least squares on the stacked system.
    stacked = np.concatenate([features.T, np.ones((1, len(a)))])
    a_min_norm = np.linalg.pinv(stacked, rcond=1e-10) @ np.concatenate([nearest, [1.0]])
    np.testing.assert_allclose(a, a_min_norm, atol=1e-6)
    np.testing.assert_allclose(mean + basis @ (basis.T @ (y - mean)), nearest, atol=1e-6)
  rank = np.linalg.matrix_rank(features - features.mean(0))
  assert np.count_nonzero(np.linalg.norm(basis, axis=0) > 0.5) == rank
  nonzero = basis[:, np.linalg.norm(basis, axis=0) > 0.5]
  np.testing.assert_allclose(nonzero.T @ nonzero, np.eye(rank), atol=1e-10)


def test_single_feature_affine_hull_is_the_point():
  f = unit(np.random.default_rng(6).normal(size=(1, 8)))
  y = unit(np.random.default_rng(7).normal(size=(2, 8)))
  coefficients = hulls.hull_coefficients(f, y, -np.inf, np.inf)
  np.testing.assert_allclose(coefficients, np.ones((2, 1)), atol=1e-7)
  np.testing.assert_allclose(hulls.hull_distance(f, y, -np.inf, np.inf), np.linalg.norm(y - f, axis=-1), atol=1e-6)


def test_class_center_bounds_give_uniform_coefficients_and_distance_to_the_mean(people):
  features, queries = people
  n = features.shape[1]
  coefficients = hulls.hull_coefficients(features, queries, 1 / n, 1 / n)
  np.testing.assert_array_equal(coefficients, np.full(queries.shape[:2] + (n,), np.float32(1 / n)))
  distance = hulls.hull_distance(features, queries, 1 / n, 1 / n)
  centre = np.asarray(hulls.class_center(jnp.asarray(features)), np.float64)
  np.testing.assert_allclose(distance, np.linalg.norm(queries - centre[:, None], axis=-1), atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Batching, jit, gradients.


@pytest.mark.parametrize("lower,upper", [(0.0, 1.0), (-np.inf, np.inf)])
def test_broadcast_leading_axes_equal_a_python_loop(lower, upper):
  rng = np.random.default_rng(8)
  features = jnp.asarray(np.array([[person_features(rng, n=4, d=16) for _ in range(3)] for _ in range(2)]), jnp.float32)
  queries = jnp.asarray(unit(rng.normal(size=(3, 5, 16))), jnp.float32)  # broadcasts against (2, 3)
  batched = hulls.hull_coefficients(features, queries, lower, upper, solver="fista")
  distances = hulls.hull_distance(features, queries, lower, upper, solver="fista")
  assert batched.shape == (2, 3, 5, 4) and distances.shape == (2, 3, 5)
  for i in range(2):
    for j in range(3):
      for k in range(5):
        single = hulls.hull_coefficients(features[i, j], queries[j, k : k + 1], lower, upper, solver="fista")
        np.testing.assert_allclose(batched[i, j, k], single[0], atol=1e-6)
        nearest = single[0] @ features[i, j]
        np.testing.assert_allclose(distances[i, j, k], jnp.linalg.norm(nearest - queries[j, k]), atol=1e-6)


def test_jit_equals_eager(people):
  features, queries = (jnp.asarray(x, jnp.float32) for x in people)
  eager = hulls.hull_coefficients(features, queries, 0.0, 1.0, solver="fista")
  np.testing.assert_allclose(jitted_coefficients(0.0, 1.0, "fista")(features, queries), eager, atol=1e-6)


def test_distance_gradient_is_danskins_and_coefficients_carry_no_gradient():
  rng = np.random.default_rng(9)
  with jax.enable_x64(True):
    features = jnp.asarray(person_features(rng, n=5, d=12))
    queries = jnp.asarray(unit(rng.normal(size=(2, 12))))
    total = lambda y: jnp.sum(hulls.hull_distance(features, y, solver="fista"))
    gradient = jax.grad(total)(queries)
    residual = queries - hulls.project_to_hull(features, queries, solver="fista")
    np.testing.assert_allclose(gradient, residual / jnp.linalg.norm(residual, axis=-1, keepdims=True), atol=1e-9)
    step = 1e-6 * unit(rng.normal(size=(2, 12)))
    finite_difference = (total(queries + step) - total(queries - step)) / 2
    np.testing.assert_allclose(finite_difference, jnp.sum(gradient * step), rtol=1e-5, atol=1e-14)
    squared_coefficients = lambda y: jnp.sum(hulls.hull_coefficients(features, y, solver="fista") ** 2)
    coefficient_gradient = jax.grad(squared_coefficients)(queries)
    np.testing.assert_array_equal(coefficient_gradient, np.zeros_like(queries))


def test_distance_gradient_is_zero_not_nan_on_the_hull():
  features = jnp.asarray(unit(np.arange(1.0, 4.0)))[None]  # a single point: its hull is itself, exactly
  gradient = jax.grad(lambda y: jnp.sum(hulls.hull_distance(features, y, -np.inf, np.inf)))(features)
  assert hulls.hull_distance(features, features, -np.inf, np.inf)[0] == 0
  np.testing.assert_array_equal(gradient, np.zeros((1, 3)))


# --------------------------------------------------------------------------------------------------------
# Plain-JAX linear algebra (no LAPACK kernels in the box solvers) and full-precision matrix products.


def lowered_text(lower, upper, solver, batch=(3,), n=5, m=4, d=16):
  """StableHLO of ``hull_coefficients`` (as compiled) for a batch of ``batch`` feature sets."""
  features = jnp.zeros(batch + (n, d), jnp.float32)
  queries = jnp.zeros(batch + (m, d), jnp.float32)
  maxiter, tol = hulls._DEFAULT_SETTINGS[(solver, 4)]
  return hulls._hull_coefficients_compiled.lower(
      features, queries, lower=lower, upper=upper, solver=solver, maxiter=maxiter, tol=tol
  ).as_text()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("lower,upper", [(0.0, 1.0), (0.05, 0.3), (-np.inf, np.inf)])
def test_hull_solves_call_no_lapack_kernel(lower, upper, solver):
  """jaxlib 0.10's CPU LAPACK kernels block XLA pool threads on large batches, which deadlocks once as many
  calls run at once as there are threads (an OPOM-AffineHull ensemble of three members hung that way with
  ``jnp.linalg.svd``); neither the box-constrained solvers nor the affine closed form may emit any of them."""
  text = lowered_text(lower, upper, solver)
  assert "while" in text  # the solver loop (or the Jacobi sweeps of the affine closed form) is there
  assert "lapack" not in text.lower() and "custom_call" not in text


@pytest.mark.parametrize(
    "shape,rank", [((10, 128), 10), ((12, 4), 4), ((1, 8), 1), ((3, 5, 16), 5), ((7, 20), 3), ((2, 6, 6), 6)]
)
def test_jacobi_svd_matches_numpy(shape, rank):
  """The plain-JAX SVD against NumPy's (LAPACK): the same singular values, orthonormal factors and the
  matrix rebuilt, for tall, wide, single-row, batched and rank-deficient matrices."""
  rng = np.random.default_rng(11)
  matrix = rng.normal(size=shape[:-2] + (shape[-2], rank)) @ rng.normal(size=shape[:-2] + (rank, shape[-1]))
  matrix = matrix.astype(np.float32)
  w, s, vt = (np.asarray(x, np.float64) for x in jax.jit(hulls.jacobi_svd)(matrix))
  r = min(shape[-2:])
  assert w.shape == shape[:-1] + (r,) and s.shape == shape[:-2] + (r,) and vt.shape == shape[:-2] + (r, shape[-1])
  expected = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
  scale = expected[..., :1]
  np.testing.assert_array_less(np.abs(s - expected) / scale, 2e-6)
  assert np.all(np.diff(s, axis=-1) <= 0)  # descending, as LAPACK's
  np.testing.assert_allclose(np.einsum("...nr,...r,...rd->...nd", w, s, vt), matrix, atol=2e-5 * scale.max())
  kept = s > 1e-5 * scale  # the rows of V^T for (numerically) zero singular values carry no meaning
  for batch in np.ndindex(shape[:-2]):
    np.testing.assert_allclose(w[batch].T @ w[batch], np.eye(r), atol=2e-6)
    v = vt[batch][kept[batch]]
    np.testing.assert_allclose(v @ v.T, np.eye(len(v)), atol=2e-6)


def test_jacobi_svd_in_float64_reaches_float64_accuracy():
  matrix = np.random.default_rng(12).normal(size=(10, 128))
  with jax.enable_x64(True):
    w, s, vt = (np.asarray(x) for x in hulls.jacobi_svd(matrix))
  np.testing.assert_allclose(s, np.linalg.svd(matrix, compute_uv=False), rtol=1e-13)
  np.testing.assert_allclose((w * s) @ vt, matrix, atol=1e-13)


def test_lu_solve_matches_numpy_and_needs_pivoting():
  rng = np.random.default_rng(10)
  matrices = rng.normal(size=(50, 11, 11))
  matrices[:, 0, 0] = 0.0  # the first pivot must come from another row
  matrices[:5] = np.triu(matrices[:5][:, ::-1])  # anti-triangular: every step swaps rows
  rhs = rng.normal(size=(50, 11))
  expected = np.linalg.solve(matrices, rhs[..., None])[..., 0]
  with jax.enable_x64(True):
    solved = jax.vmap(hulls._solve)(jnp.asarray(matrices), jnp.asarray(rhs))
  np.testing.assert_allclose(solved, expected, rtol=1e-9, atol=1e-9)
  singular = np.ones((3, 3))
  assert not np.all(np.isfinite(hulls._solve(jnp.asarray(singular, jnp.float32), jnp.ones(3))))


def test_max_eigenvalue_bound_is_an_upper_bound_within_the_stated_factor():
  rng = np.random.default_rng(11)
  for n, rank in ((10, 10), (10, 3), (30, 30), (2, 1)):
    factor = rng.normal(size=(n, rank))
    gram = factor @ factor.T
    exact = np.linalg.eigvalsh(gram)[-1]
    bound = float(hulls._max_eigenvalue_bound(jnp.asarray(gram, jnp.float32)))
    assert exact * (1 - 1e-5) <= bound <= exact * n ** (1 / 1024) * (1 + 1e-5)
  assert float(hulls._max_eigenvalue_bound(jnp.zeros((4, 4)))) == 0.0


def dot_precisions(text):
  return [line.split("precision = ")[1].split("]")[0] for line in text.splitlines() if "dot_general" in line]


@pytest.mark.parametrize(
    "lower,upper,solver", [(0.0, 1.0, "osqp"), (0.0, 1.0, "fista"), (0.05, 0.3, "osqp"), (-np.inf, np.inf, "fista")]
)
def test_hull_matrix_products_run_at_highest_precision(lower, upper, solver):
  """Every dot_general of the solvers (OSQP's internal products included), of the affine closed form and of the
  distance carries HIGHEST precision, so TF32 on a GPU cannot round the features to 10 mantissa bits."""
  precisions = dot_precisions(lowered_text(lower, upper, solver))
  distance = functools.partial(hulls.hull_distance, lower=lower, upper=upper, solver=solver)
  precisions += dot_precisions(jax.jit(distance).lower(jnp.zeros((3, 5, 16)), jnp.zeros((3, 4, 16))).as_text())
  assert precisions and set(precisions) == {"[HIGHEST, HIGHEST"}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["F", "Y"])
def test_non_finite_inputs_raise_eagerly_naming_the_argument(people, name, bad):
  features, queries = (np.array(x, np.float32) for x in people)
  (features if name == "F" else queries)[0, 1, 3] = bad
  for function in (hulls.hull_distance, hulls.hull_coefficients, hulls.project_to_hull):
    with pytest.raises(ValueError, match=f"^{name} contains NaN or Inf"):
      function(features, queries)


@pytest.mark.parametrize("lower,upper", [(0.0, 1.0), (-np.inf, np.inf)])
def test_non_finite_inputs_give_nan_distances_under_jit(people, lower, upper):
  """A NaN query (or a feature set with a NaN) must not read as "on the hull" (distance 0) under jit."""
  features, queries = (np.array(x, np.float32) for x in people)
  distance = jax.jit(functools.partial(hulls.hull_distance, lower=lower, upper=upper, solver="fista"))
  clean = np.asarray(distance(features, queries))
  bad_queries = queries.copy()
  bad_queries[0, 2, 5] = np.nan
  bad_queries[1, 4, 0] = np.inf
  result = np.asarray(distance(features, bad_queries))
  assert np.isnan(result[0, 2]) and np.isnan(result[1, 4])
  keep = np.ones(result.shape, bool)
  keep[0, 2] = keep[1, 4] = False
  np.testing.assert_allclose(result[keep], clean[keep], atol=1e-6)
  bad_features = features.copy()
  bad_features[1, 0, 0] = np.nan
  result = np.asarray(distance(bad_features, queries))
  assert np.all(np.isnan(result[1]))
  np.testing.assert_allclose(result[0], clean[0], atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "lower,upper,name",
    [
        (0.5, 0.2, "lower"),  # lower > upper
        (0.3, 1.0, "lower"),  # n * lower > 1 for n = 4
        (0.0, 0.2, "upper"),  # n * upper < 1
        (float("nan"), 1.0, "lower"),
        (0.0, float("nan"), "upper"),
        (np.inf, np.inf, "lower"),
    ],
)
def test_infeasible_bounds_raise_naming_the_argument(lower, upper, name):
  features = jnp.eye(4)
  with pytest.raises(ValueError, match=name):
    hulls.hull_coefficients(features, features[:1], lower, upper)


def test_bad_solver_and_shapes_raise():
  features = jnp.eye(4)
  with pytest.raises(ValueError, match="solver"):
    hulls.hull_coefficients(features, features, solver="slsqp")
  with pytest.raises(ValueError, match="feature size"):
    hulls.hull_coefficients(features, jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="leading axes"):
    hulls.hull_coefficients(jnp.ones((2, 4, 4)), jnp.ones((3, 1, 4)))


def test_osqp_solver_runs_without_jaxopt_deprecation_warning():
  code = (
      "import json, jax.numpy as jnp; from opomjax.core import hulls;"
      "print(json.dumps(hulls.hull_coefficients(jnp.eye(3), jnp.ones((1, 3)), solver='osqp').tolist()))"
  )
  result = subprocess.run(
      [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=pathlib.Path(__file__).resolve().parents[1],
  )
  assert result.returncode == 0, result.stderr
  np.testing.assert_allclose(json.loads(result.stdout), np.full((1, 3), 1 / 3), atol=1e-6)
