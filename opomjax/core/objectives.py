"""The objectives the mask generators maximise, one pure function per method.

Every function takes the features of the masked (adversarial) images ``adv`` ``(n, d)`` and the clean features
of the same identity ``clean`` ``(n, d)`` (or intermediate activations, for GD-UAP) and returns a scalar that
the signed-gradient ascent of :mod:`opomjax.core.ascent` *increases*. Features are L2-normalised inside each
objective, as the official PyTorch code does (a no-op on the unit embeddings of
:class:`opomjax.models.base.FaceModel`, but it keeps the functions correct for raw embeddings too).

Exact form. The official code minimises ``-MSELoss(...)``: a *squared* distance averaged over all ``n * d``
entries (``torch.nn.MSELoss`` with ``reduction="mean"``), not the sum of the paper's equations. The functions
here follow the official form, so their values equal the official losses with the sign flipped. The ascent only
uses the sign of the gradient, so any positive rescaling of an objective gives the same masks.

Hull objectives (OPOM). The hull coefficients ``A`` are recomputed from the current features at every step and
enter the gradient as constants (they come back from :func:`opomjax.core.hulls.hull_coefficients` under
``lax.stop_gradient``). By Danskin's theorem this *is* the gradient of the distance to the hull,

.. math::

   \\nabla_{\\hat f}\\, \\min_{a \\in \\mathcal{A}} \\lVert F^\\top a - \\hat f \\rVert^2
   = 2\\,(\\hat f - F^\\top a^\\star),

because ``a*`` is a minimiser over a set that does not depend on ``\\hat f``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> clean = jax.random.normal(jax.random.key(0), (4, 8))
  >>> adv = clean + 0.1 * jax.random.normal(jax.random.key(1), (4, 8))
  >>> bool(opom_class_center(adv, clean) > 0)
  True
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from opomjax.core import hulls

_EPS = 1e-12


def row_norms(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """L2 norms of the rows of ``x`` (last axis), at least ``_EPS`` (finite gradients at zero)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=keepdims), _EPS * _EPS))


def normalize(x: jax.Array) -> jax.Array:
  """Rows of ``x`` scaled to unit L2 norm (the official losses normalise both feature sets)."""
  return x / row_norms(x, keepdims=True)


def mean_squared_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """``mean((a - b)**2)`` over every entry: ``torch.nn.MSELoss()`` as the official code uses it."""
  return jnp.mean(jnp.square(a - b))


