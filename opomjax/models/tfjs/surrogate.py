"""TensorFlow.js graph models as differentiable surrogates (:class:`~opomjax.models.base.FaceModel`).

:func:`load_tfjs_model` turns any TensorFlow.js face-embedding graph model (``model.json`` + weight shards)
into a white-box surrogate by interpreting its graph with ``jax.numpy`` / ``jax.lax``
(:mod:`~opomjax.models.tfjs.graph`). Two registered models use it:

* ``faceres`` (:func:`build_faceres`): the HSE MobileNet multi-task network (Savchenko), identity descriptor
  ``global_pooling/Mean`` (1,024-D). Input: the whole 128x128 canonical chip resized to 224x224, BGR, the
  ImageNet channel means (103.939, 116.779, 123.68) subtracted, no scaling (the upstream preprocessing; RGB
  0..255 without means scores about 18 points lower on Privacy-LFW).
* ``mobileface`` (:func:`build_mobileface`): MobileFace (256-D ``batchnorm0/add_1``) on the 112x112 ArcFace
  crop, RGB 0..255 (the graph normalises ``(x - 127.5) / 128`` itself).

Both files are found and sha256-checked by :func:`opomjax.models.checkpoints.resolve_file` (the ``.json``),
and the loader checks the weight shard against the digest recorded here (a model is two files).

The network function takes a PRNG key: with ``dropout_rate > 0`` it applies DFANet dropout (Eq. 15) to every
convolution output, a fresh mask per convolution node.

Example::

    import jax, jax.numpy as jnp
    from opomjax.models.tfjs import build_faceres
    model = build_faceres()                              # the registered files, sha256-checked
    x = jnp.full((2, 128, 128, 3), 128.0)                # canonical-frame RGB [0, 255]
    emb = model.embed(x)                                 # (2, 1024), unit norm
    grad = jax.grad(lambda im: model.embed(im)[0, 0])(x)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import checkpoints
from opomjax.models.tfjs import graph as graph_lib
from opomjax.models.tfjs import operators
from opomjax.models.tfjs import reading

#: The canonical 128x128 chip resized as a whole to 224x224 (faceres' input frame): same content, 1.75x the
#: pixels (index coordinates: ``p_224 = 1.75 * p_128 + 0.375``, pixel centres aligned).
CANONICAL_224 = frame_lib.make_frame("arcface128_224", (224, 224),
                                     frame_lib.CANONICAL.landmarks_array * 1.75 + 0.375)

#: ImageNet channel means in BGR order (Keras ``preprocess_input`` "caffe" mode), faceres' input offset.
IMAGENET_MEANS_BGR = (103.939, 116.779, 123.68)

#: sha256 of the registered weight shards (the registry checks the ``.json``; these check the ``.bin``).
SHARD_SHA256 = {
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
}


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How RGB images in [0, 255] become the graph input: channel order, then ``(x - offset) * scale``.

  Attributes:
    channel_order: "RGB" or "BGR", what the graph expects.
    pixel_offset: per channel in the graph's order (or one value).
    pixel_scale: multiplier after the offset.
  """

  channel_order: str = "RGB"
  pixel_offset: tuple[float, ...] = (0.0,)
  pixel_scale: float = 1.0

  def apply(self, images: jax.Array) -> jax.Array:
    x = images[..., ::-1] if self.channel_order == "BGR" else images
    if any(self.pixel_offset):
      x = x - jnp.asarray(self.pixel_offset, x.dtype)
    if self.pixel_scale != 1.0:
      x = x * self.pixel_scale
    return x


def make_input_spec(channel_order: str, pixel_offset: float | Sequence[float], pixel_scale: float) -> InputSpec:
  if channel_order not in ("RGB", "BGR"):
    raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
  offset = tuple(float(v) for v in np.atleast_1d(np.asarray(pixel_offset, np.float64)))
  if len(offset) not in (1, 3):
    raise ValueError(f"pixel_offset must be one value or three (one per channel), got {pixel_offset!r}")
  return InputSpec(channel_order, offset, float(pixel_scale))


