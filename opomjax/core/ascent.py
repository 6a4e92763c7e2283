"""Person-specific universal masks by signed-gradient ascent (Alg. 1-2), with momentum and DFANet.

One step for one identity (:func:`ascent_step`), for masked images :math:`\\hat x_i = \\mathrm{clip}(x_i +
\\delta, 0, 255)`:

.. math::

   \\bar g = \\frac{1}{n} \\sum_{i=1}^{n} \\nabla_{\\hat x_i} J(\\hat x_1, .., \\hat x_n), \\qquad
   \\delta \\leftarrow \\mathrm{clip}(\\delta + \\alpha\\, \\mathrm{sign}(\\bar g), -\\epsilon, \\epsilon)

with momentum (Eq. 14) :math:`g \\leftarrow \\mu g + \\bar g / \\lVert \\bar g \\rVert_1` and the sign taken of
``g``; with DFANet (Eq. 15) the network applies dropout from a fresh PRNG key at every step.
:func:`identity_mask` runs the steps for one identity as one ``lax.scan``; :func:`identities_masks` vmaps it
over identities (the per-device function the wrappers of :mod:`opomjax.core.parallel` map);
:func:`generate_masks` validates the input, draws the initial masks and runs it all under one ``jit``.

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
* DFANet: the clean features are recomputed at every step with their own dropout key, as in the official
  code; without DFANet they are computed once.
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

from opomjax.core import hulls
from opomjax.core import objectives
from opomjax.core import parallel as parallel_lib

METHODS = ("fi-uap", "fi-uap+", "fi-uap-all", "opom-affine", "opom-center", "opom-convex", "gd-uap")

#: Official ``--nter`` of the OPOM-ConvexHull scripts: class-centre steps before the convex hull.
OFFICIAL_WARMUP_CENTER_STEPS = 5

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


class AscentState(NamedTuple):
  """What the scan carries for one identity: the mask and the momentum accumulator."""

  delta: jax.Array
  velocity: jax.Array


class Network(NamedTuple):
  """The surrogate seen by the ascent: ``embed(images, key) -> (b, d)``, ``activations(images, key)``.

  ``key`` is None when DFANet is off.
  """

  embed: Callable[[jax.Array, jax.Array | None], jax.Array]
  activations: Callable[[jax.Array, jax.Array | None], Sequence[jax.Array]] | None


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
  """J of the masked images ``(n, H, W, 3)`` of one identity (the function whose gradient is taken)."""
  if cfg.method == "gd-uap":
    return objectives.gd_uap(net.activations(masked, key))
  return feature_objective(cfg, net.embed(masked, key), clean, t)


def ascent_step(cfg: AscentConfig, net: Network, images: jax.Array, clean: jax.Array | None,
                key: jax.Array, state: AscentState, t: jax.Array) -> tuple[AscentState, jax.Array]:
  """One step of Alg. 1 (with Eq. 14 momentum and Eq. 15 dropout when configured) for one identity.

  Args:
    cfg: hyper-parameters.
    net: the surrogate.
    images: ``(n, H, W, 3)`` clean images in [0, 255].
    clean: ``(n, d)`` clean features (unused for GD-UAP; under DFANet recomputed here with dropout).
    key: the identity's PRNG key; step ``t`` uses ``fold_in(key, t)``.
    state: current mask ``(H, W, 3)`` and momentum.
    t: step index (int32 scalar).

  Returns:
    The new state and ``J`` of the masked images before the update.
  """
  if cfg.dfanet:
    adv_key, clean_key = jax.random.split(jax.random.fold_in(key, t))
    if cfg.method != "gd-uap":
      clean = jax.lax.stop_gradient(net.embed(images, clean_key))
  else:
    adv_key = None
  masked = jnp.clip(images + state.delta, 0.0, 255.0)
  value, grad = jax.value_and_grad(image_objective, argnums=2)(cfg, net, masked, clean, t, adv_key)
  mean_grad = jnp.mean(grad, axis=0)
  velocity = state.velocity
  direction = mean_grad
  if cfg.momentum is not None:
    l1 = jnp.sum(jnp.abs(mean_grad))
    velocity = cfg.momentum * velocity + mean_grad / jnp.maximum(l1, jnp.finfo(l1.dtype).tiny)
    direction = velocity
  delta = jnp.clip(state.delta + cfg.step_size * jnp.sign(direction), -cfg.epsilon, cfg.epsilon)
  return AscentState(delta, velocity), value


def identity_mask(cfg: AscentConfig, net: Network, images: jax.Array, delta0: jax.Array,
                  key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """All steps for one identity as one ``lax.scan``.

  Args:
    cfg: hyper-parameters.
    net: the surrogate.
    images: ``(n, H, W, 3)`` in [0, 255].
    delta0: ``(H, W, 3)`` initial mask.
    key: the identity's PRNG key (dropout keys under DFANet).

  Returns:
    The mask ``(H, W, 3)`` and the objective before each step ``(steps,)``.
  """
  clean = None
  if cfg.method != "gd-uap" and not cfg.dfanet:
    clean = jax.lax.stop_gradient(net.embed(images, None))
  step = functools.partial(ascent_step, cfg, net, images, clean, key)
  state0 = AscentState(delta0, jnp.zeros_like(delta0))
  state, trace = jax.lax.scan(step, state0, jnp.arange(cfg.steps, dtype=jnp.int32))
  return state.delta, trace


def make_network(embed_fn: EmbedFn, activations_fn: EmbedFn | None, params: Any, dfanet: bool) -> Network:
  """Adapt user callables to :class:`Network` (``params`` first when given; a key only under DFANet)."""

  def adapt(fn):
    if fn is None:
      return None

    def call(images, key):
      args = (images,) if params is None else (params, images)
      return fn(*args, key) if dfanet else fn(*args)

    return call

  return Network(adapt(embed_fn), adapt(activations_fn))


def identities_masks(cfg: AscentConfig, embed_fn: EmbedFn, activations_fn: EmbedFn | None,
                     params: Any, batch: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The per-device function: :func:`identity_mask` vmapped over the identities of ``batch``.

  Args:
    cfg: hyper-parameters.
    embed_fn: see :func:`generate_masks`.
    activations_fn: see :func:`generate_masks`.
    params: model parameters passed first to the callables, or None.
    batch: ``images (k, n, H, W, 3)``, ``delta0 (k, H, W, 3)``, ``keys (k, ...)``.

  Returns:
    Masks ``(k, H, W, 3)`` and objective traces ``(k, steps)``.
  """
  net = make_network(embed_fn, activations_fn, params, cfg.dfanet)
  images, delta0, keys = batch
  return jax.vmap(functools.partial(identity_mask, cfg, net))(images, delta0, keys)


