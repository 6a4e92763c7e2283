"""Person-specific universal masks by signed-gradient ascent (Alg. 1-2), with momentum and DFANet.

One step for one identity (:func:`ascent_step`), for masked images :math:`\\hat x_i = \\mathrm{clip}(x_i +
\\delta, 0, 255)`:

.. math::

   \\bar g = \\frac{1}{n} \\sum_{i=1}^{n} \\nabla_{\\hat x_i} J(\\hat x_1, .., \\hat x_n), \\qquad
   \\delta \\leftarrow \\mathrm{clip}(\\delta + \\alpha\\, \\mathrm{sign}(\\bar g), -\\epsilon, \\epsilon)

with momentum (Eq. 14) :math:`g \\leftarrow \\mu g + \\bar g / \\lVert \\bar g \\rVert_1` and the sign taken of
``g``; with DFANet (Eq. 15) the network applies dropout from a fresh PRNG key at every step. The gradient side
(momentum, and the transfer rules TI and VMI) is an optax chain (:mod:`opomjax.core.update_rules`); the input
side (EOT channels, DI, SI, SSA: :mod:`opomjax.core.transfer`) transforms the masked images inside the objective
with fresh keys; the mask can be a coarse grid of cells, upsampled (``mask_cell``), for smoother masks.
:func:`identity_mask` runs the steps for one identity as one ``lax.scan`` (the reference loop);
:func:`generate_masks` validates the input, draws the initial masks, computes the clean features once
(:func:`identities_clean`) and runs the steps from Python in short unrolled pieces (:func:`identity_segment`,
:func:`identities_segment` vmapped over identities, :func:`run_in_pieces`), one compiled program per piece
length: on XLA:CPU a step inside a compiled ``while`` loop costs ~3x the same step compiled alone.

Differences from the official PyTorch code (``attack/privacy.py``), chosen deliberately:

* The mask is the optimisation variable: ``delta + alpha * sign(g)`` clipped to ``[-eps, eps]``. The official
  code instead sets the mask to the *mean over images* of the clipped per-image perturbations
  ``clip(x_i + delta, 0, 255) - x_i`` plus the step, so pixels saturated in some images shrink the mask. Here
  the saturation only affects the masked images, as in the paper's Alg. 1.
* Random start: one ``delta_0 ~ U(-eps, eps)`` per identity from ``key``; the official code draws independent
  noise per *image* (``torch.manual_seed(0)``) and averages it into the mask after the first step.
* Momentum: the average gradient over the identity's images is normalised by its L1 norm and accumulated with
  decay ``momentum`` (Eq. 14). The official ``DFANet_MFIM`` accumulates each image's gradient separately
  (decay 1, normaliser the mean absolute gradient over batch, channel and rows) and averages the per-image signs.
* DFANet: the clean features are computed once, without dropout (``dfanet_clean_once``, the default); the
  official code recomputes them at every step under that step's dropout (``dfanet_clean_once=False``, what the
  ``_mdfa`` configs pin). Without DFANet they are computed once either way.
* Warm start of OPOM-ConvexHull: the first ``warmup_center_steps`` steps use the class-centre objective
  (official ``nter``; its scripts pass ``--nter 5``, the default of this module).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from opomjax.core import ensemble
from opomjax.core import hulls
from opomjax.core import objectives
from opomjax.core import parallel as parallel_lib
from opomjax.core import transfer
from opomjax.core import update_rules

METHODS = ("fi-uap", "fi-uap+", "fi-uap-all", "opom-affine", "opom-center", "opom-convex", "gd-uap")

#: Official ``--nter`` of the OPOM-ConvexHull scripts: class-centre steps before the convex hull.
OFFICIAL_WARMUP_CENTER_STEPS = 5

#: Largest ``epsilon`` (pixel units of [0, 255]) accepted without ``allow_large_epsilon=True``: four times the
#: paper's 8; beyond it a mask visibly destroys the face.
MAX_EPSILON = 32.0

#: ``fold_in`` constant that separates the input-side draws of a step (EOT, DI, SSA) from its dropout keys.
EOT_KEY_STREAM = 0x454F54

#: ``fold_in`` constant of VMI's neighbourhood draws.
VMI_KEY_STREAM = 0x564D49

EmbedFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class AscentConfig:
  """Static hyper-parameters of the ascent (hashable: a jit cache key).

  Attributes:
    method: one of :data:`METHODS`.
    epsilon: L-inf budget of the mask, in pixel units of [0, 255].
    step_size: ``alpha``, the change of every pixel per step.
    steps: number of steps.
    momentum: decay ``mu`` of Eq. 14, or None for plain signed gradients.
    warmup_center_steps: class-centre steps before the hull objective (``"opom-convex"`` only).
    lower: ``L`` of the reduced hull (``"opom-convex"``).
    upper: ``U`` of the reduced hull (``"opom-convex"``).
    solver: QP solver for the hull coefficients.
    dfanet: whether the network is called with a fresh dropout key at every step (Eq. 15).
    dfanet_clean_once: under DFANet, take the clean features once, without dropout (the default: one forward
      pass less per step, the same protection within noise, docs/performance.md), instead of again under a
      fresh dropout key at every step (False: as the official code does). No effect without DFANet.
    eot: channels of :mod:`opomjax.core.transfer` to average the gradient over (expectation over
      transformation); empty: none.
    eot_samples: random channel draws per step under ``eot``.
    eot_rounding: the 8-bit rounding's gradient under ``eot``: ``"ste"`` or ``"cubic"``.
    member_weights: for an ensemble of surrogates, their weights (normalised to sum to 1; see
      :func:`opomjax.core.ensemble.combine_member_gradients`); empty for one surrogate.
    ti_width: TI's kernel width (:func:`opomjax.core.update_rules.translation_invariant`); 1: off.
    vmi_samples: VMI's neighbourhood gradients per step (:func:`opomjax.core.update_rules.variance_tuning`);
      0: off.
    vmi_beta: VMI's neighbourhood radius, in units of ``epsilon``.
    di_probability: DI's probability of transforming a draw (:func:`opomjax.core.transfer.input_diversity`); 0: off.
    photometric_probability: the probability that a draw changes the masked images' contrast and brightness
      (:func:`opomjax.core.transfer.photometric_diversity`); 0: off.
    si_copies: SI's scale copies (:func:`opomjax.core.transfer.scale_copies`); 1: off.
    ssa_rho: SSA's spectrum rescaling range (:func:`opomjax.core.transfer.spectrum_simulation`, noise
      ``sigma = epsilon``); 0: off.
    input_samples: random draws per step of DI and SSA when ``eot`` is off (under ``eot``, ``eot_samples``
      draws, each through a channel and then SSA and DI).
    mask_cell: the mask is a grid of ``mask_cell x mask_cell`` cells upsampled bilinearly to the image (a
      low-frequency mask); 1: every pixel free.
    mid_feature_weight: weight of the intermediate-feature term beside each surrogate's objective
      (:func:`opomjax.core.objectives.mid_feature_distortion`; the objective has weight 1, each gradient is
      normalised first, :func:`member_gradient`); 0: off.
    mid_feature_depth: which recorded activation that term reads, as a relative depth in ``[0, 1]``
      (:func:`opomjax.core.objectives.mid_layer_index`).
    mid_feature_guided: the term is the intermediate-level attack's projection onto the change a guide mask
      made (:func:`opomjax.core.objectives.mid_feature_projection`; the guide's activations come with the
      clean features) instead of the distortion.
    fill_budget: after the last step, every value of the mask moved to the budget in its own direction
      (:func:`opomjax.core.transfer.fill_budget`).
    start_scale: the random start's range as a fraction of ``epsilon``: ``delta_0 ~ U(-s eps, s eps)``; 0: the
      steps start from a zero mask.
  """

  method: str = "opom-convex"
  epsilon: float = 8.0
  step_size: float = 1.0
  steps: int = 16
  momentum: float | None = None
  warmup_center_steps: int = OFFICIAL_WARMUP_CENTER_STEPS
  lower: float = 0.0
  upper: float = 1.0
  solver: str = "osqp"
  dfanet: bool = False
  dfanet_clean_once: bool = True
  eot: tuple[str, ...] = ()
  eot_samples: int = 4
  eot_rounding: str = "ste"
  member_weights: tuple[float, ...] = ()
  ti_width: int = 1
  vmi_samples: int = 0
  vmi_beta: float = 1.5
  di_probability: float = 0.0
  photometric_probability: float = 0.0
  si_copies: int = 1
  ssa_rho: float = 0.0
  input_samples: int = 1
  mask_cell: int = 1
  mid_feature_weight: float = 0.0
  mid_feature_depth: float = 0.5
  mid_feature_guided: bool = False
  fill_budget: bool = False
  start_scale: float = 1.0


class AscentState(NamedTuple):
  """What the steps carry for one identity: the mask (under ``mask_cell > 1`` its coarse grid) and the state of
  the gradient rule (:func:`step_rule`: the momentum accumulator, VMI's variance)."""

  delta: jax.Array
  rule_state: Any


def step_rule(cfg: AscentConfig) -> update_rules.optax.GradientTransformationExtraArgs:
  """The gradient side of a step: :func:`opomjax.core.update_rules.mask_rule` of ``cfg``."""
  return update_rules.mask_rule(cfg.step_size, cfg.momentum, cfg.ti_width, cfg.vmi_samples > 0)


def initial_state(cfg: AscentConfig, delta: jax.Array) -> AscentState:
  """The state before the first step from the mask (or grid) ``delta``: zero momentum and variance."""
  return AscentState(delta, step_rule(cfg).init(delta))


def grid_shape(cfg: AscentConfig, height: int, width: int) -> tuple[int, int, int]:
  """Shape of the optimised variable: the mask ``(H, W, 3)``, or its grid of cells ``(H / c, W / c, 3)``."""
  return height // cfg.mask_cell, width // cfg.mask_cell, 3


def mask_from_grid(cfg: AscentConfig, grid: jax.Array, height: int, width: int) -> jax.Array:
  """The mask ``(..., H, W, 3)`` of the optimised variable: itself, or its grid upsampled bilinearly (a convex
  combination of cells, so the mask keeps the grid's bound ``epsilon``)."""
  if cfg.mask_cell == 1:
    return grid
  return jax.image.resize(grid, grid.shape[:-3] + (height, width, 3), method="linear", antialias=False)


def random_start(cfg: AscentConfig, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The masks' (grids') start ``delta_0 ~ U(-s eps, s eps)``, ``s = cfg.start_scale`` (``s = 1``, the
  default: the whole box; ``s = 0``: zeros)."""
  init = jax.random.uniform(key, shape, jnp.float32, -cfg.epsilon, cfg.epsilon)
  return init if cfg.start_scale == 1.0 else init * jnp.float32(cfg.start_scale)


def final_mask(cfg: AscentConfig, grid: jax.Array, height: int, width: int) -> jax.Array:
  """The mask the steps leave (:func:`mask_from_grid`), under ``fill_budget`` moved to the budget."""
  mask = mask_from_grid(cfg, grid, height, width)
  return transfer.fill_budget(mask, cfg.epsilon) if cfg.fill_budget else mask


def grid_from_mask(cfg: AscentConfig, mask: jax.Array) -> jax.Array:
  """The grid closest in spirit to a given mask ``(..., H, W, 3)``: its cell averages (itself for
  ``mask_cell = 1``), used to start from a user's ``init``."""
  if cfg.mask_cell == 1:
    return mask
  *lead, h, w, c = mask.shape
  return mask.reshape(*lead, h // cfg.mask_cell, cfg.mask_cell, w // cfg.mask_cell, cfg.mask_cell, c).mean(
      axis=(-4, -2))


class Network(NamedTuple):
  """The surrogate seen by the ascent: ``embed(images, key) -> (b, d)``, ``activations(images, key)``.

  ``key`` is None when DFANet is off.
  """

  embed: Callable[[jax.Array, jax.Array | None], jax.Array]
  activations: Callable[[jax.Array, jax.Array | None], Sequence[jax.Array]] | None


#: One surrogate, or an ensemble of them (one :class:`Network` per member, each with its own features).
Surrogate = Network | tuple[Network, ...]


def members(net: Surrogate) -> tuple[Network, ...]:
  """The networks of ``net``: itself alone, or the ensemble's members."""
  return (net,) if isinstance(net, Network) else tuple(net)


def uses_mid_features(cfg: AscentConfig) -> bool:
  """Whether each surrogate's objective has the intermediate-feature term (it needs their activations)."""
  return cfg.mid_feature_weight > 0


def member_clean(cfg: AscentConfig | None, member: Network, images: jax.Array, key: jax.Array | None):
  """One surrogate's clean features ``(n, d)`` (no gradient); with the intermediate-feature term of ``cfg`` the
  pair ``(features, activation)``, the activation at ``cfg.mid_feature_depth``."""
  features = jax.lax.stop_gradient(member.embed(images, key))
  if cfg is None or not uses_mid_features(cfg):
    return features
  return features, jax.lax.stop_gradient(mid_activation(cfg, member, images, key))


def mid_activation(cfg: AscentConfig, member: Network, images: jax.Array, key: jax.Array | None) -> jax.Array:
  """The recorded activation of ``member`` at relative depth ``cfg.mid_feature_depth``."""
  acts = member.activations(images, key)
  return acts[objectives.mid_layer_index(len(acts), cfg.mid_feature_depth)]


def clean_features(net: Surrogate, images: jax.Array, key: jax.Array | None, cfg: AscentConfig | None = None):
  """Clean features ``(n, d)`` of ``images`` (no gradient); for an ensemble a tuple, one ``(n, d_m)`` per member
  (under DFANet each member draws its dropout from its own key, split from ``key``). With the
  intermediate-feature term of ``cfg`` each member's entry is the pair of :func:`member_clean`."""
  nets = members(net)
  if isinstance(net, Network):
    return member_clean(cfg, net, images, key)
  keys = [None] * len(nets) if key is None else list(jax.random.split(key, len(nets)))
  return tuple(member_clean(cfg, m, images, k) for m, k in zip(nets, keys))


def feature_objective(cfg: AscentConfig, adv: jax.Array, clean: jax.Array, t: jax.Array) -> jax.Array:
  """The objective of ``cfg.method`` on features: ``adv``, ``clean`` ``(n, d)``, step index ``t``."""
  method = cfg.method
  if method in ("fi-uap", "fi-uap-all"):
    return objectives.fi_uap(adv, clean)
  if method == "fi-uap+":
    return objectives.fi_uap_plus(adv, clean)
  if method == "opom-affine":
    return objectives.opom_affine_hull(adv, clean)
  if method == "opom-center":
    return objectives.opom_class_center(adv, clean)
  if method == "opom-convex":
    hull = functools.partial(objectives.opom_reduced_hull, lower=cfg.lower, upper=cfg.upper, solver=cfg.solver)
    if cfg.warmup_center_steps <= 0:
      return hull(adv, clean)
    if cfg.warmup_center_steps >= cfg.steps:
      return objectives.opom_class_center(adv, clean)
    return jax.lax.cond(t < cfg.warmup_center_steps, objectives.opom_class_center, hull, adv, clean)
  raise ValueError(f"method {method!r} has no feature objective")


def image_objective(cfg: AscentConfig, net: Network, masked: jax.Array, clean: jax.Array | None,
                    t: jax.Array, key: jax.Array | None) -> jax.Array:
  """J of the masked images ``(n, H, W, 3)`` of one identity (the function whose gradient is taken); ``clean``
  the features of :func:`clean_features` (without the intermediate-feature term)."""
  if cfg.method == "gd-uap":
    return objectives.gd_uap(net.activations(masked, key))
  return feature_objective(cfg, net.embed(masked, key), clean, t)


def ascent_step(cfg: AscentConfig, net: Surrogate, images: jax.Array, clean: Any,
                key: jax.Array, state: AscentState, t: jax.Array) -> tuple[AscentState, jax.Array]:
  """One step of Alg. 1 (with Eq. 14 momentum and Eq. 15 dropout when configured) for one identity.

  Args:
    cfg: hyper-parameters.
    net: the surrogate, or an ensemble of them (:data:`Surrogate`): each member's objective is taken on its
      own features, their gradients joined by :func:`opomjax.core.ensemble.combine_member_gradients`.
    images: ``(n, H, W, 3)`` clean images in [0, 255].
    clean: ``(n, d)`` clean features, for an ensemble a tuple of them (:func:`clean_features`; unused for
      GD-UAP; under DFANet recomputed here with dropout).
    key: the identity's PRNG key; step ``t`` uses ``fold_in(key, t)``.
    state: current mask ``(H, W, 3)`` (under ``mask_cell > 1`` its grid, :func:`grid_shape`) and the state of
      the gradient rule (:func:`initial_state`).
    t: step index (int32 scalar).

  Returns:
    The new state and ``J`` of the masked images before the update (for an ensemble, the weighted sum of the
    members' objectives).
  """
  nets = members(net)
  if cfg.dfanet:
    adv_key, clean_key = jax.random.split(jax.random.fold_in(key, t))
    if cfg.method != "gd-uap" and not cfg.dfanet_clean_once:
      clean = clean_features(net, images, clean_key, cfg)
    adv_keys = (adv_key,) if len(nets) == 1 else tuple(jax.random.split(adv_key, len(nets)))
  else:
    adv_keys = (None,) * len(nets)
  if isinstance(net, Network):
    cleans = (clean,)
  else:
    cleans = (None,) * len(nets) if clean is None else clean
  height, width = images.shape[-3], images.shape[-2]
  mask = mask_from_grid(cfg, state.delta, height, width)
  # The input-side draws (EOT, SSA, DI: opomjax.core.transfer) have their own key stream; every member sees the
  # same draws.
  input_key = jax.random.fold_in(jax.random.fold_in(key, t), EOT_KEY_STREAM) if uses_input_draws(cfg) else None
  value, grad = step_gradient(cfg, nets, cleans, adv_keys, t, input_key, jnp.clip(images + mask, 0.0, 255.0))
  to_grid = lambda g: g if cfg.mask_cell == 1 else jax.vjp(
      lambda d: mask_from_grid(cfg, d, height, width), state.delta)[1](g)[0]
  mean_grad = to_grid(jnp.mean(grad, axis=0))
  extra = {}
  if cfg.vmi_samples > 0:  # VMI: the mean gradient over masks drawn around the current one
    vmi_key = jax.random.fold_in(jax.random.fold_in(key, t), VMI_KEY_STREAM)
    radius = cfg.vmi_beta * cfg.epsilon
    neighbour = jnp.zeros_like(state.delta)
    for i in range(cfg.vmi_samples):  # unrolled, as every per-step loop on XLA:CPU
      shift_key, draw_key = jax.random.split(jax.random.fold_in(vmi_key, i))
      near = mask_from_grid(cfg, state.delta + jax.random.uniform(shift_key, state.delta.shape, state.delta.dtype,
                                                                   -radius, radius), height, width)
      _, near_grad = step_gradient(cfg, nets, cleans, adv_keys, t, None if input_key is None else draw_key,
                                   jnp.clip(images + near, 0.0, 255.0))
      neighbour = neighbour + to_grid(jnp.mean(near_grad, axis=0))
    extra["neighbour_gradient"] = neighbour / cfg.vmi_samples
  updates, rule_state = step_rule(cfg).update(mean_grad, state.rule_state, **extra)
  delta = jnp.clip(state.delta + updates, -cfg.epsilon, cfg.epsilon)
  return AscentState(delta, rule_state), value


def uses_input_draws(cfg: AscentConfig) -> bool:
  """Whether a step draws random input transformations (EOT channels, SSA, DI)."""
  return bool(cfg.eot) or cfg.ssa_rho > 0 or cfg.di_probability > 0 or cfg.photometric_probability > 0


def input_transform(cfg: AscentConfig, key: jax.Array, images: jax.Array) -> jax.Array:
  """One random draw of the input side for ``images`` ``(n, H, W, 3)``: the EOT channel (from ``key`` itself),
  then SSA, the photometric change, then DI (from keys folded out of ``key``); what is off is skipped."""
  x = images
  if cfg.eot:
    x = transfer.random_channel(key, x, cfg.eot, rounding=cfg.eot_rounding)
  if cfg.ssa_rho > 0:
    x = transfer.spectrum_simulation(jax.random.fold_in(key, 1), x, cfg.epsilon, cfg.ssa_rho)
  if cfg.photometric_probability > 0:
    x = transfer.photometric_diversity(jax.random.fold_in(key, 3), x, cfg.photometric_probability)
  if cfg.di_probability > 0:
    x = transfer.input_diversity(jax.random.fold_in(key, 2), x, cfg.di_probability)
  return x


def member_gradient(cfg: AscentConfig, member: Network, clean: jax.Array | None, t: jax.Array,
                    adv_key: jax.Array | None, input_key: jax.Array | None,
                    masked: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``J`` of one surrogate on the masked images ``(n, H, W, 3)`` and its gradient with respect to them: averaged
  over SI's scale copies and over the step's random input draws (:func:`input_transform`) when they are on.

  With the intermediate-feature term (``clean`` is then the pair of :func:`member_clean`), the method's
  objective and the distortion :func:`opomjax.core.objectives.mid_feature_distortion` are differentiated
  apart, on the same input draws, and joined as an ensemble's members are
  (:func:`opomjax.core.ensemble.combine_member_gradients`, weights ``1`` and ``mid_feature_weight``): each
  gradient divided by its mean absolute value first, since the objectives (mean squared distances over ``n d``
  entries) and the relative distortion differ in scale by orders of magnitude.
  """
  if uses_mid_features(cfg):
    clean_features_, clean_activation, *guide = clean
    if cfg.mid_feature_guided:  # the guide mask's activations follow (generate_masks' mid_feature_guide)
      term = lambda x: objectives.mid_feature_projection(mid_activation(cfg, member, x, adv_key),
                                                         clean_activation, guide[0])
    else:
      term = lambda x: objectives.mid_feature_distortion(mid_activation(cfg, member, x, adv_key),
                                                         clean_activation)
    terms = [averaged_gradient(cfg, lambda x: image_objective(cfg, member, x, clean_features_, t, adv_key),
                               input_key, masked),
             averaged_gradient(cfg, term, input_key, masked)]
    return ensemble.combine_member_gradients([v for v, _ in terms], [g for _, g in terms],
                                             (1.0, cfg.mid_feature_weight))
  return averaged_gradient(cfg, lambda x: image_objective(cfg, member, x, clean, t, adv_key), input_key, masked)


def averaged_gradient(cfg: AscentConfig, objective: Callable[[jax.Array], jax.Array], input_key: jax.Array | None,
                      masked: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Value and gradient of ``objective`` at the masked images, averaged over SI's scale copies and the step's
  random input draws (:func:`input_transform`, from ``input_key``) when they are on."""
  if cfg.si_copies > 1:
    plain = objective
    objective = lambda x: jnp.mean(jnp.stack([plain(c) for c in transfer.scale_copies(x, cfg.si_copies)]))
  if input_key is None:
    return jax.value_and_grad(objective)(masked)
  samples = cfg.eot_samples if cfg.eot else cfg.input_samples
  return transfer.expected_gradient(objective, masked, input_key, samples,
                                    functools.partial(input_transform, cfg))


def step_gradient(cfg: AscentConfig, nets: Sequence[Network], cleans: Sequence[Any], adv_keys: Sequence[Any],
                  t: jax.Array, input_key: jax.Array | None, masked: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``J`` and its gradient ``(n, H, W, 3)`` on the masked images: one member's at a time, an ensemble's joined
  by :func:`opomjax.core.ensemble.combine_member_gradients`."""
  values, grads = [], []
  for member, member_clean, adv_key in zip(nets, cleans, adv_keys):
    value, grad = member_gradient(cfg, member, member_clean, t, adv_key, input_key, masked)
    values.append(value)
    grads.append(grad)
  if len(nets) == 1:
    return values[0], grads[0]
  return ensemble.combine_member_gradients(values, grads, cfg.member_weights)


def identity_mask(cfg: AscentConfig, net: Network, images: jax.Array, delta0: jax.Array,
                  key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """All steps for one identity as one ``lax.scan``.

  Args:
    cfg: hyper-parameters.
    net: the surrogate.
    images: ``(n, H, W, 3)`` in [0, 255].
    delta0: ``(H, W, 3)`` initial mask (under ``mask_cell > 1`` its grid).
    key: the identity's PRNG key (dropout keys under DFANet).

  Returns:
    The mask ``(H, W, 3)`` and the objective before each step ``(steps,)``.
  """
  clean = clean_features(net, images, None, cfg) if needs_clean_features(cfg) else None
  step = functools.partial(ascent_step, cfg, net, images, clean, key)
  state, trace = jax.lax.scan(step, initial_state(cfg, delta0), jnp.arange(cfg.steps, dtype=jnp.int32))
  return final_mask(cfg, state.delta, images.shape[-3], images.shape[-2]), trace


def identity_segment(cfg: AscentConfig, length: int, net: Network, images: jax.Array, clean: jax.Array | None,
                     state: AscentState, key: jax.Array, first_step: jax.Array) -> tuple[AscentState, jax.Array]:
  """Steps ``first_step .. first_step + length - 1`` for one identity: a piece of :func:`identity_mask`.

  The steps see the same step indices (hence the same dropout keys and warm-up switch) as in the single scan.
  The loop is unrolled (``length`` copies of the step, no ``while`` loop): on XLA:CPU a step inside a
  compiled ``while`` loop costs ~3x the same step compiled on its own (dlib ResNet, 10 images: 2.5 s against
  0.8 s, ``bench/bench_step_loop.py``), so :func:`generate_masks` runs short unrolled pieces from Python.

  Args:
    cfg: hyper-parameters.
    length: how many steps (static).
    net: the surrogate.
    images: ``(n, H, W, 3)`` in [0, 255].
    clean: ``(n, d)`` clean features (:func:`clean_features`), or None (GD-UAP, DFANet).
    state: the mask (or grid) and the rule state after ``first_step`` steps.
    key: the identity's PRNG key.
    first_step: index of the first step (int32 scalar).

  Returns:
    The state after the piece and the objective before each of its steps ``(length,)``.
  """
  values = []
  for i in range(length):  # a Python loop: even a one-trip lax.scan lowers to a while loop
    state, value = ascent_step(cfg, net, images, clean, key, state, first_step + i)
    values.append(value)
  return state, jnp.stack(values)


def needs_clean_features(cfg: AscentConfig) -> bool:
  """Whether the steps use clean features computed once (not GD-UAP; under DFANet only with
  ``dfanet_clean_once``, else the steps recompute them under dropout)."""
  return cfg.method != "gd-uap" and (not cfg.dfanet or cfg.dfanet_clean_once)


def make_network(embed_fn: EmbedFn | tuple[EmbedFn, ...], activations_fn: Any, params: Any,
                 dfanet: bool) -> Surrogate:
  """Adapt user callables to a :class:`Network` (``params`` first when given; a key only under DFANet).

  A tuple of ``embed_fn`` (an ensemble) gives a tuple of networks, member ``m`` built from ``embed_fn[m]``,
  ``activations_fn[m]`` (when a tuple is given) and ``params[m]`` (when ``params`` is not None).
  """
  if isinstance(embed_fn, tuple):
    count = len(embed_fn)
    acts = activations_fn if isinstance(activations_fn, tuple) else (None,) * count
    member_params = (None,) * count if params is None else params
    return tuple(make_network(f, a, p, dfanet) for f, a, p in zip(embed_fn, acts, member_params))

  def adapt(fn):
    if fn is None:
      return None

    def call(images, key):
      args = (images,) if params is None else (params, images)
      return fn(*args, key) if dfanet else fn(*args)

    return call

  return Network(adapt(embed_fn), adapt(activations_fn))


def identities_clean(cfg: AscentConfig, embed_fn: EmbedFn | tuple[EmbedFn, ...], activations_fn: Any,
                     params: Any, images: jax.Array) -> Any:
  """The per-device function of the clean features: ``(k, n, d)`` for ``images`` ``(k, n, H, W, 3)`` (for an
  ensemble a tuple, one ``(k, n, d_m)`` per member; with the intermediate-feature term, pairs with the clean
  activations, :func:`member_clean`)."""
  net = make_network(embed_fn, activations_fn, params, cfg.dfanet)
  return jax.vmap(lambda x: clean_features(net, x, None, cfg))(images)


def identities_segment(cfg: AscentConfig, length: int, embed_fn: EmbedFn, activations_fn: EmbedFn | None,
                       shared: tuple[Any, jax.Array],
                       batch: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """The per-device function of a piece of steps: :func:`identity_segment` vmapped over identities.

  Args:
    cfg: hyper-parameters.
    length: steps per piece (static).
    embed_fn: see :func:`generate_masks`.
    activations_fn: see :func:`generate_masks`.
    shared: ``(params, first_step)``, the same for every identity.
    batch: ``images (k, n, H, W, 3)``, ``clean (k, n, d)`` (ignored unless :func:`needs_clean_features`),
      ``delta (k, H, W, 3)`` (or grids), the rule states (leaves with a leading ``k``), ``keys (k, ...)``.

  Returns:
    ``delta``, the rule states after the piece and the objective traces ``(k, length)``.
  """
  params, first_step = shared
  net = make_network(embed_fn, activations_fn, params, cfg.dfanet)
  images, clean, delta, rule_state, keys = batch

  def one(images, clean, delta, rule_state, key):
    clean = clean if needs_clean_features(cfg) else None
    state, trace = identity_segment(cfg, length, net, images, clean, AscentState(delta, rule_state), key,
                                    first_step)
    return state.delta, state.rule_state, trace

  return jax.vmap(one)(images, clean, delta, rule_state, keys)


@functools.lru_cache(maxsize=8)
def _cached_runner(cfg: AscentConfig, embed_fn: EmbedFn, activations_fn: EmbedFn | None, parallel: str | None,
                   devices: tuple[jax.Device, ...] | None, segment: int | None = None):
  return _build_runner(cfg, embed_fn, activations_fn, parallel, devices, segment)


def _build_runner(cfg, embed_fn, activations_fn, parallel, devices, segment=None):
  if segment is None:
    fn = lambda params, images: identities_clean(cfg, embed_fn, activations_fn, params, images)
  else:
    fn = functools.partial(identities_segment, cfg, segment, embed_fn, activations_fn)
  return parallel_lib.distribute(fn, parallel, devices)


def _runner(cfg, embed_fn, activations_fn, parallel, devices, segment=None):
  """The jitted (and possibly sharded) per-device function; reused across calls with the same callables.

  ``segment=None``: the clean features (:func:`identities_clean`); otherwise pieces of ``segment`` steps
  (:func:`identities_segment`).
  """
  devices = None if devices is None else tuple(devices)
  try:
    hash((embed_fn, activations_fn))
  except TypeError:  # unhashable callables: compile afresh
    return _build_runner(cfg, embed_fn, activations_fn, parallel, devices, segment)
  return _cached_runner(cfg, embed_fn, activations_fn, parallel, devices, segment)


ProgressFn = Callable[[int, int], None]


def _progress_callback(progress: ProgressFn | bool, steps: int) -> tuple[ProgressFn, Callable[[], None]]:
  """``(report(done, total), close())`` for ``progress``: the user's callable, or a tqdm bar for True."""
  if progress is True:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    bar = tqdm(total=steps, desc="mask steps", unit="step")

    def report(done, total):
      del total
      bar.update(done - bar.n)

    return report, bar.close
  return progress, lambda: None


def run_in_pieces(runner_for: Callable[[int], Callable[..., Any]], params: Any, images: jax.Array,
                  clean: jax.Array, init: AscentState, keys: jax.Array, steps: int, length: int,
                  report: ProgressFn | None) -> tuple[jax.Array, jax.Array]:
  """All ``steps`` in pieces of ``length`` steps, reporting ``(done, steps)`` as each piece finishes.

  One piece is always queued behind the one running: piece ``i + 1`` is dispatched before piece ``i`` is waited
  for, so the Python work of a call (flattening the arguments, dispatch) overlaps the computation instead of
  adding to it (the compiled step has the FLOPs and bytes of the model's own forward + backward; for a small
  network the per-call work is a visible share of a step). The results are those of waiting for every piece:
  the same programs on the same inputs. Between pieces Python has control again, so a KeyboardInterrupt ends
  the run at the latest after the queued piece.

  Args:
    runner_for: ``length -> `` the distributed :func:`identities_segment` for pieces of that length.
    params: model parameters (or None).
    images: ``(k, n, H, W, 3)``.
    clean: ``(k, n, d)`` clean features (or a placeholder, see :func:`identities_segment`).
    init: the initial states of the ``k`` identities (:func:`initial_state` vmapped): masks (or grids) and rule
      states.
    keys: ``(k,)`` identity keys.
    steps: total number of steps.
    length: steps per piece; the last piece is shorter when ``length`` does not divide ``steps``.
    report: called as ``report(done, steps)`` after each piece, or None.

  Returns:
    Masks (or grids) ``(k, ...)`` and objective traces ``(k, steps)``.
  """
  delta, rule_state = init
  traces, done = [], 0
  queued = None  # (steps done after it, its masks) of the piece dispatched last, not yet waited for

  def wait_for(piece_done, masks):
    jax.block_until_ready(masks)
    if report is not None:
      report(piece_done, steps)

  while done < steps:
    piece = min(length, steps - done)
    delta, rule_state, trace = runner_for(piece)((params, jnp.int32(done)), (images, clean, delta, rule_state, keys))
    traces.append(trace)
    done += piece
    if queued is not None:
      wait_for(*queued)
    queued = (done, delta)
  if queued is not None:
    wait_for(*queued)
  return delta, jnp.concatenate(traces, axis=1)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _is_integer(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_number(value, name: str) -> float:
  """``float(value)`` for a real scalar (Python, numpy or jax), or a ValueError naming ``name``."""
  try:
    array = np.asarray(value)
  except Exception:  # pylint: disable=broad-except  (a tracer, an object without an array form)
    array = None
  if (array is None or array.ndim != 0 or isinstance(value, (bool, np.bool_))
      or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating))):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  return float(array)


def validate_config(cfg: AscentConfig, n_images: int, *, allow_large_epsilon: bool = False) -> None:
  """ValueError naming the bad argument when ``cfg`` cannot run on identities of ``n_images`` images.

  Pure Python on the static hyper-parameters: nothing is traced, compiled or run.

  Args:
    cfg: hyper-parameters.
    n_images: images per identity (all images, for ``"fi-uap-all"``).
    allow_large_epsilon: accept ``epsilon`` above :data:`MAX_EPSILON`.
  """
  if cfg.method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
  if not np.isfinite(cfg.epsilon) or cfg.epsilon <= 0:
    raise ValueError(f"epsilon must be a positive finite number (pixel units of [0, 255]), got {cfg.epsilon}")
  if cfg.epsilon > MAX_EPSILON and not allow_large_epsilon:
    raise ValueError(f"epsilon={cfg.epsilon:g} exceeds {MAX_EPSILON:g} (pixel units of [0, 255]; the paper uses "
                     "8), a mask that visibly destroys the face; pass allow_large_epsilon=True if that is meant")
  if not np.isfinite(cfg.step_size) or cfg.step_size <= 0:
    raise ValueError(f"step_size must be a positive finite number, got {cfg.step_size}")
  if not _is_integer(cfg.steps) or cfg.steps < 1:
    raise ValueError(f"steps must be a positive integer, got {cfg.steps!r}")
  if cfg.momentum is not None and (not np.isfinite(cfg.momentum) or cfg.momentum < 0):
    raise ValueError(f"momentum must be None or a non-negative finite number, got {cfg.momentum}")
  if not _is_integer(cfg.warmup_center_steps) or cfg.warmup_center_steps < 0:
    raise ValueError(f"warmup_center_steps must be a non-negative integer, got {cfg.warmup_center_steps!r}")
  if cfg.solver not in hulls.SOLVERS:
    raise ValueError(f"solver must be one of {hulls.SOLVERS}, got {cfg.solver!r}")
  if not isinstance(cfg.dfanet, (bool, np.bool_)):
    raise ValueError(f"dfanet must be True or False, got {cfg.dfanet!r}")
  if not isinstance(cfg.dfanet_clean_once, (bool, np.bool_)):
    raise ValueError(f"dfanet_clean_once must be True or False, got {cfg.dfanet_clean_once!r}")
  if cfg.eot:
    transfer.check_channels(cfg.eot)
    if not _is_integer(cfg.eot_samples) or cfg.eot_samples < 1:
      raise ValueError(f"eot_samples must be a positive integer, got {cfg.eot_samples!r}")
    if cfg.eot_rounding not in transfer.ROUNDINGS:
      raise ValueError(f"eot_rounding must be one of {transfer.ROUNDINGS}, got {cfg.eot_rounding!r}")
  validate_transfer_options(cfg)
  if cfg.method == "gd-uap" and cfg.mid_feature_weight > 0:
    raise ValueError("mid_feature_weight does not apply to gd-uap (its objective is already on the activations)")
  if cfg.method == "opom-convex":
    if np.isnan(cfg.lower) or np.isnan(cfg.upper):
      raise ValueError(f"lower and upper must be numbers, got lower={cfg.lower}, upper={cfg.upper}")
    if not cfg.lower <= cfg.upper:
      raise ValueError(f"lower must not exceed upper, got lower={cfg.lower}, upper={cfg.upper}")
    if not cfg.lower <= 1.0 / n_images <= cfg.upper:
      raise ValueError(f"the reduced hull is empty: need lower <= 1/n <= upper for n={n_images} images per "
                       f"identity, got lower={cfg.lower}, upper={cfg.upper}")


def validate_transfer_options(cfg: AscentConfig) -> None:
  """ValueError naming the bad transfer option of ``cfg`` (TI, VMI, DI, SI, SSA, the low-frequency mask)."""
  if not _is_integer(cfg.ti_width) or cfg.ti_width < 1 or cfg.ti_width % 2 == 0:
    raise ValueError(f"ti_width must be a positive odd integer (1: no smoothing), got {cfg.ti_width!r}")
  if not _is_integer(cfg.vmi_samples) or cfg.vmi_samples < 0:
    raise ValueError(f"vmi_samples must be a non-negative integer (0: no VMI), got {cfg.vmi_samples!r}")
  if not np.isfinite(cfg.vmi_beta) or cfg.vmi_beta <= 0:
    raise ValueError(f"vmi_beta must be a positive finite number, got {cfg.vmi_beta}")
  if not 0.0 <= cfg.di_probability <= 1.0:
    raise ValueError(f"di_probability must lie in [0, 1], got {cfg.di_probability}")
  if not 0.0 <= cfg.photometric_probability <= 1.0:
    raise ValueError(f"photometric_probability must lie in [0, 1] (0: off), got {cfg.photometric_probability}")
  if not _is_integer(cfg.si_copies) or cfg.si_copies < 1:
    raise ValueError(f"si_copies must be a positive integer (1: no SI), got {cfg.si_copies!r}")
  if not 0.0 <= cfg.ssa_rho <= 1.0:
    raise ValueError(f"ssa_rho must lie in [0, 1] (0: no SSA), got {cfg.ssa_rho}")
  if not _is_integer(cfg.input_samples) or cfg.input_samples < 1:
    raise ValueError(f"input_samples must be a positive integer, got {cfg.input_samples!r}")
  if not _is_integer(cfg.mask_cell) or cfg.mask_cell < 1:
    raise ValueError(f"mask_cell must be a positive integer (1: every pixel free), got {cfg.mask_cell!r}")
  if not isinstance(cfg.fill_budget, (bool, np.bool_)):
    raise ValueError(f"fill_budget must be True or False, got {cfg.fill_budget!r}")
  if not 0.0 <= cfg.start_scale <= 1.0:
    raise ValueError(f"start_scale must lie in [0, 1] (the random start's range as a fraction of epsilon; 0: a "
                     f"zero start), got {cfg.start_scale}")
  if not np.isfinite(cfg.mid_feature_weight) or cfg.mid_feature_weight < 0:
    raise ValueError(f"mid_feature_weight must be a non-negative finite number (0: off), got "
                     f"{cfg.mid_feature_weight}")
  if not 0.0 <= cfg.mid_feature_depth <= 1.0:
    raise ValueError(f"mid_feature_depth must lie in [0, 1] (0: the first recorded activation, 1: the last), "
                     f"got {cfg.mid_feature_depth}")


def _describe_bad_identities(bad_per_identity: np.ndarray) -> str:
  """``"identity 3 (5 values), identity 7 (1 value)"``: where the non-finite values are, first few only."""
  where = np.flatnonzero(bad_per_identity)
  counts = [int(bad_per_identity[i]) for i in where[:5]]
  shown = ", ".join(f"identity {i} ({c} value{'' if c == 1 else 's'})" for i, c in zip(where, counts))
  return shown + (f" and {len(where) - 5} more identities" if len(where) > 5 else "")


def _non_finite_per_identity(x) -> np.ndarray | None:
  """Count of NaN/Inf entries per leading index of ``x`` (numpy on host, one reduction on device); None if none."""
  if isinstance(x, np.ndarray):
    finite = np.isfinite(x)
    if finite.all():
      return None
    return np.count_nonzero(~finite.reshape(x.shape[0], -1), axis=1)
  if bool(jnp.isfinite(x).all()):
    return None
  return np.asarray(jnp.sum(~jnp.isfinite(x).reshape(x.shape[0], -1), axis=1))


def validate_image_shape(images) -> tuple[int, ...]:
  """ValueError naming ``images`` unless it is a non-empty ``(k, n, H, W, 3)`` floating-point array.

  Returns:
    The shape ``(k, n, H, W, 3)``.
  """
  shape = tuple(images.shape)
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"images must be (k, n, H, W, 3), got shape {shape}")
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be floating point in [0, 255], got dtype {images.dtype}")
  if shape[0] == 0 or shape[1] == 0:
    raise ValueError(f"images must hold at least one identity and one image, got shape {shape}")
  return shape


def validate_image_values(images) -> None:
  """ValueError naming ``images`` (and the identities at fault) unless every pixel is finite and in [0, 255].

  Runs on the host for numpy input; for a jax array, one finiteness reduction and a min and a max on its
  device. Tracers (``generate_masks`` called under ``jit``) are not checked.
  """
  if not _is_concrete(images):
    return
  bad = _non_finite_per_identity(images)
  if bad is not None:
    raise ValueError(f"images contain {int(bad.sum())} NaN or Inf value(s), in {_describe_bad_identities(bad)} "
                     f"(of k={images.shape[0]}); every pixel must be a finite value in [0, 255]")
  xp = np if isinstance(images, np.ndarray) else jnp
  low, high = float(xp.min(images)), float(xp.max(images))
  if low < 0.0 or high > 255.0:
    raise ValueError(f"images must lie in [0, 255] (float32 RGB pixel values), got values in [{low:g}, {high:g}]")


def validate_finite_tree(tree: Any, name: str) -> None:
  """ValueError naming ``name`` (and the leaf) if a floating-point leaf of ``tree`` holds NaN or Inf.

  One reduction per leaf; leaves that are tracers or not floating point are skipped.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  pending = []
  for path, leaf in leaves:
    if not _is_concrete(leaf) or not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    finite = np.isfinite(leaf).all() if isinstance(leaf, np.ndarray) else jnp.isfinite(leaf).all()
    pending.append((path, finite))
  for path, finite in pending:
    if not bool(finite):
      where = jax.tree_util.keystr(path) or "(the array itself)"
      raise ValueError(f"{name} contains NaN or Inf at {where}; the masks would be NaN")


def _surrogates(embed_fn, activations_fn, params, surrogate_weights):
  """``(embed_fn, activations_fn, params, member_weights)`` checked: one surrogate as given, an ensemble as
  tuples (one entry per member) with its normalised weights; an ensemble of one is that surrogate."""
  if not isinstance(embed_fn, (list, tuple)):
    if not callable(embed_fn):
      raise ValueError(f"embed_fn must be callable or a sequence of callables, got {type(embed_fn).__name__}")
    if activations_fn is not None and not callable(activations_fn):
      raise ValueError(f"activations_fn must be callable, got {type(activations_fn).__name__}")
    if surrogate_weights is not None:
      raise ValueError("surrogate_weights needs an ensemble: pass embed_fn as a sequence of surrogates")
    return embed_fn, activations_fn, params, ()
  embed_fn = tuple(embed_fn)
  count = len(embed_fn)
  if count == 0:
    raise ValueError("embed_fn is an empty sequence; give at least one surrogate")
  for i, fn in enumerate(embed_fn):
    if not callable(fn):
      raise ValueError(f"embed_fn[{i}] must be callable, got {type(fn).__name__}")
  if params is not None:
    if not isinstance(params, (list, tuple)) or len(params) != count:
      raise ValueError(f"params must be None or a sequence of {count} parameter trees, one per surrogate")
    params = tuple(params)
  if activations_fn is not None:
    if (not isinstance(activations_fn, (list, tuple)) or len(activations_fn) != count
        or not all(callable(f) for f in activations_fn)):
      raise ValueError(f"activations_fn must be None or a sequence of {count} callables, one per surrogate")
    activations_fn = tuple(activations_fn)
  weights = ensemble.check_weights([1.0] * count if surrogate_weights is None else surrogate_weights, count)
  if count == 1:
    return embed_fn[0], None if activations_fn is None else activations_fn[0], \
        None if params is None else params[0], ()
  return embed_fn, activations_fn, params, tuple(float(w) for w in weights)


def generate_masks(embed_fn: EmbedFn, images: jax.Array, *, method: str, key: jax.Array | None = None,
                   epsilon: float = 8.0, step_size: float = 1.0, steps: int = 16, init: jax.Array | None = None,
                   momentum: float | None = None, warmup_center_steps: int = OFFICIAL_WARMUP_CENTER_STEPS,
                   lower: float = 0.0, upper: float = 1.0, activations_fn: EmbedFn | None = None,
                   solver: str = "osqp", parallel: str | None = None, dfanet: bool = False, params: Any = None,
                   dfanet_clean_once: bool = True,
                   devices: Sequence[jax.Device] | None = None, return_trace: bool = False,
                   allow_large_epsilon: bool = False, progress: ProgressFn | bool | None = None,
                   steps_per_call: int | None = None, eot: Sequence[str] = (), eot_samples: int = 4,
                   eot_rounding: str = "ste", surrogate_weights: Sequence[float] | None = None,
                   ti_width: int = 1, vmi_samples: int = 0, vmi_beta: float = 1.5, di_probability: float = 0.0,
                   si_copies: int = 1, ssa_rho: float = 0.0, input_samples: int = 1, mask_cell: int = 1,
                   mid_feature_weight: float = 0.0, mid_feature_depth: float = 0.5,
                   mid_feature_guide: jax.Array | None = None, fill_budget: bool = False,
                   start_scale: float = 1.0, photometric_probability: float = 0.0):
  """One universal privacy mask per identity (OPOM and the methods it is compared with).

  The steps of every identity are vmapped over identities and optionally spread over every local device
  (see below for how they are run). With ``momentum=None`` and ``dfanet=False`` the result is deterministic: the same
  ``key`` (or ``init``) gives the same masks bit for bit, on one device or sharded.

  Every argument is checked before anything is compiled: the hyper-parameters first, then ``images``
  (shape, finite, in [0, 255]; on the host for numpy input, one reduction on the device for a jax array),
  ``init`` and ``params`` (finite).

  The steps run from Python in pieces of ``steps_per_call`` steps (default 1), each piece one compiled,
  unrolled program called repeatedly with the masks and momentum carried over (a compiled ``while`` loop makes
  every step ~3x slower on XLA:CPU), with one piece queued behind the running one (:func:`run_in_pieces`); each
  finished piece is reported to ``progress``, and Ctrl-C stops the run between pieces. The steps and their
  dropout keys do not depend on the piece length; the float rounding may (XLA compiles a piece of 2 steps
  differently from one of 1), so runs meant to be bit-identical use the same ``steps_per_call`` (the default
  everywhere in this package).

  Args:
    embed_fn: the surrogate, ``embed_fn(images) -> (b, d)`` for canonical images ``(b, H, W, 3)`` in
      [0, 255] (it normalises and resamples itself), e.g. ``FaceModel.embed``. With ``dfanet=True`` it is
      called as ``embed_fn(images, key)`` with a fresh dropout key each step. With ``params`` given it is
      called as ``embed_fn(params, images[, key])``, e.g. ``FaceModel.apply`` (keeps large weights out of the
      compiled program's constants). A sequence of them is an ensemble of surrogates: each member keeps its
      own features, hull and objective, and every step follows the weighted sum of the members' gradients,
      each normalised by its mean absolute value (:func:`opomjax.core.ensemble.combine_member_gradients`);
      one member's gradient is computed at a time, so a step costs the sum of the members' steps.
    images: ``(k, n, H, W, 3)`` float32 in [0, 255]: ``n`` photos of each of ``k`` identities.
    method: ``"fi-uap"``, ``"fi-uap+"``, ``"fi-uap-all"``, ``"opom-affine"``, ``"opom-center"``,
      ``"opom-convex"`` or ``"gd-uap"``.
    key: PRNG key for the random start and the DFANet dropout; needed unless ``init`` is given and DFANet is
      off.
    epsilon: L-inf budget, in the units of the images (paper: 8); at most :data:`MAX_EPSILON` unless
      ``allow_large_epsilon``.
    step_size: change of each pixel per step (paper: 1).
    steps: number of steps (paper: 16; official DFANet runs: 100).
    init: ``(k, H, W, 3)`` initial masks, used as is; None draws ``U(-epsilon, epsilon)`` from ``key``.
      For ``"fi-uap-all"`` only ``init[0]`` is used.
    momentum: decay of the momentum of Eq. 14, or None.
    warmup_center_steps: for ``"opom-convex"``, class-centre steps before the hull (official ``nter``).
    lower: lower coefficient bound ``L`` of the reduced hull (``"opom-convex"``).
    upper: upper coefficient bound ``U`` of the reduced hull (``"opom-convex"``).
    activations_fn: for ``"gd-uap"``: ``images -> list of layer activations`` (same call convention as
      ``embed_fn``), e.g. ``FaceModel.activations``.
    solver: QP solver of :func:`opomjax.core.hulls.hull_coefficients`.
    parallel: None (one device), ``"pmap"`` or ``"shard_map"`` (identities spread over the local devices).
    dfanet: apply the network's dropout with a fresh key per step (Eq. 15).
    dfanet_clean_once: under DFANet, the clean features (the hull's points) are computed once without
      dropout (the default) instead of under a fresh dropout key at every step as in the official code
      (False); the masked images still see dropout (``embed_fn`` is called with ``key=None`` for the clean
      ones, which must mean no dropout, as for ``FaceModel``). Saves one forward pass per step for the same
      protection within noise (docs/performance.md). No effect without DFANet.
    params: model parameters passed first to ``embed_fn`` / ``activations_fn``, or None; for an ensemble a
      sequence with one entry per member (or None).
    devices: the devices for ``parallel`` (default: every local device).
    return_trace: also return the objective before each step, ``(k, steps)``.
    allow_large_epsilon: accept ``epsilon > MAX_EPSILON`` (32 in [0, 255] units).
    progress: None or False (silent), True (a tqdm bar of steps on stderr), or a callable
      ``progress(done_steps, steps)`` called after every piece.
    steps_per_call: steps per compiled piece (default 1: the fastest on XLA:CPU and the quickest to compile).
    eot: expectation over transformation: names of :data:`opomjax.core.transfer.EOT_CHANNELS` (``"none"``,
      ``"jpeg"``, ``"resize"``, ``"blur"``); each step averages the gradient over ``eot_samples`` channels drawn
      from them (:func:`opomjax.core.transfer.eot_gradient`), so that the mask survives being saved at 8 bits,
      re-encoded, resized or smoothed. Empty (default): the plain gradient. Costs ``eot_samples`` forward +
      backward passes per step.
    eot_samples: draws per step under ``eot``.
    eot_rounding: gradient of the 8-bit rounding under ``eot``: ``"ste"`` (straight-through) or ``"cubic"``.
    surrogate_weights: for an ensemble, one non-negative weight per member (normalised to sum to 1; default
      equal).
    ti_width: translation-invariant smoothing of the gradient (TI), the odd width of its Gaussian kernel; 1: off.
    vmi_samples: variance tuning (VMI): gradients drawn around the mask per step (each one more forward +
      backward); 0: off.
    vmi_beta: VMI's radius around the mask, in units of ``epsilon`` (its paper: 1.5).
    di_probability: input diversity (DI): probability that a draw shrinks and shifts the masked images; 0: off.
    photometric_probability: probability that a draw changes the masked images' contrast (+-20 %) and
      brightness (+-12.8 levels) (:func:`opomjax.core.transfer.photometric_diversity`); 0: off.
    si_copies: scale invariance (SI): the gradient averaged over ``x / 2^i``, ``i < si_copies`` (each one more
      forward + backward); 1: off.
    ssa_rho: spectrum simulation (SSA): random rescaling of each DCT coefficient in ``[1 - rho, 1 + rho]`` after
      Gaussian noise of ``sigma = epsilon`` (its paper: 0.5); 0: off.
    input_samples: random draws of DI and SSA per step (without ``eot``; with it, ``eot_samples``).
    mask_cell: a low-frequency mask: the ascent moves a grid of ``mask_cell x mask_cell``-pixel cells and the
      mask is that grid upsampled bilinearly (``H`` and ``W`` must be multiples of it); 1: every pixel free.
    mid_feature_weight: intermediate-feature distortion: beside each surrogate's objective (weight 1), the
      relative change of one of its intermediate activations with this weight
      (:func:`opomjax.core.objectives.mid_feature_distortion`), each gradient normalised by its mean absolute
      value before they are joined (:func:`member_gradient`); needs ``activations_fn``; 0: off.
    mid_feature_depth: the activation that term reads, as a relative depth in ``[0, 1]`` among those
      ``activations_fn`` returns (0.5: the middle one).
    fill_budget: after the last step, move every value of the mask to ``+-epsilon`` in its own direction
      (:func:`opomjax.core.transfer.fill_budget`): the same steps, a mask at its full budget.
    start_scale: the random start's range as a fraction of ``epsilon``, ``delta_0 ~ U(-s eps, s eps)`` (1: the
      whole box; 0: a zero mask); ignored where ``init`` is given.
    mid_feature_guide: ``(k, H, W, 3)`` masks made before (e.g. by this function without the term), within
      ``epsilon``: the term becomes the intermediate-level attack's projection onto the change each guide mask
      makes in that activation (:func:`opomjax.core.objectives.mid_feature_projection`); a refinement of the
      guide, so pass it as ``init`` too. Needs ``mid_feature_weight > 0``; under DFANet ``dfanet_clean_once``.

  Returns:
    Masks ``(k, H, W, 3)`` float32 with ``|mask| <= epsilon`` (``"fi-uap-all"``: the same mask for every
    identity); with ``return_trace``, ``(masks, trace)``.

  Raises:
    ValueError: for a bad argument (the message names it), among them NaN or Inf in ``images``, ``init`` or
      ``params``, and ``epsilon > MAX_EPSILON`` without ``allow_large_epsilon``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> embed = lambda x: x.reshape(x.shape[0], -1)[:, :8] / 255.0
    >>> imgs = jax.random.uniform(jax.random.key(0), (2, 3, 4, 4, 3), maxval=255.0)
    >>> masks = generate_masks(embed, imgs, method="opom-center", key=jax.random.key(1), steps=2)
    >>> masks.shape, bool(jnp.abs(masks).max() <= 8.0)
    ((2, 4, 4, 3), True)
  """
  embed_fn, activations_fn, params, member_weights = _surrogates(embed_fn, activations_fn, params,
                                                                  surrogate_weights)
  if method == "gd-uap" and activations_fn is None:
    raise ValueError('method="gd-uap" needs activations_fn (images -> list of layer activations)')
  if mid_feature_weight and activations_fn is None:
    raise ValueError("mid_feature_weight > 0 needs activations_fn (images -> list of layer activations), one per "
                     "surrogate")
  if mid_feature_guide is not None:
    if not mid_feature_weight:
      raise ValueError("mid_feature_guide needs mid_feature_weight > 0 (the weight of its projection term)")
    if dfanet and not dfanet_clean_once:
      raise ValueError("mid_feature_guide under DFANet needs dfanet_clean_once=True (the guide's activations are "
                       "taken once, with the clean features)")
    if method == "fi-uap-all":
      raise ValueError('mid_feature_guide does not apply to "fi-uap-all" (one pooled mask)')
  if parallel not in parallel_lib.PARALLEL_MODES:
    raise ValueError(f"parallel must be one of {parallel_lib.PARALLEL_MODES}, got {parallel!r}")
  if devices is not None and not list(devices):
    raise ValueError("devices is empty: pass None for every local device")
  if key is None and (init is None or dfanet):
    raise ValueError("key is required unless init is given and dfanet is False")
  if not isinstance(allow_large_epsilon, (bool, np.bool_)):
    raise ValueError(f"allow_large_epsilon must be True or False, got {allow_large_epsilon!r}")
  if progress is not None and not isinstance(progress, (bool, np.bool_)) and not callable(progress):
    raise ValueError(f"progress must be None, True, False or a callable (done, total), got {progress!r}")
  if steps_per_call is not None and (not _is_integer(steps_per_call) or steps_per_call < 1):
    raise ValueError(f"steps_per_call must be None or a positive integer, got {steps_per_call!r}")
  cfg = AscentConfig(method=method, epsilon=_as_number(epsilon, "epsilon"),
                     step_size=_as_number(step_size, "step_size"), steps=steps,
                     momentum=None if momentum is None else _as_number(momentum, "momentum"),
                     warmup_center_steps=warmup_center_steps, lower=_as_number(lower, "lower"),
                     upper=_as_number(upper, "upper"), solver=solver, dfanet=dfanet,
                     dfanet_clean_once=dfanet_clean_once,
                     eot=tuple(n.strip() for n in eot.split(",") if n.strip()) if isinstance(eot, str)
                     else tuple(eot), eot_samples=eot_samples,
                     eot_rounding=eot_rounding, member_weights=member_weights, ti_width=ti_width,
                     vmi_samples=vmi_samples, vmi_beta=_as_number(vmi_beta, "vmi_beta"),
                     di_probability=_as_number(di_probability, "di_probability"),
                     photometric_probability=_as_number(photometric_probability, "photometric_probability"),
                     si_copies=si_copies,
                     ssa_rho=_as_number(ssa_rho, "ssa_rho"), input_samples=input_samples, mask_cell=mask_cell,
                     mid_feature_weight=_as_number(mid_feature_weight, "mid_feature_weight"),
                     mid_feature_depth=_as_number(mid_feature_depth, "mid_feature_depth"),
                     mid_feature_guided=mid_feature_guide is not None, fill_budget=fill_budget,
                     start_scale=_as_number(start_scale, "start_scale"))
  if not isinstance(images, jax.Array):
    try:
      images = np.asarray(images)
    except (TypeError, ValueError) as err:
      raise ValueError(f"images must be a (k, n, H, W, 3) array, got {type(images).__name__}: {err}") from None
  k, n, height, width, _ = validate_image_shape(images)
  validate_config(cfg, n if method != "fi-uap-all" else k * n, allow_large_epsilon=allow_large_epsilon)
  if height % cfg.mask_cell or width % cfg.mask_cell:
    raise ValueError(f"mask_cell={cfg.mask_cell} must divide the image height and width, got {height}x{width}")
  cfg = dataclasses.replace(cfg, dfanet=bool(dfanet), dfanet_clean_once=bool(dfanet_clean_once))
  validate_image_values(images)
  if init is not None:
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (k, height, width, 3):
      raise ValueError(f"init must have shape (k, H, W, 3) = {(k, height, width, 3)}, got {init.shape}")
    validate_finite_tree(init, "init")
  if mid_feature_guide is not None:
    mid_feature_guide = jnp.asarray(mid_feature_guide, jnp.float32)
    if mid_feature_guide.shape != (k, height, width, 3):
      raise ValueError(f"mid_feature_guide must have shape (k, H, W, 3) = {(k, height, width, 3)}, got "
                       f"{mid_feature_guide.shape}")
    validate_finite_tree(mid_feature_guide, "mid_feature_guide")
    largest = float(jnp.abs(mid_feature_guide).max())
    if largest > cfg.epsilon * (1 + 1e-6):
      raise ValueError(f"mid_feature_guide exceeds epsilon={cfg.epsilon:g} (largest |value| {largest:g}): masks "
                       "of another budget")
  validate_finite_tree(params, "params")
  images = jnp.asarray(images).astype(jnp.float32)
  if key is None:
    key = jax.random.key(0)  # never consumed: no random start, no dropout

  if method == "fi-uap-all":  # one pooled identity, one mask for all
    images = images.reshape(1, k * n, height, width, 3)
    init = None if init is None else init[:1]
  groups = images.shape[0]
  init_key, step_key = jax.random.split(key)
  if init is None:
    init = random_start(cfg, init_key, (groups,) + grid_shape(cfg, height, width))
  else:
    init = grid_from_mask(cfg, init)
  identity_keys = jax.random.split(step_key, groups)

  if needs_clean_features(cfg):
    clean = _runner(cfg, embed_fn, activations_fn, parallel, devices)(params, images)
    if mid_feature_guide is not None:  # each member's entry: (features, activation, the guide's activation)
      guided = _runner(cfg, embed_fn, activations_fn, parallel, devices)(
          params, jnp.clip(images + mid_feature_guide[:, None], 0.0, 255.0))
      join = lambda c, g: (c[0], c[1], g[1])
      clean = tuple(map(join, clean, guided)) if isinstance(embed_fn, tuple) else join(clean, guided)
    clean = jax.tree_util.tree_map(lambda c: jnp.asarray(jax.device_get(c)), clean)  # small; laid out as the
    # pieces expect, however they shard
  else:  # not read by the steps
    clean = jnp.zeros(images.shape[:2] + (1,), jnp.float32)
  length = 1 if steps_per_call is None else int(steps_per_call)
  report, close = _progress_callback(progress, cfg.steps) if progress else (None, lambda: None)
  try:
    grids, trace = run_in_pieces(
        lambda piece: _runner(cfg, embed_fn, activations_fn, parallel, devices, piece), params, images, clean,
        jax.vmap(functools.partial(initial_state, cfg))(init), identity_keys, cfg.steps, length, report)
  finally:
    close()
  masks = final_mask(cfg, grids, height, width)
  if method == "fi-uap-all":
    masks = jnp.broadcast_to(masks, (k, height, width, 3))
    trace = jnp.broadcast_to(trace, (k, cfg.steps))
  return (masks, trace) if return_trace else masks
