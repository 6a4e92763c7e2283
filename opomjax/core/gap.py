"""GAP: a universal mask made by a generator network (Poursaeed et al., "Generative Adversarial Perturbations",
CVPR 2018), the generative baseline of the OPOM paper (Sec. 3.3.3).

A ResNet generator :math:`G_\\theta` (Johnson et al.'s image-transformation network, as GAP uses it) maps one
*fixed* noise pattern :math:`z` (drawn once, the shape of the canonical frame) to a raw image; a scaling
:math:`s_\\epsilon` turns it into a mask within the L-inf budget, :math:`\\delta = s_\\epsilon(G_\\theta(z))`. The
generator's weights are trained with Adam (optax) on minibatches of training photos to maximise the FI-UAP
feature distance (Eq. 17, :func:`opomjax.core.objectives.fi_uap`) between the masked and the clean features:

.. math::

   \\min_\\theta\\; L(\\theta) = -\\frac{1}{|B|} \\sum_{i \\in B} \\frac{1}{d}
   \\lVert f(\\mathrm{clip}(x_i + \\delta, 0, 255)) - f(x_i) \\rVert_2^2

with the clean features :math:`f(x_i)` computed once. The mask is universal: one for every photo of every
identity the generator was trained on (as FI-UAP-all), unlike OPOM's one mask per person.

Scalings (:data:`SCALINGS`), in pixel units of [0, 255]:

* ``"linf"`` (GAP's own, the default): :math:`t = 127.5 \\tanh(G_\\theta(z))` (the generator's tanh output
  mapped to the pixel range), then each colour channel ``c`` is scaled down so that its largest magnitude is at
  most ε, :math:`\\delta_c = t_c \\min(1, \\epsilon / \\max |t_c|)` with the maximum held constant in the gradient
  (``detach()`` in GAP's ``normalize_and_scale``). GAP subtracts the ImageNet mean of each channel before the
  scaling; face models here normalise inside their own ``embed``, so no mean is subtracted.
* ``"tanh"``: :math:`\\delta = \\epsilon \\tanh(G_\\theta(z))`.

Normalisation: GAP's generator uses batch normalisation on a batch of identical copies of ``z``, which in
training mode is instance normalisation of one copy; :class:`ResnetGenerator` uses instance normalisation on
the single noise image, so the generator is one pure function of ``(params, z)`` with no running statistics.

Everything here is pure and jittable; :mod:`opomjax.pipeline.gap` runs the epochs, minibatches and checkpoints.

Example:
  >>> import jax, jax.numpy as jnp
  >>> cfg = GapConfig(epsilon=8.0, features=4, num_blocks=1)
  >>> noise = fixed_noise(jax.random.key(0), (16, 16))
  >>> params = init_generator(jax.random.key(1), noise, cfg)
  >>> delta = universal_mask(params, noise, cfg)
  >>> delta.shape, bool(jnp.abs(delta).max() <= 8.0)
  ((16, 16, 3), True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from opomjax.core import objectives

#: How the generator's output becomes a mask within ε (see the module docstring).
SCALINGS = ("linf", "tanh")

#: Half the pixel range: the generator's tanh output in [-1, 1] times this spans [0, 255]'s width.
PIXEL_HALF_RANGE = 127.5

#: The generator halves the frame twice and doubles it back: height and width must be multiples of this.
FRAME_MULTIPLE = 4

EmbedFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class GapConfig:
  """Static hyper-parameters of GAP (hashable: a jit cache key).

  Attributes:
    epsilon: L-inf budget of the mask, in pixel units of [0, 255].
    scaling: one of :data:`SCALINGS`.
    features: channels of the generator's first layer (GAP's ``ngf``; 64 in GAP).
    num_blocks: residual blocks of the generator (6 in GAP's ``resnet_6blocks``).
    learning_rate: Adam's step size (GAP: 2e-4).
    b1: Adam's first-moment decay (GAP: 0.5).
    b2: Adam's second-moment decay (GAP: 0.999).
  """

  epsilon: float = 8.0
  scaling: str = "linf"
  features: int = 64
  num_blocks: int = 6
  learning_rate: float = 2e-4
  b1: float = 0.5
  b2: float = 0.999


class TrainState(NamedTuple):
  """The generator's weights, the optimiser's state and the number of steps taken."""

  params: Any
  opt_state: Any
  step: jax.Array


def _reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class ResnetBlock(nn.Module):
  """Two reflect-padded 3x3 convolutions with instance normalisation, plus the identity (Johnson et al.)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.features, (3, 3), padding="VALID")(_reflect_pad(x, 1))
    y = nn.relu(nn.InstanceNorm()(y))
    y = nn.Conv(self.features, (3, 3), padding="VALID")(_reflect_pad(y, 1))
    return x + nn.InstanceNorm()(y)


