"""Reading ONNX files: the model, its real inputs, its nodes, its quantised weights and its input conventions.

Everything here is about the file format and is shared by the three users of ONNX files: the JAX interpreter
(:mod:`opomjax.models.onnx.graph`), the onnxruntime black-box targets (:mod:`opomjax.models.onnx_target`) and
the YuNet face detector (:mod:`opomjax.faces.detect`).

* :func:`read_onnx` loads a model and drops from the graph inputs what is not a real input (some converters
  list weight initialisers, and names no node reads, among the inputs; onnxruntime then demands them as feeds).
* :func:`dequantize_linear` is ``DequantizeLinear``: ``(q - zero_point) * scale`` in float32, per tensor, per
  axis or blocked (opset 21 ``block_size``), as onnxruntime computes it. :func:`fold_weight_dequantization`
  replaces every such node whose inputs are all initialisers by its float result, once, at load (onnxruntime
  rejects some block-quantised weight nodes; the interpreter folds the same nodes with the same function).
* :class:`InputSpec` says how library images (NHWC, RGB, [0, 255]) become the graph input.

Example::

    from opomjax.models.onnx import reading
    model = reading.read_onnx("face_detection_yunet_2023mar_int8bq.onnx", dequantize=True)
    dims = reading.tensor_dims(model.graph.input[0])       # [1, 3, 640, 640]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import numpy_helper


# ---------------------------------------------------------------------------------------------------------
# Files.


def read_onnx(path: str | os.PathLike | onnx.ModelProto, *, dequantize: bool = False) -> onnx.ModelProto:
  """Loads an ONNX model and drops from the graph inputs what is not a real input (in memory only).

  Some converters list weight initialisers (and names no node reads) among the graph inputs; onnxruntime
  then demands them as feeds. Only the inputs that are neither initialisers nor unused are kept.

  Args:
    path: the ``.onnx`` file, or a model (copied, never modified).
    dequantize: also fold the weights' ``DequantizeLinear`` nodes (:func:`fold_weight_dequantization`).

  Returns:
    The model (a new copy when ``path`` is a model).
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
  if dequantize:
    fold_weight_dequantization(model.graph)
  return model


def tensor_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
  """Declared dims of a graph input/output: ints, symbolic names, or None where unknown."""
  dims = []
  for d in value_info.type.tensor_type.shape.dim:
    dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
  return dims


def find_value(values, name: str | None, what: str):
  """The graph input/output called ``name`` (the first one when None); ValueError naming the choices."""
  if name is None:
    return values[0]
  for v in values:
    if v.name == name:
      return v
  raise ValueError(f"no graph {what} named {name!r}; the graph has {[v.name for v in values]}")


def opset_version(model: onnx.ModelProto) -> int:
  """The model's default-domain (``ai.onnx``) opset version."""
  for o in model.opset_import:
    if o.domain in ("", "ai.onnx"):
      return int(o.version)
  return 1


# ---------------------------------------------------------------------------------------------------------
# Nodes.


@dataclasses.dataclass(frozen=True)
class Node:
  """One graph node as read from the file, its attributes decoded to Python and numpy values."""

  op_type: str
  name: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  attrs: dict[str, Any]


def node_from_proto(proto: onnx.NodeProto, index: int) -> Node:
  """A :class:`Node` from its proto; an unnamed node is called ``<op_type>_<index>``."""
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


# ---------------------------------------------------------------------------------------------------------
# Quantised weights.


def quant_broadcast(param, x_shape, axis: int, block_size: int, xp):
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


def dequantize_linear(q, scale, zero_point=None, *, axis: int = 1, block_size: int = 0, xp=np):
  """``DequantizeLinear``: ``(q - zero_point) * scale`` in the scale's float type.

  Args:
    q: the quantised tensor (any integer type).
    scale: per tensor (a scalar), per axis (1-D along ``axis``) or blocked (``q``'s rank, ``axis`` divided
      into blocks of ``block_size``; the last block may be partial).
    zero_point: like ``scale``, or None for zero.
    axis: the quantisation axis.
    block_size: the block length along ``axis`` (0: not blocked).
    xp: numpy, or jax.numpy at trace time.

  Returns:
    The float tensor (computed in float32 as onnxruntime does, then cast to the scale's type).
  """
  shape = np.shape(q)
  scale_b = quant_broadcast(scale, shape, axis, block_size, xp)
  qf = xp.asarray(q).astype(xp.float32) if xp is np else xp.asarray(q, xp.float32)
  if zero_point is not None:
    qf = qf - quant_broadcast(xp.asarray(zero_point).astype(xp.float32), shape, axis, block_size, xp)
  return (qf * scale_b).astype(scale_b.dtype)


def fold_weight_dequantization(graph: onnx.GraphProto) -> None:
  """Replaces every ``DequantizeLinear`` whose inputs are all initialisers by its float result (in place).

  The folded tensors are initialisers named after the nodes' outputs, computed by :func:`dequantize_linear`
  (the interpreter's ``DequantizeLinear``); quantised initialisers no remaining node reads are dropped.
  """
  inits = {i.name: i for i in graph.initializer}
  kept, folded = [], []
  for proto in graph.node:
    if proto.op_type != "DequantizeLinear" or not all(i in inits for i in proto.input if i):
      kept.append(proto)
      continue
    attrs = node_from_proto(proto, 0).attrs
    q, scale, *zero = [numpy_helper.to_array(inits[name]) if name else None for name in proto.input]
    value = dequantize_linear(q, scale, zero[0] if zero else None, axis=attrs.get("axis", 1),
                              block_size=attrs.get("block_size", 0))
    folded.append(numpy_helper.from_array(value, proto.output[0]))
  used = {name for proto in kept for name in proto.input}
  remaining = [i for i in graph.initializer if i.name in used]
  del graph.node[:]
  graph.node.extend(kept)
  del graph.initializer[:]
  graph.initializer.extend(remaining + folded)


# ---------------------------------------------------------------------------------------------------------
# Pixel conventions shared by the interpreter and the black-box runtime.


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
