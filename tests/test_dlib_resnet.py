"""dlib's ResNet in Flax: architecture, the .dat reader, and parity with dlib's own runtime on real faces."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.models import checkpoints
from opomjax.models import dlib_resnet
from opomjax.models import dlib_serialization
from opomjax.models import layers
from opomjax.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_PARITY_PEOPLE = 12


def _bench_module(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def weights_path():
  try:
    return checkpoints.resolve_file("dlib_resnet")
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def model(weights_path):
  del weights_path
  return dlib_resnet.build_dlib_resnet(precision="highest")  # full float32 on any backend (parity)


@pytest.fixture(scope="module")
def recognition():
  pytest.importorskip("dlib")
  return _bench_module("recognition_lfw")


@pytest.fixture(scope="module")
def lfw_chips(lfw_root, recognition):
  """dlib chips of the first photo of a few LFW people: dlib detector + 5 landmarks + get_face_chip."""
  people = recognition.select_people(lfw_root, NUM_PARITY_PEOPLE, 1)
  chipper = recognition.DlibChipper()
  return np.stack([chipper(recognition.load_rgb(photos[0])) for photos in people.values()])


def test_parameter_count_and_shapes():
  net = dlib_resnet.Model()
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 150, 150, 3)))
  assert layers.count_parameters(variables["params"]) == dlib_resnet.NUM_PARAMETERS == 5_614_592
  emb, acts = jax.eval_shape(lambda v, x: net.apply(v, x), variables, jnp.zeros((2, 150, 150, 3)))
  assert emb.shape == (2, 128)
  # stem, then one activation per stage; the 256-channel stages keep the larger (shortcut) size: 4x4, 2x2.
  assert [a.shape[1:] for a in acts] == [(35, 35, 32), (35, 35, 32), (17, 17, 64), (8, 8, 128), (4, 4, 256),
                                         (2, 2, 256)]


def test_reader_matches_dlib_layer_stack(weights_path):
  net = dlib_serialization.read_network(weights_path)
  kinds = [layer.kind for layer in net.layers]
  assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
  assert kinds.count("max_pool") == 1 and kinds.count("avg_pool") == 5 and kinds.count("fc") == 1
  assert net.num_parameters() == 5_614_592
  np.testing.assert_allclose(net.input["mean_rgb"], dlib_resnet.MEAN_RGB, rtol=1e-7)
  assert (net.input["nr"], net.input["nc"]) == (150, 150)
  assert net.loss["kind"] == "loss_metric_2"
  params = dlib_resnet.params_from_dlib(net)
  init = jax.eval_shape(dlib_resnet.Model().init, jax.random.PRNGKey(0), jnp.zeros((1, 150, 150, 3)))
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(np.shape, init["params"])


def test_reader_rejects_damaged_or_foreign_data(weights_path):
  data = weights_path.read_bytes()
  with pytest.raises(dlib_serialization.DlibFormatError):
    dlib_serialization.parse_network(data[: len(data) // 2])
  with pytest.raises(dlib_serialization.DlibFormatError):
    dlib_serialization.parse_network(data.replace(b"relu_", b"relX_", 1))
  with pytest.raises(ValueError, match="not dlib's face ResNet"):
    dlib_resnet.params_from_dlib(dlib_serialization.parse_network(data), stages=dlib_resnet.STAGES[:-1])


def test_zero_pad_add_matches_dlib_add_semantics():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)
  b = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
  want = np.zeros((1, 4, 4, 4), np.float32)  # dlib tt::add: each source counts where its indices exist
  for r in range(4):
    for c in range(4):
      for k in range(4):
        want[0, r, c, k] = (a[0, r, c, k] if r < 3 and c < 3 else 0) + (b[0, r, c, k] if k < 2 else 0)
  np.testing.assert_array_equal(np.asarray(dlib_resnet.zero_pad_add(a, b)), want)


def test_registered_name_builds_the_real_model(model):
  assert model.embedding_size == 128
  assert model.input_frame == dlib_resnet.DLIB_CHIP_150
  assert registry.MODEL_BUILDERS["dlib_resnet"] == "opomjax.models.dlib_resnet:build_dlib_resnet"
  with pytest.raises(ValueError, match="dlib chips"):
    model.net_fn(model.params, jnp.zeros((1, 112, 112, 3)))


@pytest.mark.real_data
def test_parity_with_dlib_runtime_on_lfw(model, lfw_chips, weights_path):
  import dlib  # pylint: disable=import-outside-toplevel

  reference = dlib.face_recognition_model_v1(str(weights_path))
  want = np.stack([np.asarray(reference.compute_face_descriptor(chip)) for chip in lfw_chips])
  got, _ = jax.jit(model.net_fn)(model.params, jnp.asarray(lfw_chips, jnp.float32))
  got = np.asarray(got)
  assert got.shape == (NUM_PARITY_PEOPLE, 128)
  assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
  np.testing.assert_allclose(np.asarray(model.embed_native(lfw_chips.astype(np.float32))),
                             want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-4)


@pytest.mark.real_data
def test_chip_frame_matches_68_point_landmarks_on_real_chips(lfw_chips):
  import dlib  # pylint: disable=import-outside-toplevel

  predictor_path = checkpoints.resolve_file("dlib_shape_predictor68")
  predictor = dlib.shape_predictor(str(predictor_path))
  detector = dlib.get_frontal_face_detector()
  found = []
  for chip in lfw_chips:
    dets = detector(chip, 1)
    if not dets:
      continue
    pts = np.array([[p.x, p.y] for p in predictor(chip, dets[0]).parts()], np.float64)
    found.append([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
  assert len(found) >= NUM_PARITY_PEOPLE // 2
  # The frame is dlib's mean face; real faces scatter around it by a few pixels (mouth corners most), so
  # the mean over a dozen people lies within ~3 px of it (2% of the chip). This guards against gross errors
  # (a wrong landmark, chip size or offset); finer detail rests on the derivation from dlib's maths.
  err = np.linalg.norm(np.mean(found, axis=0) - dlib_resnet.chip_landmarks(), axis=1)
  assert err.max() < 3.5 and err.mean() < 2.5, err


def _photo_to_dlib_chip(chipper, photo: np.ndarray) -> np.ndarray:
  """dlib's own photo -> chip map ``(2, 3)`` (index coordinates), read off ``get_face_chip`` applied to a
  coordinate ramp (bilinear sampling reproduces a linear ramp exactly, so a least-squares fit recovers it)."""
  rect = max(chipper.detector(photo, 1), key=lambda d: d.area())
  shape = chipper.predictor(photo, rect)
  h, w = photo.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w]
  ramp = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)  # 250x250 LFW photos: coordinates fit
  chip = np.asarray(chipper.dlib.get_face_chip(ramp, shape, size=150, padding=0.25), np.float64)
  qy, qx = np.mgrid[0:150, 0:150]
  chip_points = np.stack([qx.ravel(), qy.ravel(), np.ones(qx.size)], 1)
  photo_points = chip.reshape(-1, 3)[:, :2]
  inside = np.all((photo_points > 0) & (photo_points < 249), axis=1)  # away from the zero-filled border
  chip_to_photo, *_ = np.linalg.lstsq(chip_points[inside], photo_points[inside], rcond=None)
  return np.linalg.inv(np.vstack([chip_to_photo.T, [0, 0, 1]]))[:2]


@pytest.mark.real_data
def test_chip_frame_is_where_canonical_alignment_lands_in_dlib_chips(lfw_root, yunet_onnx, recognition):
  from opomjax import faces  # pylint: disable=import-outside-toplevel
  from opomjax import frame as frame_lib  # pylint: disable=import-outside-toplevel

  people = recognition.select_people(lfw_root, 2 * NUM_PARITY_PEOPLE, 1)
  chipper = recognition.DlibChipper()
  detector = faces.YuNetDetector(str(yunet_onnx))
  landed = []
  for photos in people.values():
    photo = recognition.load_rgb(photos[0])
    face = faces.align_photo(photo, detector=detector, select="central")
    in_photo = faces.apply_transform(faces.invert_transform(face.transform), frame_lib.CANONICAL.landmarks_array)
    to_chip = _photo_to_dlib_chip(chipper, photo)
    landed.append(in_photo @ to_chip[:, :2].T + to_chip[:, 2])
  # Per photo the two alignments disagree by ~4 px (landmark noise of both predictors); the mean over two
  # dozen people lies within ~1 px of the frame, measured on 398 photos. dlib's mean face (the 68-point
  # landmarks) misses the mouth corners by ~4 px, so this separates the two.
  err = np.linalg.norm(np.mean(landed, axis=0) - dlib_resnet.DLIB_CHIP_150.landmarks_array, axis=1)
  assert err.max() < 2.5 and err.mean() < 1.8, err


def test_dfanet_dropout_is_keyed_and_off_without_key(model):
  # Without a key the rate is ignored (the parity test shows that path is dlib's network exactly).
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (2, 150, 150, 3)), jnp.float32)
  apply = jax.jit(model.net_fn, static_argnames="dropout_rate")
  clean, _ = apply(model.params, x, dropout_rate=0.3)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a, acts = apply(model.params, x, key=k1, dropout_rate=0.3)
  a_again, _ = apply(model.params, x, key=k1, dropout_rate=0.3)
  b, _ = apply(model.params, x, key=k2, dropout_rate=0.3)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a_again))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  assert np.abs(np.asarray(a) - np.asarray(clean)).max() > 1e-3
  assert len(acts) == 6
  with pytest.raises(ValueError, match="dropout_rate"):
    dlib_resnet.build_dlib_resnet(random_init=True, dropout_rate=1.0)


@pytest.mark.real_data
def test_identifies_real_people_on_lfw(lfw_root, recognition, model):
  result = recognition.identification_accuracy(lfw_root, identities=20, probes=2, model=model)
  assert result["chance"] == 0.05
  assert result["accuracy"] > 0.8, result


def test_dfanet_dropout_drops_the_rate_and_rescales():
  x = jnp.ones((200, 100))
  y = np.asarray(layers.DFANetDropout(0.25).apply({}, x, deterministic=False,
                                                  rngs={"dropout": jax.random.PRNGKey(3)}))
  assert abs(np.mean(y == 0) - 0.25) < 0.02
  np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(layers.DFANetDropout(0.25).apply({}, x, deterministic=True)), x)