class ResnetGenerator(nn.Module):
  """GAP's ResNet generator: ``c7s1-F, d2F, d4F, R4F x num_blocks, u2F, uF, c7s1-3`` (no final tanh).

  ``(b, H, W, C)`` -> ``(b, H, W, 3)`` raw values; ``H`` and ``W`` multiples of :data:`FRAME_MULTIPLE`.
  """

  features: int = 64
  num_blocks: int = 6

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    f = self.features
    x = nn.relu(nn.InstanceNorm()(nn.Conv(f, (7, 7), padding="VALID")(_reflect_pad(z, 3))))
    for mult in (2, 4):  # downsampling
      x = nn.relu(nn.InstanceNorm()(nn.Conv(f * mult, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)))
    for _ in range(self.num_blocks):
      x = ResnetBlock(f * 4)(x)
    for mult in (2, 1):  # upsampling
      x = nn.relu(nn.InstanceNorm()(nn.ConvTranspose(f * mult, (3, 3), strides=(2, 2), padding="SAME")(x)))
    return nn.Conv(3, (7, 7), padding="VALID")(_reflect_pad(x, 3))


def generator(cfg: GapConfig) -> ResnetGenerator:
  return ResnetGenerator(features=cfg.features, num_blocks=cfg.num_blocks)


def fixed_noise(key: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The generator's one input: ``U(-1, 1)`` noise ``(H, W, 3)``, drawn once from ``key`` and never redrawn."""
  return jax.random.uniform(key, (*size, 3), jnp.float32, -1.0, 1.0)


def scale_linf(raw: jax.Array, epsilon: float) -> jax.Array:
  """GAP's L-inf scaling: ``t = 127.5 tanh(raw)``, each channel scaled down to magnitude at most ε.

  .. math::

     \\delta_c = t_c \\cdot \\min\\Bigl(1, \\frac{\\epsilon}{\\max_{h,w} |t_{h,w,c}|}\\Bigr)

  with the maximum under ``stop_gradient`` (GAP detaches it). ``raw`` ``(..., H, W, 3)``.
  """
  t = PIXEL_HALF_RANGE * jnp.tanh(raw)
  peak = jax.lax.stop_gradient(jnp.max(jnp.abs(t), axis=(-3, -2), keepdims=True))
  return t * jnp.minimum(1.0, epsilon / jnp.maximum(peak, 1e-12))


def scale_tanh(raw: jax.Array, epsilon: float) -> jax.Array:
  """``epsilon * tanh(raw)``: within ``[-ε, ε]`` by construction."""
  return epsilon * jnp.tanh(raw)


def scale(raw: jax.Array, cfg: GapConfig) -> jax.Array:
  """The generator's raw output as a mask within ``cfg.epsilon`` (``cfg.scaling``, see :data:`SCALINGS`)."""
  if cfg.scaling == "linf":
    return scale_linf(raw, cfg.epsilon)
  if cfg.scaling == "tanh":
    return scale_tanh(raw, cfg.epsilon)
  raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {cfg.scaling!r}")


def init_generator(key: jax.Array, noise: jax.Array, cfg: GapConfig):
  """Fresh generator weights for the noise pattern ``noise`` ``(H, W, 3)``."""
  h, w = noise.shape[:2]
  if h % FRAME_MULTIPLE or w % FRAME_MULTIPLE:
    raise ValueError(f"the GAP generator needs a frame whose height and width are multiples of {FRAME_MULTIPLE}, "
                     f"got {h}x{w}")
  return generator(cfg).init(key, noise[None])["params"]


def universal_mask(params, noise: jax.Array, cfg: GapConfig) -> jax.Array:
  """:math:`\\delta = s_\\epsilon(G_\\theta(z))`: the mask ``(H, W, 3)`` the generator makes of ``noise``."""
  raw = generator(cfg).apply({"params": params}, noise[None])[0]
  return scale(raw, cfg)


def optimizer(cfg: GapConfig) -> optax.GradientTransformation:
  """Adam with GAP's settings (``lr=2e-4, betas=(0.5, 0.999)`` by default)."""
  return optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2)


