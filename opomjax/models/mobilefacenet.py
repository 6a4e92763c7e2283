"""MobileFaceNet (Chen et al., 2018) in Flax, in the layout of ``TreB1eN/InsightFace_Pytorch`` (``model.py``).

That implementation is the common PyTorch MobileFaceNet (also vendored by many face-privacy codebases): a
3x3/2 conv, a depthwise 3x3, bottleneck stages built from ``Depth_Wise`` units (1x1 expand, depthwise 3x3,
1x1 linear projection) at 56/28/14/7 px, a 1x1 conv to 512 channels, a 7x7 global depthwise conv
(``conv_6_dw``), a bias-free Linear and a BatchNorm1d. Its embedding size is a constructor argument; the
project trains it with 512, so 512 is the default here. Input: 112x112 ArcFace-aligned RGB
(:data:`opomjax.frame.ARCFACE_112`), normalised ``(x - 127.5) / 127.5`` (the project's
``Normalize([0.5] * 3, [0.5] * 3)`` on ``[0, 1]`` tensors).

Parameters: 1,200,512 with ``embedding_size=512`` (PyTorch's ``parameters()`` count; checked in
``tests/test_ports.py``). DFANet dropout acts on every conv output.

Example::

    import jax.numpy as jnp
    from opomjax.models import mobilefacenet
    model = mobilefacenet.build_mobilefacenet()         # or build_mobilefacenet("mobilefacenet.pth")
    emb, acts = model.net_fn(model.params, jnp.zeros((1, 112, 112, 3)))
    emb.shape, [a.shape[1] for a in acts]                # ((1, 512), [56, 28, 14, 7])
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import torch_convert
from opomjax.models.iresnet import HALF_NORMALIZE_SCALE, PReLU, batch_norm, conv, conv_dropout, flatten_nhwc


class ConvBlock(nn.Module):
  """``Conv_block``: conv (no bias), BN, PReLU; without the PReLU it is ``Linear_block``."""

  out_c: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  groups: int = 1
  prelu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    x = conv(self.out_c, self.kernel, self.stride, self.padding, groups=self.groups, name="conv")(x)
    x = batch_norm("bn")(conv_dropout(self, x, dropout_rate))
    return PReLU(name="prelu")(x) if self.prelu else x


#: ``Linear_block``: conv (no bias), BN, no activation.
LinearBlock = functools.partial(ConvBlock, prelu=False)


class DepthWise(nn.Module):
  """``Depth_Wise``: 1x1 expand to ``groups`` channels, depthwise 3x3 (stride), 1x1 linear projection."""

  out_c: int
  groups: int
  stride: int = 2
  residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    out = ConvBlock(self.groups, name="conv")(x, dropout_rate)
    out = ConvBlock(self.groups, 3, self.stride, 1, groups=self.groups, name="conv_dw")(out, dropout_rate)
    out = LinearBlock(self.out_c, name="project")(out, dropout_rate)
    return x + out if self.residual else out


class Residual(nn.Module):
  """``Residual``: ``num_block`` stride-1 residual ``Depth_Wise`` units (keys ``model.{i}``)."""

  c: int
  num_block: int
  groups: int

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    for i in range(self.num_block):
      x = DepthWise(self.c, self.groups, stride=1, residual=True, name=f"model.{i}")(x, dropout_rate)
    return x


class MobileFaceNet(nn.Module):
  """``MobileFaceNet(embedding_size)``; returns ``(raw embeddings, [56, 28, 14, 7 px stage outputs])``."""

  embedding_size: int = 512
  input_scale: float = HALF_NORMALIZE_SCALE

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> tuple[jax.Array, list[jax.Array]]:
    x = (x - 127.5) * self.input_scale
    x = ConvBlock(64, 3, 2, 1, name="conv1")(x, dropout_rate)
    x = ConvBlock(64, 3, 1, 1, groups=64, name="conv2_dw")(x, dropout_rate)
    acts = [x]
    x = DepthWise(64, 128, name="conv_23")(x, dropout_rate)
    x = Residual(64, 4, 128, name="conv_3")(x, dropout_rate)
    acts.append(x)
    x = DepthWise(128, 256, name="conv_34")(x, dropout_rate)
    x = Residual(128, 6, 256, name="conv_4")(x, dropout_rate)
    acts.append(x)
    x = DepthWise(128, 512, name="conv_45")(x, dropout_rate)
    x = Residual(128, 2, 256, name="conv_5")(x, dropout_rate)
    acts.append(x)
    x = ConvBlock(512, name="conv_6_sep")(x, dropout_rate)
    x = LinearBlock(512, 7, groups=512, name="conv_6_dw")(x, dropout_rate)
    x = nn.Dense(self.embedding_size, use_bias=False, name="linear")(flatten_nhwc(x))
    return batch_norm("bn")(x), acts


def Model(**kw) -> nn.Module:  # pylint: disable=invalid-name
  """The Flax module (big_vision style factory); ``kw`` sets its fields (``embedding_size``, ...)."""
  return MobileFaceNet(**kw)


def build_mobilefacenet(weights: str | os.PathLike | Any = None, *, key: jax.Array | None = None,
                        seed: int = 0, dropout_rate: float = 0.1, embedding_size: int = 512,
                        input_scale: float = HALF_NORMALIZE_SCALE,
                        name: str = "mobilefacenet") -> base.FaceModel:
  """MobileFaceNet as a FaceModel.

  Args:
    weights: a ``TreB1eN/InsightFace_Pytorch`` MobileFaceNet state dict file, or None for random weights.
    key: PRNG key for random initialisation (default ``jax.random.key(seed)``).
    seed: see ``key``.
    dropout_rate: DFANet rate.
    embedding_size: ``d`` (512 in that project; 128 in the original paper).
    input_scale: ``(x - 127.5) * input_scale``.
    name: registry name.
  """
  if embedding_size <= 0:
    raise ValueError(f"embedding_size must be positive, got {embedding_size}")
  module = MobileFaceNet(embedding_size=embedding_size, input_scale=input_scale)
  return torch_convert.make_face_model(
      name, module, input_frame=frame_lib.ARCFACE_112, embedding_size=embedding_size, weights=weights,
      key=key, seed=seed, dropout_rate=dropout_rate)
