"""Parity of the Flax face-recognition ports with their PyTorch originals, and the state-dict converter.

Each reference network (``tests/torch_reference.py``) gets random weights and BN statistics that matter, runs
in eval mode on a random [0, 255] image, and its state dict is loaded into the Flax port. Full forward parity
for IR-50, IR-SE-50, IR-152, iresnet50, MobileFaceNet and Inception-ResNet-v1 (batch 1 to keep CPU time
low); IR-100 and iresnet100, which only repeat the units tested there, are checked by structure and
parameter count.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position

from opomjax import frame as frame_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from opomjax.models import inception_resnet_v1 as irv1  # pylint: disable=wrong-import-position
from opomjax.models import iresnet, mobilefacenet, registry, torch_convert  # pylint: disable=wrong-import-position

#: name -> (PyTorch reference constructor, Flax builder, input size, calibration batch)
ARCHITECTURES = {
    "ir50": (lambda: tr.EvolveBackbone(50, "ir"), iresnet.build_ir50, 112, 1),
    "ir_se50": (lambda: tr.EvolveBackbone(50, "ir_se"), iresnet.build_ir_se50, 112, 1),
    "ir100": (lambda: tr.EvolveBackbone(100, "ir"), iresnet.build_ir100, 112, 1),
    "ir152": (lambda: tr.EvolveBackbone(152, "ir"), iresnet.build_ir152, 112, 1),
    "iresnet50": (lambda: tr.IResNet((3, 4, 14, 3)), iresnet.build_iresnet50, 112, 1),
    "iresnet100": (lambda: tr.IResNet((3, 13, 30, 3)), iresnet.build_iresnet100, 112, 1),
    "mobilefacenet": (lambda: tr.MobileFaceNet(512), mobilefacenet.build_mobilefacenet, 112, 2),
    "inception_resnet_v1": (lambda: tr.InceptionResnetV1(), irv1.build_inception_resnet_v1, 160, 1),
}
FORWARD_PARITY = ["ir50", "ir_se50", "ir152", "iresnet50", "mobilefacenet", "inception_resnet_v1"]
STRUCTURE_ONLY = ["ir100", "iresnet100"]
ATOL = 1e-4


def _image(size: int, seed: int) -> np.ndarray:
  return np.random.RandomState(seed).uniform(0, 255, (1, size, size, 3)).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@functools.lru_cache(maxsize=None)
def reference(name: str):
  """(torch model in eval mode, its state dict as numpy, test image).

  Models whose forward pass is compared get randomised weights and BN statistics; the structure-only ones
  keep PyTorch's initialisation (no calibration pass needed).
  """
  make, _, size, calibration_batch = ARCHITECTURES[name]
  torch.manual_seed(0)
  model = make().eval()
  if name in FORWARD_PARITY:
    g = torch.Generator().manual_seed(1)
    tr.randomize_(model, torch.rand(calibration_batch, 3, size, size, generator=g) * 255)
  state_dict = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  return model, state_dict, _image(size, 2)


@functools.lru_cache(maxsize=None)
def port(name: str):
  _, state_dict, _ = reference(name)
  return ARCHITECTURES[name][1](state_dict)


@functools.lru_cache(maxsize=None)
def port_forward(name: str):
  """The port's (embeddings, activations) on the test image, as numpy."""
  face_model = port(name)
  emb, acts = jax.jit(face_model.net_fn)(face_model.params, jnp.asarray(reference(name)[2]))
  return np.asarray(emb), [np.asarray(a) for a in acts]


@pytest.mark.parametrize("name", FORWARD_PARITY)
def test_forward_matches_torch(name):
  model, _, x = reference(name)
  with torch.no_grad():
    expected = model(_nchw(x)).numpy()
  emb, acts = port_forward(name)
  assert emb.shape == (1, port(name).embedding_size) == expected.shape
  assert np.all(np.isfinite(emb)) and all(a.ndim == 4 and a.shape[0] == 1 for a in acts)
  # The randomised statistics keep the embeddings at unit scale, so an absolute bound is meaningful.
  assert 0.5 < np.abs(expected).max() < 50
  np.testing.assert_allclose(emb, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_count_and_keys_match_torch(name):
  model, state_dict, _ = reference(name)
  face_model = port(name)  # raises on any missing, unexpected or mis-shaped key
  assert torch_convert.count_params(face_model.params) == tr.count_params(model)
  bn_buffers = sum(v.size for k, v in state_dict.items() if k.endswith(("running_mean", "running_var")))
  stats = jax.tree_util.tree_leaves(face_model.params["batch_stats"])
  assert sum(s.size for s in stats) == bn_buffers


@pytest.mark.parametrize("name", STRUCTURE_ONLY)
def test_deep_variants_share_the_tested_units(name):
  # IR-100 / iresnet100 differ from IR-50 / iresnet50 only in unit counts: same key layout per unit.
  shallow = {"ir100": "ir50", "iresnet100": "iresnet50"}[name]

  def layout(state_dict):
    units = {".".join(k.split(".")[:2]) for k in state_dict if k.startswith(("body.", "layer"))}
    per_unit = {(k.split(".", 2)[-1] if k.startswith(("body.", "layer")) else k, v.shape)
                for k, v in state_dict.items()}
    return len(units), per_unit

  n_deep, deep = layout(reference(name)[1])
  n_shallow, shallow_layout = layout(reference(shallow)[1])
  assert (n_shallow, n_deep) == (sum(iresnet.STAGE_UNITS[50]), sum(iresnet.STAGE_UNITS[100]))
  assert deep == shallow_layout


def test_stage_activations_are_the_torch_stage_outputs():
  model, _, x = reference("ir50")
  captured = []
  taps = [model.input_layer] + [model.body[i] for i in (2, 6, 20, 23)]
  hooks = [m.register_forward_hook(lambda m, a, out: captured.append(out.numpy())) for m in taps]
  with torch.no_grad():
    model(_nchw(x))
  for h in hooks:
    h.remove()
  _, acts = port_forward("ir50")
  assert [a.shape[1:3] for a in acts] == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]
  for ours, theirs in zip(acts, captured):
    theirs = theirs.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * max(1.0, np.abs(theirs).max()))