def default_activation_nodes(graph: graph_lib.Graph, params, input_shape: Sequence[int]) -> list[str]:
  """One node per resolution stage: the last 4-D node (from the first convolution on, not a ``Pad``) at each
  spatial size.

  Args:
    graph: the converted graph.
    params: its parameters (only their shapes are used).
    input_shape: an NHWC input shape to trace with (batch 1 is enough).
  """
  first_conv = next((i for i, n in enumerate(graph.nodes) if n.op in operators.CONV_OPS), 0)
  candidates = [n.name for n in graph.nodes[first_conv:] if n.op not in ("Pad", "PadV2", "MirrorPad")]
  rec = jax.eval_shape(lambda p, x: graph_lib.run_graph(graph, p, x, record=candidates)[1], params,
                       jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  last_at: dict[tuple[int, ...], str] = {}
  for name in candidates:
    shape = rec[name].shape
    if len(shape) == 4 and shape[1] > 1:
      last_at[tuple(shape[1:3])] = name
  return list(last_at.values())


def make_net_fn(graph: graph_lib.Graph, spec: InputSpec, *, activation_nodes: Sequence[str] = ()) -> base.NetFn:
  """The network function ``net_fn(params, images, *, key=None, dropout_rate=0.0) -> (emb, acts)``.

  Args:
    graph: from :func:`~opomjax.models.tfjs.graph.convert`.
    spec: how images become the graph input.
    activation_nodes: nodes whose outputs are returned as activations (NHWC).
  """
  activation_nodes = tuple(activation_nodes)

  def net_fn(params, images, *, key=None, dropout_rate=0.0):
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape (b, h, w, 3), got {images.shape}")
    if key is None or dropout_rate <= 0:
      key, dropout_rate = None, 0.0
    y, rec = graph_lib.run_graph(graph, params, spec.apply(images), key=key, dropout_rate=dropout_rate,
                                 record=activation_nodes)
    return jnp.reshape(y, (y.shape[0], -1)), [rec[name] for name in activation_nodes]

  return net_fn


def load_tfjs_model(
    path: str | os.PathLike,
    *,
    input_frame: frame_lib.Frame = frame_lib.ARCFACE_112,
    channel_order: str = "RGB",
    pixel_offset: float | Sequence[float] = 0.0,
    pixel_scale: float = 1.0,
    input_name: str | None = None,
    output_name: str | None = None,
    activation_nodes: Sequence[str] | None = None,
    dropout_rate: float = 0.1,
    name: str | None = None,
    shard_sha256: dict[str, str] | None = None,
) -> base.FaceModel:
  """Any TensorFlow.js graph face-embedding model as a differentiable surrogate.

  Args:
    path: the ``model.json`` (its weight shards next to it).
    input_frame: the alignment the model was trained on (canonical images are resampled into it); its size
      is the network input size.
    channel_order: "RGB" or "BGR", what the graph expects.
    pixel_offset: the graph input is ``(x - pixel_offset) * pixel_scale`` for ``x`` in [0, 255] in the
      graph's channel order (scalar or per channel).
    pixel_scale: see ``pixel_offset``.
    input_name: the image placeholder (default: the first ``Placeholder``).
    output_name: the embedding node (default: the json signature's first output).
    activation_nodes: node names returned as activations (default: one per resolution stage).
    dropout_rate: the DFANet rate used when the model is given a key.
    name: the model's name (default: the file stem).
    shard_sha256: optional ``{shard file name: sha256}`` the weight shards must match.

  Returns:
    A :class:`~opomjax.models.base.FaceModel`.

  Raises:
    UnsupportedOpError: the graph uses an op the interpreter does not implement (named in the message).

  Example::

    model = load_tfjs_model("face/model.json", input_frame=frame_lib.ARCFACE_112, pixel_offset=127.5,
                            pixel_scale=1 / 128, output_name="embedding")
  """
  spec = make_input_spec(channel_order, pixel_offset, pixel_scale)
  model = reading.read_tfjs(path, shard_sha256=shard_sha256)
  graph, params = graph_lib.convert(model, input_name=input_name, output_name=output_name,
                                    keep=activation_nodes or ())
  h, w = input_frame.size
  declared = graph.input_shape
  if len(declared) == 4 and (declared[1] not in (-1, h) or declared[2] not in (-1, w)):
    raise ValueError(f"{path}: the graph input {graph.input_name!r} is {declared[1]}x{declared[2]} but the input "
                     f"frame {input_frame.name!r} is {h}x{w}")
  params = jax.tree.map(jnp.asarray, params)
  if activation_nodes is None:
    activation_nodes = default_activation_nodes(graph, params, (1, h, w, 3))
  else:
    unknown = set(activation_nodes) - {n.name for n in graph.nodes}
    if unknown:
      raise ValueError(f"activation_nodes not computed from the input in {path}: {sorted(unknown)}")
  net_fn = make_net_fn(graph, spec, activation_nodes=activation_nodes)
  emb = jax.eval_shape(lambda p, x: net_fn(p, x)[0], params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  return base.FaceModel(
      name=name or pathlib.Path(path).stem,
      net_fn=net_fn,
      params=params,
      input_frame=input_frame,
      embedding_size=int(emb.shape[-1]),
      dropout_rate=dropout_rate,
  )


#: DFANet rates. faceres is a plain chain of 27 convolutions (MobileNet v1, no residual connections) and
#: MobileFace a short one, so dropout compounds: on LFW chips the mean cosine between dropped-out and clean
#: embeddings is 0.83 / 0.67 / 0.35 / 0.34 (faceres) and 0.91 / 0.82 / 0.62 / 0.41 (mobileface) at rates
#: 0.01 / 0.02 / 0.05 / 0.1, against 0.33 / 0.36 between different people. The defaults keep about the
#: agreement SFace has at its default (0.87 at 0.02).
DEFAULT_DROPOUT = {"faceres": 0.01, "mobileface": 0.02}


def _registered(name: str, weights) -> tuple[pathlib.Path, dict[str, str] | None]:
  if weights is not None:
    return pathlib.Path(weights), None
  return checkpoints.resolve_file(name), {f"{name}.bin": SHARD_SHA256[f"{name}.bin"]}


def build_faceres(weights: str | os.PathLike | None = None, **options) -> base.FaceModel:
  """faceres (HSE MobileNet, 1,024-D ``global_pooling/Mean``) as a differentiable JAX surrogate.

  The whole canonical chip resized to 224x224 (:data:`CANONICAL_224`), BGR, ImageNet means subtracted.

  Args:
    weights: the ``model.json``, used as given (default: the registered ``faceres`` files, sha256-checked).
    **options: passed to :func:`load_tfjs_model`.
  """
  path, shards = _registered("faceres", weights)
  options.setdefault("name", "faceres")
  options.setdefault("input_frame", CANONICAL_224)
  options.setdefault("channel_order", "BGR")
  options.setdefault("pixel_offset", IMAGENET_MEANS_BGR)
  options.setdefault("output_name", "global_pooling/Mean")
  options.setdefault("dropout_rate", DEFAULT_DROPOUT["faceres"])
  options.setdefault("shard_sha256", shards)
  return load_tfjs_model(path, **options)


def build_mobileface(weights: str | os.PathLike | None = None, **options) -> base.FaceModel:
  """MobileFace (256-D ``batchnorm0/add_1``) on the 112x112 ArcFace crop as a differentiable JAX surrogate.

  RGB in [0, 255]: the graph subtracts 127.5 and divides by 128 itself.

  Args:
    weights: the ``model.json``, used as given (default: the registered ``mobileface`` files, sha256-checked).
    **options: passed to :func:`load_tfjs_model`.
  """
  path, shards = _registered("mobileface", weights)
  options.setdefault("name", "mobileface")
  options.setdefault("input_frame", frame_lib.ARCFACE_112)
  options.setdefault("output_name", "batchnorm0/add_1")
  options.setdefault("dropout_rate", DEFAULT_DROPOUT["mobileface"])
  options.setdefault("shard_sha256", shards)
  return load_tfjs_model(path, **options)
