"""FaceNet's Inception-ResNet-v1 in Flax, in the layout of facenet-pytorch
(``timesler/facenet-pytorch``, ``models/inception_resnet_v1.py``; its ``vggface2`` and ``casia-webface``
checkpoints are David Sandberg's TensorFlow FaceNet models converted to PyTorch).

160x160 RGB input, normalised by facenet-pytorch's ``fixed_image_standardization``: ``(x - 127.5) / 128``.
The stem (conv 3x3/2, 3x3, 3x3, max-pool, 1x1, 3x3, 3x3/2) is followed by 5 x Block35 (scale 0.17),
Mixed_6a, 10 x Block17 (0.10), Mixed_7a, 5 x Block8 (0.20), a final Block8 without ReLU, global average
pooling, a bias-free 1792->512 Linear and a BatchNorm1d (eps 1e-3). The raw embedding is that BatchNorm's
output (facenet-pytorch L2-normalises it afterwards). The checkpoints' classifier (``logits.*``) is dropped.
Parameters: 23,482,624 without the classifier (PyTorch ``parameters()`` count; checked in
``tests/test_ports.py``). DFANet dropout acts on every conv output.

**Input frame.** facenet-pytorch's ``MTCNN(image_size=160, margin=m)`` does not align: it crops the detector
box grown by ``m`` output pixels (``m / 2`` on each side, in the box's own scale) and resizes it to
160x160. A landmark at box-normalised position ``(u, v)`` therefore lands at
``m / 2 + u * (160 - m)``, ``m / 2 + v * (160 - m)``. :func:`mtcnn_frame` builds the 5-point template from
that formula and :data:`MTCNN_BOX_LANDMARKS`, the positions of MTCNN's five landmarks inside its (upright,
frontal-face) box. Those positions are an estimate (eyes at 40 % of the box height and 31 %/69 % of its
width, nose tip at the centre 58 % down, mouth corners 77 % down at 35 %/65 %), chosen so that the
eye-distance to eye-mouth-height ratio of a typical MTCNN box (about 1.2 times taller than wide, squashed
to a square) matches the ArcFace template's 0.87; MTCNN boxes vary from face to face by several percent,
so a frame is only ever an average. :data:`FACENET_160` uses ``margin=14``.

Example::

    import jax.numpy as jnp
    from opomjax.models import inception_resnet_v1 as irv1
    model = irv1.build_inception_resnet_v1()            # or ...("20180402-114759-vggface2.pt")
    emb, acts = model.net_fn(model.params, jnp.zeros((1, 160, 160, 3)))
    emb.shape, [a.shape[1] for a in acts]                # ((1, 512), [17, 17, 8, 3])
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import pooling
from opomjax.models import torch_convert
from opomjax.models.iresnet import batch_norm, conv, conv_dropout, flatten_nhwc

#: Estimated mean positions of MTCNN's 5 landmarks in its box, as fractions (u, v) of width and height.
MTCNN_BOX_LANDMARKS = np.array(
    [[0.31, 0.40], [0.69, 0.40], [0.50, 0.58], [0.35, 0.77], [0.65, 0.77]], dtype=np.float64)

#: ``fixed_image_standardization``: ``(x - 127.5) / 128``.
FACENET_INPUT_SCALE = 1.0 / 128.0


def mtcnn_frame(image_size: int = 160, margin: float = 14.0) -> frame_lib.Frame:
  """The frame of a facenet-pytorch ``MTCNN(image_size, margin)`` crop (see the module docstring)."""
  if image_size <= 0 or not 0 <= margin < image_size:
    raise ValueError(f"need image_size > 0 and 0 <= margin < image_size, got {image_size}, {margin}")
  landmarks = margin / 2 + MTCNN_BOX_LANDMARKS * (image_size - margin)
  return frame_lib.make_frame(f"mtcnn{image_size}m{margin:g}", (image_size, image_size), landmarks)


#: facenet-pytorch's 160x160 MTCNN crop with a 14-pixel margin.
FACENET_160 = mtcnn_frame(160, 14.0)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(3, stride=2)`` (no padding, floor)."""
  return pooling.max_pool_2d(x, (3, 3), (2, 2))


class BasicConv2d(nn.Module):
  """conv (no bias), BN (eps 1e-3), ReLU."""

  out_planes: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    x = conv(self.out_planes, self.kernel, self.stride, self.padding, name="conv")(x)
    return nn.relu(batch_norm("bn", 1e-3)(conv_dropout(self, x, dropout_rate)))


def _branch(name: str, specs, x, dropout_rate):
  """A ``nn.Sequential`` of BasicConv2d named ``{name}.{i}``; ``specs`` = [(out, kernel, stride, pad)]."""
  for i, (out, kernel, stride, padding) in enumerate(specs):
    x = BasicConv2d(out, kernel, stride, padding, name=f"{name}.{i}")(x, dropout_rate)
  return x


