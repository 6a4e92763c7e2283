"""ONNX models both ways: the JAX interpreter against onnxruntime, and the black-box targets.

Small graphs built here with ``onnx.helper`` check each operator against onnxruntime (the reference
runtime); the real SFace file checks the whole path on real LFW faces. The reader shared by the interpreter,
the targets and the YuNet detector is checked against onnxruntime's dequantisation, and the registered SFace
and YuNet files are refused when their bytes are not the registered ones.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper
from onnx import numpy_helper
from PIL import Image

from opomjax import frame as frame_lib
from opomjax.faces import detect
from opomjax.models import checkpoints
from opomjax.models.onnx import graph as graph_lib
from opomjax.models.onnx import operators
from opomjax.models.onnx import reading
from opomjax.models.onnx import surrogate
from opomjax.models import onnx_target
from opomjax.models import registry

RNG = np.random.RandomState(0)


def _init(name, array):
  return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inputs, outputs, inits, opset=21):
  graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
  model.ir_version = 10
  onnx.checker.check_model(model)
  return model


def _ort(model, feeds):
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
  return session.run(None, feeds)[0]


def _jax(model, x):
  graph, params = graph_lib.convert(model)
  out, _ = jax.jit(lambda p, v: graph_lib.run_graph(graph, p, v))(params, x)
  return np.asarray(out)


def _assert_close(out, ref, rtol=1e-5):
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def _quantise_blocked(w, axis, block):
  """int8 blocked quantisation of ``w`` along ``axis`` (what the DequantizeLinear node undoes)."""
  moved = np.moveaxis(w, axis, -1)
  n = moved.shape[-1]
  blocks = -(-n // block)
  padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, blocks * block - n)])
  grouped = padded.reshape(moved.shape[:-1] + (blocks, block))
  scale = np.abs(grouped).max(-1) / 127 + 1e-8
  zero = RNG.randint(-3, 4, scale.shape).astype(np.int8)
  q = np.clip(np.round(grouped / scale[..., None]) + zero[..., None], -128, 127).reshape(padded.shape)[..., :n]
  return (np.moveaxis(q, -1, axis).astype(np.int8), np.moveaxis(scale, -1, axis).astype(np.float32),
          np.moveaxis(zero, -1, axis))


def _conv_net():
  """Conv+BN+PRelu, depthwise and strided 1x1 convs, pooling, residual Add, Concat, Sigmoid, Clip, DQ Gemm."""
  c = 8
  q, s, z = _quantise_blocked(RNG.randn(10, c * 2 * 3 * 3).astype(np.float32), axis=1, block=40)
  qb, sb, zb = _quantise_blocked(RNG.randn(10).astype(np.float32), axis=0, block=4)
  inits = [
      _init("w1", RNG.randn(c, 3, 3, 3).astype(np.float32) * 0.2), _init("b1", RNG.randn(c).astype(np.float32)),
      _init("gamma", RNG.rand(c).astype(np.float32) + 0.5), _init("beta", RNG.randn(c).astype(np.float32)),
      _init("mean", RNG.randn(c).astype(np.float32)), _init("var", RNG.rand(c).astype(np.float32) + 0.5),
      _init("slope", (RNG.rand(c, 1, 1) * 0.3).astype(np.float32)),
      _init("wdw", RNG.randn(c, 1, 3, 3).astype(np.float32) * 0.3),
      _init("half", np.float32(0.5)), _init("three", np.float32(3.0)), _init("lo", np.float32(-1.0)),
      _init("hi", np.float32(1.5)),
      _init("wpw", RNG.randn(2 * c, 2 * c, 1, 1).astype(np.float32) * 0.3),
      _init("bpw", RNG.randn(2 * c).astype(np.float32)),
      _init("wq", q), _init("ws", s), _init("wz", z), _init("bq", qb), _init("bs", sb), _init("bz", zb),
  ]
  nodes = [
      helper.make_node("Constant", [], ["offset"], value=_init("v", np.float32(127.5))),
      helper.make_node("Sub", ["x", "offset"], ["x0"]),
      helper.make_node("Div", ["x0", "three"], ["x1"]),
      helper.make_node("Conv", ["x1", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
      helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], epsilon=1e-3),
      helper.make_node("PRelu", ["n1", "slope"], ["a1"]),
      helper.make_node("Conv", ["a1", "wdw"], ["c2"], kernel_shape=[3, 3], pads=[2, 2, 2, 2], strides=[2, 2],
                       dilations=[2, 2], group=c),
      helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
      helper.make_node("Add", ["c2", "p1"], ["r1"]),
      helper.make_node("Relu", ["r1"], ["a2"]),
      helper.make_node("AveragePool", ["a2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                       count_include_pad=0, ceil_mode=1),
      helper.make_node("AveragePool", ["a2"], ["p3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 2, 2],
                       count_include_pad=1),
      helper.make_node("Sigmoid", ["p3"], ["g3"]),
      helper.make_node("Mul", ["g3", "half"], ["m3"]),
      helper.make_node("Concat", ["p2", "m3"], ["cat"], axis=1),
      helper.make_node("Clip", ["cat", "lo", "hi"], ["clip"]),
      helper.make_node("Conv", ["clip", "wpw", "bpw"], ["pw"], kernel_shape=[1, 1], strides=[2, 2]),
      helper.make_node("Identity", ["pw"], ["id"]),
      helper.make_node("Dropout", ["id"], ["drop"]),
      helper.make_node("Flatten", ["drop"], ["flat"]),
      helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1, block_size=40),
      helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0, block_size=4),
      helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1, alpha=0.7),
  ]
  x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 15, 15])
  y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
  return _model(nodes, [x], [y], inits)


def _reshape_net():
  """Exporter-style shape arithmetic: Shape/Gather/Unsqueeze/Concat/Reshape, Transpose, MatMul, reductions."""
  inits = [_init("idx0", np.int64(0)), _init("ax0", np.array([0], np.int64)),
           _init("minus1", np.array([-1], np.int64)), _init("wm", RNG.randn(4, 6).astype(np.float32)),
           _init("gap_axes", np.array([2, 3], np.int64))]
  nodes = [
      helper.make_node("Shape", ["x"], ["shape"]),
      helper.make_node("Gather", ["shape", "idx0"], ["batch"], axis=0),
      helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
      helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
      helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
      helper.make_node("ReduceMean", ["x", "gap_axes"], ["rm"], keepdims=1),
      helper.make_node("Sub", ["gap", "rm"], ["zero"]),
      helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
      helper.make_node("MatMul", ["xt", "wm"], ["xm"]),
      helper.make_node("Reshape", ["xm", "target"], ["flat"]),
      helper.make_node("Softmax", ["flat"], ["sm"], axis=-1),
      helper.make_node("Reshape", ["zero", "target"], ["zflat"]),
      helper.make_node("Concat", ["sm", "zflat"], ["y"], axis=1),
  ]
  x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 5])
  y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 154])
  return _model(nodes, [x], [y], inits, opset=18)


def _op_zoo():
  """Every other supported operator, each branch flattened into one output vector."""
  inits = [_init("one", np.float32(1.0)), _init("two", np.float32(2.0)), _init("zero", np.float32(0.0)),
           _init("y", RNG.randn(4, 6, 6).astype(np.float32)), _init("z", RNG.randn(6).astype(np.float32)),
           _init("starts", np.array([0, 5], np.int64)), _init("ends", np.array([3, -100], np.int64)),
           _init("axes", np.array([1, 3], np.int64)), _init("steps", np.array([1, -2], np.int64)),
           _init("pads", np.array([0, 0, 1, 2, 0, 1, 2, 0], np.int64)), _init("pad_value", np.float32(0.5)),
           _init("ax1", np.array([1], np.int64)), _init("ax23", np.array([2, 3], np.int64)),
           _init("shape_e", np.array([2, 1, 6, 1], np.int64)), _init("scale", np.ones(4, np.float32) * 1.5),
           _init("bias", np.arange(4, dtype=np.float32)), _init("idx", np.array([[2, 0]], np.int64))]
  unary = ["Tanh", "Neg", "Floor", "Ceil", "Erf", "Softplus", "Sigmoid", "Abs"]
  nodes = [helper.make_node(op, ["x"], [op.lower()]) for op in unary]
  nodes += [
      helper.make_node("Abs", ["x"], ["ax"]), helper.make_node("Add", ["ax", "one"], ["ax1p"]),
      helper.make_node("Log", ["ax1p"], ["log"]), helper.make_node("Sqrt", ["ax"], ["sqrt"]),
      helper.make_node("Reciprocal", ["ax1p"], ["recip"]), helper.make_node("Exp", ["x"], ["exp"]),
      helper.make_node("Pow", ["x", "two"], ["pow"]),
      helper.make_node("LeakyRelu", ["x"], ["leaky"], alpha=0.2), helper.make_node("Elu", ["x"], ["elu"]),
      helper.make_node("HardSigmoid", ["x"], ["hsig"], alpha=0.3), helper.make_node("HardSwish", ["x"], ["hswish"]),
      helper.make_node("Max", ["x", "y", "z"], ["max"]), helper.make_node("Min", ["x", "y"], ["min"]),
      helper.make_node("Sum", ["x", "y", "z"], ["sum"]), helper.make_node("Mean", ["x", "z"], ["mean"]),
      helper.make_node("Greater", ["x", "y"], ["gt"]), helper.make_node("Where", ["gt", "x", "z"], ["where"]),
      helper.make_node("Less", ["x", "zero"], ["lt"]), helper.make_node("Equal", ["lt", "gt"], ["eq"]),
      helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
      helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["slice"]),
      helper.make_node("Pad", ["x", "pads", "pad_value"], ["pad"]),
      helper.make_node("Pad", ["x", "pads"], ["pad_reflect"], mode="reflect"),
      helper.make_node("ReduceSum", ["x", "ax23"], ["rsum"], keepdims=0),
      helper.make_node("ReduceMax", ["x", "ax1"], ["rmax"], keepdims=1),
      helper.make_node("ReduceL2", ["x", "ax23"], ["rl2"], keepdims=1),
      helper.make_node("Squeeze", ["rmax", "ax1"], ["squeeze"]),
      helper.make_node("GlobalMaxPool", ["x"], ["gmp"]),
      helper.make_node("Expand", ["gmp", "shape_e"], ["expand"]),
      helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["inorm"], epsilon=1e-4),
      helper.make_node("Softmax", ["x"], ["softmax"], axis=1),
      helper.make_node("LogSoftmax", ["x"], ["logsoftmax"], axis=-1),
      helper.make_node("Gather", ["x", "idx"], ["gather"], axis=3),
      helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Size", ["x"], ["size"]),
      helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=_init("v", np.array([1.0], np.float32))),
      helper.make_node("Cast", ["size"], ["sizef"], to=TensorProto.FLOAT),
      helper.make_node("Mul", ["ones", "sizef"], ["size_map"]),
  ]
  branches = [op.lower() for op in unary] + [
      "log", "sqrt", "recip", "exp", "pow", "leaky", "elu", "hsig", "hswish", "max", "min", "sum", "mean",
      "where", "eqf", "slice", "pad", "pad_reflect", "rsum", "squeeze", "rl2", "expand", "inorm", "softmax",
      "logsoftmax", "gather", "size_map"]
  nodes += [helper.make_node("Flatten", [b], [b + "_flat"]) for b in branches]
  nodes.append(helper.make_node("Concat", [b + "_flat" for b in branches], ["out"], axis=1))
  x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])
  return _model(nodes, [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, None])], inits, opset=18)


def test_operator_zoo_matches_onnxruntime():
  model = _op_zoo()
  x = RNG.randn(2, 4, 6, 6).astype(np.float32)
  _assert_close(_jax(model, x), _ort(model, {"x": x}), rtol=1e-5)


def test_conv_net_matches_onnxruntime():
  model = _conv_net()
  x = RNG.uniform(0, 255, (3, 3, 15, 15)).astype(np.float32)
  _assert_close(_jax(model, x), _ort(model, {"x": x}))


def test_shape_arithmetic_and_matmul_match_onnxruntime():
  model = _reshape_net()
  x = RNG.randn(2, 4, 5, 5).astype(np.float32)
  _assert_close(_jax(model, x), _ort(model, {"x": x}))


@pytest.mark.parametrize("strides,pads,dilations", [((1, 1), [(1, 1), (1, 1)], (1, 1)),
                                                     ((2, 1), [(0, 2), (1, 0)], (1, 2)),
                                                     ((2, 3), [(0, 0), (0, 0)], (1, 1))])  # columns left unread
def test_depthwise_conv_equals_grouped_conv(strides, pads, dilations):
  x = jnp.asarray(RNG.randn(2, 5, 9, 8).astype(np.float32))
  w = jnp.asarray(RNG.randn(5, 1, 3, 2).astype(np.float32))
  grouped = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                                      feature_group_count=5, dimension_numbers=("NCHW", "OIHW", "NCHW"))
  _assert_close(np.asarray(operators.depthwise_conv(x, w, strides, pads, dilations)), np.asarray(grouped(x, w)))
  # the hand-written backward pass (input and kernel gradients) against autodiff of the grouped convolution
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  ours = jax.grad(loss(lambda x, w: operators.depthwise_conv(x, w, strides, pads, dilations)), argnums=(0, 1))(x, w)
  theirs = jax.grad(loss(grouped), argnums=(0, 1))(x, w)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_blocked_dequantisation_is_folded_into_exact_params():
  model = _conv_net()
  graph, params = graph_lib.convert(model)
  assert "DequantizeLinear" not in {n.op_type for n in graph.nodes}
  inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
  # reference: onnxruntime dequantising alone
  dq = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1, block_size=40)
  names = ["wq", "ws", "wz"]
  ref = _ort(_model([dq], [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inits[n].dtype),
                                                          inits[n].shape) for n in names],
                    [helper.make_tensor_value_info("w", TensorProto.FLOAT, inits["wq"].shape)], []),
             {n: inits[n] for n in names})
  np.testing.assert_array_equal(params["w"], ref)


def test_activation_quantisation_is_emulated_with_straight_through_gradient():
  inits = [_init("s", np.float32(0.05)), _init("z", np.uint8(128)), _init("w", RNG.randn(6, 3).astype(np.float32))]
  nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
           helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
           helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["y"])]
  model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
  x = RNG.randn(50, 6).astype(np.float32)
  np.testing.assert_array_equal(_jax(model, x), _ort(model, {"x": x}))
  graph, params = graph_lib.convert(model)
  grad = jax.grad(lambda v: graph_lib.run_graph(graph, params, v)[0].sum())(jnp.asarray(x[:1] * 0.1))
  # inside the quantiser's range the straight-through gradient is the float network's: w summed over outputs
  np.testing.assert_allclose(np.asarray(grad)[0], numpy_helper.to_array(inits[2]).sum(1), rtol=1e-5)


def test_unsupported_op_names_op_and_node():
  node = helper.make_node("Hardmax", ["x"], ["y"], name="the_hardmax")
  model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [], opset=13)
  with pytest.raises(operators.UnsupportedOpError, match="'Hardmax'.*'the_hardmax'"):
    graph_lib.convert(model)


def _fixed_batch_net(layout="NCHW"):
  """Declared batch 1 and a Reshape to [1, -1] inside: only runs one image at a time."""
  shape = [1, 3, 8, 8] if layout == "NCHW" else [1, 8, 8, 3]
  inits = [_init("w", RNG.randn(4, 3, 1, 1).astype(np.float32) * 0.1),
           _init("target", np.array([1, -1], np.int64)), _init("fc", RNG.randn(4 * 64, 5).astype(np.float32))]
  to_nchw = (helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]) if layout == "NHWC"
             else helper.make_node("Identity", ["x"], ["xc"]))
  nodes = [to_nchw,
           helper.make_node("Conv", ["xc", "w"], ["c"], kernel_shape=[1, 1]),
           helper.make_node("Reshape", ["c", "target"], ["flat"]),
           helper.make_node("MatMul", ["flat", "fc"], ["y"])]
  return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits, opset=13)


@pytest.mark.parametrize("layout,order,scale,offset", [("NCHW", "RGB", 1.0, 0.0),
                                                       ("NHWC", "BGR", 1 / 127.5, (120.0, 110.0, 100.0))])
def test_fixed_batch_graph_runs_batches_with_pixel_options(tmp_path, layout, order, scale, offset):
  model = _fixed_batch_net(layout)
  path = tmp_path / "fixed.onnx"
  onnx.save(model, str(path))
  images = RNG.uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
  x = (images[..., ::-1] if order == "BGR" else images) - np.asarray(offset, np.float32)
  x = (x * np.float32(scale)).astype(np.float32)
  x = x.transpose(0, 3, 1, 2) if layout == "NCHW" else x
  ref = np.concatenate([_ort(model, {"x": x[i:i + 1]}) for i in range(3)])
  frame = frame_lib.make_frame("tiny", (8, 8), frame_lib.ARCFACE_112_LANDMARKS / 14)
  options = dict(input_frame=frame, channel_order=order, pixel_scale=scale, pixel_offset=offset)
  target = registry.load_target(str(path), **options)  # *.onnx paths route to onnxruntime
  _assert_close(target.embed_fn(images), ref)
  surrogate = registry.load_model(str(path), **options)  # ... and to the JAX interpreter
  _assert_close(np.asarray(jax.jit(surrogate.net_fn)(surrogate.params, images)[0]), ref)


def test_bad_arguments_raise_clear_errors(tmp_path):
  path = tmp_path / "fixed.onnx"
  onnx.save(_fixed_batch_net(), str(path))
  frame = frame_lib.make_frame("tiny", (8, 8), frame_lib.ARCFACE_112_LANDMARKS / 14)
  with pytest.raises(ValueError, match="channel_order"):
    surrogate.load_onnx_model(path, input_frame=frame, channel_order="GBR")
  with pytest.raises(ValueError, match="activation_nodes"):
    surrogate.load_onnx_model(path, input_frame=frame, activation_nodes=["no_such_node"])
  with pytest.raises(ValueError, match="no graph output named 'emb'"):
    onnx_target.load_onnx_target(path, input_frame=frame, output_name="emb")
  model = surrogate.load_onnx_model(path, input_frame=frame)
  with pytest.raises(ValueError, match=r"images must have shape \(b, h, w, 3\)"):
    model.net_fn(model.params, np.zeros((8, 8, 3), np.float32))


def test_dfanet_dropout_masks_conv_outputs():
  inits = [_init("w", RNG.randn(4, 3, 3, 3).astype(np.float32))]
  model = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 9])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 7, 7])], inits)
  graph, params = graph_lib.convert(model)
  x = jnp.asarray(RNG.randn(2, 3, 9, 9).astype(np.float32))
  run = jax.jit(lambda k, rate: graph_lib.run_graph(graph, params, x, key=k, dropout_rate=rate)[0],
                static_argnums=1)
  key = jax.random.PRNGKey(3)
  clean, dropped, again = run(key, 0.0), run(key, 0.25), run(key, 0.25)
  np.testing.assert_array_equal(dropped, again)
  kept = np.asarray(dropped) != 0
  np.testing.assert_allclose(np.asarray(dropped)[kept], np.asarray(clean)[kept] / 0.75, rtol=1e-6)
  assert 0.6 < kept.mean() < 0.9


# ------------------------------------------------------------------------------------------------------------
# The real SFace file on real LFW faces.


def _lfw_chips(lfw_root, count):
  """Fixed centre crop of the deep-funneled 250x250 images, resized to the 112x112 input."""
  people = sorted(p for p in os.listdir(lfw_root) if (lfw_root / p).is_dir())[:count]
  chips = []
  for person in people:
    path = sorted((lfw_root / person).glob("*.jpg"))[0]
    image = Image.open(path).convert("RGB").crop((68, 68, 182, 182)).resize((112, 112), Image.BILINEAR)
    chips.append(np.asarray(image, np.float32))
  return np.stack(chips)


@pytest.fixture(scope="module")
def sface(sface_onnx):
  return surrogate.build_sface(sface_onnx)


@pytest.fixture(scope="module")
def chips(lfw_root):
  return _lfw_chips(lfw_root, 6)


@pytest.fixture(scope="module")
def sface_reference(sface_onnx, chips):
  """onnxruntime on the SFace file, one image per call as the file declares."""
  model = onnx.load(str(sface_onnx))
  weights = {t.name for t in model.graph.initializer}
  used = {name for node in model.graph.node for name in node.input}
  real = [i for i in model.graph.input if i.name not in weights and i.name in used]
  del model.graph.input[:]
  model.graph.input.extend(real)
  return np.concatenate([_ort(model, {"data": chips[i:i + 1].transpose(0, 3, 1, 2)}) for i in range(len(chips))])


@pytest.mark.real_data
def test_sface_graph_normalises_rgb_itself(sface_onnx):
  graph, params = graph_lib.convert(reading.read_onnx(sface_onnx))
  assert [n.op_type for n in graph.nodes[:3]] == ["Sub", "Mul", "Conv"]
  assert params[graph.nodes[0].inputs[1]].item() == 127.5
  assert params[graph.nodes[1].inputs[1]].item() == 1 / 128


@pytest.mark.real_data
def test_sface_jax_matches_onnxruntime_on_lfw(sface, chips, sface_reference):
  emb, acts = jax.jit(sface.net_fn)(sface.params, chips)
  emb = np.asarray(emb)
  ref = sface_reference
  cosine = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
  max_abs = np.abs(emb - ref).max()
  print(f"SFace JAX vs onnxruntime on {len(chips)} LFW chips: cosine min {cosine.min():.7f}, "
        f"max abs diff {max_abs:.2e} (|emb| max {np.abs(ref).max():.2f})")
  assert cosine.min() >= 0.999
  assert max_abs <= 1e-3 * np.abs(ref).max()
  assert [a.shape[2] for a in acts] == [112, 56, 28, 14, 7]
  # batch > 1 equals one image at a time
  single = np.asarray(jax.jit(sface.net_fn)(sface.params, chips[2:3])[0])
  _assert_close(single, emb[2:3], rtol=1e-4)


@pytest.mark.real_data
def test_sface_gradients_are_finite_and_nonzero(sface, chips):
  direction = jnp.asarray(RNG.randn(sface.embedding_size).astype(np.float32))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(sface.embed_native(x) @ direction)))(jnp.asarray(chips[:2]))
  grad = np.asarray(grad)
  assert np.isfinite(grad).all()
  assert (np.abs(grad).reshape(2, -1).max(1) > 0).all()


@pytest.mark.real_data
def test_sface_target_agrees_with_surrogate_in_canonical_frame(sface_onnx, sface, chips, monkeypatch):
  monkeypatch.setenv("OPOMJAX_SHARED", str(sface_onnx.parent.parent))
  target = registry.load_target("sface_onnx")
  assert target.embedding_size == 128
  canonical = frame_lib.resample(jnp.asarray(chips[:3]), frame_lib.ARCFACE_112, frame_lib.CANONICAL)
  a = target.embed(canonical)
  b = np.asarray(jax.jit(sface.apply)(sface.params, canonical))
  assert (a * b).sum(1).min() >= 0.999


def test_sface_missing_file_error_names_env_var(tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="OPOMJAX_SHARED"):
    registry.load_model("sface")
  with pytest.raises(FileNotFoundError, match="OPOMJAX_SHARED"):
    registry.load_target("sface_onnx")


# ------------------------------------------------------------------------------------------------------------
# One reader for the interpreter, the onnxruntime targets and the face detector.


def _dequantize_alone_in_onnxruntime(model, node_output):
  """onnxruntime running just the DequantizeLinear node that writes ``node_output`` (the reference)."""
  node = next(n for n in model.graph.node if n.output[0] == node_output)
  inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
  names = [n for n in node.input if n]
  inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inits[n].dtype), inits[n].shape)
            for n in names]
  out = helper.make_tensor_value_info(node_output, TensorProto.FLOAT, inits[node.input[0]].shape)
  return _ort(_model([node], inputs, [out], []), {n: inits[n] for n in names})


def test_reader_folds_weight_dequantisation_as_onnxruntime_and_the_interpreter_do():
  model = _conv_net()  # "w": blocks of 40 along 144 columns, the last block partial; "b": blocks of 4 along 10
  folded = reading.read_onnx(model, dequantize=True)
  assert "DequantizeLinear" not in {n.op_type for n in folded.graph.node}
  weights = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
  assert not {"wq", "ws", "wz", "bq", "bs", "bz"} & set(weights)  # the quantised tensors are gone
  _, params = graph_lib.convert(model)
  for name in ("w", "b"):
    np.testing.assert_array_equal(weights[name], _dequantize_alone_in_onnxruntime(model, name))
    np.testing.assert_array_equal(weights[name], params[name])
  x = RNG.uniform(0, 255, (2, 3, 15, 15)).astype(np.float32)
  np.testing.assert_array_equal(_ort(folded, {"x": x}), _ort(model, {"x": x}))
  assert "DequantizeLinear" in {n.op_type for n in model.graph.node}  # the caller's model is not modified


def test_detector_and_targets_read_through_the_shared_reader(tmp_path, monkeypatch):
  path = tmp_path / "net.onnx"
  onnx.save(_conv_net(), str(path))
  calls = []
  read_onnx = reading.read_onnx

  def spy(source, **options):
    calls.append(options)
    return read_onnx(source, **options)

  monkeypatch.setattr(reading, "read_onnx", spy)
  frame = frame_lib.make_frame("tiny", (15, 15), frame_lib.ARCFACE_112_LANDMARKS / 7.5)
  onnx_target.load_onnx_target(path, input_frame=frame)
  assert calls == [{}]
  served = onnx.load_from_string(detect._load_yunet_graph(path))
  assert calls[1:] == [{"dequantize": True}]
  # the detector's session gets the interpreter's dequantised weights, bit for bit
  _, params = graph_lib.convert(onnx.load(str(path)))
  weights = {t.name: numpy_helper.to_array(t) for t in served.graph.initializer}
  for name in ("w", "b"):
    np.testing.assert_array_equal(weights[name], params[name])


@pytest.mark.real_data
def test_yunet_weights_are_the_interpreters_dequantisation(yunet_onnx):
  original = onnx.load(str(yunet_onnx))
  dq_nodes = [n for n in original.graph.node if n.op_type == "DequantizeLinear"]
  served = onnx.load_from_string(detect._load_yunet_graph(yunet_onnx))
  weights = {t.name: numpy_helper.to_array(t) for t in served.graph.initializer}
  inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
  assert len(dq_nodes) > 50 and "DequantizeLinear" not in {n.op_type for n in served.graph.node}
  opset = reading.opset_version(original)
  for i, proto in enumerate(dq_nodes):
    node = reading.node_from_proto(proto, i)
    (expected,) = operators.run_node(node, [inits[n] for n in node.inputs], opset, operators.Context())
    np.testing.assert_array_equal(weights[proto.output[0]], expected)
  np.testing.assert_array_equal(weights[dq_nodes[0].output[0]],
                                _dequantize_alone_in_onnxruntime(original, dq_nodes[0].output[0]))


# ------------------------------------------------------------------------------------------------------------
# The registered SFace and YuNet files: found by the one resolver, refused when their bytes differ.


def _corrupted_copy(source, shared, flip_in):
  """A copy of ``source`` at ``shared/models/<same name>`` with one byte of tensor ``flip_in``'s data flipped."""
  data = bytearray(source.read_bytes())
  tensor = next(t for t in onnx.load(str(source)).graph.initializer if t.name == flip_in)
  at = bytes(data).find(tensor.raw_data)
  assert at > 0 and bytes(data).count(tensor.raw_data) == 1
  data[at + len(tensor.raw_data) // 2] ^= 0x01
  copy = shared / "models" / source.name
  copy.parent.mkdir(parents=True, exist_ok=True)
  copy.write_bytes(bytes(data))
  return copy


def _largest_initialiser(path):
  return max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data)).name


