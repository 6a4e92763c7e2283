"""The gradient side of a mask step as optax ``GradientTransformation``s, chained before the signed step.

A step of :mod:`opomjax.core.ascent` maps the identity's mean gradient ``g`` (the mask's shape) to the change of
the mask: ``delta <- clip(delta + u, -eps, eps)`` with ``u = rule.update(g, state)``. The rules (each a pure
optax transformation; the mask is maximising, so ``u`` is added, not subtracted):

* :func:`variance_tuning`: VMI's variance term (Wang & He, "Enhancing the Transferability of Adversarial
  Attacks through Variance Tuning", CVPR 2021): the gradient plus the previous step's gap between the mean
  gradient in a neighbourhood of the mask and the gradient at the mask;
* :func:`translation_invariant`: TI's smoothing of the gradient with a Gaussian kernel (Dong et al., "Evading
  Defenses to Transferable Adversarial Examples by Translation-Invariant Attacks", CVPR 2019);
* :func:`l1_momentum`: the momentum of Eq. 14 (Dong et al., "Boosting Adversarial Attacks with Momentum",
  CVPR 2018): the gradient over its L1 norm, accumulated with decay ``mu`` (``optax.trace``);
* :func:`signed_step`: ``step_size * sign(u)`` (Alg. 1).

:func:`mask_rule` chains them in that order from the step's hyper-parameters; with none of VMI, TI and momentum
it is the plain signed step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def l1_normalise() -> optax.GradientTransformation:
  """``g / max(|g|_1, tiny)``: the normalisation inside Eq. 14 (the sum runs over every entry of each leaf)."""

  def update(updates, state, params=None):
    del params

    def one(g):
      l1 = jnp.sum(jnp.abs(g))
      return g / jnp.maximum(l1, jnp.finfo(l1.dtype).tiny)

    return jax.tree.map(one, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def l1_momentum(decay: float) -> optax.GradientTransformation:
  """Momentum of Eq. 14: :math:`g_{t+1} = \\mu\\, g_t + \\nabla / \\lVert \\nabla \\rVert_1` (``decay = mu``)."""
  return optax.chain(l1_normalise(), optax.trace(decay=decay))


def signed_step(step_size: float) -> optax.GradientTransformation:
  """``step_size * sign(u)``: the signed step of Alg. 1 (``optax.scale_by_sign`` then ``optax.scale``)."""
  return optax.chain(optax.scale_by_sign(), optax.scale(step_size))


def gaussian_kernel(width: int) -> np.ndarray:
  """TI's ``width x width`` kernel: the outer product of a Gaussian sampled at ``width`` points evenly spread
  over ``[-3, 3]`` standard deviations (as the authors' code), normalised to sum to 1; ``width = 1`` is ``[[1]]``."""
  if width < 1 or width % 2 == 0:
    raise ValueError(f"the TI kernel width must be a positive odd integer, got {width}")
  taps = np.linspace(-3.0, 3.0, width) if width > 1 else np.zeros(1)
  line = np.exp(-0.5 * taps ** 2)
  kernel = np.outer(line, line)
  return (kernel / kernel.sum()).astype(np.float32)


def smooth(gradient: jax.Array, kernel: np.ndarray) -> jax.Array:
  """``gradient`` ``(..., H, W, C)`` convolved with ``kernel`` in each channel, zero padding ("same" size)."""
  kh, kw = kernel.shape
  lead, (h, w, c) = gradient.shape[:-3], gradient.shape[-3:]
  x = gradient.reshape((-1, h, w, c))
  filters = jnp.tile(jnp.asarray(kernel)[:, :, None, None], (1, 1, 1, c))  # HWIO, one filter per channel
  out = jax.lax.conv_general_dilated(x, filters, (1, 1), [(kh // 2, kh // 2), (kw // 2, kw // 2)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                     precision=jax.lax.Precision.HIGHEST)
  return out.reshape(lead + (h, w, c))


def translation_invariant(width: int) -> optax.GradientTransformation:
  """TI (Dong et al., CVPR 2019): the gradient convolved with :func:`gaussian_kernel` ``(width)``, which
  approximates the mean gradient over small translations of the image; ``width = 1`` changes nothing."""
  kernel = gaussian_kernel(width)
  if width == 1:
    return optax.identity()
  return optax.stateless(lambda updates, params=None: jax.tree.map(lambda g: smooth(g, kernel), updates))


class VarianceState(NamedTuple):
  """VMI's variance ``v_t`` from the previous step (zeros before the first)."""

  variance: optax.Updates


def variance_tuning() -> optax.GradientTransformationExtraArgs:
  """VMI's variance term (Wang & He, CVPR 2021, Alg. 1), before the momentum's normalisation:

  .. math:: u_t = \\hat g_t + v_{t-1}, \\qquad
     v_t = \\frac{1}{N} \\sum_{i=1}^{N} \\nabla J(x_t + r_i) - \\hat g_t, \\quad r_i \\sim
     \\mathcal{U}(-\\beta\\epsilon, \\beta\\epsilon)

  The step computes the neighbourhood's mean gradient and passes it as the extra argument
  ``neighbour_gradient``; without it (zero samples) ``v`` stays zero and the rule is the identity, so VMI with
  zero samples is plain momentum (MI).
  """

  def init(params):
    return VarianceState(jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None, *, neighbour_gradient=None, **extra_args):
    del params, extra_args
    tuned = jax.tree.map(jnp.add, updates, state.variance)
    if neighbour_gradient is None:
      return tuned, state
    return tuned, VarianceState(jax.tree.map(jnp.subtract, neighbour_gradient, updates))

  return optax.GradientTransformationExtraArgs(init, update)


def mask_rule(step_size: float, momentum: float | None = None, ti_width: int = 1,
              vmi: bool = False) -> optax.GradientTransformationExtraArgs:
  """The gradient side of one mask step: ``[VMI] -> [TI] -> [momentum, Eq. 14] -> signed step``.

  Args:
    step_size: ``alpha`` of Alg. 1.
    momentum: decay of Eq. 14, or None: the signed step then follows the (tuned, smoothed) gradient itself.
    ti_width: width of TI's kernel (1: no smoothing).
    vmi: add VMI's variance term (the step passes ``neighbour_gradient``).

  Returns:
    The chained transformation; ``update(g, state, neighbour_gradient=...)`` gives the change of the mask.
  """
  parts = []
  if vmi:
    parts.append(variance_tuning())
  if ti_width != 1:
    parts.append(translation_invariant(ti_width))
  if momentum is not None:
    parts.append(l1_momentum(momentum))
  parts.append(signed_step(step_size))
  return optax.chain(*parts)