def test_output_linear_is_permuted_from_nchw_flattening():
  # Mapping output_layer.3 without the NCHW -> NHWC permutation must break parity (guards the converter).
  model, state_dict, x = reference("ir50")
  target = jax.eval_shape(iresnet.EvolveIR().init, jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  unpermuted = torch_convert.torch_to_flax(state_dict, target)
  permuted = port("ir50").params
  k1 = np.asarray(unpermuted["params"]["output_layer.3"]["kernel"])
  k2 = np.asarray(permuted["params"]["output_layer.3"]["kernel"])
  w = state_dict["output_layer.3.weight"]  # (512, 512 * 7 * 7), inputs in (c, h, w) order
  c, h, col, o = 37, 3, 5, 11
  assert k2[(h * 7 + col) * 512 + c, o] == w[o, c * 49 + h * 7 + col]
  assert not np.array_equal(k1, k2)


# ---------------------------------------------------------------------------------------------------------
# Converter errors and file formats (MobileFaceNet: small and quick).


def test_missing_key_is_named():
  _, state_dict, _ = reference("mobilefacenet")
  broken = {k: v for k, v in state_dict.items() if k != "conv_4.model.2.conv_dw.bn.running_var"}
  with pytest.raises(ValueError, match=r"missing keys \(1\):\n    conv_4\.model\.2\.conv_dw\.bn\.running_var"):
    mobilefacenet.build_mobilefacenet(broken)


def test_mis_shaped_and_unexpected_keys_are_named():
  _, state_dict, _ = reference("mobilefacenet")
  broken = dict(state_dict, **{"linear.weight": np.zeros((128, 512), np.float32),
                               "head.kernel": np.zeros((3,), np.float32)})
  with pytest.raises(ValueError) as info:
    mobilefacenet.build_mobilefacenet(broken)
  message = str(info.value)
  assert "linear.weight: got (128, 512), expected (512, 512)" in message
  assert "unexpected keys (1):\n    head.kernel" in message
  assert "missing keys" not in message


def test_facenet_classifier_head_is_ignored_and_other_extras_are_not():
  _, state_dict, _ = reference("inception_resnet_v1")
  head = {"logits.weight": np.zeros((7, 512), np.float32), "logits.bias": np.zeros((7,), np.float32)}
  loaded = irv1.build_inception_resnet_v1(dict(state_dict, **head))
  assert torch_convert.count_params(loaded.params) == torch_convert.count_params(port("inception_resnet_v1").params)
  with pytest.raises(ValueError, match="logits.weight"):
    mobilefacenet.build_mobilefacenet(dict(reference("mobilefacenet")[1], **head))


def _assert_same_variables(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pth_and_safetensors_files_load_the_same_weights(tmp_path):
  model, _, x = reference("mobilefacenet")
  pth = tmp_path / "mobilefacenet.pth"
  wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
  torch.save(wrapped, pth)  # a DataParallel checkpoint dict: unwrapped and un-prefixed on load
  st = tmp_path / "mobilefacenet.safetensors"
  torch_convert.convert_to_safetensors(pth, st)
  from_pth = registry.load_model("mobilefacenet", weights=pth)
  from_st = registry.load_model("mobilefacenet", weights=st)
  _assert_same_variables(from_pth.params, port("mobilefacenet").params)
  _assert_same_variables(from_st.params, from_pth.params)
  emb = np.asarray(jax.jit(from_st.net_fn)(from_st.params, jnp.asarray(x))[0])
  with torch.no_grad():
    np.testing.assert_allclose(emb, model(_nchw(x)).numpy(), rtol=0, atol=ATOL)


def test_safetensors_load_without_torch(tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top

  _, state_dict, _ = reference("mobilefacenet")
  path = tmp_path / "w.safetensors"
  st_numpy.save_file(state_dict, str(path))
  script = ("import sys; sys.modules['torch'] = None\n"
            "from opomjax.models import torch_convert\n"
            f"sd = torch_convert.load_state_dict({str(path)!r})\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "print(len(sd))")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
  assert int(out.stdout.strip()) == len(state_dict)


def test_pickled_objects_are_refused(tmp_path):
  path = tmp_path / "evil.pth"
  torch.save({"weights": torch.zeros(2), "payload": frame_lib.ARCFACE_112}, path)
  with pytest.raises(ValueError, match="weights_only=True"):
    torch_convert.load_state_dict(path)
  with pytest.raises(FileNotFoundError):
    torch_convert.load_state_dict(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------------------
# DFANet dropout and the FaceModel interface.


class _DropoutProbe(iresnet.nn.Module):

  @iresnet.nn.compact
  def __call__(self, x, rate):
    return iresnet.conv_dropout(self, x, rate)


def test_conv_dropout_is_bernoulli_with_inverted_scaling():
  x = jnp.ones((4, 50, 50, 8))
  rate = 0.3
  key = {"dropout": jax.random.key(0)}
  y = np.asarray(_DropoutProbe().apply({}, x, rate, rngs=key))
  dropped = (y == 0).mean()
  # 80,000 Bernoulli draws: std of the dropped fraction is 0.0016; 5 sigma band.
  assert abs(dropped - rate) < 0.008
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(_DropoutProbe().apply({}, x, rate)), np.asarray(x))  # no key
  np.testing.assert_array_equal(np.asarray(_DropoutProbe().apply({}, x, 0.0, rngs=key)), np.asarray(x))


def test_network_dropout_needs_a_key_and_is_reproducible():
  face_model = port("mobilefacenet")
  x = jnp.asarray(reference("mobilefacenet")[2])
  fn = jax.jit(lambda p, x, k: face_model.net_fn(p, x, key=k, dropout_rate=0.1)[0])
  clean = port_forward("mobilefacenet")[0]
  a = np.asarray(fn(face_model.params, x, jax.random.key(1)))
  b = np.asarray(fn(face_model.params, x, jax.random.key(1)))
  c = np.asarray(fn(face_model.params, x, jax.random.key(2)))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3 and np.abs(a - clean).max() > 1e-3


def test_random_init_builds_canonical_frame_models():
  model = registry.load_model("mobilefacenet", seed=3, allow_random_weights=True)
  assert model.input_frame == frame_lib.ARCFACE_112 and model.embedding_size == 512
  canonical = jnp.full((2,) + frame_lib.CANONICAL.size + (3,), 128.0)
  emb = np.asarray(jax.jit(model.apply)(model.params, canonical))
  assert emb.shape == (2, 512)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  kernel = lambda m: np.asarray(m.params["params"]["linear"]["kernel"])
  assert not np.allclose(kernel(model), kernel(port("mobilefacenet")))


def test_facenet_frame_follows_the_mtcnn_margin_formula():
  frame = irv1.mtcnn_frame(160, 20)
  np.testing.assert_allclose(frame.landmarks_array, 10 + irv1.MTCNN_BOX_LANDMARKS * 140)
  assert irv1.FACENET_160.size == (160, 160) and irv1.FACENET_160 == irv1.mtcnn_frame(160, 14)
  # Its proportions (eye distance : eye-to-mouth height) stay close to the ArcFace template's once the
  # typical 1.2 aspect ratio of an MTCNN box is undone.
  def ratio(lm, aspect=1.0):
    return (lm[1, 0] - lm[0, 0]) / ((lm[3:, 1].mean() - lm[:2, 1].mean()) * aspect)
  assert abs(ratio(irv1.FACENET_160.landmarks_array, 1.2) - ratio(frame_lib.ARCFACE_112_LANDMARKS)) < 0.03
  with pytest.raises(ValueError, match="margin"):
    irv1.mtcnn_frame(160, 160)
  with pytest.raises(ValueError, match="input_frame"):
    irv1.build_inception_resnet_v1(input_frame=frame_lib.ARCFACE_112)


def test_bad_builder_arguments_raise():
  with pytest.raises(ValueError, match="num_layers"):
    iresnet.build_evolve_ir(34)
  with pytest.raises(ValueError, match="num_layers"):
    iresnet.build_insightface_iresnet(152)
  with pytest.raises(ValueError, match="dropout_rate"):
    mobilefacenet.build_mobilefacenet(reference("mobilefacenet")[1], dropout_rate=1.0)


def test_model_factories_give_the_builders_modules():
  x = jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32)
  for variant in iresnet.VARIANTS:
    shapes = jax.eval_shape(iresnet.Model(variant).init, jax.random.key(0), x)
    assert torch_convert.count_params(shapes) == tr.count_params(reference(variant)[0]), variant
  with pytest.raises(ValueError, match="variant"):
    iresnet.Model("ir34")
  assert mobilefacenet.Model(embedding_size=128).embedding_size == 128
  assert isinstance(irv1.Model(), irv1.InceptionResnetV1)