def fi_uap(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """FI-UAP (Eq. 17): each masked image pushed away from its own clean feature.

  .. math::

     J = \\frac{1}{n d} \\sum_{i=1}^{n} \\lVert \\hat f_i - f_i \\rVert_2^2,
     \\qquad \\hat f_i = f(x_i + \\delta),\\; f_i = f(x_i)

  Official form: ``loss_type=0``, ``-inverse_mse`` = ``MSELoss(n(adv), n(clean))`` (squared, mean over
  ``n * d``).

  Args:
    adv: ``(n, d)`` features of the masked images.
    clean: ``(n, d)`` features of the same images without mask, row ``i`` matching row ``i`` of ``adv``.

  Returns:
    The scalar to maximise.
  """
  return mean_squared_distance(normalize(adv), normalize(clean))


def fi_uap_plus(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """FI-UAP+ (Eq. 18): each masked image pushed away from *all* clean features of the identity.

  The paper writes the sum of squared distances over all pairs,
  :math:`\\sum_i \\sum_j \\lVert \\hat f_i - f_j \\rVert^2`. For unit features
  :math:`\\lVert \\hat f_i - f_j \\rVert^2 = 2 - 2 \\langle \\hat f_i, f_j \\rangle`, and the official code
  (``loss_type=2``, ``eachother_dot``) maximises the equivalent

  .. math::

     J = -\\frac{1}{n m} \\sum_{i=1}^{n} \\sum_{j=1}^{m} \\langle \\hat f_i, f_j \\rangle,

  which is the form returned here (same gradient direction, hence the same masks).

  Args:
    adv: ``(n, d)`` features of the masked images.
    clean: ``(m, d)`` clean features of the identity.

  Returns:
    The scalar to maximise.
  """
  return -jnp.mean(normalize(adv) @ normalize(clean).T)


def fi_uap_all(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """FI-UAP-all: FI-UAP (Eq. 17) over the pooled images of every identity — one mask for everyone.

  .. math::

     J = \\frac{1}{k n d} \\sum_{p=1}^{k} \\sum_{i=1}^{n} \\lVert \\hat f_{p,i} - f_{p,i} \\rVert_2^2

  Not in the official code; it is FI-UAP applied to all ``k * n`` images at once, giving a single
  (not person-specific) universal mask.

  Args:
    adv: ``(k, n, d)`` (or already pooled ``(k * n, d)``) features of the masked images.
    clean: the clean features, same shape as ``adv``.

  Returns:
    The scalar to maximise.
  """
  d = adv.shape[-1]
  return fi_uap(adv.reshape(-1, d), clean.reshape(-1, d))


def hull_projection(adv: jax.Array, clean: jax.Array, lower: float, upper: float, *,
                    solver: str = "osqp") -> jax.Array:
  """The points of the reduced hull of ``clean`` closest to each row of ``adv``: ``A @ n(clean)``.

  ``A`` (``(n, m)``, rows summing to one, entries in ``[lower, upper]``) is treated as a constant in the
  gradient (Danskin); see the module docstring.
  """
  nclean = normalize(clean)
  coefficients = hulls.hull_coefficients(nclean, normalize(adv), lower, upper, solver=solver)
  return jax.lax.stop_gradient(coefficients) @ nclean


def opom_reduced_hull(adv: jax.Array, clean: jax.Array, lower: float = 0.0, upper: float = 1.0, *,
                      solver: str = "osqp") -> jax.Array:
  """OPOM with a reduced convex hull ``[L, U]`` (Eq. 13 with general bounds; the general form of Eqs. 8-13).

  .. math::

     J = \\frac{1}{n d} \\sum_{i=1}^{n} \\min_{a \\in \\mathcal{A}_{L,U}}
         \\lVert F^\\top a - \\hat f_i \\rVert_2^2,
     \\qquad \\mathcal{A}_{L,U} = \\{a : \\textstyle\\sum_j a_j = 1,\\; L \\le a_j \\le U\\}

  with ``F`` the ``(m, d)`` clean features. ``L = -inf, U = inf`` is the affine hull (Eq. 8), ``L = 0, U = 1``
  the convex hull (Eq. 13), ``L = U = 1/m`` the class centre (Eq. 11). Official form: ``convex_hull_cvx_dyn``,
  ``MSELoss(XX @ n(clean), n(adv))`` with ``XX`` detached.

  Args:
    adv: ``(n, d)`` features of the masked images.
    clean: ``(m, d)`` clean features spanning the hull.
    lower: ``L``, lower bound on every coefficient.
    upper: ``U``, upper bound on every coefficient.
    solver: passed to :func:`opomjax.core.hulls.hull_coefficients`.

  Returns:
    The scalar to maximise.
  """
  return mean_squared_distance(hull_projection(adv, clean, lower, upper, solver=solver), normalize(adv))


def opom_affine_hull(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """OPOM-AffineHull (Eq. 8): squared distance of each masked feature to the affine hull of the clean ones.

  .. math::

     J = \\frac{1}{n d} \\sum_{i=1}^{n} \\min_{a:\\, \\mathbf{1}^\\top a = 1}
         \\lVert F^\\top a - \\hat f_i \\rVert_2^2

  Official form: ``loss_type=8``, ``affine_hull_cvx`` (``MSELoss`` of the detached projection).
  """
  return opom_reduced_hull(adv, clean, -jnp.inf, jnp.inf)


def opom_class_center(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """OPOM-ClassCenter (Eq. 11): squared distance of each masked feature to the identity's class centre.

  .. math::

     J = \\frac{1}{n d} \\sum_{i=1}^{n} \\lVert \\hat f_i - c \\rVert_2^2,
     \\qquad c = \\frac{1}{m} \\sum_{j=1}^{m} f_j

  The official code (``loss_type=7``) gets ``c`` by solving the hull QP with ``L = U = 1/m``, whose only
  feasible point is ``a = 1/m``; here the centre is the mean in closed form (``c`` is the mean of the
  *normalised* clean features, not renormalised, as in the official code).
  """
  nclean = normalize(clean)
  center = jnp.mean(nclean, axis=0, keepdims=True)
  return mean_squared_distance(jnp.broadcast_to(center, adv.shape), normalize(adv))


def opom_convex_hull(adv: jax.Array, clean: jax.Array, *, solver: str = "osqp") -> jax.Array:
  """OPOM-ConvexHull (Eq. 13): squared distance of each masked feature to the convex hull of the clean ones.

  .. math::

     J = \\frac{1}{n d} \\sum_{i=1}^{n} \\min_{a:\\, \\mathbf{1}^\\top a = 1,\\; 0 \\le a \\le 1}
         \\lVert F^\\top a - \\hat f_i \\rVert_2^2

  Official form: ``loss_type=9``, ``convex_hull_cvx_dyn`` with ``lower=0, upper=1``.
  """
  return opom_reduced_hull(adv, clean, 0.0, 1.0, solver=solver)


def gd_uap(activations: Sequence[jax.Array]) -> jax.Array:
  """GD-UAP (Eq. 16, with data priors): the activations of intermediate layers made as large as possible.

  .. math::

     J = \\frac{1}{n} \\sum_{i=1}^{n} \\sum_{l=1}^{L} \\log \\lVert a_l(x_i + \\delta) \\rVert_2

  i.e. minus the GD-UAP loss :math:`-\\log \\prod_l \\lVert a_l \\rVert_2`, per image and averaged over the
  identity's images. Not in the official OPOM code.

  Args:
    activations: ``L`` arrays, each ``(n, ...)``: layer ``l``'s activations of the ``n`` masked images.

  Returns:
    The scalar to maximise.
  """
  if not activations:
    raise ValueError("gd_uap: activations is empty; give at least one layer")
  total = 0.0
  for act in activations:
    flat = act.reshape(act.shape[0], -1)
    total = total + jnp.log(row_norms(flat))
  return jnp.mean(total)


def mid_layer_index(count: int, depth: float) -> int:
  """The index of the layer at relative ``depth`` in ``[0, 1]`` among ``count`` recorded activations
  (0: the first, 1: the last), rounded to the nearest (halves up); the same fraction picks a comparable stage
  in networks of different depth (the models record one activation per resolution stage)."""
  if count < 1:
    raise ValueError("mid_layer_index: no recorded activations")
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"mid_layer_index: depth must lie in [0, 1], got {depth}")
  return int(math.floor(depth * (count - 1) + 0.5))


def mid_feature_distortion(adv: jax.Array, clean: jax.Array) -> jax.Array:
  """Relative distortion of an intermediate feature map: the transferable part of a perturbation.

  .. math::

     J_{\\mathrm{mid}} = \\frac{1}{n} \\sum_{i=1}^{n}
       \\frac{\\lVert a_l(x_i + \\delta) - a_l(x_i) \\rVert_2}{\\lVert a_l(x_i) \\rVert_2}

  Intermediate features are shared far more between networks than their embeddings, so pushing them away
  from the clean ones transfers better than moving the embedding alone (Zhou et al., "Transferable
  Adversarial Perturbations", ECCV 2018, who maximise this distance on intermediate layers; Huang et al.,
  "Enhancing Adversarial Example Transferability with an Intermediate Level Attack", ICCV 2019). Divided by
  the clean norm, the term has no units: its value reads the same for networks whose activations differ in
  scale (the ascent joins its gradient with the method's after normalising both).

  Args:
    adv: ``(n, ...)`` layer ``l``'s activations of the masked images.
    clean: ``(n, ...)`` the same layer's activations of the clean images (constants).

  Returns:
    The scalar to maximise.
  """
  if adv.shape != clean.shape:
    raise ValueError(f"mid_feature_distortion: shapes differ, {adv.shape} and {clean.shape}")
  diff = (adv - clean).reshape(adv.shape[0], -1)
  base = clean.reshape(clean.shape[0], -1)
  return jnp.mean(row_norms(diff) / row_norms(base))


def mid_feature_projection(adv: jax.Array, clean: jax.Array, guide: jax.Array) -> jax.Array:
  """The intermediate-level attack's projection: how far an intermediate feature map moved along the change a
  guide perturbation made (Huang et al., "Enhancing Adversarial Example Transferability with an Intermediate
  Level Attack", ICCV 2019, Eq. 3, per image and relative to the clean norm).

  .. math::

     J_{\\mathrm{ILA}} = \\frac{1}{n} \\sum_{i=1}^{n}
       \\frac{\\langle a_l(x_i + \\delta) - a_l(x_i),\\; a_l(x_i + \\delta_g) - a_l(x_i) \\rangle}
            {\\lVert a_l(x_i + \\delta_g) - a_l(x_i) \\rVert_2\\, \\lVert a_l(x_i) \\rVert_2}

  with :math:`\\delta_g` a mask made by another attack (e.g. OPOM's own). It keeps the guide's direction in
  feature space and only lengthens it, where :func:`mid_feature_distortion` moves the features anywhere.

  Args:
    adv: ``(n, ...)`` layer ``l``'s activations of the masked images.
    clean: ``(n, ...)`` of the clean images (constants).
    guide: ``(n, ...)`` of the images under the guide mask (constants).

  Returns:
    The scalar to maximise.
  """
  if not adv.shape == clean.shape == guide.shape:
    raise ValueError(f"mid_feature_projection: shapes differ, {adv.shape}, {clean.shape} and {guide.shape}")
  change = (adv - clean).reshape(adv.shape[0], -1)
  direction = (guide - clean).reshape(guide.shape[0], -1)
  base = clean.reshape(clean.shape[0], -1)
  return jnp.mean(jnp.sum(change * direction, axis=-1) / (row_norms(direction) * row_norms(base)))


def diversity(adv: jax.Array) -> jax.Array:
  """Diversity of several masks of one person (Eq. 19): how far apart their masked features lie.

  For ``M`` masks :math:`\\delta_1..\\delta_M` of one identity, with
  :math:`\\hat f^{p}_i = f(x_i + \\delta_p)`,

  .. math::

     J_{div} = \\frac{2}{M (M - 1)} \\sum_{p < q} \\frac{1}{n d} \\sum_{i=1}^{n}
               \\lVert \\hat f^{p}_i - \\hat f^{q}_i \\rVert_2^2,

  the mean over mask pairs of the FI-UAP-style squared distance between two masked versions of the same
  photo. Added (with a weight) to an OPOM objective summed over the masks, it keeps the masks from collapsing
  onto one solution. Not in the official code; the normalisation follows the ``MSELoss`` convention above.

  Args:
    adv: ``(M, n, d)`` features of the ``n`` images under each of ``M >= 2`` masks.

  Returns:
    The scalar to maximise.
  """
  if adv.ndim != 3 or adv.shape[0] < 2:
    raise ValueError(f"diversity: adv must be (M >= 2, n, d), got shape {adv.shape}")
  m = adv.shape[0]
  f = normalize(adv)
  # Sum over ordered pairs of per-pair mean squared distance; each unordered pair counted twice.
  sq = jnp.mean(jnp.square(f[:, None] - f[None, :]), axis=(-2, -1))
  return jnp.sum(sq) / (m * (m - 1))
