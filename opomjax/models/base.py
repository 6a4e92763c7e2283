"""The one call shape every face model in the library has.

A *network function* works on images in the model's own input frame::

    net_fn(params, images, *, key=None, dropout_rate=0.0) -> (embeddings, activations)

``images`` ``(b, h, w, 3)`` float32 RGB in [0, 255] (the network does its own normalisation inside),
``embeddings`` ``(b, d)`` raw (not yet unit norm), ``activations`` a list of intermediate feature maps (used by
GD-UAP). With a PRNG ``key`` and ``dropout_rate > 0`` the network applies DFANet dropout (Bernoulli, drop
probability ``dropout_rate``, inverted scaling) to its convolution outputs (Eq. 15).

:class:`FaceModel` wraps a network function with its parameters and input frame and exposes the
canonical-frame interface the rest of the library uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from opomjax import frame as frame_lib

NetFn = Callable[..., tuple[jax.Array, list[jax.Array]]]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@dataclasses.dataclass(frozen=True, eq=False)
class FaceModel:
  """A differentiable face-embedding model in the canonical frame.

  Attributes:
    name: registry name.
    net_fn: the network function (see module docstring).
    params: its parameters (a pytree).
    input_frame: the geometry the network expects; canonical images are resampled into it.
    embedding_size: ``d``.
    dropout_rate: the DFANet rate used when a key is given.
  """

  name: str
  net_fn: NetFn
  params: Any
  input_frame: frame_lib.Frame
  embedding_size: int
  dropout_rate: float = 0.1

  def to_input(self, images: jax.Array) -> jax.Array:
    """Canonical-frame images ``(b, H, W, 3)`` -> the network's input frame (differentiable)."""
    return frame_lib.resample(images, frame_lib.CANONICAL, self.input_frame)

  def apply(self, params, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Pure: canonical images ``(b, H, W, 3)`` in [0, 255] -> unit embeddings ``(b, d)``."""
    emb, _ = self.net_fn(params, self.to_input(images), key=key, dropout_rate=self.dropout_rate)
    return l2_normalize(emb)

  def embed(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return self.apply(self.params, images, key)

  def activations(self, images: jax.Array, key: jax.Array | None = None) -> list[jax.Array]:
    """Intermediate feature maps for canonical images (GD-UAP, Eq. 16)."""
    _, acts = self.net_fn(self.params, self.to_input(images), key=key, dropout_rate=self.dropout_rate)
    return acts

  def embed_native(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Unit embeddings for images already in the network's own input frame (parity tests)."""
    emb, _ = self.net_fn(self.params, images, key=key, dropout_rate=self.dropout_rate)
    return l2_normalize(emb)


@dataclasses.dataclass(frozen=True, eq=False)
class BlackBoxTarget:
  """A target model without gradients (e.g. ONNX through onnxruntime), same ``embed`` call shape.

  ``embed_fn`` maps input-frame images ``(b, h, w, 3)`` float32 [0, 255] (numpy) to raw embeddings.
  """

  name: str
  embed_fn: Callable[[Any], Any]
  input_frame: frame_lib.Frame
  embedding_size: int

  def embed(self, images, key=None):
    del key
    import numpy as np

    x = np.asarray(frame_lib.resample(jnp.asarray(images, jnp.float32), frame_lib.CANONICAL, self.input_frame))
    emb = np.asarray(self.embed_fn(x), np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