@functools.lru_cache(maxsize=8)
def _cached_runner(cfg: AscentConfig, embed_fn: EmbedFn, activations_fn: EmbedFn | None, parallel: str | None,
                   devices: tuple[jax.Device, ...] | None):
  return _build_runner(cfg, embed_fn, activations_fn, parallel, devices)


def _build_runner(cfg, embed_fn, activations_fn, parallel, devices):
  fn = functools.partial(identities_masks, cfg, embed_fn, activations_fn)
  return parallel_lib.distribute(fn, parallel, devices)


def _runner(cfg, embed_fn, activations_fn, parallel, devices):
  """The jitted (and possibly sharded) per-device function; reused across calls with the same callables."""
  devices = None if devices is None else tuple(devices)
  try:
    hash((embed_fn, activations_fn))
  except TypeError:  # unhashable callables: compile afresh
    return _build_runner(cfg, embed_fn, activations_fn, parallel, devices)
  return _cached_runner(cfg, embed_fn, activations_fn, parallel, devices)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def validate_config(cfg: AscentConfig, n_images: int) -> None:
  """ValueError naming the bad argument when ``cfg`` cannot run on identities of ``n_images`` images."""
  if cfg.method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
  if not np.isfinite(cfg.epsilon) or cfg.epsilon <= 0:
    raise ValueError(f"epsilon must be a positive finite number (pixel units of [0, 255]), got {cfg.epsilon}")
  if not np.isfinite(cfg.step_size) or cfg.step_size <= 0:
    raise ValueError(f"step_size must be a positive finite number, got {cfg.step_size}")
  if not isinstance(cfg.steps, (int, np.integer)) or cfg.steps < 1:
    raise ValueError(f"steps must be a positive integer, got {cfg.steps!r}")
  if cfg.momentum is not None and (not np.isfinite(cfg.momentum) or cfg.momentum < 0):
    raise ValueError(f"momentum must be None or a non-negative number, got {cfg.momentum}")
  if not isinstance(cfg.warmup_center_steps, (int, np.integer)) or cfg.warmup_center_steps < 0:
    raise ValueError(f"warmup_center_steps must be a non-negative integer, got {cfg.warmup_center_steps!r}")
  if cfg.solver not in hulls.SOLVERS:
    raise ValueError(f"solver must be one of {hulls.SOLVERS}, got {cfg.solver!r}")
  if cfg.method == "opom-convex":
    if not cfg.lower <= cfg.upper:
      raise ValueError(f"lower must not exceed upper, got lower={cfg.lower}, upper={cfg.upper}")
    if not cfg.lower <= 1.0 / n_images <= cfg.upper:
      raise ValueError(f"the reduced hull is empty: need lower <= 1/n <= upper for n={n_images} images per "
                       f"identity, got lower={cfg.lower}, upper={cfg.upper}")


