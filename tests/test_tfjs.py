"""The TensorFlow.js graph-model importer: weight decoding, ops, and the two real models against TensorFlow.js.

The reference runtime is TensorFlow.js itself (``@tensorflow/tfjs``, its pure-JavaScript CPU backend), run by
``tests/tfjs_reference/embed.js`` and installed once with npm into ``$OPOMJAX_CACHE/tfjs-reference``
(default ``~/.cache/opomjax/tfjs-reference``); the tests that need it skip when ``node`` / ``npm`` is absent or
the install fails (offline).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax import frame as frame_lib
from opomjax.models import checkpoints
from opomjax.models.tfjs import graph as graph_lib
from opomjax.models.tfjs import operators
from opomjax.models.tfjs import reading
from opomjax.models.tfjs import surrogate

from conftest import canonical_lfw_chips, shared_dir

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "tfjs_reference"


# ------------------------------------------------------------------------------------------------------------
# The reference runtime.


def _reference_install_dir() -> pathlib.Path:
  return checkpoints.user_cache_dir() / "tfjs-reference"


def _installed_version(folder: pathlib.Path) -> str | None:
  meta = folder / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
  return json.loads(meta.read_text()).get("version") if meta.is_file() else None


@pytest.fixture(scope="session")
def tfjs_node_modules() -> pathlib.Path:
  """``node_modules`` with the pinned ``@tensorflow/tfjs`` (installed with npm on first use)."""
  if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node / npm not found: the TensorFlow.js reference runtime cannot run")
  wanted = json.loads((REFERENCE_DIR / "package.json").read_text())["dependencies"]["@tensorflow/tfjs"]
  folder = _reference_install_dir()
  if _installed_version(folder) != wanted:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE_DIR / "package.json", folder / "package.json")
    try:
      done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=folder, capture_output=True,
                            text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
      pytest.skip(f"npm install @tensorflow/tfjs@{wanted} in {folder} timed out (offline?)")
    if done.returncode != 0 or _installed_version(folder) != wanted:
      pytest.skip(f"npm install @tensorflow/tfjs@{wanted} in {folder} failed (offline?): "
                  f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
  return folder / "node_modules"


def run_tfjs(node_modules: pathlib.Path, model_json: pathlib.Path, x: np.ndarray, outputs: list[str],
             tmp_path: pathlib.Path) -> list[np.ndarray]:
  """Runs ``model_json`` on ``x`` (the placeholder's value) in TensorFlow.js; returns the named outputs."""
  np.save(tmp_path / "input.npy", np.ascontiguousarray(x, np.float32))
  done = subprocess.run(
      ["node", str(REFERENCE_DIR / "embed.js"), str(model_json), str(tmp_path / "input.npy"),
       str(tmp_path / "out_"), ",".join(outputs)],
      capture_output=True, text=True, timeout=900, check=False,
      env={**os.environ, "TFJS_NODE_MODULES": str(node_modules)})
  assert done.returncode == 0, done.stderr
  info = json.loads(done.stdout.strip().splitlines()[-1])
  assert info["backend"] == "cpu"
  return [np.load(tmp_path / f"out_{i}.npy") for i in range(len(outputs))]


# ------------------------------------------------------------------------------------------------------------
# Hand-made graph models.


def _node(name, op, inputs=(), **attrs):
  return {"name": name, "op": op, "input": list(inputs), "attr": attrs}


def _placeholder(name, shape):
  return _node(name, "Placeholder", shape={"shape": {"dim": [{"size": str(s)} for s in shape]}},
               dtype={"type": "DT_FLOAT"})


def _const(name, dtype="DT_FLOAT"):
  return _node(name, "Const", dtype={"type": dtype}, value={"tensor": {"dtype": dtype}})


def _s(text):  # a string attribute, base64 as in the protobuf JSON
  import base64

  return {"s": base64.b64encode(text.encode()).decode()}


def _ints(values):
  return {"list": {"i": [str(v) for v in values]}}


def write_model(folder: pathlib.Path, nodes, weights: list[tuple[dict, bytes]], name="model") -> pathlib.Path:
  """Writes ``name.json`` + ``name.bin`` with the given manifest entries and their encoded bytes."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{name}.bin").write_bytes(b"".join(data for _, data in weights))
  doc = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
         "modelTopology": {"node": nodes, "library": {}, "versions": {}},
         "weightsManifest": [{"paths": [f"{name}.bin"], "weights": [spec for spec, _ in weights]}]}
  path = folder / f"{name}.json"
  path.write_text(json.dumps(doc))
  return path


def _affine_model(tmp_path, w_spec, w_bytes, b_spec, b_bytes):
  """y = x @ w + b, with the given encodings of w (3, 4) and b (4,)."""
  nodes = [_placeholder("x", (-1, 3)), _const("w"), _const("b"),
           _node("mm", "MatMul", ["x", "w"], transpose_a={"b": False}, transpose_b={"b": False}),
           _node("y", "BiasAdd", ["mm", "b"], data_format=_s("NHWC"))]
  return write_model(tmp_path, nodes, [(w_spec, w_bytes), (b_spec, b_bytes)])


def test_float16_weights_decode_exactly(tmp_path):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4)).astype(np.float16)
  b = np.array([1e-5, -65504.0, 0.333, np.float16(6.1e-5)], np.float16)  # subnormal, max, rounding cases
  f16 = {"dtype": "float16", "original_dtype": "float32"}
  path = _affine_model(tmp_path, {"name": "w", "shape": [3, 4], "dtype": "float32", "quantization": f16},
                       w.tobytes(), {"name": "b", "shape": [4], "dtype": "float32", "quantization": f16}, b.tobytes())
  model = reading.read_tfjs(path)
  assert model.weights["w"].dtype == np.float32
  np.testing.assert_array_equal(model.weights["w"], w.astype(np.float32))
  np.testing.assert_array_equal(model.weights["b"], b.astype(np.float32))
  graph, params = graph_lib.convert(model, output_name="y")
  x = rng.normal(size=(2, 3)).astype(np.float32)
  y, _ = graph_lib.run_graph(graph, params, jnp.asarray(x))
  np.testing.assert_allclose(y, x @ w.astype(np.float32) + b.astype(np.float32), rtol=1e-6)


def _uint8_affine(tmp_path):
  rng = np.random.default_rng(1)
  w_codes = rng.integers(0, 256, (3, 4), dtype=np.uint8)
  b_codes = np.array([0, 1, 65534, 65535], np.uint16)
  wq = {"dtype": "uint8", "min": -0.734, "scale": 0.00571, "original_dtype": "float32"}
  bq = {"dtype": "uint16", "min": -2.5, "scale": 7.6e-5, "original_dtype": "float32"}
  path = _affine_model(tmp_path, {"name": "w", "shape": [3, 4], "dtype": "float32", "quantization": wq},
                       w_codes.tobytes(), {"name": "b", "shape": [4], "dtype": "float32", "quantization": bq},
                       b_codes.astype("<u2").tobytes())
  expected_w = np.array([[float(q) * 0.00571 + -0.734 for q in row] for row in w_codes], np.float32)
  expected_b = np.array([float(q) * 7.6e-5 + -2.5 for q in b_codes], np.float32)
  return path, expected_w, expected_b


def test_uint8_and_uint16_quantised_weights_decode_as_affine_codes(tmp_path):
  path, expected_w, expected_b = _uint8_affine(tmp_path)
  model = reading.read_tfjs(path)
  np.testing.assert_array_equal(model.weights["w"], expected_w)
  np.testing.assert_array_equal(model.weights["b"], expected_b)


def test_uint8_quantised_int32_weight_rounds_like_javascript():
  codes = np.array([0, 1, 2, 3], np.uint8)
  spec = {"name": "k", "shape": [4], "dtype": "int32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5}}
  values, used = reading.decode_weight(spec, codes.tobytes())
  assert used == 4 and values.dtype == np.int32
  np.testing.assert_array_equal(values, [-1, 0, 0, 1])  # Math.round(-0.5) = -0, Math.round(0.5) = 1


def test_bad_manifests_are_refused_with_the_weight_named(tmp_path):
  spec = {"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "int4"}}
  with pytest.raises(reading.TfjsFormatError, match="'w'.*int4"):
    reading.decode_weight(spec, b"\0" * 8)
  spec = {"name": "w", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 1.0}}
  with pytest.raises(reading.TfjsFormatError, match="'w'.*min"):
    reading.decode_weight(spec, b"\0" * 8)
  with pytest.raises(reading.TfjsFormatError, match="'w' needs 8 bytes"):
    reading.decode_weight({"name": "w", "shape": [2], "dtype": "float32"}, b"\0" * 4)
  path = write_model(tmp_path, [_placeholder("x", (-1, 2))], [({"name": "w", "shape": [2], "dtype": "float32"},
                                                               b"\0" * 12)])
  with pytest.raises(reading.TfjsFormatError, match="12 bytes but the manifest describes 8"):
    reading.read_tfjs(path)


def test_unsupported_op_is_named_at_load(tmp_path):
  nodes = [_placeholder("x", (-1, 4)), _node("h", "Relu", ["x"]), _node("y", "Erfinv", ["h"])]
  path = write_model(tmp_path, nodes, [])
  with pytest.raises(operators.UnsupportedOpError, match="'Erfinv' \\(node 'y'\\).*supported: .*Conv2D"):
    surrogate.load_tfjs_model(path, output_name="y", activation_nodes=[])


def test_not_a_graph_model_is_refused(tmp_path):
  path = tmp_path / "model.json"
  path.write_text(json.dumps({"format": "layers-model", "modelTopology": {"class_name": "Sequential"}}))
  with pytest.raises(reading.TfjsFormatError, match="not a TensorFlow.js graph model"):
    reading.read_tfjs(path)


@pytest.mark.parametrize("stride,padding,dilation,mult", [(1, "SAME", 1, 1), (2, "SAME", 1, 1), (2, "VALID", 1, 2),
                                                          (1, "SAME", 2, 1), (3, "SAME", 1, 1)])
def test_depthwise_slices_equal_grouped_convolution(stride, padding, dilation, mult):
  rng = np.random.default_rng(stride + 10 * mult + 100 * dilation)
  x = jnp.asarray(rng.normal(size=(2, 13, 12, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, mult)), jnp.float32)
  node = reading.Node("dw", "DepthwiseConv2dNative", (), {"padding": padding})
  pads = operators.spatial_padding(node, x.shape[1:3], (3, 3), (stride, stride), (dilation, dilation))
  args = ((stride, stride), pads, (dilation, dilation))
  ours = operators.depthwise_conv(x, w, *args)
  ref = operators.depthwise_conv_grouped(x, w, *args)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # the hand-written backward pass (input and kernel gradients) against autodiff of the grouped convolution
  g_ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(operators.depthwise_conv(x, w, *args))), argnums=(0, 1))(x, w)
  g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(operators.depthwise_conv_grouped(x, w, *args))), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(g_ours[0], g_ref[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-4)


def test_tensorflow_same_padding_is_asymmetric_towards_the_end():
  node = reading.Node("c", "Conv2D", (), {"padding": "SAME"})
  # 224 input, 3x3 stride 2 -> 112 outputs need 1 pixel of padding in total: all of it after (TensorFlow)
  assert operators.spatial_padding(node, (224, 7), (3, 3), (2, 1), (1, 1)) == [(0, 1), (1, 1)]


def _small_convnet(tmp_path):
  """Placeholder -> fused conv (BiasAdd, Relu6) -> fused depthwise (BiasAdd, Prelu) -> Pad -> Conv2D
  -> Mean -> Squeeze, float32 weights."""
  rng = np.random.default_rng(2)
  w1 = rng.normal(size=(3, 3, 3, 6)).astype(np.float32) * 0.3
  b1 = rng.normal(size=(6,)).astype(np.float32)
  w2 = rng.normal(size=(3, 3, 6, 1)).astype(np.float32) * 0.3
  b2 = rng.normal(size=(6,)).astype(np.float32)
  alpha = rng.uniform(0, 0.5, size=(6,)).astype(np.float32)
  w3 = rng.normal(size=(3, 3, 6, 4)).astype(np.float32) * 0.3
  pads = np.array([[0, 0], [1, 2], [2, 1], [0, 0]], np.int32)
  axes = np.array([1, 2], np.int32)
  conv = {"strides": _ints([1, 2, 2, 1]), "padding": _s("SAME"), "data_format": _s("NHWC"),
          "dilations": _ints([1, 1, 1, 1])}
  nodes = [_placeholder("x", (-1, 16, 16, 3)), _const("w1"), _const("b1"), _const("w2"), _const("b2"),
           _const("alpha"), _const("w3"), _const("pads", "DT_INT32"), _const("axes", "DT_INT32"),
           _node("c1", "_FusedConv2D", ["x", "w1", "b1"], fused_ops={"list": {"s": [_s("BiasAdd")["s"],
                                                                                   _s("Relu6")["s"]]}},
                 num_args={"i": "1"}, **conv),
           _node("c2", "FusedDepthwiseConv2dNative", ["c1", "w2", "b2", "alpha"],
                 fused_ops={"list": {"s": [_s("BiasAdd")["s"], _s("Prelu")["s"]]}}, num_args={"i": "2"},
                 **{**conv, "strides": _ints([1, 1, 1, 1])}),
           _node("p", "Pad", ["c2", "pads"]),
           _node("c3", "Conv2D", ["p", "w3"], **{**conv, "padding": _s("VALID"), "strides": _ints([1, 1, 1, 1])}),
           _node("m", "Mean", ["c3", "axes"], keep_dims={"b": True}),
           _node("y", "Squeeze", ["m"], squeeze_dims=_ints([1, 2]))]
  weights = [({"name": n, "shape": list(v.shape), "dtype": "int32" if v.dtype == np.int32 else "float32"},
              v.tobytes()) for n, v in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("alpha", alpha),
                                        ("w3", w3), ("pads", pads), ("axes", axes)]]
  path = write_model(tmp_path, nodes, weights, name="small")

  def reference(x):  # the same network written with lax directly
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, w1, (2, 2), [(0, 1), (0, 1)], dimension_numbers=dn) + b1
    h = jnp.clip(h, 0, 6)
    h = jax.lax.conv_general_dilated(h, w2.reshape(3, 3, 1, 6), (1, 1), [(1, 1), (1, 1)], dimension_numbers=dn,
                                     feature_group_count=6) + b2
    h = jnp.where(h > 0, h, alpha * h)
    h = jnp.pad(h, pads)
    h = jax.lax.conv_general_dilated(h, w3, (1, 1), "VALID", dimension_numbers=dn)
    return jnp.mean(h, axis=(1, 2))

  return path, reference


def test_small_convnet_matches_lax_reference_and_is_differentiable(tmp_path):
  path, reference = _small_convnet(tmp_path)
  model = surrogate.load_tfjs_model(path, input_frame=frame_lib.make_frame("f16", (16, 16), np.zeros((5, 2))),
                                    output_name="y", dropout_rate=0.2)
  x = jnp.asarray(np.random.default_rng(3).uniform(0, 255, (3, 16, 16, 3)) / 40.0, jnp.float32)
  emb, acts = jax.jit(model.net_fn)(model.params, x)
  np.testing.assert_allclose(emb, reference(x), rtol=1e-4, atol=1e-4)
  assert [a.shape[1:3] for a in acts] == [(8, 8), (9, 9)]  # one per spatial size after the first conv
  grad = jax.grad(lambda x: jnp.sum(model.net_fn(model.params, x)[0] ** 2))(x)
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0
  # DFANet dropout: deterministic per key, different between keys, absent without a key
  key = jax.random.PRNGKey(0)
  d1 = model.net_fn(model.params, x, key=key, dropout_rate=0.2)[0]
  d2 = model.net_fn(model.params, x, key=key, dropout_rate=0.2)[0]
  d3 = model.net_fn(model.params, x, key=jax.random.PRNGKey(1), dropout_rate=0.2)[0]
  np.testing.assert_array_equal(d1, d2)
  assert not np.allclose(d1, emb) and not np.allclose(d1, d3)
  np.testing.assert_allclose(model.net_fn(model.params, x, key=None, dropout_rate=0.2)[0], emb, rtol=1e-6,
                             atol=1e-6)


def test_quantised_model_matches_tensorflow_js(tmp_path, tfjs_node_modules):
  path, expected_w, expected_b = _uint8_affine(tmp_path / "model")
  x = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
  (ref,) = run_tfjs(tfjs_node_modules, path, x, ["y"], tmp_path)
  graph, params = graph_lib.convert(reading.read_tfjs(path), output_name="y")
  ours = np.asarray(graph_lib.run_graph(graph, params, jnp.asarray(x))[0])
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ref, x @ expected_w + expected_b, rtol=1e-5, atol=1e-5)


def test_small_convnet_matches_tensorflow_js(tmp_path, tfjs_node_modules):
  path, _ = _small_convnet(tmp_path / "model")
  x = np.random.default_rng(5).uniform(0, 6, (2, 16, 16, 3)).astype(np.float32)
  (ref,) = run_tfjs(tfjs_node_modules, path, x, ["y"], tmp_path)
  graph, params = graph_lib.convert(reading.read_tfjs(path), output_name="y")
  np.testing.assert_allclose(graph_lib.run_graph(graph, params, jnp.asarray(x))[0], ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# The two registered models on real LFW faces.

MODELS = {"faceres": ("global_pooling/Mean", 1024), "mobileface": ("batchnorm0/add_1", 256)}


def _model_json(name: str) -> pathlib.Path:
  path = shared_dir() / "models" / f"{name}.json"
  if not path.is_file() or not path.with_suffix(".bin").is_file():
    pytest.skip(f"{name}.json / {name}.bin not found in {path.parent} (set OPOMJAX_SHARED)")
  return path


@pytest.fixture(scope="module")
def canonical_chips(lfw_root):
  return canonical_lfw_chips(lfw_root, 4)


@pytest.fixture(scope="module", params=sorted(MODELS))
def real_model(request):
  name = request.param
  path = _model_json(name)
  builder = {"faceres": surrogate.build_faceres, "mobileface": surrogate.build_mobileface}[name]
  return name, path, builder(path, shard_sha256={f"{name}.bin": surrogate.SHARD_SHA256[f"{name}.bin"]})


def _reference_input(name: str, model_frame_images: np.ndarray) -> np.ndarray:
  """The graph input, written independently of the importer's input spec."""
  if name == "faceres":
    return model_frame_images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
  return model_frame_images


@pytest.mark.slow
@pytest.mark.real_data
def test_real_models_match_tensorflow_js_on_lfw(real_model, canonical_chips, tfjs_node_modules, tmp_path):
  name, path, model = real_model
  output, size = MODELS[name]
  images = np.asarray(model.to_input(jnp.asarray(canonical_chips)))
  assert images.shape[1:3] == model.input_frame.size
  (ref,) = run_tfjs(tfjs_node_modules, path, _reference_input(name, images), [output], tmp_path)
  emb = np.asarray(jax.jit(model.net_fn)(model.params, jnp.asarray(images))[0])
  assert emb.shape == ref.shape == (len(images), size)
  diff = np.abs(emb - ref).max()
  scale = np.abs(ref).max()
  cosine = np.sum(emb * ref, 1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
  print(f"{name} JAX vs TensorFlow.js on {len(images)} LFW chips: max |diff| {diff:.2e} (max |ref| {scale:.2f}), "
        f"cosine min {cosine.min():.8f}")
  assert diff < 2e-5 * max(scale, 1.0)
  assert cosine.min() > 0.999999
  # different people are different for both runtimes (the outputs are not degenerate)
  unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
  assert (unit @ unit.T)[np.triu_indices(len(ref), 1)].max() < 0.95


@pytest.mark.real_data
def test_real_model_gradient_is_finite_and_nonzero(real_model, canonical_chips):
  name, _, model = real_model
  direction = jnp.asarray(np.random.default_rng(0).normal(size=(model.embedding_size,)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(model.embed(x) @ direction)))(jnp.asarray(canonical_chips[:2]))
  grad = np.asarray(grad)
  assert grad.shape == canonical_chips[:2].shape
  assert np.isfinite(grad).all(), name
  assert np.abs(grad).max() > 0 and (np.abs(grad) > 0).mean() > 0.5, name


@pytest.mark.real_data
def test_real_model_frames_and_sizes(real_model):
  name, _, model = real_model
  assert model.embedding_size == MODELS[name][1]
  if name == "faceres":  # the whole canonical chip, resized: corners map to corners
    scale, t = frame_lib.fit_scale_translation(frame_lib.CANONICAL.landmarks_array, model.input_frame.landmarks_array)
    assert model.input_frame.size == (224, 224)
    np.testing.assert_allclose([scale, *(t + 0.5 - 0.5 * scale)], [1.75, 0.0, 0.0], atol=1e-9)
  else:
    assert model.input_frame == frame_lib.ARCFACE_112


@pytest.mark.real_data
def test_registered_models_load_by_name():
  from opomjax.models import registry  # pylint: disable=import-outside-toplevel

  _model_json("mobileface")
  model = registry.load_model("mobileface")
  assert model.name == "mobileface" and model.embedding_size == 256
  assert checkpoints.get_entry("faceres").embedding_size == 1024


@pytest.mark.real_data
def test_a_changed_weight_shard_is_refused(tmp_path, monkeypatch):
  path = _model_json("mobileface")
  shutil.copy(path, tmp_path / path.name)
  data = bytearray(path.with_suffix(".bin").read_bytes())
  data[100] ^= 1
  (tmp_path / "mobileface.bin").write_bytes(bytes(data))
  # the registry checks the json; the builder checks the shard next to it
  monkeypatch.setattr(checkpoints, "resolve_file", lambda name: tmp_path / path.name)
  with pytest.raises(checkpoints.ChecksumError, match="mobileface.bin"):
    surrogate.build_mobileface()