class ResidualInception(nn.Module):
  """Block35 / Block17 / Block8: parallel branches, 1x1 conv (with bias) back up, scaled residual, ReLU."""

  kind: str  # "block35" | "block17" | "block8"
  scale: float
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    channels = x.shape[-1]
    if self.kind == "block35":
      branches = [
          BasicConv2d(32, 1, name="branch0")(x, dropout_rate),
          _branch("branch1", [(32, 1, 1, 0), (32, 3, 1, 1)], x, dropout_rate),
          _branch("branch2", [(32, 1, 1, 0), (32, 3, 1, 1), (32, 3, 1, 1)], x, dropout_rate),
      ]
    elif self.kind == "block17":
      branches = [
          BasicConv2d(128, 1, name="branch0")(x, dropout_rate),
          _branch("branch1", [(128, 1, 1, 0), (128, (1, 7), 1, (0, 3)), (128, (7, 1), 1, (3, 0))], x,
                  dropout_rate),
      ]
    elif self.kind == "block8":
      branches = [
          BasicConv2d(192, 1, name="branch0")(x, dropout_rate),
          _branch("branch1", [(192, 1, 1, 0), (192, (1, 3), 1, (0, 1)), (192, (3, 1), 1, (1, 0))], x,
                  dropout_rate),
      ]
    else:
      raise ValueError(f"unknown block kind {self.kind!r}")
    out = conv(channels, 1, bias=True, name="conv2d")(jnp.concatenate(branches, axis=-1))
    out = conv_dropout(self, out, dropout_rate) * self.scale + x
    return nn.relu(out) if self.relu else out


class Mixed6a(nn.Module):
  """17x17x256 -> 8x8x896."""

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    return jnp.concatenate([
        BasicConv2d(384, 3, 2, name="branch0")(x, dropout_rate),
        _branch("branch1", [(192, 1, 1, 0), (192, 3, 1, 1), (256, 3, 2, 0)], x, dropout_rate),
        max_pool_3x3_s2(x),
    ], axis=-1)


class Mixed7a(nn.Module):
  """8x8x896 -> 3x3x1792."""

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    return jnp.concatenate([
        _branch("branch0", [(256, 1, 1, 0), (384, 3, 2, 0)], x, dropout_rate),
        _branch("branch1", [(256, 1, 1, 0), (256, 3, 2, 0)], x, dropout_rate),
        _branch("branch2", [(256, 1, 1, 0), (256, 3, 1, 1), (256, 3, 2, 0)], x, dropout_rate),
        max_pool_3x3_s2(x),
    ], axis=-1)


class InceptionResnetV1(nn.Module):
  """facenet-pytorch ``InceptionResnetV1`` (eval, no classifier).

  Returns ``(raw embeddings (b, 512), [stem 17x17, repeat_1 17x17, repeat_2 8x8, block8 3x3])``.
  """

  input_scale: float = FACENET_INPUT_SCALE

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> tuple[jax.Array, list[jax.Array]]:
    x = (x - 127.5) * self.input_scale
    x = BasicConv2d(32, 3, 2, name="conv2d_1a")(x, dropout_rate)
    x = BasicConv2d(32, 3, 1, name="conv2d_2a")(x, dropout_rate)
    x = BasicConv2d(64, 3, 1, 1, name="conv2d_2b")(x, dropout_rate)
    x = max_pool_3x3_s2(x)
    x = BasicConv2d(80, 1, 1, name="conv2d_3b")(x, dropout_rate)
    x = BasicConv2d(192, 3, 1, name="conv2d_4a")(x, dropout_rate)
    x = BasicConv2d(256, 3, 2, name="conv2d_4b")(x, dropout_rate)
    acts = [x]
    for i in range(5):
      x = ResidualInception("block35", 0.17, name=f"repeat_1.{i}")(x, dropout_rate)
    acts.append(x)
    x = Mixed6a(name="mixed_6a")(x, dropout_rate)
    for i in range(10):
      x = ResidualInception("block17", 0.10, name=f"repeat_2.{i}")(x, dropout_rate)
    acts.append(x)
    x = Mixed7a(name="mixed_7a")(x, dropout_rate)
    for i in range(5):
      x = ResidualInception("block8", 0.20, name=f"repeat_3.{i}")(x, dropout_rate)
    x = ResidualInception("block8", 1.0, relu=False, name="block8")(x, dropout_rate)
    acts.append(x)
    x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1); dropout is identity in eval
    x = nn.Dense(512, use_bias=False, name="last_linear")(flatten_nhwc(x))
    return batch_norm("last_bn", 1e-3)(x), acts


def Model(**kw) -> nn.Module:  # pylint: disable=invalid-name
  """The Flax module (big_vision style factory); ``kw`` sets its fields (``input_scale``)."""
  return InceptionResnetV1(**kw)


def build_inception_resnet_v1(weights: str | os.PathLike | Any = None, *, key: jax.Array | None = None,
                              seed: int = 0, dropout_rate: float = 0.1,
                              input_frame: frame_lib.Frame = FACENET_160,
                              name: str = "inception_resnet_v1") -> base.FaceModel:
  """FaceNet Inception-ResNet-v1 as a FaceModel.

  Args:
    weights: a facenet-pytorch state dict file (e.g. ``20180402-114759-vggface2.pt``; its ``logits`` head is
      ignored), or None for random weights.
    key: PRNG key for random initialisation (default ``jax.random.key(seed)``).
    seed: see ``key``.
    dropout_rate: DFANet rate.
    input_frame: a 160x160 frame; :data:`FACENET_160` by default, :func:`mtcnn_frame` for another margin.
    name: registry name.
  """
  if tuple(input_frame.size) != (160, 160):
    raise ValueError(f"input_frame must be 160x160, got {input_frame.size}")
  return torch_convert.make_face_model(
      name, InceptionResnetV1(), input_frame=input_frame, embedding_size=512, weights=weights, key=key,
      seed=seed, dropout_rate=dropout_rate, ignore=("logits.*",))
