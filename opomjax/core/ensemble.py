"""Ensembles of surrogate models, two ways.

* Per-model objectives (what :func:`opomjax.generate_masks` does with several surrogates): every member keeps
  its own feature space, hull and objective (Eqs. 8, 11, 13, 17 per model), and the ascent follows the
  weighted sum of the members' gradients, each normalised to a common scale
  (:func:`combine_member_gradients`).
* Joined embeddings (:func:`ensemble_embedding`, :func:`ensemble_apply`): the unit embeddings concatenated
  into one, so that one objective (with one set of hull coefficients) averages them.

Pure JAX, no I/O: the models enter as ``apply(params, images, key=None) -> unit embeddings`` functions (e.g.
:meth:`opomjax.models.base.FaceModel.apply`).

Example:
  >>> import jax.numpy as jnp
  >>> e = ensemble_embedding([jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0, 0.0]])])
  >>> e.shape, round(float(jnp.linalg.norm(e)), 6)
  ((1, 5), 1.0)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[..., jax.Array]


def check_weights(weights: Sequence[float], count: int) -> np.ndarray:
  """``weights`` as ``(count,)`` float64, normalised to sum to 1; ValueError naming them otherwise."""
  w = np.asarray(weights, np.float64)
  if w.shape != (count,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {count} non-negative numbers, not all 0; got {weights!r}")
  return w / w.sum()


def combine_member_gradients(values: Sequence[jax.Array], grads: Sequence[jax.Array],
                             weights: Sequence[float] = ()) -> tuple[jax.Array, jax.Array]:
  """The ensemble's objective and ascent direction from its members' objectives ``J_m`` and gradients ``g_m``.

  .. math::
     J = \\sum_m w_m J_m, \\qquad g = \\sum_m w_m \\frac{g_m}{\\overline{|g_m|}}, \\qquad
     \\overline{|g_m|} = \\operatorname{mean}_{i,h,w,c} |(g_m)_{ihwc}|

  The members' objectives are distances between unit features, so their values are comparable, but their
  gradients with respect to the pixels are not: one network's may be ten times another's, and the signed step
  would then follow that network alone. Dividing each member's gradient by its mean absolute entry (over the
  identity's images and pixels, as the momentum of Eq. 14 divides by an L1 norm) gives every member the same
  say before the weights ``w_m``. A member whose gradient is zero contributes nothing.

  Args:
    values: ``M`` scalar objectives.
    grads: ``M`` gradients of the same shape (the identity's masked images).
    weights: ``M`` non-negative weights (normalised to sum to 1), or empty for equal weights.

  Returns:
    ``(J, g)``.
  """
  count = len(grads)
  w = check_weights(weights if len(weights) else [1.0] * count, count)
  value = sum(float(wm) * v for wm, v in zip(w, values))
  grad = None
  for wm, g in zip(w, grads):
    scale = jnp.mean(jnp.abs(g))
    term = (float(wm) / jnp.maximum(scale, jnp.finfo(g.dtype).tiny)) * g
    grad = term if grad is None else grad + term
  return value, grad


def ensemble_embedding(embeddings: Sequence[jax.Array], weights: Sequence[float] | None = None) -> jax.Array:
  """Joins the unit embeddings of ``M`` models into one unit embedding: ``concat(e_1, .., e_M) / sqrt(M)``.

  With :math:`z = [e_1; \\dots; e_M] / \\sqrt{M}` and each :math:`e_m` of unit norm, :math:`\\lVert z
  \\rVert = 1` and every squared distance splits over the models:

  .. math::
     \\lVert \\hat z - z' \\rVert^2 = \\frac{1}{M} \\sum_{m=1}^{M} \\lVert \\hat e_m - e'_m \\rVert^2 .

  So an objective built from squared feature distances to fixed points, evaluated on ``z``, *is* the average
  of that objective over the models (up to a positive constant, which the signed-gradient ascent ignores):
  FI-UAP (Eq. 17) and the class centre (Eq. 11; the mean of the ``z`` is the joined, scaled means of the
  ``e_m``) exactly, in the paper's sum form; in the per-entry mean form of :mod:`opomjax.core.objectives`
  too when the models' embedding sizes ``d_m`` are equal (otherwise model ``m`` is weighted by ``d_m``).
  For the hulls (Eqs. 8, 13) the coefficients are shared: the objective is the distance to the hull of the
  joint features, :math:`\\min_a \\frac{1}{M} \\sum_m \\lVert F_m^\\top a - \\hat e_m \\rVert^2 \\ge
  \\frac{1}{M} \\sum_m \\min_a \\lVert F_m^\\top a - \\hat e_m \\rVert^2`: the masked face must leave the
  hull of the person's photos as *every* model sees them through the same convex combination.

  The ascent follows the *sign* of the summed gradient, so a model whose gradients are larger steers it
  more. ``weights`` ``w_m`` (normalised to sum to 1) join :math:`z = [\\sqrt{w_1} e_1; \\dots;
  \\sqrt{w_M} e_M]`, still of unit norm, whose squared distances are :math:`\\sum_m w_m \\lVert \\hat e_m -
  e'_m \\rVert^2`: the weighted average. Measured against the per-model objectives of
  :func:`combine_member_gradients` (OPOM-ConvexHull on dlib + faceres + mobileface, 16 steps, 20 Privacy-LFW
  identities; docs/results): SFace, unseen, 30.7 % Top-1 protection with the joined embedding against 39.3 %, dlib
  as a member 83.5 against 94.5, so :func:`opomjax.generate_masks` joins gradients, not embeddings.

  Args:
    embeddings: ``M`` arrays ``(..., d_m)`` of unit embeddings of the same images.
    weights: ``M`` non-negative weights, not all 0 (default: equal).

  Returns:
    ``(..., sum_m d_m)`` unit embeddings.
  """
  if not embeddings:
    raise ValueError("embeddings is empty; give at least one model's embeddings")
  if weights is not None:
    w = np.sqrt(check_weights(weights, len(embeddings)))
    if len(embeddings) == 1:
      return embeddings[0]
    return jnp.concatenate([float(wm) * e for wm, e in zip(w, embeddings)], axis=-1)
  if len(embeddings) == 1:
    return embeddings[0]
  return jnp.concatenate(embeddings, axis=-1) / math.sqrt(len(embeddings))


def ensemble_apply(applies: Sequence[ApplyFn], weights: Sequence[float] | None = None) -> ApplyFn:
  """One ``apply(params, images, key=None)`` for ``M`` models joined by :func:`ensemble_embedding`.

  Args:
    applies: ``M`` functions ``apply_m(params_m, images, key=None) -> (..., d_m)`` unit embeddings.
    weights: as in :func:`ensemble_embedding` (validated here, once).

  Returns:
    ``apply(params, images, key=None)`` with ``params`` a tuple ``(params_1, .., params_M)``; a dropout key is
    split into one per model.
  """
  applies = tuple(applies)
  if not applies:
    raise ValueError("applies is empty; give at least one model")
  if weights is not None:
    check_weights(weights, len(applies))
    weights = tuple(float(w) for w in weights)

  def apply(params, images, key=None):
    keys = [None] * len(applies) if key is None else list(jax.random.split(key, len(applies)))
    return ensemble_embedding([f(p, images, k) for f, p, k in zip(applies, params, keys)], weights)

  return apply
