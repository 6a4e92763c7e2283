"""ArcFace's "improved" ResNets (IR-50/100/152, IR-SE-50) in Flax, in two PyTorch layouts.

Both layouts compute the same kind of network (BN-Conv-PReLU-Conv-BN residual units, the last unit of the
stem and every stage at stride 2, a BN-Dropout-Linear-BN output head on the 7x7x512 map); they differ in
details and in their state-dict keys:

* **face.evoLVe** (``ir50``, ``ir100``, ``ir152``, ``ir_se50``), the layout of the official OPOM code
  (``zhongyy/OPOM``, ``code/generation/backbone/model_irse.py``): identity shortcuts are
  ``MaxPool2d(1, stride)`` (sub-sampling) whenever the channel count stays, unit = BN, conv3x3, PReLU,
  conv3x3/stride, BN [, squeeze-excitation 1/16]. Input normalisation as in OPOM's ``forward``:
  ``(x - 127.5) * 0.078125``. Weights trained with face.evoLVe's own pipeline (``Normalize(0.5, 0.5)`` on
  ``[0, 1]`` tensors) need ``input_scale=1/127.5``.
* **InsightFace** (``iresnet50``, ``iresnet100``), ``deepinsight/insightface``,
  ``recognition/arcface_torch/backbones/iresnet.py``: every stage's first unit has a 1x1-conv + BN
  shortcut, unit = BN, conv3x3, BN, PReLU, conv3x3/stride, BN. Input ``(x - 127.5) / 127.5`` as in
  arcface_torch's ``inference.py``.

Both take 112x112 RGB ArcFace-aligned faces (:data:`opomjax.frame.ARCFACE_112`) and give 512-D embeddings.
Parameter counts (Flax = PyTorch ``sum(p.numel() for p in model.parameters())``, the 25088->512 output
Linear included; ``tests/test_ports.py`` checks them against the PyTorch models):

==================  ===========
``ir50``            43,574,976
``ir_se50``         43,797,696
``ir100``           65,129,792
``ir152``           70,737,600
``iresnet50``       43,590,848
``iresnet100``      65,156,160
==================  ===========

DFANet dropout (Eq. 15 of the paper; OPOM's ``model_irse_drop.py``) drops conv outputs of the stem conv and
of both 3x3 convs of every unit (not of the shortcut or SE convs), when the network function is given a key.

Example::

    import jax.numpy as jnp
    from opomjax.models import iresnet
    model = iresnet.build_ir50()                      # random weights; build_ir50("ir50.pth") loads PyTorch
    emb, acts = model.net_fn(model.params, jnp.zeros((2, 112, 112, 3)))
    emb.shape, [a.shape[1] for a in acts]             # ((2, 512), [112, 56, 28, 14, 7])
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import layers
from opomjax.models import torch_convert

#: OPOM's input normalisation for its face.evoLVe IR models: ``(x - 127.5) * 0.078125``.
OPOM_INPUT_SCALE = 0.078125
#: ``Normalize(mean=0.5, std=0.5)`` on ``[0, 1]`` tensors, i.e. ``(x - 127.5) / 127.5``.
HALF_NORMALIZE_SCALE = 1.0 / 127.5

#: Units per stage (face.evoLVe ``get_blocks``; InsightFace ``iresnet50/100`` use the same counts).
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_DEPTHS = (64, 128, 256, 512)

# ---------------------------------------------------------------------------------------------------------
# Layers shared by the ported networks.


def conv_dropout(module: nn.Module, x: jax.Array, rate: float) -> jax.Array:
  """DFANet dropout (Eq. 15, :class:`~opomjax.models.layers.DFANetDropout`) on a conv output of ``module``.

  Active only when ``module`` was applied with a ``"dropout"`` PRNG stream and ``rate > 0`` (a Python float).
  """
  return layers.DFANetDropout(rate)(x, deterministic=not module.has_rng("dropout"))


class PReLU(nn.Module):
  """Per-channel PReLU (PyTorch ``nn.PReLU(C)``; weight ``alpha`` initialised to 0.25)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha * x)


