"""The ONNX operators the JAX interpreter implements, each a function of numpy or jax.numpy values.

An operator is ``fn(xp, node, inputs, *, opset, ctx) -> output or list of outputs``, registered in
:data:`OPS` under its ONNX name. ``xp`` is numpy when every input is a static constant (load-time folding,
shape arithmetic) and jax.numpy otherwise, so the same code folds constants at load and traces the network.

* Activations quantised at run time (``QuantizeLinear -> DequantizeLinear`` pairs on feature maps) are
  emulated faithfully (round half to even, saturate to the integer type) with a straight-through gradient.
* ``Dropout`` nodes are inference no-ops. DFANet dropout (Eq. 15) is applied instead to every ``Conv``
  output when the :class:`Context` carries a PRNG key (see :func:`dfanet_dropout`).
* On CPU, depthwise and 1x1 convolutions take faster routes than XLA's grouped convolution
  (:func:`depthwise_conv`, an einsum); GPUs use cuDNN.

Supported operators: see :data:`SUPPORTED_OPS`. Anything else raises :class:`UnsupportedOpError` naming the
operator and the node.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import onnx

from opomjax.models import depthwise
from opomjax.models import pooling
from opomjax.models.dropout import dfanet_dropout
from opomjax.models.onnx import reading


class UnsupportedOpError(NotImplementedError):
  """An ONNX operator (or attribute combination) the JAX interpreter does not implement."""


@dataclasses.dataclass
class Context:
  """Per-call state of the interpreter (DFANet dropout)."""

  key: jax.Array | None = None
  dropout_rate: float = 0.0
  conv_index: int = 0


#: ONNX operator name -> implementation.
OPS: dict[str, Callable] = {}
#: Input positions that must be static (read as numpy, never parameters).
STATIC_SLOTS = {
    "Reshape": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "Dropout": (1, 2), "Slice": (1, 2, 3, 4),
    "Pad": (1, 3), "Expand": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,),
    "ReduceL2": (1,), "ConstantOfShape": (0,), "Gather": (1,),
}


def _op(*names):
  def register(fn):
    for name in names:
      OPS[name] = fn
    return fn
  return register


def unsupported_error(node: reading.Node) -> UnsupportedOpError:
  """The error for a node whose operator is not in :data:`OPS`, naming the operator and the node."""
  return UnsupportedOpError(f"ONNX operator {node.op_type!r} (node {node.name!r}) is not supported by the JAX "
                            f"interpreter; supported: {', '.join(SUPPORTED_OPS)}")


def run_node(node: reading.Node, inputs: list[Any], opset: int, ctx: Context) -> list[Any]:
  """Runs one node on its input values; returns its outputs as a list (numpy when every input is static)."""
  fn = OPS.get(node.op_type)
  if fn is None:
    raise unsupported_error(node)
  xp = np if all(v is None or isinstance(v, (np.ndarray, np.generic)) for v in inputs) else jnp
  out = fn(xp, node, inputs, opset=opset, ctx=ctx)
  return list(out) if isinstance(out, (list, tuple)) else [out]


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
  OPS[_name] = _elementwise(_fn)


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


def _spatial_pads(node: reading.Node, in_spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
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
  if on_cpu and n == 2 and group > 1 and group == x.shape[1] == w.shape[0] and w.shape[1] == 1:
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
  """Depthwise 2-D convolution, NCHW, weights ``(C, 1, kh, kw)``: :func:`opomjax.models.depthwise.depthwise_conv`
  (shifted, strided slices with a hand-written backward pass), equal to ``lax.conv_general_dilated`` with
  ``feature_group_count=C``.
  """
  taps = jnp.transpose(w[:, 0], (1, 2, 0))  # (C, kh, kw) -> (kh, kw, C)
  return depthwise.depthwise_conv(x, taps, strides, pads, dilations, "NCHW")


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
    if any(d != 1 for d in dilations):
      return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, wstrides, full, window_dilation=wdil)
    return pooling.max_pool(x, window, wstrides, full)
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


def _int_range(dtype) -> tuple[int, int]:
  dtype = np.dtype(dtype)
  if dtype.name in ("int4",):
    return -8, 7
  if dtype.name in ("uint4",):
    return 0, 15
  info = np.iinfo(dtype)
  return int(info.min), int(info.max)


def _quant_dtype(node: reading.Node, zero_point) -> np.dtype:
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
  return reading.dequantize_linear(q, scale, zero, axis=axis, block_size=block, xp=xp)


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
  q = x / reading.quant_broadcast(scale, shape, axis, block, xp)
  zero_b = (0.0 if zero is None
            else reading.quant_broadcast(xp.asarray(zero).astype(xp.float32), shape, axis, block, xp))
  if xp is np:
    return np.clip(np.round(q) + zero_b, lo, hi).astype(dtype)
  rounded = q + jax.lax.stop_gradient(jnp.round(q) - q)  # straight-through rounding
  return jnp.clip(rounded + zero_b, lo, hi)


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(OPS))
