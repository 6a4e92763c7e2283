"""Feature-subspace geometry of OPOM: affine hull, class centre, convex and reduced convex hulls.

A person is described by the unit features ``F = [f_1, ..., f_n]`` of a few photos. OPOM pushes the feature
``y`` of a masked photo away from a set spanned by ``F`` (Zhong & Deng, TPAMI 2022, Sec. 3). Every set used
there is a *hull* parametrised by coefficients ``a`` that sum to one and lie in a box:

.. math::

  \\mathcal{H}_{[L, U]}(F) = \\{ a^\\top F \\;:\\; \\textstyle\\sum_i a_i = 1,\\; L \\le a_i \\le U \\},
  \\qquad a^\\star(y) = \\arg\\min_{a} \\| a^\\top F - y \\|_2 .

- ``L = -inf, U = inf``: the affine hull (Eq. 4-7), solved in closed form from the SVD basis of the centred
  features (:func:`jacobi_svd`, plain JAX).
- ``L = U = 1/n``: the class centre (Eq. 10), ``a = 1/n``.
- ``L = 0, U = 1``: the convex hull (Eq. 12-13).
- other ``[L, U]``: the reduced convex hull (Eq. 9, 12).

This is the problem the official implementation solves with one cvxpy problem per image and step: unit
features, ``sum a = 1`` and the box on ``a``, the class centre as the box ``[1/n, 1/n]``, the affine hull as no
box. Working with centred features below is only a reparametrisation on ``sum a = 1``: the nearest points and
distances are the same; where the affine hull's coefficients are not unique (affinely dependent features) the
closed form returns the shortest ones.

The constrained cases are small quadratic programs (``n`` variables, one equality, a box). They are solved in
JAX, batched with ``vmap`` over all leading axes and jittable, by one of two solvers:

- ``"fista"``: accelerated projected gradient with adaptive restart on the ``n x n`` Gram form, using the
  exact projection onto the capped simplex (:func:`project_capped_simplex`), followed by an exact active-set
  step (:func:`_polish`) that solves the KKT system on the identified free set.
- ``"osqp"``: ``jaxopt.BoxOSQP`` (ADMM), equality and box in one constraint matrix, followed by the same
  projection and active-set step.

No LAPACK call anywhere here. Every matrix operation of the box-constrained solve (the KKT solves, the
linear systems of OSQP, the Lipschitz constant of FISTA) and the SVD of the affine closed form are written in
plain JAX operations (:func:`_lu_factor`, :func:`_lu_solve`, :func:`_max_eigenvalue_bound`,
:func:`jacobi_svd`) rather than ``jnp.linalg`` /
``jax.scipy.linalg``. On CPU those call jaxlib's LAPACK kernels, which in jaxlib 0.10.x split a large batch
over XLA's intra-op thread pool and then *block* a pool thread until the pieces are done; once as many such
calls run at the same time as the pool has threads (the three independent KKT solves of :func:`_polish`, the
solves inside a batched OSQP loop, the SVDs of an OPOM-AffineHull ensemble's three members, or one call per
device when sharded) every pool thread waits for work
that no thread is left to run, and the program hangs forever in ``block_until_ready``. In plain JAX the
small dense solves are ordinary fused XLA operations, which never block a pool thread.

Matrix products run at ``jax.lax.Precision.HIGHEST`` (Gram matrices, projections, distances, and the
products inside ``jaxopt.BoxOSQP``), so TF32 on GPUs cannot degrade the float32 accuracy quoted below.

Coefficients carry no gradient (the solver sees ``lax.stop_gradient`` of its inputs): the OPOM objectives use
them as constants, which by Danskin's theorem gives the gradient of the distance itself (:func:`hull_distance`
is differentiable with respect to ``Y`` and ``F`` on that basis), so no gradient flows through a solver.

Accuracy (measured against Clarabel at 1e-12 tolerances, see ``tests/test_hulls.py``): in the library default
float32, the squared distance ``||a^T F - y||^2`` is within ``1e-6`` (typically ``5e-7``) of the exact optimum
for face-like features (``n = 10``, ``d = 512``, pairwise cosine similarity 0.1-0.9; queries near faces, at
vertices, inside, far outside), for both solvers, for the convex and reduced hulls and for the affine closed
form. The remaining error is float32 round-off of the inputs and of ``a`` itself. Two choices make this
possible: the solvers work on the Gram matrix of the *centred* features (for ``sum a = 1`` the objective is
unchanged, but the large common component of same-person features no longer cancels in float32), and a final
active-set step solves the KKT system exactly. Affinely dependent sets (``n > d``, duplicated photos,
near-identical features) stay within ``1e-5``. Under ``jax.enable_x64`` both solvers reach ``1e-9`` or better.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

#: The solvers :func:`hull_coefficients` accepts for the constrained (box) cases.
SOLVERS = ("osqp", "fista")

# Relative slack of the bound checks ``n * lower <= 1 <= n * upper`` (so that ``lower = 1 / n`` passes).
_BOUND_RTOL = 1e-9

#: Precision of every matrix product here: full float32 (no TF32 / bfloat16 passes on GPUs and TPUs).
_PRECISION = jax.lax.Precision.HIGHEST

# Squarings in :func:`_max_eigenvalue_bound`: the bound exceeds lambda_max by a factor of at most
# n ** (1 / 2 ** 10) (0.23 % for n = 10, 0.45 % for n = 100).
_EIGENVALUE_SQUARINGS = 10


def _matmul(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=_PRECISION)


# ----------------------------------------------------------------------------------------------------------
# Bounds.


def _is_affine(lower: float, upper: float) -> bool:
  return math.isinf(lower) and math.isinf(upper)


def _is_single_point(lower: float, upper: float, n: int) -> bool:
  """Whether ``{sum a = 1, L <= a <= U}`` contains only ``a = 1/n`` (e.g. ``L = U = 1/n``)."""
  return abs(n * lower - 1.0) <= _BOUND_RTOL or abs(n * upper - 1.0) <= _BOUND_RTOL


def validate_bounds(lower: float, upper: float, n: int) -> tuple[float, float]:
  """Checks that the coefficient box ``[lower, upper]`` leaves ``{sum a = 1}`` non-empty for ``n`` points.

  Args:
    lower: lower bound ``L`` of every coefficient; a Python number, ``-inf`` allowed.
    upper: upper bound ``U`` of every coefficient; a Python number, ``inf`` allowed.
    n: number of points spanning the hull.

  Returns:
    ``(lower, upper)`` as Python floats.

  Raises:
    ValueError: naming ``lower`` or ``upper`` when a bound is NaN, not a number, ``lower > upper``,
      ``n * lower > 1`` or ``n * upper < 1``.
  """
  bounds = {}
  for name, value in (("lower", lower), ("upper", upper)):
    try:
      value = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{name} must be a Python number (a static bound), got {value!r}") from None
    if math.isnan(value):
      raise ValueError(f"{name} is NaN")
    bounds[name] = value
  lower, upper = bounds["lower"], bounds["upper"]
  if lower == math.inf:
    raise ValueError("lower = inf leaves no feasible coefficients")
  if upper == -math.inf:
    raise ValueError("upper = -inf leaves no feasible coefficients")
  if lower > upper:
    raise ValueError(f"lower ({lower}) must not exceed upper ({upper})")
  if n * lower > 1.0 + _BOUND_RTOL:
    raise ValueError(f"lower ({lower}) is infeasible: n * lower = {n * lower} > 1 for n = {n} points")
  if n * upper < 1.0 - _BOUND_RTOL:
    raise ValueError(f"upper ({upper}) is infeasible: n * upper = {n * upper} < 1 for n = {n} points")
  return lower, upper


# ----------------------------------------------------------------------------------------------------------
# Closed forms.


def class_center(features: Array) -> Array:
  """The class centre ``(..., d)`` of features ``(..., n, d)`` (Eq. 10).

  .. math::

    \\mu = \\frac{1}{n} \\sum_{i=1}^n f_i, \\qquad a = \\tfrac{1}{n} \\mathbf{1}.

  Example:
    >>> class_center(jnp.eye(2))
    Array([0.5, 0.5], dtype=float32)
  """
  return jnp.mean(features, axis=-2)


def _rank_mask(singular_values: Array, shape: tuple[int, int]) -> Array:
  """Which singular values exceed the numerical-rank threshold ``s_max * max(n, d) * eps`` (NumPy's rule)."""
  eps = jnp.finfo(singular_values.dtype).eps
  threshold = jnp.max(singular_values, axis=-1, keepdims=True) * max(shape) * eps
  return singular_values > threshold


def _centred_svd(features: Array) -> tuple[Array, Array, Array, Array]:
  """Mean and thin SVD ``F - mu = W diag(s) V^T`` with the singular values below the rank threshold zeroed."""
  mean = class_center(features)
  centred = features - mean[..., None, :]
  w, s, vt = jacobi_svd(centred)
  s = jnp.where(_rank_mask(s, centred.shape[-2:]), s, 0.0)
  return mean, w, s, vt


def affine_hull_basis(features: Array) -> tuple[Array, Array]:
  """The affine hull ``{mu + B v}`` of features ``(..., n, d)`` (Eq. 4-6).

  .. math::

    \\mu = \\tfrac{1}{n} \\textstyle\\sum_i f_i, \\qquad
    F - \\mathbf{1}\\mu^\\top = W \\Sigma B^\\top \\;\\text{(thin SVD)}.

  Directions whose singular value is below the numerical rank threshold ``s_max * max(n, d) * eps``
  (duplicated photos, ``n > d``, a single photo) are dropped by setting their basis column to zero, so the
  basis keeps the static shape ``(..., d, min(n, d))`` and ``B B^T`` is always the orthogonal projector onto
  the spanned directions.

  Returns:
    ``(mean (..., d), basis (..., d, min(n, d)))``; the non-zero basis columns are orthonormal.

  Example:
    >>> mean, basis = affine_hull_basis(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> mean
    Array([0.5, 0.5], dtype=float32)
  """
  mean, _, s, vt = _centred_svd(features)
  basis = jnp.swapaxes(vt, -1, -2) * (s > 0)[..., None, :].astype(vt.dtype)
  return mean, basis


def affine_hull_coefficients(features: Array, queries: Array) -> Array:
  """Minimum-norm coefficients ``(..., m, n)`` of the nearest affine-hull points (Eq. 7).

  With the thin SVD ``F - 1 mu^T = W S B^T`` of the centred features (Eq. 4-6), the nearest point of the
  affine hull to ``y`` is ``mu + B B^T (y - mu)`` and

  .. math::

    a = \\tfrac{1}{n}\\mathbf{1} + W S^{+} B^\\top (y - \\mu),

  which sums to one (the columns of ``W`` are orthogonal to ``1``) and is the shortest coefficient vector
  giving that point when the features are affinely dependent.

  Args:
    features: ``(..., n, d)``.
    queries: ``(..., m, d)``; leading axes broadcast with those of ``features``.
  """
  mean, w, s, vt = _centred_svd(features)
  n = features.shape[-2]
  s_inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
  offsets = queries - mean[..., None, :]  # (..., m, d)
  along_basis = jnp.einsum("...md,...rd->...mr", offsets, vt, precision=_PRECISION) * s_inv[..., None, :]
  offsets_in_hull = jnp.einsum("...mr,...nr->...mn", along_basis, w, precision=_PRECISION)
  # Exactly, the columns of W are orthogonal to 1; removing the mean keeps sum a = 1 under round-off too.
  offsets_in_hull -= jnp.mean(offsets_in_hull, axis=-1, keepdims=True)
  return 1.0 / n + offsets_in_hull


# ----------------------------------------------------------------------------------------------------------
# Projection onto the capped simplex.


def project_capped_simplex(v: Array, lower: float = 0.0, upper: float = 1.0) -> Array:
  """Euclidean projection of ``v (..., n)`` onto ``{a : sum a = 1, lower <= a <= upper}`` (exact).

  The projection is ``a = clip(v - tau, lower, upper)`` where ``tau`` solves the piecewise-linear,
  non-increasing equation ``s(tau) = sum_i clip(v_i - tau, lower, upper) = 1``. Its breakpoints are
  ``v_i - lower`` and ``v_i - upper``; the segment holding the root is found by evaluating ``s`` at all of
  them, and on that segment ``tau`` follows in closed form from the free coordinates:

  .. math::

    \\tau = \\frac{\\sum_{i \\in \\text{free}} v_i + n_L L + n_U U - 1}{|\\text{free}|}.

  ``lower = 0, upper = 1`` is the probability simplex (``optax.projections.projection_simplex``); infinite
  bounds are allowed (``-inf, inf`` is the hyperplane ``sum a = 1``). Cost ``O(n^2)`` per vector, no
  iteration, so it is exact up to rounding and cheap for the handful of photos per person OPOM uses.

  Args:
    v: points ``(..., n)``.
    lower: static lower bound (Python float).
    upper: static upper bound (Python float).

  Returns:
    The projections, same shape and dtype as ``v``.

  Example:
    >>> project_capped_simplex(jnp.array([1.0, 0.5, -0.5]), 0.0, 0.75)
    Array([0.75, 0.25, 0.  ], dtype=float32)
  """
  n = v.shape[-1]
  lower, upper = validate_bounds(lower, upper, n)
  if _is_single_point(lower, upper, n):
    return jnp.full_like(v, 1.0 / n)
  breakpoints = [v - b for b in (lower, upper) if math.isfinite(b)]
  if not breakpoints:  # the hyperplane sum a = 1
    return v - (jnp.sum(v, axis=-1, keepdims=True) - 1.0) / n
  taus = jnp.concatenate(breakpoints, axis=-1)  # (..., K)
  sums = jnp.sum(jnp.clip(v[..., None, :] - taus[..., :, None], lower, upper), axis=-1)  # (..., K)
  tau_left = jnp.max(jnp.where(sums >= 1.0, taus, -jnp.inf), axis=-1, keepdims=True)
  tau_right = jnp.min(jnp.where(sums <= 1.0, taus, jnp.inf), axis=-1, keepdims=True)
  # A point inside the segment [tau_left, tau_right] that holds the root (one end may be unbounded).
  tau_probe = jnp.where(
      jnp.isinf(tau_left),
      tau_right - 1.0,
      jnp.where(jnp.isinf(tau_right), tau_left + 1.0, 0.5 * (tau_left + tau_right)),
  )
  at_lower = v - tau_probe <= lower
  at_upper = v - tau_probe >= upper
  free = ~(at_lower | at_upper)
  n_free = jnp.sum(free, axis=-1, keepdims=True)
  fixed_mass = jnp.sum(jnp.where(at_lower, lower, 0.0) + jnp.where(at_upper, upper, 0.0), axis=-1, keepdims=True)
  tau = (jnp.sum(jnp.where(free, v, 0.0), axis=-1, keepdims=True) + fixed_mass - 1.0) / jnp.maximum(n_free, 1)
  tau = jnp.where(n_free > 0, tau, tau_probe)
  return jnp.clip(v - tau, lower, upper).astype(v.dtype)


# ----------------------------------------------------------------------------------------------------------
# Small dense linear algebra in plain JAX operations (no LAPACK custom calls; see the module docstring).


def _lu_factor(a: Array) -> tuple[Array, Array]:
  """LU factorisation with partial pivoting of one square matrix ``a (N, N)``: ``a[perm] = L U``.

  Gaussian elimination with the row of largest magnitude as pivot (LAPACK's ``getrf`` rule, first maximum on
  ties). ``L`` (unit diagonal, not stored) lies below the diagonal of the returned ``lu``, ``U`` on and above
  it. A zero pivot is divided by, as LAPACK's triangular solve would: the solution of a singular system comes
  out non-finite.

  Returns:
    ``(lu (N, N), perm (N,))``.
  """
  size = a.shape[-1]
  index = jnp.arange(size)

  def eliminate(k, state):
    lu, perm = state
    pivot_row = jnp.argmax(jnp.where(index >= k, jnp.abs(lu[:, k]), -1.0))
    swap = jnp.where(index == k, pivot_row, jnp.where(index == pivot_row, k, index))
    lu, perm = lu[swap], perm[swap]
    below = index > k
    multipliers = jnp.where(below, lu[:, k] / lu[k, k], 0.0)
    lu = lu - multipliers[:, None] * jnp.where(below, lu[k], 0.0)[None, :]
    lu = jnp.where((index == k)[None, :] & below[:, None], multipliers[:, None], lu)
    return lu, perm

  return jax.lax.fori_loop(0, size, eliminate, (a, index))


def _lu_solve(lu: Array, perm: Array, rhs: Array) -> Array:
  """Solves ``a x = rhs`` for one vector ``rhs (N,)`` from :func:`_lu_factor`'s ``(lu, perm)`` of ``a``."""
  size = rhs.shape[-1]
  index = jnp.arange(size)

  def forward(k, y):  # L y = rhs[perm], column by column
    return y - jnp.where(index > k, lu[:, k], 0.0) * y[k]

  def backward(step, y):  # U x = y, from the last column to the first
    k = size - 1 - step
    x_k = y[k] / lu[k, k]
    return jnp.where(index == k, x_k, y - jnp.where(index < k, lu[:, k], 0.0) * x_k)

  return jax.lax.fori_loop(0, size, backward, jax.lax.fori_loop(0, size, forward, rhs[perm]))


def _solve(a: Array, rhs: Array) -> Array:
  """``jnp.linalg.solve(a, rhs)`` for one square ``a (N, N)`` and ``rhs (N,)``, without LAPACK."""
  return _lu_solve(*_lu_factor(a), rhs)


# Cap on the sweeps of :func:`jacobi_svd` (one-sided Jacobi converges quadratically: ~6-10 sweeps for a few
# dozen rows in float32 or float64).
_JACOBI_MAX_SWEEPS = 40


def _jacobi_rotate_rows(rows: Array, left: Array, i: Array, j: Array, tiny: float):
  """One Hestenes rotation making rows ``i`` and ``j`` of ``rows (n, d)`` orthogonal; the same rotation is
  applied to columns ``i`` and ``j`` of ``left (n, n)``. Returns the new pair and ``|<r_i, r_j>| / (|r_i| |r_j|)``
  before the rotation."""
  r_i, r_j = rows[i], rows[j]
  alpha, beta, gamma = jnp.sum(r_i * r_i), jnp.sum(r_j * r_j), jnp.sum(r_i * r_j)
  scale = jnp.sqrt(alpha * beta)
  rotate = jnp.abs(gamma) > tiny * scale
  zeta = (beta - alpha) / (2.0 * jnp.where(rotate, gamma, 1.0))
  t = jnp.where(zeta >= 0, 1.0, -1.0) / (jnp.abs(zeta) + jnp.sqrt(1.0 + zeta * zeta))
  t = jnp.where(rotate, t, 0.0)
  c = 1.0 / jnp.sqrt(1.0 + t * t)
  s = c * t
  rows = rows.at[i].set(c * r_i - s * r_j).at[j].set(s * r_i + c * r_j)
  l_i, l_j = left[:, i], left[:, j]
  left = left.at[:, i].set(c * l_i - s * l_j).at[:, j].set(s * l_i + c * l_j)
  off = jnp.where(scale > 0, jnp.abs(gamma) / jnp.where(scale > 0, scale, 1.0), 0.0)
  return rows, left, off


def _jacobi_svd_single(matrix: Array) -> tuple[Array, Array, Array]:
  """:func:`jacobi_svd` for one matrix ``(n, d)``."""
  n, d = matrix.shape
  pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
  pairs_i = jnp.asarray([i for i, _ in pairs], jnp.int32)
  pairs_j = jnp.asarray([j for _, j in pairs], jnp.int32)
  tiny = float(jnp.finfo(matrix.dtype).eps)

  def sweep(state):
    rows, left, _, count = state

    def one(k, carry):
      rows, left, off = carry
      rows, left, pair_off = _jacobi_rotate_rows(rows, left, pairs_i[k], pairs_j[k], tiny)
      return rows, left, jnp.maximum(off, pair_off)

    rows, left, off = jax.lax.fori_loop(0, len(pairs_i), one, (rows, left, jnp.zeros((), matrix.dtype)))
    return rows, left, off, count + 1

  def unfinished(state):
    return (state[2] > tiny) & (state[3] < _JACOBI_MAX_SWEEPS)

  start = (matrix, jnp.eye(n, dtype=matrix.dtype), jnp.ones((), matrix.dtype), jnp.zeros((), jnp.int32))
  rows, left, _, _ = jax.lax.while_loop(unfinished, sweep, start) if pairs else start
  norms = jnp.sqrt(jnp.sum(rows * rows, axis=-1))
  order = jnp.argsort(-norms)[: min(n, d)]
  norms, rows, left = norms[order], rows[order], left[:, order]
  vt = jnp.where(norms[:, None] > 0, rows / jnp.where(norms > 0, norms, 1.0)[:, None], 0.0)
  return left, norms, vt


def jacobi_svd(matrix: Array) -> tuple[Array, Array, Array]:
  """Thin SVD ``matrix = W diag(s) V^T`` of ``(..., n, d)`` in plain JAX operations (no LAPACK kernel).

  One-sided (Hestenes) Jacobi: pairs of rows are rotated until every pair is orthogonal to within the dtype's
  epsilon (cyclic sweeps, at most ``_JACOBI_MAX_SWEEPS``); the rotations accumulate into ``W``, the row norms
  are the singular values and the normalised rows the right singular vectors. The same factorisation as
  ``jnp.linalg.svd(matrix, full_matrices=False)`` (``s`` descending, ``(W, V)`` up to the signs of their
  columns, and any rotation within repeated singular values), to the relative accuracy of the entries — but
  as ordinary XLA operations, so no CPU LAPACK kernel blocks a pool thread (see the module docstring). Meant
  for the few photos of one person (``n`` small): ``n (n - 1) / 2`` rotations per sweep. Not differentiable in
  reverse mode (a ``while_loop``); the hull solves never need it, since their coefficients are constants.

  Returns:
    ``(W (..., n, r), s (..., r), V^T (..., r, d))`` with ``r = min(n, d)``; a row of ``V^T`` whose singular
    value is exactly 0 is 0.

  Example:
    >>> w, s, vt = jacobi_svd(jnp.array([[3.0, 0.0], [0.0, 4.0]]))
    >>> s
    Array([4., 3.], dtype=float32)
  """
  single = _jacobi_svd_single
  for _ in range(matrix.ndim - 2):
    single = jax.vmap(single)
  return single(matrix)


def _max_eigenvalue_bound(gram: Array) -> Array:
  """Upper bound on the largest eigenvalue of a PSD ``gram (n, n)``, within a factor ``n ** (1 / 1024)``.

  For PSD ``G``, ``lambda_max <= tr(G^(2^p)) ** (2^-p) <= n ** (2^-p) lambda_max``. ``G^(2^p)`` is formed
  by ``p`` squarings, each renormalised to unit trace (``M_0 = G / tr G``, ``M_k = M_{k-1}^2 / s_k`` with
  ``s_k = tr M_{k-1}^2``), so that

  .. math::

    \\operatorname{tr}(G^{2^p})^{2^{-p}} = \\operatorname{tr}(G) \\prod_{k=1}^{p} s_k^{2^{-k}} .

  Returns 0 for ``G = 0``.
  """
  trace = jnp.trace(gram)
  positive = trace > 0
  scale = jnp.where(positive, trace, 1.0)
  normalised = gram / scale
  log_bound = jnp.log(scale)
  for k in range(1, _EIGENVALUE_SQUARINGS + 1):
    normalised = _matmul(normalised, normalised)
    trace_k = jnp.trace(normalised)
    trace_k = jnp.where(trace_k > 0, trace_k, 1.0)
    normalised = normalised / trace_k
    log_bound = log_bound + jnp.log(trace_k) / 2**k
  return jnp.where(positive, jnp.exp(log_bound), 0.0)


# ----------------------------------------------------------------------------------------------------------
# The box-constrained QP: min_a a^T G a - 2 b^T a (+ const), sum a = 1, L <= a <= U, on the centred Gram form.


def _centred_gram(features: Array, queries: Array) -> tuple[Array, Array]:
  """``G = (F - mu)(F - mu)^T (n, n)`` and ``b = (F - mu)(y - mu) (m, n)`` for one feature set.

  For ``sum a = 1``, ``a^T F - y = a^T (F - 1 mu^T) - (y - mu)``, so the objective equals
  ``a^T G a - 2 b^T a + ||y - mu||^2``: the same problem with the common component of the features removed.
  """
  mean = class_center(features)
  centred = features - mean
  return _matmul(centred, centred.T), _matmul(queries - mean, centred.T)


def _objective(gram: Array, b: Array, a: Array) -> Array:
  """``a^T G a - 2 b^T a``: the squared distance minus the constant ``||y - mu||^2``."""
  return jnp.dot(a, _matmul(gram, a), precision=_PRECISION) - 2.0 * jnp.dot(b, a, precision=_PRECISION)


def _active_set_step(
    gram: Array, b: Array, a: Array, lower: float, upper: float, margin: float
) -> tuple[Array, Array]:
  """Solves the KKT system with the coordinates of ``a`` within ``margin`` of a bound held at that bound.

  .. math::

    \\begin{bmatrix} G_{FF} & \\mathbf{1} \\\\ \\mathbf{1}^\\top & 0 \\end{bmatrix}
    \\begin{bmatrix} a_F \\\\ \\nu \\end{bmatrix} =
    \\begin{bmatrix} b_F - G_{FA} a_A \\\\ 1 - \\mathbf{1}^\\top a_A \\end{bmatrix},

  written as one ``(n + 1)``-square system whose held rows read ``a_i = L`` or ``a_i = U``.

  Returns:
    The solution projected onto the feasible set, and whether it is a KKT point of the full problem up to
    round-off: finite, inside the box, and with multipliers ``(G a - b + nu)_i`` of the right sign on the
    held coordinates (``>= 0`` at ``L``, ``<= 0`` at ``U``), which by convexity makes it the minimiser.
  """
  n = a.shape[-1]
  dtype = a.dtype
  at_lower = a <= lower + margin if math.isfinite(lower) else jnp.zeros(n, bool)
  at_upper = a >= upper - margin if math.isfinite(upper) else jnp.zeros(n, bool)
  held = at_lower | at_upper
  held_values = jnp.where(at_lower, lower, jnp.where(at_upper, upper, 0.0)).astype(dtype)
  rows = jnp.where(held[:, None], jnp.eye(n, dtype=dtype), gram)
  rhs = jnp.where(held, held_values, b)
  ones_col = jnp.where(held, 0.0, 1.0).astype(dtype)
  kkt = jnp.block([[rows, ones_col[:, None]], [jnp.ones((1, n), dtype), jnp.zeros((1, 1), dtype)]])
  solution = _solve(kkt, jnp.concatenate([rhs, jnp.ones((1,), dtype)]))
  solution, nu = solution[:n], solution[n]
  multipliers = _matmul(gram, solution) - b + nu
  slack = 1e3 * jnp.finfo(dtype).eps * (1.0 + jnp.max(jnp.abs(gram)) + jnp.max(jnp.abs(b)))
  is_kkt_point = (
      jnp.all(jnp.isfinite(solution))
      & jnp.all(solution >= lower - slack)
      & jnp.all(solution <= upper + slack)
      & jnp.all(jnp.where(at_lower, multipliers >= -slack, True))
      & jnp.all(jnp.where(at_upper, multipliers <= slack, True))
  )
  return project_capped_simplex(solution, lower, upper), is_kkt_point


def _polish(gram: Array, b: Array, a: Array, lower: float, upper: float) -> Array:
  """Exact active-set refinement of an approximate minimiser ``a``.

  The active set is guessed from ``a`` with three margins (``10 eps``, ``sqrt(eps)`` and ``0.01``)
  and each guess is solved exactly by :func:`_active_set_step`. The first guess whose solution passes the
  KKT test is returned: when ``G`` is ill-conditioned the solver's iterate can be ``1e-5`` off in a flat
  direction while its objective is already optimal to float32 round-off, so the objective alone cannot pick
  the exact solution. If no guess passes (degenerate or rank-deficient problems), the candidate with the
  lowest objective wins, ``a`` itself included, so this step never makes an iterate worse.
  """
  eps = float(jnp.finfo(a.dtype).eps)
  steps = [_active_set_step(gram, b, a, lower, upper, margin) for margin in (10 * eps, math.sqrt(eps), 1e-2)]
  candidates = jnp.stack([a] + [candidate for candidate, _ in steps])
  is_kkt_point = jnp.stack([jnp.zeros((), bool)] + [ok for _, ok in steps])
  objectives = jax.vmap(_objective, in_axes=(None, None, 0))(gram, b, candidates)
  objectives = jnp.where(jnp.isfinite(objectives), objectives, jnp.inf)
  index = jnp.where(jnp.any(is_kkt_point), jnp.argmax(is_kkt_point), jnp.argmin(objectives))
  return candidates[index]


def _fista_solve(gram: Array, b: Array, lower: float, upper: float, maxiter: int, tol: float) -> Array:
  """FISTA with adaptive (gradient) restart for one query; ``gram (n, n)``, ``b (n,)``; returns ``a (n,)``.

  Step ``1 / Lip`` with ``Lip = 2 lambda_max(G)`` of the centred Gram matrix: the iterates stay on
  ``sum a = 1``, where the objective's curvature is that of ``G`` (smaller than that of ``F F^T``, which also
  carries the large common direction of same-person features). ``lambda_max`` is over-estimated by at most
  ``n ** (1 / 1024)`` (:func:`_max_eigenvalue_bound`). Stops when no coordinate moves by more than ``tol`` in
  one step, or after ``maxiter`` steps.
  """
  n = b.shape[-1]
  lipschitz = 2.0 * _max_eigenvalue_bound(gram)
  step = 1.0 / jnp.maximum(lipschitz, jnp.finfo(gram.dtype).tiny)
  project = functools.partial(project_capped_simplex, lower=lower, upper=upper)
  start = project(jnp.full_like(b, 1.0 / n))

  def cond(state):
    _, _, _, k, delta = state
    return (k < maxiter) & (delta > tol)

  def body(state):
    x, x_prev, t, k, _ = state
    t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    y = x + ((t - 1.0) / t_next) * (x - x_prev)
    x_next = project(y - step * 2.0 * (_matmul(gram, y) - b))
    restart = jnp.dot(y - x_next, x_next - x, precision=_PRECISION) > 0
    t_next = jnp.where(restart, 1.0, t_next)
    delta = jnp.max(jnp.abs(x_next - x))
    return x_next, x, t_next, k + 1, delta

  one = jnp.ones((), gram.dtype)
  x, *_ = jax.lax.while_loop(cond, body, (start, start, one, 0, jnp.asarray(jnp.inf, gram.dtype)))
  return _polish(gram, b, x, lower, upper)


def _import_box_osqp():
  """``jaxopt.BoxOSQP``, imported here only, without jaxopt's import-time "no longer maintained" warning."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*JAXopt is no longer maintained.*", category=DeprecationWarning)
    import jaxopt  # pylint: disable=g-import-not-at-top

  return jaxopt.BoxOSQP


class _OsqpLuSolver:
  """The linear solver of ``jaxopt.BoxOSQP(eq_qp_solve="lu")`` with :func:`_lu_factor` for LAPACK's ``getrf``.

  Same interface and algorithm as ``jaxopt``'s ``OSQPLUSolver`` (it solves
  ``(Q + sigma I + rho_bar A^T A) x = b`` for dense ``Q`` and ``A``, refactorising whenever ``rho_bar``
  changes), on one problem; ``vmap`` batches it.
  """

  @staticmethod
  def _factor(params_q, params_a, sigma, rho_bar):
    eye = jnp.eye(params_q.shape[-1], dtype=params_q.dtype)
    return _lu_factor(params_q + sigma * eye + rho_bar * _matmul(params_a.T, params_a))

  def init_state(self, init_params, params_Q, params_A, sigma, rho_bar):  # pylint: disable=invalid-name
    del init_params
    return (params_Q, params_A, sigma), self._factor(params_Q, params_A, sigma, rho_bar)

  def update_stepsize(self, solver_state, rho_bar):
    (params_q, params_a, sigma), _ = solver_state
    return (params_q, params_a, sigma), self._factor(params_q, params_a, sigma, rho_bar)

  def run(self, b, osqp_state):
    _, (lu, perm) = osqp_state.solver_state
    return _lu_solve(lu, perm, b), osqp_state.solver_state


def _osqp_solve(gram: Array, b: Array, lower: float, upper: float, maxiter: int, tol: float) -> Array:
  """``jaxopt.BoxOSQP`` for one query: ``min 1/2 a^T (2G) a - 2 b^T a`` s.t. ``[1^T; I] a`` in ``[l, u]``.

  A ridge ``10 eps * tr(G) / n`` (``eps`` of the dtype) is added to ``G``: when the minimiser is not unique
  (affinely dependent features with a query inside the hull) plain ADMM drifts along the optimal set in float32
  and stops converging; the ridge makes the minimiser unique and moves the objective by at most
  ``10 eps * tr(G) / n * ||a||^2``. The ADMM iterate is feasible only to ``tol``; it is made exactly feasible
  by the capped-simplex projection and refined on the unregularised objective by one active-set step
  (:func:`_polish`). OSQP's linear systems are factorised by :func:`_lu_factor` (:class:`_OsqpLuSolver`), not
  by LAPACK, and its matrix products run at full precision (``jax.default_matmul_precision("highest")``).
  """
  n = b.shape[-1]
  dtype = gram.dtype
  ridge = 10 * jnp.finfo(dtype).eps * jnp.trace(gram) / n
  box_osqp = _import_box_osqp()
  solver = box_osqp(tol=tol, maxiter=maxiter, eq_qp_solve="lu", check_primal_dual_infeasability=False)
  solver._eq_qp_solve_impl = _OsqpLuSolver()  # pylint: disable=protected-access
  constraints = jnp.concatenate([jnp.ones((1, n), dtype), jnp.eye(n, dtype=dtype)])
  low = jnp.concatenate([jnp.ones((1,), dtype), jnp.full((n,), lower, dtype)])
  high = jnp.concatenate([jnp.ones((1,), dtype), jnp.full((n,), upper, dtype)])
  quadratic = 2.0 * (gram + ridge * jnp.eye(n, dtype=dtype))
  with jax.default_matmul_precision("highest"):
    result = solver.run(params_obj=(quadratic, -2.0 * b), params_eq=constraints, params_ineq=(low, high))
  a = project_capped_simplex(result.params.primal[0], lower, upper)
  return _polish(gram, b, a, lower, upper)


_SOLVE: dict[str, Callable[..., Array]] = {"osqp": _osqp_solve, "fista": _fista_solve}

#: Per solver and dtype: (maxiter, tol) chosen so the objective meets 1e-5 of the exact optimum.
_DEFAULT_SETTINGS = {
    ("fista", 4): (1000, 1e-6),
    ("fista", 8): (5000, 1e-10),
    ("osqp", 4): (4000, 1e-6),
    ("osqp", 8): (10000, 1e-8),
}


def _box_qp_coefficients(features, queries, lower, upper, solver, maxiter, tol):
  """Coefficients ``(m, n)`` of the box-constrained hull for one feature set ``(n, d)`` and queries ``(m, d)``."""
  gram, b = _centred_gram(features, queries)
  solve = functools.partial(_SOLVE[solver], lower=lower, upper=upper, maxiter=maxiter, tol=tol)
  return jax.vmap(solve, in_axes=(None, 0))(gram, b)


# ----------------------------------------------------------------------------------------------------------
# Public API.


def _check_inputs(features: Array, queries: Array) -> tuple[Array, Array]:
  """Checks shapes ``(..., n, d)``, ``(..., m, d)`` with broadcastable leading axes; casts to one float dtype."""
  features = jnp.asarray(features)
  queries = jnp.asarray(queries)
  if features.ndim < 2:
    raise ValueError(f"F must have shape (..., n, d), got {features.shape}")
  if queries.ndim < 2:
    raise ValueError(f"Y must have shape (..., m, d), got {queries.shape}")
  if features.shape[-1] != queries.shape[-1]:
    raise ValueError(f"F and Y must share the feature size d, got F {features.shape} and Y {queries.shape}")
  if features.shape[-2] < 1:
    raise ValueError(f"F needs at least one row, got {features.shape}")
  try:
    jnp.broadcast_shapes(features.shape[:-2], queries.shape[:-2])
  except ValueError:
    raise ValueError(
        f"leading axes of F {features.shape[:-2]} and Y {queries.shape[:-2]} do not broadcast"
    ) from None
  dtype = jnp.result_type(features.dtype, queries.dtype, jnp.float32)
  return features.astype(dtype), queries.astype(dtype)


def _check_finite(**arrays: Array) -> None:
  """Raises ValueError naming the first concrete (not traced) array that holds NaN or Inf."""
  for name, array in arrays.items():
    if not isinstance(array, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(array))):
      raise ValueError(f"{name} contains NaN or Inf; hull coefficients and distances need finite features")


def _nan_where_not_finite(coefficients: Array, features: Array, queries: Array) -> Array:
  """NaN coefficients for every query that is not finite or whose feature set is not (traced inputs)."""
  finite = jnp.all(jnp.isfinite(queries), axis=-1) & jnp.all(jnp.isfinite(features), axis=(-2, -1))[..., None]
  return jnp.where(finite[..., None], coefficients, jnp.nan)


@functools.partial(jax.jit, static_argnames=("lower", "upper", "solver", "maxiter", "tol"))
def _hull_coefficients_compiled(F, Y, *, lower, upper, solver, maxiter, tol):
  """:func:`hull_coefficients` on validated inputs, compiled once per shape and setting (cheap eager calls)."""
  lead = jnp.broadcast_shapes(F.shape[:-2], Y.shape[:-2])
  n = F.shape[-2]
  F = jnp.broadcast_to(F, lead + F.shape[-2:])
  Y = jnp.broadcast_to(Y, lead + Y.shape[-2:])
  if _is_affine(lower, upper):
    coefficients = affine_hull_coefficients(F, Y)
  elif _is_single_point(lower, upper, n):
    coefficients = jnp.full(lead + (Y.shape[-2], n), 1.0 / n, F.dtype)
  else:
    solve = functools.partial(
        _box_qp_coefficients, lower=lower, upper=upper, solver=solver, maxiter=maxiter, tol=tol
    )
    for _ in lead:
      solve = jax.vmap(solve)
    coefficients = solve(F, Y)
  return _nan_where_not_finite(coefficients, F, Y)


def hull_coefficients(
    F: Array,
    Y: Array,
    lower: float = 0.0,
    upper: float = 1.0,
    *,
    solver: str = "osqp",
    maxiter: int | None = None,
    tol: float | None = None,
) -> Array:
  """Coefficients of the nearest hull points: ``a = argmin ||a^T F - y||`` with ``sum a = 1, L <= a <= U``.

  Eq. 9 and 12 of the paper, for each query row ``y`` of ``Y``:

  .. math::

    a^\\star(y) = \\arg\\min_a \\| a^\\top F - y \\|_2^2
    \\quad \\text{s.t.} \\quad \\textstyle\\sum_i a_i = 1, \\; L \\le a_i \\le U.

  - ``lower=-inf, upper=inf``: affine hull, closed form (Eq. 4-7, :func:`affine_hull_coefficients`); works
    for affinely dependent features (duplicates, ``n > d``, ``n = 1``) and returns the minimum-norm
    coefficients there.
  - ``lower == upper == 1/n`` (or any box whose only feasible point is ``1/n``): class centre (Eq. 10).
  - ``lower=0, upper=1`` (default): convex hull (Eq. 12-13). Other boxes: reduced convex hull.

  The bounds and ``solver`` are static Python values; the function is jittable when they are bound with
  ``functools.partial`` (or ``static_argnames``). ``F`` and ``Y`` enter the solver through
  ``lax.stop_gradient``: the coefficients are constants for differentiation (by Danskin's theorem,
  ``||a^T F - y||`` with the optimal ``a`` held fixed has the gradient of the hull distance), and autodiff
  never traces the solver. Use :func:`hull_distance` for a differentiable distance.

  Args:
    F: identity features ``(..., n, d)``, unit rows.
    Y: query features ``(..., m, d)``; leading axes broadcast with those of ``F``.
    lower: lower coefficient bound ``L``.
    upper: upper coefficient bound ``U``.
    solver: ``"osqp"`` (``jaxopt.BoxOSQP``) or ``"fista"`` (accelerated projected gradient); only used for
      the box-constrained cases.
    maxiter: iteration cap of the solver; ``None`` picks a default for the dtype.
    tol: stopping tolerance of the solver; ``None`` picks a default for the dtype (float32: objective within
      ``1e-5`` of the exact optimum on realistic face features).

  Large batches are safe on CPU: the box-constrained solvers use no LAPACK kernels (see the module
  docstring), so many thousands of problems in one call, under ``vmap``, or sharded over devices cannot
  deadlock XLA's thread pool.

  Returns:
    ``A (..., m, n)`` with broadcast leading axes, rows summing to one and inside ``[lower, upper]``. Under
    ``jit`` (traced inputs), the rows of queries with a NaN or Inf, and all rows of a feature set with one, are
    NaN.

  Raises:
    ValueError: for bad shapes, infeasible or NaN bounds (naming ``lower``/``upper``), an unknown solver, or
      concrete ``F`` or ``Y`` holding NaN or Inf (naming the argument).

  Example:
    >>> F = jnp.eye(3)
    >>> hull_coefficients(F, jnp.array([[1.0, 1.0, -1.0]]), solver="fista")
    Array([[0.5, 0.5, 0. ]], dtype=float32)
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  F, Y = _check_inputs(F, Y)
  lower, upper = validate_bounds(lower, upper, F.shape[-2])
  _check_finite(F=F, Y=Y)
  default_maxiter, default_tol = _DEFAULT_SETTINGS[(solver, F.dtype.itemsize)]
  # Stopping the gradient at the inputs (not only at the output) keeps autodiff from carrying tangents
  # through the solver's iterations only to discard them.
  return _hull_coefficients_compiled(
      jax.lax.stop_gradient(F),
      jax.lax.stop_gradient(Y),
      lower=lower,
      upper=upper,
      solver=solver,
      maxiter=default_maxiter if maxiter is None else int(maxiter),
      tol=default_tol if tol is None else float(tol),
  )