def generate_masks(embed_fn: EmbedFn, images: jax.Array, *, method: str, key: jax.Array | None = None,
                   epsilon: float = 8.0, step_size: float = 1.0, steps: int = 16, init: jax.Array | None = None,
                   momentum: float | None = None, warmup_center_steps: int = OFFICIAL_WARMUP_CENTER_STEPS,
                   lower: float = 0.0, upper: float = 1.0, activations_fn: EmbedFn | None = None,
                   solver: str = "osqp", parallel: str | None = None, dfanet: bool = False, params: Any = None,
                   devices: Sequence[jax.Device] | None = None, return_trace: bool = False):
  """One universal privacy mask per identity (OPOM and the methods it is compared with).

  The whole ascent is one jitted ``lax.scan`` per identity, vmapped over identities and optionally spread
  over every local device. With ``momentum=None`` and ``dfanet=False`` the result is deterministic: the same
  ``key`` (or ``init``) gives the same masks bit for bit, on one device or sharded.

  Args:
    embed_fn: the surrogate, ``embed_fn(images) -> (b, d)`` for canonical images ``(b, H, W, 3)`` in
      [0, 255] (it normalises and resamples itself), e.g. ``FaceModel.embed``. With ``dfanet=True`` it is
      called as ``embed_fn(images, key)`` with a fresh dropout key each step. With ``params`` given it is
      called as ``embed_fn(params, images[, key])``, e.g. ``FaceModel.apply`` (keeps large weights out of the
      compiled program's constants).
    images: ``(k, n, H, W, 3)`` float32 in [0, 255]: ``n`` photos of each of ``k`` identities.
    method: ``"fi-uap"``, ``"fi-uap+"``, ``"fi-uap-all"``, ``"opom-affine"``, ``"opom-center"``,
      ``"opom-convex"`` or ``"gd-uap"``.
    key: PRNG key for the random start and the DFANet dropout; needed unless ``init`` is given and DFANet is
      off.
    epsilon: L-inf budget, in the units of the images (paper: 8).
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
    params: model parameters passed first to ``embed_fn`` / ``activations_fn``, or None.
    devices: the devices for ``parallel`` (default: every local device).
    return_trace: also return the objective before each step, ``(k, steps)``.

  Returns:
    Masks ``(k, H, W, 3)`` float32 with ``|mask| <= epsilon`` (``"fi-uap-all"``: the same mask for every
    identity); with ``return_trace``, ``(masks, trace)``.

  Raises:
    ValueError: for a bad argument (the message names it).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> embed = lambda x: x.reshape(x.shape[0], -1)[:, :8] / 255.0
    >>> imgs = jax.random.uniform(jax.random.key(0), (2, 3, 4, 4, 3), maxval=255.0)
    >>> masks = generate_masks(embed, imgs, method="opom-center", key=jax.random.key(1), steps=2)
    >>> masks.shape, bool(jnp.abs(masks).max() <= 8.0)
    ((2, 4, 4, 3), True)
  """
  if not callable(embed_fn):
    raise ValueError(f"embed_fn must be callable, got {type(embed_fn).__name__}")
  images = jnp.asarray(images)
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f"images must be (k, n, H, W, 3), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be floating point in [0, 255], got dtype {images.dtype}")
  images = images.astype(jnp.float32)
  k, n, height, width, _ = images.shape
  if k == 0 or n == 0:
    raise ValueError(f"images must hold at least one identity and one image, got shape {images.shape}")
  if _is_concrete(images) and (float(jnp.min(images)) < 0.0 or float(jnp.max(images)) > 255.0):
    raise ValueError("images must lie in [0, 255] (float32 RGB pixel values)")
  cfg = AscentConfig(method=method, epsilon=float(epsilon), step_size=float(step_size), steps=steps,
                     momentum=None if momentum is None else float(momentum),
                     warmup_center_steps=warmup_center_steps, lower=float(lower), upper=float(upper),
                     solver=solver, dfanet=bool(dfanet))
  validate_config(cfg, n if method != "fi-uap-all" else k * n)
  if method == "gd-uap" and activations_fn is None:
    raise ValueError('method="gd-uap" needs activations_fn (images -> list of layer activations)')
  if activations_fn is not None and not callable(activations_fn):
    raise ValueError(f"activations_fn must be callable, got {type(activations_fn).__name__}")
  if parallel not in parallel_lib.PARALLEL_MODES:
    raise ValueError(f"parallel must be one of {parallel_lib.PARALLEL_MODES}, got {parallel!r}")
  if init is not None:
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (k, height, width, 3):
      raise ValueError(f"init must have shape (k, H, W, 3) = {(k, height, width, 3)}, got {init.shape}")
  if key is None and (init is None or dfanet):
    raise ValueError("key is required unless init is given and dfanet is False")
  if key is None:
    key = jax.random.key(0)  # never consumed: no random start, no dropout

  if method == "fi-uap-all":  # one pooled identity, one mask for all
    images = images.reshape(1, k * n, height, width, 3)
    init = None if init is None else init[:1]
  groups = images.shape[0]
  init_key, step_key = jax.random.split(key)
  if init is None:
    init = jax.random.uniform(init_key, (groups, height, width, 3), jnp.float32, -cfg.epsilon, cfg.epsilon)
  identity_keys = jax.random.split(step_key, groups)

  run = _runner(cfg, embed_fn, activations_fn, parallel, devices)
  masks, trace = run(params, (images, init, identity_keys))
  if method == "fi-uap-all":
    masks = jnp.broadcast_to(masks, (k, height, width, 3))
    trace = jnp.broadcast_to(trace, (k, cfg.steps))
  return (masks, trace) if return_trace else masks
