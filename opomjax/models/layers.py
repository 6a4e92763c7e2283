"""Small building blocks shared by the Flax face networks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from opomjax.models import dropout


class Affine(nn.Module):
  """Per-channel ``x * scale + bias``: a batch normalisation with its statistics folded in (inference)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return x * scale + bias


class DFANetDropout(nn.Module):
  r"""DFANet dropout on a convolution output (Eq. 15): keeps each unit with probability ``1 - rate``.

  .. math:: \tilde{x} = \frac{m \odot x}{1 - p}, \qquad m_i \sim \mathrm{Bernoulli}(1 - p)

  Active only when ``deterministic`` is False and ``rate > 0``; it takes its key from the ``'dropout'`` PRNG
  stream (``module.apply(..., rngs={'dropout': key})``) and draws the mask with
  :func:`opomjax.models.dropout.dfanet_dropout` (a keyed hash, far cheaper than ``flax.linen.Dropout``'s
  Threefry bits), like the ONNX and TensorFlow.js surrogates.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"dropout_rate must lie in [0, 1), got {self.rate}")
    if deterministic or self.rate == 0.0:
      return x
    return dropout.dfanet_dropout(x, self.make_rng("dropout"), self.rate)


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