def project_to_hull(F: Array, Y: Array, lower: float = 0.0, upper: float = 1.0, **kw) -> Array:
  """The nearest hull points ``a^T F`` ``(..., m, d)`` to the queries (Eq. 9); ``kw`` go to the solver."""
  coefficients = hull_coefficients(F, Y, lower, upper, **kw)
  return jnp.einsum(
      "...mn,...nd->...md", coefficients, jnp.asarray(F, coefficients.dtype), precision=_PRECISION
  )


def _safe_norm(x: Array) -> Array:
  """``||x||_2`` over the last axis with gradient 0 (not NaN) at ``x = 0``; NaN stays NaN."""
  squared = jnp.sum(x * x, axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), jnp.where(squared == 0, 0.0, squared))


def hull_distance(F: Array, Y: Array, lower: float = 0.0, upper: float = 1.0, **kw) -> Array:
  """Euclidean distance ``(..., m)`` from each query to the hull ``{a^T F : sum a = 1, L <= a <= U}``.

  .. math::

    D(y) = \\min_a \\| a^\\top F - y \\|_2 = \\| {a^\\star}^\\top F - y \\|_2 .

  Differentiable with respect to ``Y`` and ``F``: the optimal coefficients are held constant (Danskin's
  theorem), and the gradient at zero distance is zero. ``kw`` are passed to :func:`hull_coefficients`.

  A query or feature set with NaN or Inf never reads as "on the hull" (distance 0): called on concrete arrays
  this raises ValueError naming ``F`` or ``Y``; under ``jit`` the affected distances are NaN.

  Example:
    >>> hull_distance(jnp.eye(2), jnp.array([[0.0, 0.0]]))
    Array([0.70710677], dtype=float32)
  """
  nearest = project_to_hull(F, Y, lower, upper, **kw)
  return _safe_norm(nearest - jnp.asarray(Y, nearest.dtype))