def conv(features: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0,
         *, groups: int = 1, bias: bool = False, name: str | None = None) -> nn.Conv:
  """A PyTorch-style ``Conv2d`` (explicit symmetric padding) as ``nn.Conv``."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  ph, pw = (padding, padding) if isinstance(padding, int) else padding
  return nn.Conv(features, (kh, kw), strides=(stride, stride), padding=((ph, ph), (pw, pw)),
                 feature_group_count=groups, use_bias=bias, name=name)


def batch_norm(name: str, epsilon: float = 1e-5) -> nn.BatchNorm:
  """Inference-mode BatchNorm (running statistics in ``batch_stats``)."""
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=epsilon, name=name)


def flatten_nhwc(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0], -1))


def ir_stem(module: nn.Module, x: jax.Array, input_scale: float, dropout_rate, names: Sequence[str]):
  """Normalisation, then conv3x3 (64), BN, PReLU; ``names`` = (conv, bn, prelu) module names."""
  x = (x - 127.5) * input_scale
  x = conv_dropout(module, conv(64, 3, 1, 1, name=names[0])(x), dropout_rate)
  return PReLU(name=names[2])(batch_norm(names[1])(x))


def ir_head(x: jax.Array, features: int, names: Sequence[str]) -> jax.Array:
  """BN2d, flatten (NHWC; eval-mode dropout is the identity), Linear, BN1d; ``names`` = (bn, fc, bn1d)."""
  x = flatten_nhwc(batch_norm(names[0])(x))
  return batch_norm(names[2])(nn.Dense(features, name=names[1])(x))


# ---------------------------------------------------------------------------------------------------------
# face.evoLVe layout.


class SEModule(nn.Module):
  """Squeeze-excitation: global mean, 1x1 conv C->C/r, ReLU, 1x1 conv C/r->C, sigmoid gate."""

  channels: int
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(conv(self.channels // self.reduction, 1, name="fc1")(s))
    s = nn.sigmoid(conv(self.channels, 1, name="fc2")(s))
    return x * s


class EvolveBottleneck(nn.Module):
  """face.evoLVe ``bottleneck_IR`` / ``bottleneck_IR_SE`` (keys ``res_layer.*``, ``shortcut_layer.*``)."""

  in_channel: int
  depth: int
  stride: int
  se: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    if self.in_channel == self.depth:
      shortcut = x[:, ::self.stride, ::self.stride, :]  # MaxPool2d(kernel 1, stride)
    else:
      shortcut = conv(self.depth, 1, self.stride, name="shortcut_layer.0")(x)
      shortcut = batch_norm("shortcut_layer.1")(shortcut)
    r = batch_norm("res_layer.0")(x)
    r = conv_dropout(self, conv(self.depth, 3, 1, 1, name="res_layer.1")(r), dropout_rate)
    r = PReLU(name="res_layer.2")(r)
    r = conv_dropout(self, conv(self.depth, 3, self.stride, 1, name="res_layer.3")(r), dropout_rate)
    r = batch_norm("res_layer.4")(r)
    if self.se:
      r = SEModule(self.depth, name="res_layer.5")(r)
    return r + shortcut


class EvolveIR(nn.Module):
  """face.evoLVe ``Backbone(input_size=[112, 112], num_layers, mode)`` with OPOM's input normalisation.

  Returns ``(embeddings (b, 512), [stem, stage1, stage2, stage3, stage4] feature maps)``.
  """

  num_layers: int = 50
  se: bool = False
  input_scale: float = OPOM_INPUT_SCALE
  embedding_size: int = 512

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> tuple[jax.Array, list[jax.Array]]:
    x = ir_stem(self, x, self.input_scale, dropout_rate, ("input_layer.0", "input_layer.1", "input_layer.2"))
    acts = [x]
    index, in_channel = 0, 64
    for depth, units in zip(STAGE_DEPTHS, STAGE_UNITS[self.num_layers]):
      for u in range(units):
        x = EvolveBottleneck(in_channel, depth, 2 if u == 0 else 1, self.se, name=f"body.{index}")(
            x, dropout_rate)
        index, in_channel = index + 1, depth
      acts.append(x)
    # output_layer.1 is Dropout (identity in eval), output_layer.2 Flatten.
    return ir_head(x, self.embedding_size, ("output_layer.0", "output_layer.3", "output_layer.4")), acts


# ---------------------------------------------------------------------------------------------------------
# InsightFace arcface_torch layout.


class IBasicBlock(nn.Module):
  """arcface_torch ``IBasicBlock`` (keys ``bn1``, ``conv1``, ``bn2``, ``prelu``, ``conv2``, ``bn3``)."""

  planes: int
  stride: int
  downsample: bool

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> jax.Array:
    identity = x
    out = batch_norm("bn1")(x)
    out = conv_dropout(self, conv(self.planes, 3, 1, 1, name="conv1")(out), dropout_rate)
    out = PReLU(name="prelu")(batch_norm("bn2")(out))
    out = conv_dropout(self, conv(self.planes, 3, self.stride, 1, name="conv2")(out), dropout_rate)
    out = batch_norm("bn3")(out)
    if self.downsample:
      identity = batch_norm("downsample.1")(conv(self.planes, 1, self.stride, name="downsample.0")(x))
    return out + identity


class IResNet(nn.Module):
  """arcface_torch ``IResNet(IBasicBlock, layers)`` (``iresnet50``/``iresnet100``), eval mode.

  Returns ``(embeddings (b, num_features), [stem, layer1, layer2, layer3, layer4] feature maps)``.
  """

  layers: Sequence[int] = STAGE_UNITS[50]
  input_scale: float = HALF_NORMALIZE_SCALE
  num_features: int = 512

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate=0.0) -> tuple[jax.Array, list[jax.Array]]:
    x = ir_stem(self, x, self.input_scale, dropout_rate, ("conv1", "bn1", "prelu"))
    acts = [x]
    inplanes = 64
    for stage, (planes, units) in enumerate(zip(STAGE_DEPTHS, self.layers), start=1):
      for u in range(units):
        stride = 2 if u == 0 else 1
        downsample = stride != 1 or inplanes != planes
        x = IBasicBlock(planes, stride, downsample, name=f"layer{stage}.{u}")(x, dropout_rate)
        inplanes = planes
      acts.append(x)
    return ir_head(x, self.num_features, ("bn2", "fc", "features")), acts


#: variant -> (layout class, its options), for :func:`Model`.
VARIANTS = {
    "ir50": (EvolveIR, dict(num_layers=50)),
    "ir100": (EvolveIR, dict(num_layers=100)),
    "ir152": (EvolveIR, dict(num_layers=152)),
    "ir_se50": (EvolveIR, dict(num_layers=50, se=True)),
    "iresnet50": (IResNet, dict(layers=STAGE_UNITS[50])),
    "iresnet100": (IResNet, dict(layers=STAGE_UNITS[100])),
}


def Model(variant: str = "ir50", **kw) -> nn.Module:  # pylint: disable=invalid-name
  """The Flax module of a variant (big_vision style factory); ``kw`` overrides its fields."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  cls, options = VARIANTS[variant]
  return cls(**{**options, **kw})


