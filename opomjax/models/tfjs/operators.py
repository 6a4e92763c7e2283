"""TensorFlow ops of TensorFlow.js graph models, as ``jax.numpy`` / ``jax.lax`` functions (NHWC layout).

Each op is ``fn(node, inputs, ctx) -> value``: ``inputs`` are numpy arrays (static constants) or JAX arrays,
the value is the node's first output (the only one these ops have that graphs read). :data:`OPS` maps op
names to them; :data:`SUPPORTED_OPS` lists the names. A node whose op is not there raises
:class:`UnsupportedOpError` naming the op and the node, at load.

Convolutions (``Conv2D``, ``DepthwiseConv2dNative`` and their fused forms) apply DFANet dropout to their
output (after the fused bias / batch norm, before the fused activation) when the :class:`Context` carries a
key: a fresh mask per convolution node.

Depthwise convolutions are computed as a sum of ``kh * kw`` shifted, strided slices multiplied by one kernel
tap each, with a hand-written backward pass (:func:`depthwise_conv`): the same sums as
``lax.conv_general_dilated`` with ``feature_group_count = channels``, whose CPU implementation in XLA is slow.
Measured with ``bench/bench_tfjs.py --depthwise`` (batch 10, 2 shared cores): on 10 x 112 x 112 x 32 (3x3,
stride 1) the grouped convolution takes 494 ms forward and 1,876 ms forward + backward (input gradient), the
slices 27 ms and 105 ms (346 ms with JAX's own backward of the slices); the whole faceres network takes 0.60 s
forward and 1.99 s forward + backward against 2.00 s and 9.50 s with the grouped convolution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from opomjax.models import depthwise
from opomjax.models import pooling
from opomjax.models.dropout import dfanet_dropout
from opomjax.models.tfjs import reading


class UnsupportedOpError(NotImplementedError):
  """A TensorFlow op (or attribute combination) the JAX interpreter does not implement."""


@dataclasses.dataclass
class Context:
  """Per-call state of the interpreter (DFANet dropout)."""

  key: jax.Array | None = None
  dropout_rate: float = 0.0
  conv_index: int = 0


def _conv_dropout(y: jax.Array, ctx: Context) -> jax.Array:
  if ctx.key is not None and ctx.dropout_rate > 0:
    y = dfanet_dropout(y, jax.random.fold_in(ctx.key, ctx.conv_index), ctx.dropout_rate)
  ctx.conv_index += 1
  return y


# ---------------------------------------------------------------------------------------------------------
# Convolution helpers


def _check_nhwc(node: reading.Node) -> None:
  fmt = node.attrs.get("data_format", "NHWC")
  if fmt != "NHWC":
    raise UnsupportedOpError(f"{node.op} node {node.name!r}: data_format {fmt!r} is not supported (only NHWC, "
                             f"which is what TensorFlow.js graph models use)")


def _hw(values, name: str, node: reading.Node) -> tuple[int, int]:
  values = tuple(values) if values else (1, 1, 1, 1)
  if len(values) == 4:
    return int(values[1]), int(values[2])
  if len(values) == 2:
    return int(values[0]), int(values[1])
  raise UnsupportedOpError(f"{node.op} node {node.name!r}: {name} {values} is not a 2-D spatial value")


def spatial_padding(node: reading.Node, in_hw, kernel_hw, strides, dilations) -> list[tuple[int, int]]:
  """TensorFlow's ``padding`` attribute (SAME / VALID / EXPLICIT) as ``[(lo, hi), (lo, hi)]`` for H and W."""
  padding = node.attrs.get("padding", "VALID")
  if padding == "VALID":
    return [(0, 0), (0, 0)]
  if padding == "SAME":
    pads = []
    for size, k, s, d in zip(in_hw, kernel_hw, strides, dilations):
      out = -(-size // s)
      total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
      pads.append((total // 2, total - total // 2))
    return pads
  if padding == "EXPLICIT":
    flat = [int(v) for v in node.attrs.get("explicit_paddings", ())]
    if len(flat) != 8:
      raise UnsupportedOpError(f"{node.op} node {node.name!r}: explicit_paddings {flat} is not 4 (lo, hi) pairs")
    return [(flat[2], flat[3]), (flat[4], flat[5])]
  raise UnsupportedOpError(f"{node.op} node {node.name!r}: padding {padding!r} is not supported")


def conv2d(x: jax.Array, w: jax.Array, strides, pads, dilations) -> jax.Array:
  """NHWC convolution with an HWIO kernel."""
  return jax.lax.conv_general_dilated(x, w, tuple(strides), pads, rhs_dilation=tuple(dilations),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise_conv(x: jax.Array, w: jax.Array, strides, pads, dilations) -> jax.Array:
  """Depthwise NHWC convolution, kernel ``(kh, kw, C, multiplier)``: :func:`opomjax.models.depthwise.depthwise_conv`
  (shifted, strided slices with a hand-written backward pass), output channel ``c * multiplier + m`` as in
  ``lax.conv_general_dilated(..., feature_group_count=C)``.
  """
  kh, kw, c, mult = w.shape
  if mult != 1:
    x = jnp.repeat(x, mult, axis=-1)
  return depthwise.depthwise_conv(x, jnp.reshape(w, (kh, kw, c * mult)), strides, pads, dilations, "NHWC")


def depthwise_conv_grouped(x: jax.Array, w: jax.Array, strides, pads, dilations) -> jax.Array:
  """The same depthwise convolution through XLA's grouped convolution (the reference for tests and benches)."""
  kh, kw, c, mult = w.shape
  return jax.lax.conv_general_dilated(x, jnp.reshape(w, (kh, kw, 1, c * mult)), tuple(strides), pads,
                                      rhs_dilation=tuple(dilations), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


#: The depthwise formulations; :data:`DEPTHWISE_FORMULATION` names the one the interpreter uses (the
#: benchmark switches it to compare them).
DEPTHWISE_FORMULATIONS = {"slices": depthwise_conv, "grouped": depthwise_conv_grouped}
DEPTHWISE_FORMULATION = "slices"


def _convolve(node: reading.Node, x, w, depthwise: bool):
  _check_nhwc(node)
  strides = _hw(node.attrs.get("strides"), "strides", node)
  dilations = _hw(node.attrs.get("dilations"), "dilations", node)
  pads = spatial_padding(node, x.shape[1:3], w.shape[:2], strides, dilations)
  fn = DEPTHWISE_FORMULATIONS[DEPTHWISE_FORMULATION] if depthwise else conv2d
  return fn(jnp.asarray(x), jnp.asarray(w), strides, pads, dilations)


# ---------------------------------------------------------------------------------------------------------
# Activations and fused post-ops


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def prelu(x, alpha):
  return jnp.where(x > 0, x, x * alpha)


def leaky_relu(x, alpha):
  return jnp.where(x > 0, x, x * alpha)


ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "Relu": jax.nn.relu,
    "Relu6": relu6,
    "Elu": jax.nn.elu,
    "Selu": jax.nn.selu,
    "Sigmoid": jax.nn.sigmoid,
    "Tanh": jnp.tanh,
    "Softplus": jax.nn.softplus,
}


def batch_norm(x, scale, offset, mean, variance, epsilon: float):
  return (x - mean) * (jax.lax.rsqrt(jnp.asarray(variance) + epsilon) * scale) + offset


def _fused(node: reading.Node, y, args: list, ctx: Context | None):
  """Applies a fused node's ``fused_ops`` to the conv / matmul output ``y`` (dropout after the linear part)."""
  ops = list(node.attrs.get("fused_ops", ()))
  args = list(args)
  linear_done = False

  def take(n):
    if len(args) < n:
      raise UnsupportedOpError(f"{node.op} node {node.name!r}: fused_ops {ops} need more inputs than given")
    out = args[:n]
    del args[:n]
    return out

  for op in ops:
    if op == "BiasAdd":
      (bias,) = take(1)
      y = y + bias
      continue
    if op == "FusedBatchNorm":
      scale, offset, mean, variance = take(4)
      y = batch_norm(y, scale, offset, mean, variance, float(node.attrs.get("epsilon", 1e-3)))
      continue
    if not linear_done and ctx is not None:
      y = _conv_dropout(y, ctx)
      linear_done = True
    if op in ACTIVATIONS:
      y = ACTIVATIONS[op](y)
    elif op == "Prelu":
      (alpha,) = take(1)
      y = prelu(y, alpha)
    elif op == "LeakyRelu":
      y = leaky_relu(y, float(node.attrs.get("leakyrelu_alpha", 0.2)))
    else:
      raise UnsupportedOpError(f"{node.op} node {node.name!r}: fused op {op!r} is not supported; supported: "
                               f"BiasAdd, FusedBatchNorm, Prelu, LeakyRelu, {', '.join(ACTIVATIONS)}")
  if not linear_done and ctx is not None:
    y = _conv_dropout(y, ctx)
  return y


# ---------------------------------------------------------------------------------------------------------
# Ops


def _conv(depthwise: bool, fused: bool):
  def op(node, inputs, ctx):
    y = _convolve(node, inputs[0], inputs[1], depthwise)
    if fused:
      return _fused(node, y, inputs[2:], ctx)
    return _conv_dropout(y, ctx)
  return op


def _matmul(fused: bool):
  def op(node, inputs, ctx):
    a, b = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
    if node.attrs.get("transpose_a", False) or node.attrs.get("adj_x", False):
      a = jnp.swapaxes(a, -1, -2)
    if node.attrs.get("transpose_b", False) or node.attrs.get("adj_y", False):
      b = jnp.swapaxes(b, -1, -2)
    y = jnp.matmul(a, b)
    return _fused(node, y, inputs[2:], None) if fused else y
  return op


def _binary(fn):
  return lambda node, inputs, ctx: fn(inputs[0], inputs[1])


def _unary(fn):
  return lambda node, inputs, ctx: fn(inputs[0])


def _static_ints(value, node: reading.Node, what: str) -> list[int]:
  if isinstance(value, jax.core.Tracer):
    raise UnsupportedOpError(f"{node.op} node {node.name!r}: {what} depends on the input image; only constant "
                             f"{what} is supported")
  return [int(v) for v in np.asarray(value).reshape(-1)]


def _reduce(fn):
  def op(node, inputs, ctx):
    axes = tuple(_static_ints(inputs[1], node, "reduction axes"))
    return fn(inputs[0], axis=axes, keepdims=bool(node.attrs.get("keep_dims", False)))
  return op


def _pad(node, inputs, ctx):
  pads = np.asarray(_static_ints(inputs[1], node, "paddings")).reshape(-1, 2)
  value = 0.0 if len(inputs) < 3 else inputs[2]
  if node.op == "MirrorPad":
    mode = {"REFLECT": "reflect", "SYMMETRIC": "symmetric"}.get(node.attrs.get("mode", "REFLECT"))
    return jnp.pad(inputs[0], [tuple(p) for p in pads], mode=mode)
  return jnp.pad(inputs[0], [tuple(p) for p in pads], constant_values=value)


def _reshape(node, inputs, ctx):
  shape = _static_ints(inputs[1], node, "shape")
  x = inputs[0]
  if -1 not in shape and int(np.prod(shape)) != int(np.prod(x.shape)) and shape and shape[0] == 1:
    shape[0] = -1  # a batch of 1 hard-coded by the exporter: keep the run-time batch
  return jnp.reshape(x, shape)


def _squeeze(node, inputs, ctx):
  axes = tuple(int(a) for a in node.attrs.get("squeeze_dims", node.attrs.get("axis", ())))
  return jnp.squeeze(inputs[0], axis=axes or None)


def _expand_dims(node, inputs, ctx):
  (axis,) = _static_ints(inputs[1], node, "axis")
  return jnp.expand_dims(inputs[0], axis)


def _concat(node, inputs, ctx):
  (axis,) = _static_ints(inputs[-1], node, "axis")
  return jnp.concatenate([jnp.asarray(v) for v in inputs[:-1]], axis=axis)


def _transpose(node, inputs, ctx):
  return jnp.transpose(inputs[0], _static_ints(inputs[1], node, "permutation"))


def _bias_add(node, inputs, ctx):
  _check_nhwc(node)
  return inputs[0] + inputs[1]


def _fused_batch_norm(node, inputs, ctx):
  _check_nhwc(node)
  x, scale, offset, mean, variance = inputs[:5]
  return batch_norm(x, scale, offset, mean, variance, float(node.attrs.get("epsilon", 1e-3)))


def _pool(kind: str):
  def op(node, inputs, ctx):
    _check_nhwc(node)
    x = inputs[0]
    kernel = _hw(node.attrs.get("ksize"), "ksize", node)
    strides = _hw(node.attrs.get("strides"), "strides", node)
    pads = spatial_padding(node, x.shape[1:3], kernel, strides, (1, 1))
    window, wstrides = (1,) + kernel + (1,), (1,) + strides + (1,)
    full = [(0, 0)] + pads + [(0, 0)]
    if kind == "max":
      return pooling.max_pool(x, window, wstrides, full)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, wstrides, full)
    count = jax.lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, jax.lax.add, window,
                                  wstrides, full)
    return total / count  # TensorFlow averages over the positions inside the image
  return op


def _cast(node, inputs, ctx):
  dtype = reading.TF_DTYPES.get(node.attrs.get("DstT", "DT_FLOAT"))
  if dtype is None:
    raise UnsupportedOpError(f"Cast node {node.name!r}: destination type {node.attrs.get('DstT')!r} not supported")
  x = inputs[0]
  return x.astype(dtype) if isinstance(x, np.ndarray) else jnp.asarray(x).astype(dtype)


def _softmax(node, inputs, ctx):
  return jax.nn.softmax(inputs[0], axis=-1)


def _leaky_relu(node, inputs, ctx):
  return leaky_relu(inputs[0], float(node.attrs.get("alpha", 0.2)))


def _shape(node, inputs, ctx):
  return np.asarray(np.shape(inputs[0]), np.int32)


OPS: dict[str, Callable[[reading.Node, list, Context], Any]] = {
    "Identity": _unary(lambda x: x),
    "StopGradient": _unary(jax.lax.stop_gradient),
    "Snapshot": _unary(lambda x: x),
    "Conv2D": _conv(depthwise=False, fused=False),
    "_FusedConv2D": _conv(depthwise=False, fused=True),
    "DepthwiseConv2dNative": _conv(depthwise=True, fused=False),
    "DepthwiseConv2d": _conv(depthwise=True, fused=False),
    "FusedDepthwiseConv2dNative": _conv(depthwise=True, fused=True),
    "MatMul": _matmul(fused=False),
    "_FusedMatMul": _matmul(fused=True),
    "BatchMatMul": _matmul(fused=False),
    "BatchMatMulV2": _matmul(fused=False),
    "BiasAdd": _bias_add,
    "Add": _binary(jnp.add),
    "AddV2": _binary(jnp.add),
    "Sub": _binary(jnp.subtract),
    "Mul": _binary(jnp.multiply),
    "RealDiv": _binary(jnp.divide),
    "Div": _binary(jnp.divide),
    "Maximum": _binary(jnp.maximum),
    "Minimum": _binary(jnp.minimum),
    "SquaredDifference": _binary(lambda a, b: jnp.square(a - b)),
    "Pow": _binary(jnp.power),
    "Neg": _unary(jnp.negative),
    "Abs": _unary(jnp.abs),
    "Sqrt": _unary(jnp.sqrt),
    "Rsqrt": _unary(jax.lax.rsqrt),
    "Square": _unary(jnp.square),
    "Exp": _unary(jnp.exp),
    "Log": _unary(jnp.log),
    "Reciprocal": _unary(jnp.reciprocal),
    "Relu": _unary(jax.nn.relu),
    "Relu6": _unary(relu6),
    "Elu": _unary(jax.nn.elu),
    "Selu": _unary(jax.nn.selu),
    "Sigmoid": _unary(jax.nn.sigmoid),
    "Tanh": _unary(jnp.tanh),
    "Softplus": _unary(jax.nn.softplus),
    "LeakyRelu": _leaky_relu,
    "Prelu": _binary(prelu),
    "Softmax": _softmax,
    "FusedBatchNorm": _fused_batch_norm,
    "FusedBatchNormV2": _fused_batch_norm,
    "FusedBatchNormV3": _fused_batch_norm,
    "Pad": _pad,
    "PadV2": _pad,
    "MirrorPad": _pad,
    "Mean": _reduce(jnp.mean),
    "Sum": _reduce(jnp.sum),
    "Max": _reduce(jnp.max),
    "Min": _reduce(jnp.min),
    "Prod": _reduce(jnp.prod),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "ConcatV2": _concat,
    "Transpose": _transpose,
    "MaxPool": _pool("max"),
    "AvgPool": _pool("avg"),
    "Cast": _cast,
    "Shape": _shape,
}

#: Ops handled by the graph itself rather than by :data:`OPS`.
GRAPH_OPS = ("Const", "Placeholder", "NoOp")

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(set(OPS) | set(GRAPH_OPS)))

#: op -> input positions read as static integers (shapes, paddings, axes), never as parameters.
STATIC_SLOTS: dict[str, tuple[int, ...]] = {
    "Pad": (1,), "PadV2": (1,), "MirrorPad": (1,), "Mean": (1,), "Sum": (1,), "Max": (1,), "Min": (1,),
    "Prod": (1,), "Reshape": (1,), "ExpandDims": (1,), "Transpose": (1,), "ConcatV2": (-1,),
}

#: ops whose output is a convolution (DFANet dropout applies to them).
CONV_OPS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "DepthwiseConv2d", "FusedDepthwiseConv2dNative")


def static_slots(node: reading.Node) -> set[int]:
  n = len(node.inputs)
  return {i % n for i in STATIC_SLOTS.get(node.op, ()) if n}


def unsupported_error(node: reading.Node) -> UnsupportedOpError:
  """The error for a node whose op is not supported, naming the op and the node."""
  return UnsupportedOpError(f"TensorFlow op {node.op!r} (node {node.name!r}) is not supported by the JAX "
                            f"interpreter of TensorFlow.js graph models; supported: {', '.join(SUPPORTED_OPS)}")


def run_node(node: reading.Node, inputs: list[Any], ctx: Context) -> Any:
  """Runs one node on its input values; returns its (first) output."""
  fn = OPS.get(node.op)
  if fn is None:
    raise unsupported_error(node)
  return fn(node, inputs, ctx)