@pytest.mark.real_data
def test_corrupted_sface_file_is_refused_by_name_but_accepted_by_path(sface_onnx, tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path))
  intact = tmp_path / "models" / sface_onnx.name
  intact.parent.mkdir()
  intact.write_bytes(sface_onnx.read_bytes())
  assert checkpoints.resolve_file("sface") == intact  # the tmp folder is where the resolver looks
  corrupted = _corrupted_copy(sface_onnx, tmp_path, _largest_initialiser(sface_onnx))
  with pytest.raises(checkpoints.ChecksumError, match="sface"):
    registry.load_model("sface")
  with pytest.raises(checkpoints.ChecksumError, match="sface"):
    registry.load_target("sface_onnx")
  # an explicit path is the user's choice of model: read as given
  monkeypatch.setattr(surrogate, "load_onnx_model", lambda path, **options: path)
  assert surrogate.build_sface(corrupted) == corrupted
  target = onnx_target.build_sface_target(corrupted)
  assert target.embedding_size == 128


@pytest.mark.real_data
def test_corrupted_yunet_file_is_refused_by_name_but_accepted_by_path(yunet_onnx, tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path))
  corrupted = _corrupted_copy(yunet_onnx, tmp_path, _largest_initialiser(yunet_onnx))
  with pytest.raises(checkpoints.ChecksumError, match="yunet"):
    detect.YuNetDetector()
  with pytest.raises(checkpoints.ChecksumError, match="yunet"):
    detect.default_yunet_path()
  assert detect.YuNetDetector(corrupted).path == corrupted
  monkeypatch.setenv("OPOMJAX_SHARED", str(yunet_onnx.parent.parent))
  assert detect.default_yunet_path() == yunet_onnx