# ---------------------------------------------------------------------------------------------------------
# Builders (registry entries).

_OUTPUT_CHW = (512, 7, 7)


def _build(name: str, module: nn.Module, fc_key: str, weights, key, seed, dropout_rate) -> base.FaceModel:
  return torch_convert.make_face_model(
      name, module, input_frame=frame_lib.ARCFACE_112, embedding_size=512, weights=weights, key=key,
      seed=seed, dropout_rate=dropout_rate, flatten_chw={fc_key: _OUTPUT_CHW})


def build_evolve_ir(num_layers: int, se: bool = False, weights: str | os.PathLike | Any = None, *,
                    key: jax.Array | None = None, seed: int = 0, dropout_rate: float = 0.1,
                    input_scale: float = OPOM_INPUT_SCALE, name: str | None = None) -> base.FaceModel:
  """A face.evoLVe-layout IR (``num_layers`` in 50, 100, 152) as a FaceModel.

  Args:
    num_layers: depth.
    se: squeeze-excitation units (IR-SE).
    weights: a face.evoLVe / OPOM state dict file (``.pth``, ``.safetensors``), or None for random weights.
    key: PRNG key for random initialisation (default ``jax.random.key(seed)``).
    seed: see ``key``.
    dropout_rate: DFANet rate (OPOM uses 0.1 for ResNet-50 surrogates).
    input_scale: ``(x - 127.5) * input_scale``; OPOM's 0.078125 by default.
    name: registry name.
  """
  if num_layers not in STAGE_UNITS:
    raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
  name = name or f"ir{'_se' if se else ''}{num_layers}"
  module = EvolveIR(num_layers=num_layers, se=se, input_scale=input_scale)
  return _build(name, module, "output_layer.3", weights, key, seed, dropout_rate)


def build_insightface_iresnet(num_layers: int, weights: str | os.PathLike | Any = None, *,
                              key: jax.Array | None = None, seed: int = 0, dropout_rate: float = 0.1,
                              input_scale: float = HALF_NORMALIZE_SCALE,
                              name: str | None = None) -> base.FaceModel:
  """An InsightFace arcface_torch ``iresnet{50,100}`` as a FaceModel (arguments as :func:`build_evolve_ir`)."""
  if num_layers not in (50, 100):
    raise ValueError(f"num_layers must be 50 or 100 for the InsightFace layout, got {num_layers}")
  module = IResNet(layers=STAGE_UNITS[num_layers], input_scale=input_scale)
  return _build(name or f"iresnet{num_layers}", module, "fc", weights, key, seed, dropout_rate)


def build_ir50(weights=None, **options) -> base.FaceModel:
  """IR-50, face.evoLVe/OPOM layout (OPOM's default surrogate)."""
  return build_evolve_ir(50, False, weights, **options)


def build_ir100(weights=None, **options) -> base.FaceModel:
  """IR-100, face.evoLVe/OPOM layout."""
  return build_evolve_ir(100, False, weights, **options)


def build_ir152(weights=None, **options) -> base.FaceModel:
  """IR-152, face.evoLVe/OPOM layout."""
  return build_evolve_ir(152, False, weights, **options)


def build_ir_se50(weights=None, **options) -> base.FaceModel:
  """IR-SE-50, face.evoLVe/OPOM layout."""
  return build_evolve_ir(50, True, weights, **options)


def build_iresnet50(weights=None, **options) -> base.FaceModel:
  """iresnet50, InsightFace arcface_torch layout."""
  return build_insightface_iresnet(50, weights, **options)


def build_iresnet100(weights=None, **options) -> base.FaceModel:
  """iresnet100, InsightFace arcface_torch layout."""
  return build_insightface_iresnet(100, weights, **options)
