"""Several diverse masks per person (Sec. 4.3.4, Eq. 19) and their M-O / M-M evaluation (Table 6).

Generation. For one identity with images :math:`x_1..x_n` and ``M`` masks :math:`\\delta_1..\\delta_M`, with
:math:`\\hat f^{p}_i = f(\\mathrm{clip}(x_i + \\delta_p, 0, 255))`, the masks are found jointly by maximising

.. math::

   J = \\frac{1}{M} \\sum_{p=1}^{M} J_{OPOM}(\\hat f^{p}_{1..n}; f_{1..n})
       + \\lambda\\, J_{div}(\\hat f^{1..M}_{1..n}),

where :math:`J_{OPOM}` is the objective of the chosen method (e.g. the distance to the convex hull, Eq. 13, or
to the class centre, Eq. 11) of the masked features of one mask, and :math:`J_{div}` the mean squared distance
between the masked features of two different masks (:func:`opomjax.core.objectives.diversity`, Eq. 19). With
the mean over masks, the gradient that reaches mask ``p`` is :math:`\\frac{1}{M}(\\nabla J_{OPOM}^{p} +
\\frac{2\\lambda}{M - 1} \\sum_{q \\ne p} \\nabla \\lVert \\hat f^p - \\hat f^q \\rVert^2 / nd)`: its own
protection plus ``2 lambda`` times the mean push away from each other mask, a balance that does not change with
``M``. Every mask takes its own signed step (Alg. 1, optionally with the momentum of Eq. 14 per mask),
clipped to ``[-epsilon, epsilon]``; the masks start from independent draws of ``U(-epsilon, epsilon)``. With
``M = 1`` there is no diversity term and :func:`generate_diverse_masks` gives exactly the mask of
:func:`opomjax.core.ascent.generate_masks` for the same key or initial mask.

Evaluation (Table 6). A person publishes photos protected by different masks. *M-O*: the system holds the
person's original photos (the gallery holds clean photo ``j``) and the probe is photo ``i != j`` protected by
mask ``p``; *M-M*: the system's gallery photo ``j`` is itself protected, by mask ``q``, and the probe ``i != j``
by another mask ``p != q``. Each setting is the 1:N protocol of :mod:`opomjax.core.evaluation` with the
gallery's genuine mates replaced accordingly (distractors stay clean); :func:`mask_original_rates` and
:func:`mask_mask_rates` give one protection success rate per mask (M-O) or per ordered mask pair (M-M), and
:func:`mean_std` their mean and standard deviation.

Example:
  >>> import jax, jax.numpy as jnp
  >>> embed = lambda x: x.reshape(x.shape[0], -1)[:, :8] / 255.0
  >>> imgs = jax.random.uniform(jax.random.key(0), (2, 3, 4, 4, 3), maxval=255.0)
  >>> masks = generate_diverse_masks(embed, imgs, num_masks=3, diversity_weight=1.0, method="opom-center",
  ...                                key=jax.random.key(1), steps=2)
  >>> masks.shape, bool(jnp.abs(masks).max() <= 8.0)
  ((2, 3, 4, 4, 3), True)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from opomjax.core import ascent
from opomjax.core import evaluation
from opomjax.core import objectives

#: Methods that can make diverse masks: those with an objective on the features of one identity's images.
METHODS = ("fi-uap", "fi-uap+", "opom-affine", "opom-center", "opom-convex")

ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class DiverseConfig:
  """Static hyper-parameters of the joint ascent (hashable: a jit cache key).

  Attributes:
    ascent: the per-mask ascent (method, epsilon, step size, steps, momentum, hull settings).
    num_masks: ``M``, masks per identity.
    diversity_weight: ``lambda``, the weight of :func:`opomjax.core.objectives.diversity` (Eq. 19).
  """

  ascent: ascent.AscentConfig
  num_masks: int
  diversity_weight: float


class DiverseState(NamedTuple):
  """What the steps carry for one identity: ``M`` masks ``(M, H, W, 3)`` and their momentum accumulators."""

  delta: jax.Array
  velocity: jax.Array


def joint_objective(cfg: DiverseConfig, features: jax.Array, clean: jax.Array, t: jax.Array) -> jax.Array:
  """Eq. 19 on features: the mean over masks of each mask's own objective plus ``lambda`` times the diversity.

  .. math::

     J = \\frac{1}{M} \\sum_{p} J_{OPOM}(\\hat f^{p}; f) + \\lambda\\, J_{div}(\\hat f^{1..M})

  Args:
    cfg: hyper-parameters (the method's objective is :func:`opomjax.core.ascent.feature_objective`).
    features: ``(M, n, d)`` features of the ``n`` images under each of the ``M`` masks.
    clean: ``(n, d)`` clean features of the identity.
    t: step index (int32 scalar; the warm start of OPOM-ConvexHull).

  Returns:
    The scalar to maximise.
  """
  own = jax.vmap(lambda adv: ascent.feature_objective(cfg.ascent, adv, clean, t))(features)
  value = jnp.mean(own)
  if features.shape[0] >= 2 and cfg.diversity_weight != 0.0:
    value = value + cfg.diversity_weight * objectives.diversity(features)
  return value


def masked_objective(cfg: DiverseConfig, net: ascent.Network, masked: jax.Array, clean: jax.Array,
                     t: jax.Array) -> jax.Array:
  """:func:`joint_objective` of the masked images ``(M, n, H, W, 3)``, embedded in one batch of ``M * n``."""
  num_masks, n = masked.shape[:2]
  features = net.embed(masked.reshape((num_masks * n,) + masked.shape[2:]), None)
  return joint_objective(cfg, features.reshape(num_masks, n, -1), clean, t)


def diverse_step(cfg: DiverseConfig, net: ascent.Network, images: jax.Array, clean: jax.Array,
                 state: DiverseState, t: jax.Array) -> tuple[DiverseState, jax.Array]:
  """One step of the joint ascent for one identity: every mask its own signed step (Alg. 1, Eq. 14).

  .. math::

     \\bar g_p = \\frac{1}{n} \\sum_i \\nabla_{\\hat x^p_i} J, \\qquad
     \\delta_p \\leftarrow \\mathrm{clip}(\\delta_p + \\alpha\\, \\mathrm{sign}(\\bar g_p), -\\epsilon, \\epsilon)

  (with momentum, the sign of :math:`g_p \\leftarrow \\mu g_p + \\bar g_p / \\lVert \\bar g_p \\rVert_1`).

  Args:
    cfg: hyper-parameters.
    net: the surrogate.
    images: ``(n, H, W, 3)`` clean images in [0, 255].
    clean: ``(n, d)`` clean features (:func:`opomjax.core.ascent.clean_features`).
    state: the masks ``(M, H, W, 3)`` and their momentum.
    t: step index (int32 scalar).

  Returns:
    The new state and ``J`` of the masked images before the update.
  """
  step = cfg.ascent
  masked = jnp.clip(images[None] + state.delta[:, None], 0.0, 255.0)
  value, grad = jax.value_and_grad(masked_objective, argnums=2)(cfg, net, masked, clean, t)
  mean_grad = jnp.mean(grad, axis=1)  # (M, H, W, 3): each mask's gradient, averaged over the images
  velocity, direction = state.velocity, mean_grad
  if step.momentum is not None:
    l1 = jnp.sum(jnp.abs(mean_grad), axis=(1, 2, 3), keepdims=True)
    velocity = step.momentum * velocity + mean_grad / jnp.maximum(l1, jnp.finfo(l1.dtype).tiny)
    direction = velocity
  delta = jnp.clip(state.delta + step.step_size * jnp.sign(direction), -step.epsilon, step.epsilon)
  return DiverseState(delta, velocity), value


def _identities_clean(embed_fn, params, images):
  net = ascent.make_network(embed_fn, None, params, False)
  return jax.vmap(lambda x: ascent.clean_features(net, x, None))(images)


def _identities_step(cfg, embed_fn, params, t, images, clean, delta, velocity):
  net = ascent.make_network(embed_fn, None, params, False)

  def one(x, c, d, v):
    state, value = diverse_step(cfg, net, x, c, DiverseState(d, v), t)
    return state.delta, state.velocity, value

  return jax.vmap(one)(images, clean, delta, velocity)


@functools.lru_cache(maxsize=8)
def _cached_programs(cfg: DiverseConfig, embed_fn):
  return _build_programs(cfg, embed_fn)


def _build_programs(cfg, embed_fn):
  """``(clean(params, images), step(params, t, images, clean, delta, velocity))``, each jitted alone."""
  return (jax.jit(functools.partial(_identities_clean, embed_fn)),
          jax.jit(functools.partial(_identities_step, cfg, embed_fn)))


def _programs(cfg: DiverseConfig, embed_fn):
  """The jitted programs, reused across calls with the same (hashable) ``embed_fn`` and config."""
  try:
    hash(embed_fn)
  except TypeError:  # unhashable callable: compile afresh
    return _build_programs(cfg, embed_fn)
  return _cached_programs(cfg, embed_fn)


def _real(value, name: str) -> float:
  """``float(value)`` for a finite real scalar, or a ValueError naming ``name``."""
  try:
    array = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    array = None
  if (array is None or array.ndim != 0 or isinstance(value, (bool, np.bool_))
      or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating))
      or not np.isfinite(array)):
    raise ValueError(f"{name} must be a finite real number, got {value!r}")
  return float(array)


def _positive_integer(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def generate_diverse_masks(embed_fn: ascent.EmbedFn, images, *, num_masks: int, diversity_weight: float,
                           method: str, key: jax.Array | None = None, epsilon: float = 8.0,
                           step_size: float = 1.0, steps: int = 16, params: Any = None, init=None,
                           momentum: float | None = None,
                           warmup_center_steps: int = ascent.OFFICIAL_WARMUP_CENTER_STEPS,
                           lower: float = 0.0, upper: float = 1.0, solver: str = "osqp",
                           allow_large_epsilon: bool = False, progress: ProgressFn | bool | None = None,
                           return_trace: bool = False):
  """``num_masks`` protective, mutually diverse masks per identity (Sec. 4.3.4, Eq. 19).

  The masks of an identity are found jointly (see the module docstring): each mask maximises its own objective
  of ``method`` on its masked features, plus ``diversity_weight`` times the diversity of Eq. 19 between the
  masks. Identities are vmapped; every step is one compiled program called from Python (a step inside a
  compiled ``while`` loop is ~3x slower on XLA:CPU, see :func:`opomjax.core.ascent.identity_segment`), so
  ``progress`` is told after each step and Ctrl-C stops the run between steps.

  Every argument is checked before anything is compiled (the same checks as
  :func:`opomjax.core.ascent.generate_masks`). With ``num_masks=1`` the result equals
  ``generate_masks(...)[:, None]`` for the same ``key`` (or ``init[:, 0]``) and settings.

  Args:
    embed_fn: the surrogate, ``embed_fn(images) -> (b, d)`` for canonical images ``(b, H, W, 3)`` in [0, 255],
      or ``embed_fn(params, images)`` when ``params`` is given (e.g. ``FaceModel.apply``). One step embeds
      ``num_masks * n`` images per identity in one batch.
    images: ``(k, n, H, W, 3)`` float in [0, 255]: ``n`` photos of each of ``k`` identities.
    num_masks: ``M``, masks per identity.
    diversity_weight: ``lambda >= 0`` of the diversity term (0: ``M`` independent masks from different starts).
    method: one of :data:`METHODS`.
    key: PRNG key of the random starts; needed unless ``init`` is given. Drawn as ``generate_masks`` draws
      its start: ``init_key, _ = split(key)``, ``U(-epsilon, epsilon)`` of shape ``(k, M, H, W, 3)``.
    epsilon: L-inf budget in [0, 255] units (paper: 8); at most
      :data:`opomjax.core.ascent.MAX_EPSILON` unless ``allow_large_epsilon``.
    step_size: change of each pixel per step (paper: 1).
    steps: number of steps (paper: 16).
    params: model parameters passed first to ``embed_fn``, or None.
    init: ``(k, M, H, W, 3)`` initial masks, used as they are; None draws them from ``key``.
    momentum: decay of the momentum of Eq. 14 (each mask its own accumulator), or None.
    warmup_center_steps: for ``"opom-convex"``, class-centre steps before the hull.
    lower: lower coefficient bound ``L`` of the reduced hull (``"opom-convex"``).
    upper: upper coefficient bound ``U`` of the reduced hull (``"opom-convex"``).
    solver: QP solver of :func:`opomjax.core.hulls.hull_coefficients`.
    allow_large_epsilon: accept ``epsilon > MAX_EPSILON``.
    progress: None (silent), True (a tqdm bar of steps on stderr) or ``progress(done_steps, steps)``.
    return_trace: also return ``J`` (Eq. 19) before each step, ``(k, steps)``.

  Returns:
    Masks ``(k, M, H, W, 3)`` float32 with ``|mask| <= epsilon``; with ``return_trace``, ``(masks, trace)``.

  Raises:
    ValueError: for a bad argument (the message names it).
  """
  if not callable(embed_fn):
    raise ValueError(f"embed_fn must be callable, got {type(embed_fn).__name__}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS} for diverse masks, got {method!r}")
  num_masks = _positive_integer(num_masks, "num_masks")
  diversity_weight = _real(diversity_weight, "diversity_weight")
  if diversity_weight < 0:
    raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}")
  if key is None and init is None:
    raise ValueError("key is required unless init is given")
  if progress is not None and not isinstance(progress, (bool, np.bool_)) and not callable(progress):
    raise ValueError(f"progress must be None, True, False or a callable (done, total), got {progress!r}")
  if not isinstance(allow_large_epsilon, (bool, np.bool_)):
    raise ValueError(f"allow_large_epsilon must be True or False, got {allow_large_epsilon!r}")
  step_cfg = ascent.AscentConfig(
      method=method, epsilon=_real(epsilon, "epsilon"), step_size=_real(step_size, "step_size"), steps=steps,
      momentum=None if momentum is None else _real(momentum, "momentum"),
      warmup_center_steps=warmup_center_steps, lower=float(lower), upper=float(upper), solver=solver)
  if not isinstance(images, jax.Array):
    try:
      images = np.asarray(images)
    except (TypeError, ValueError) as err:
      raise ValueError(f"images must be a (k, n, H, W, 3) array, got {type(images).__name__}: {err}") from None
  k, n, height, width, _ = ascent.validate_image_shape(images)
  ascent.validate_config(step_cfg, n, allow_large_epsilon=bool(allow_large_epsilon))
  ascent.validate_image_values(images)
  if init is not None:
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (k, num_masks, height, width, 3):
      raise ValueError(f"init must have shape (k, num_masks, H, W, 3) = {(k, num_masks, height, width, 3)}, "
                       f"got {init.shape}")
    ascent.validate_finite_tree(init, "init")
  ascent.validate_finite_tree(params, "params")
  cfg = DiverseConfig(step_cfg, num_masks, diversity_weight)
  images = jnp.asarray(images).astype(jnp.float32)
  if init is None:
    init_key, _ = jax.random.split(key)  # as generate_masks draws its start
    init = jax.random.uniform(init_key, (k, num_masks, height, width, 3), jnp.float32, -step_cfg.epsilon,
                              step_cfg.epsilon)

  clean_program, step_program = _programs(cfg, embed_fn)
  clean = clean_program(params, images)
  report, close = _progress_callback(progress, step_cfg.steps)
  delta, velocity, values = init, jnp.zeros_like(init), []
  try:
    for t in range(step_cfg.steps):  # one compiled step per call, see the docstring
      delta, velocity, value = step_program(params, jnp.int32(t), images, clean, delta, velocity)
      jax.block_until_ready(delta)
      values.append(value)
      if report is not None:
        report(t + 1, step_cfg.steps)
  finally:
    close()
  return (delta, jnp.stack(values, axis=1)) if return_trace else delta


def _progress_callback(progress, steps: int):
  """``(report(done, total) or None, close())`` for ``progress``."""
  if progress is True:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    bar = tqdm(total=steps, desc="diverse mask steps", unit="step")
    return (lambda done, total: bar.update(done - bar.n)), bar.close
  if progress is None or progress is False:
    return None, lambda: None
  return progress, lambda: None


def pairwise_feature_distance(features) -> float:
  """Mean squared distance between the unit features of one photo under two different masks.

  ``features`` ``(M, ..., d)`` (e.g. ``(M, K, n, d)``): the mean over ordered mask pairs ``p != q`` and over the
  other axes of :math:`\\lVert \\hat f^p - \\hat f^q \\rVert^2` (unit features: ``2 - 2 cos``). It is ``d``
  times :func:`opomjax.core.objectives.diversity` for ``(M, n, d)``.
  """
  f = evaluation.unit_features(jnp.asarray(features, jnp.float32))
  m = f.shape[0]
  if m < 2:
    raise ValueError(f"features need M >= 2 masks on the first axis, got shape {f.shape}")
  total = 0.0
  for p, q in itertools.combinations(range(m), 2):
    total += float(jnp.mean(jnp.sum(jnp.square(f[p] - f[q]), axis=-1)))
  return total / (m * (m - 1) / 2)


def _check_protected(protected) -> jax.Array:
  protected = jnp.asarray(protected, jnp.float32)
  if protected.ndim != 4:
    raise ValueError(f"protected must be (M, K, n, d): features of every test photo under each of M masks, got "
                     f"shape {protected.shape}")
  return protected


def mask_original_rates(protected, clean, distractors, ks: Sequence[int] = (1,), **kwargs) -> np.ndarray:
  """M-O protection success rates (Table 6): probes protected by mask ``p``, genuine mates clean.

  Args:
    protected: ``(M, K, n, d)`` features of the ``n`` test photos of ``K`` identities, each protected by mask
      ``p`` of its identity.
    clean: ``(K, n, d)`` features of the same photos without a mask (the gallery).
    distractors: ``(D, d)`` clean features of other people.
    ks: ranks.
    **kwargs: ``chunk_size``, ``ties`` of :func:`opomjax.core.evaluation.protection_success_rate`.

  Returns:
    ``(M, len(ks))``: row ``p`` the protection success rate at each rank of the photos protected by mask ``p``.
  """
  protected = _check_protected(protected)
  rows = []
  for p in range(protected.shape[0]):
    rates = evaluation.protection_success_rate(protected[p], clean, distractors, ks, **kwargs)
    rows.append([rates[k] for k in ks])
  return np.asarray(rows, np.float64).reshape(protected.shape[0], len(tuple(ks)))


def mask_pairs(num_masks: int) -> list[tuple[int, int]]:
  """The ordered pairs ``(p, q)``, ``p != q``, of M-M: probe protected by mask ``p``, gallery by mask ``q``."""
  return list(itertools.permutations(range(num_masks), 2))


def mask_mask_rates(protected, distractors, ks: Sequence[int] = (1,), **kwargs) -> np.ndarray:
  """M-M protection success rates (Table 6): probe photo ``i`` protected by mask ``p``, the genuine mate photo
  ``j != i`` in the gallery protected by another mask ``q != p`` of the same person; distractors clean.

  Args:
    protected: ``(M, K, n, d)`` features of the test photos under each of ``M >= 2`` masks.
    distractors: ``(D, d)`` clean features of other people.
    ks: ranks.
    **kwargs: ``chunk_size``, ``ties`` of :func:`opomjax.core.evaluation.protection_success_rate`.

  Returns:
    ``(M (M - 1), len(ks))``: one row per ordered pair of :func:`mask_pairs`.
  """
  protected = _check_protected(protected)
  if protected.shape[0] < 2:
    raise ValueError(f"M-M needs at least 2 masks per identity, got {protected.shape[0]}")
  rows = []
  for p, q in mask_pairs(protected.shape[0]):
    rates = evaluation.protection_success_rate(protected[p], protected[q], distractors, ks, **kwargs)
    rows.append([rates[k] for k in ks])
  return np.asarray(rows, np.float64)


def mean_std(rates) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (population) standard deviation over masks or mask pairs (axis 0) of a rates array."""
  rates = np.asarray(rates, np.float64)
  return rates.mean(axis=0), rates.std(axis=0)