def init_state(key: jax.Array, noise: jax.Array, cfg: GapConfig) -> TrainState:
  """Fresh weights, a fresh optimiser state, step 0."""
  params = init_generator(key, noise, cfg)
  return TrainState(params, optimizer(cfg).init(params), jnp.zeros((), jnp.int32))


def gap_loss(params, noise: jax.Array, images: jax.Array, clean: jax.Array, weights: jax.Array, surrogate_params,
             *, embed_fn: EmbedFn, cfg: GapConfig) -> jax.Array:
  """Minus the FI-UAP objective (Eq. 17) of the generator's mask on a minibatch: the loss Adam minimises.

  .. math::

     L = -\\frac{\\sum_i w_i\\, J(\\hat f_i, f_i)}{\\sum_i w_i}, \\qquad
     J(\\hat f_i, f_i) = \\frac{1}{d} \\lVert n(\\hat f_i) - n(f_i) \\rVert_2^2, \\quad
     \\hat f_i = f(\\mathrm{clip}(x_i + \\delta, 0, 255))

  With all weights 1 this is ``-fi_uap(adv, clean)`` of the batch; weight 0 marks a padding row (the last,
  short minibatch of an epoch is padded to the batch size so that one program serves every step).

  Args:
    params: the generator's weights.
    noise: its fixed input ``(H, W, 3)``.
    images: ``(b, H, W, 3)`` training photos in [0, 255] (canonical frame).
    clean: ``(b, d)`` their clean features.
    weights: ``(b,)`` 1 for a real photo, 0 for padding.
    surrogate_params: the surrogate's weights (an argument, not constants folded into the program).
    embed_fn: the surrogate, ``embed_fn(surrogate_params, images) -> (b, d)``.
    cfg: the static hyper-parameters.

  Returns:
    The scalar loss.
  """
  delta = universal_mask(params, noise, cfg)
  adv = embed_fn(surrogate_params, jnp.clip(images + delta, 0.0, 255.0))
  per_image = jax.vmap(lambda a, c: objectives.fi_uap(a[None], c[None]))(adv, clean)
  return -jnp.sum(weights * per_image) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, noise: jax.Array, images: jax.Array, clean: jax.Array, weights: jax.Array,
               surrogate_params, *, embed_fn: EmbedFn, cfg: GapConfig) -> tuple[TrainState, jax.Array]:
  """One Adam step on one minibatch (see :func:`gap_loss` for the arguments); returns the new state and the
  loss *before* the step."""
  loss, grads = jax.value_and_grad(gap_loss)(state.params, noise, images, clean, weights, surrogate_params,
                                             embed_fn=embed_fn, cfg=cfg)
  updates, opt_state = optimizer(cfg).update(grads, state.opt_state, state.params)
  return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss
