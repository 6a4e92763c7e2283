"""ONNX face-embedding files as differentiable surrogates (:class:`~opomjax.models.base.FaceModel`).

:func:`load_onnx_model` turns any ONNX face-embedding file into a white-box surrogate by interpreting its
graph with ``jax.numpy`` / ``jax.lax`` (:mod:`~opomjax.models.onnx.graph`); the ``"sface"`` registry entry
(:func:`build_sface`) is the OpenCV Zoo SFace file seen this way, found and sha256-checked by
:func:`opomjax.models.checkpoints.resolve_file`.

The network function takes a PRNG key: with ``dropout_rate > 0`` it applies DFANet dropout (Eq. 15) to every
``Conv`` output (:func:`~opomjax.models.onnx.operators.dfanet_dropout`), a fresh mask per Conv node and, in
``"vmap"`` batch mode, per image. SFace's activations are float (only its weights are quantised).

Why not ``jaxonnxruntime``: its newest release (0.3.0 on PyPI) installs and imports with jax 0.10.2, but on
the SFace file it stops at ``NotImplementedError: DequantizeLinear is not implemented``; with the weights
dequantised beforehand it has no opset-21 handlers (``Flatten version 21 is not implemented``), and declared
as opset 13 it lacks ``PRelu`` version 9. It also pins ``onnx==1.12`` in its extras. A focused interpreter
that folds the weight dequantisation at load and returns the parameters as a pytree is the smaller piece.

Example::

    import jax, jax.numpy as jnp
    from opomjax.models.onnx import build_sface
    model = build_sface()                                # the registered file, sha256-checked
    x = jnp.full((2, 112, 112, 3), 128.0)                # RGB [0, 255], model frame (ARCFACE_112)
    emb = model.embed_native(x)                          # (2, 128), unit norm
    grad = jax.grad(lambda im: model.embed_native(im)[0, 0])(x)
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import checkpoints
from opomjax.models.onnx import graph as graph_lib
from opomjax.models.onnx import reading


def default_activation_nodes(graph: graph_lib.Graph, params, input_shape: Sequence[int]) -> list[str]:
  """One node per resolution stage: the last activation (PRelu/Relu/..., else Conv) at each spatial size.

  Args:
    graph: the converted graph.
    params: its parameters (only their shapes are used).
    input_shape: a graph-input shape to trace with (batch 1 is enough).
  """
  acts = ("PRelu", "Relu", "LeakyRelu", "Clip", "HardSwish", "Elu")
  candidates = graph.node_names(acts) or graph.node_names(("Conv",))
  rec = jax.eval_shape(lambda p, x: graph_lib.run_graph(graph, p, x, record=candidates)[1], params,
                       jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  last_at: dict[tuple[int, ...], str] = {}
  for name in candidates:
    shape = rec[name].shape
    if len(shape) == 4:
      last_at[tuple(shape[2:])] = name
  return list(last_at.values())


def make_net_fn(
    graph: graph_lib.Graph,
    spec: reading.InputSpec,
    *,
    activation_nodes: Sequence[str] = (),
    batch_mode: str = "native",
) -> base.NetFn:
  """The network function ``net_fn(params, images, *, key=None, dropout_rate=0.0) -> (emb, acts)``.

  Args:
    graph: from :func:`~opomjax.models.onnx.graph.convert`.
    spec: how images become the graph input.
    activation_nodes: nodes whose outputs are returned as activations (in the graph's layout).
    batch_mode: "native" runs the batch through the graph at once; "vmap" runs the graph on one image at a
      time under ``jax.vmap`` (for graphs whose reshapes hard-code batch 1), with a separate dropout key per
      image.
  """
  if batch_mode not in ("native", "vmap"):
    raise ValueError(f"batch_mode must be 'native' or 'vmap', got {batch_mode!r}")
  activation_nodes = tuple(activation_nodes)

  def run(params, x, key, dropout_rate):
    y, rec = graph_lib.run_graph(graph, params, x, key=key, dropout_rate=dropout_rate,
                                 record=activation_nodes)
    return jnp.reshape(y, (y.shape[0], -1)), [rec[name] for name in activation_nodes]

  def net_fn(params, images, *, key=None, dropout_rate=0.0):
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape (b, h, w, 3), got {images.shape}")
    x = spec.apply(images, jnp)
    if key is None or dropout_rate <= 0:
      key, dropout_rate = None, 0.0
    if batch_mode == "native":
      return run(params, x, key, dropout_rate)
    keys = None if key is None else jax.random.split(key, x.shape[0])

    def one(xi, ki):
      emb, acts = run(params, xi[None], ki, dropout_rate)
      return emb[0], [a[0] for a in acts]

    return jax.vmap(one, in_axes=(0, None if keys is None else 0))(x, keys)

  return net_fn


def load_onnx_model(
    path: str | os.PathLike,
    *,
    input_frame: frame_lib.Frame = frame_lib.ARCFACE_112,
    channel_order: str = "RGB",
    pixel_scale: float = 1.0,
    pixel_offset: float | Sequence[float] = 0.0,
    layout: str | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    activation_nodes: Sequence[str] | None = None,
    batch_mode: str | None = None,
    dropout_rate: float = 0.1,
    name: str | None = None,
) -> base.FaceModel:
  """Any ONNX face-embedding model as a differentiable surrogate.

  Args:
    path: the ``.onnx`` file.
    input_frame: the alignment the model was trained on (images are resampled into it).
    channel_order: "RGB" or "BGR", what the graph expects.
    pixel_scale: the graph input is ``(x - pixel_offset) * pixel_scale`` for RGB ``x`` in [0, 255]
      (``1.0`` when the graph normalises itself, as SFace does).
    pixel_offset: see ``pixel_scale`` (scalar or per channel in the graph's order).
    layout: "NCHW" or "NHWC"; inferred from the declared input shape when None.
    input_name: the image input (default: the first real graph input).
    output_name: the embedding output (default: the first graph output).
    activation_nodes: node names returned as activations (default: one per resolution stage).
    batch_mode: "native" or "vmap" (default: "vmap" when the declared batch dimension is a fixed 1 and the
      graph reshapes run-time tensors, else "native").
    dropout_rate: the DFANet rate used when the model is given a key.
    name: the model's name (default: the file stem).

  Returns:
    A :class:`~opomjax.models.base.FaceModel`.

  Example::

    model = load_onnx_model("w600k_r50.onnx", pixel_offset=127.5, pixel_scale=1 / 127.5)
  """
  model = reading.read_onnx(path)
  spec = reading.input_spec(model, layout, channel_order, pixel_scale, pixel_offset, input_name)
  layout = spec.layout
  graph, params = graph_lib.convert(model, input_name=input_name, output_name=output_name)
  dims = reading.tensor_dims(reading.find_value(model.graph.input, graph.input_name, "input"))
  if batch_mode is None:
    reshapes_activations = any(n.op_type in ("Reshape", "Expand", "Tile") for n in graph.nodes)
    batch_mode = "vmap" if dims and dims[0] == 1 and reshapes_activations else "native"
  h, w = input_frame.size
  one = (1, 3, h, w) if layout == "NCHW" else (1, h, w, 3)
  if activation_nodes is None:
    activation_nodes = default_activation_nodes(graph, params, one)
  else:
    unknown = set(activation_nodes) - {n.name for n in graph.nodes}
    if unknown:
      raise ValueError(f"activation_nodes not in the graph: {sorted(unknown)}")
  net_fn = make_net_fn(graph, spec, activation_nodes=activation_nodes, batch_mode=batch_mode)
  params = jax.tree.map(jnp.asarray, params)
  emb = jax.eval_shape(lambda p, x: net_fn(p, x)[0], params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  return base.FaceModel(
      name=name or pathlib.Path(path).stem,
      net_fn=net_fn,
      params=params,
      input_frame=input_frame,
      embedding_size=int(emb.shape[-1]),
      dropout_rate=dropout_rate,
  )


def build_sface(weights: str | os.PathLike | None = None, **options) -> base.FaceModel:
  """SFace (OpenCV Zoo, int8 block-quantised weights) as a differentiable JAX surrogate.

  The graph takes RGB in [0, 255] at 112x112 in the ArcFace template and normalises itself
  (``(x - 127.5) * 0.0078125`` in its first two nodes), so no pixel scaling is added here.

  SFace is a plain chain of 27 convolutions without residual connections, so DFANet dropout compounds: on
  LFW chips the mean cosine between dropped-out and clean embeddings is 0.93 / 0.87 / 0.67 / 0.23 at rates
  0.01 / 0.02 / 0.05 / 0.1 (0.16 between different people). The default rate is therefore 0.02, not the
  0.1 the OPOM code uses for residual networks.

  Args:
    weights: the ONNX file, used as given (default: the registered ``sface`` file, found by
      :func:`opomjax.models.checkpoints.resolve_file` and refused when its sha256 differs).
    **options: passed to :func:`load_onnx_model`.
  """
  path = pathlib.Path(weights) if weights is not None else checkpoints.resolve_file("sface")
  options.setdefault("name", "sface")
  options.setdefault("dropout_rate", 0.02)
  return load_onnx_model(path, **options)
