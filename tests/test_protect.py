"""Protecting a person's own photos: real LFW photos, YuNet detection, dlib's real weights.

One protection run (4 photos of one person plus a noise image, 12 steps on dlib) is shared by the tests of
its outputs; the rest are cheap checks of the pieces.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import opomjax
from opomjax import faces, protect
from opomjax.core import objectives
from opomjax.frame import CANONICAL
from opomjax.pipeline import masks as masks_lib

EPSILON = 8.0
STEPS = 12
PERSON = "Colin_Powell"
N_PHOTOS = 4


@pytest.fixture(scope="module")
def person_photos(lfw_root) -> list[pathlib.Path]:
  paths = sorted((lfw_root / PERSON).glob("*.jpg"))[:N_PHOTOS]
  if len(paths) < N_PHOTOS:
    pytest.skip(f"LFW at {lfw_root} lacks {N_PHOTOS} photos of {PERSON}")
  return paths


@pytest.fixture(scope="module")
def detector(yunet_onnx):
  return faces.YuNetDetector(yunet_onnx)


@pytest.fixture(scope="module")
def dlib_model(lfw_root):
  return opomjax.load_model("dlib_resnet")


def noise_photo() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, person_photos, detector, dlib_model):
  """Protects the photo files (plus a noise image) once; returns (input folder, output folder, report)."""
  src = tmp_path_factory.mktemp("photos")
  for p in person_photos:
    shutil.copy(p, src / p.name)
  Image.fromarray(noise_photo()).save(src / "noise.png")
  out = tmp_path_factory.mktemp("protected")
  with pytest.warns(UserWarning, match="no usable face"):
    report = protect.protect_files(src, out, surrogates=(dlib_model,), targets=(dlib_model,), steps=STEPS,
                                   epsilon=EPSILON, key=0, detector=detector, show_progress=False)
  return src, out, report


def _protected_entries(report):
  return [p for p in report["photos"] if p["protected"]]


@pytest.mark.real_data
@pytest.mark.slow
def test_photos_change_only_inside_face_region_and_by_at_most_epsilon(run):
  _, _, report = run
  entries = _protected_entries(report)
  assert len(entries) == N_PHOTOS
  for entry in entries:
    original = faces.load_photo(entry["input"])
    protected = np.asarray(Image.open(entry["output"]))
    assert protected.shape == original.shape and protected.dtype == original.dtype == np.uint8
    inside = faces.frame_footprint(np.array(entry["face"]["transform"]), CANONICAL, original.shape) > 0
    diff = protected.astype(int) - original.astype(int)
    np.testing.assert_array_equal(diff[~inside], 0)
    assert np.abs(diff[inside]).max() <= EPSILON + 1
    assert np.count_nonzero(diff[inside]) > 0.5 * diff[inside].size  # the mask is really there


@pytest.mark.real_data
@pytest.mark.slow
def test_change_is_the_mask_warped_back_by_scipy(run):
  """Independent reference for the warp: bilinear samples of the mask (scipy) at the chip point of each pixel."""
  _, out, report = run
  mask, _ = masks_lib.load_mask(out / "mask.npz")
  entry = _protected_entries(report)[0]
  original = faces.load_photo(entry["input"]).astype(np.float64)
  protected = np.asarray(Image.open(entry["output"])).astype(np.float64)
  transform = np.array(entry["face"]["transform"])
  inside = faces.frame_footprint(transform, CANONICAL, original.shape) > 0
  y, x = np.nonzero(inside)
  cx = transform[0, 0] * x + transform[0, 1] * y + transform[0, 2]
  cy = transform[1, 0] * x + transform[1, 1] * y + transform[1, 2]
  warped = np.stack([ndimage.map_coordinates(mask[..., c].astype(np.float64), [cy, cx], order=1, mode="nearest")
                     for c in range(3)], axis=-1)
  expected = np.rint(np.clip(original[y, x] + warped, 0, 255))
  mismatch = np.abs(expected - protected[y, x])
  assert mismatch.max() <= 1  # a value that lands on .5 may round either way in float32
  assert (mismatch > 0).mean() < 1e-3


@pytest.mark.real_data
@pytest.mark.slow
def test_photo_without_face_comes_back_unchanged_and_flagged(run):
  _, _, report = run
  (entry,) = [p for p in report["photos"] if not p["protected"]]
  assert entry["skipped"] == "no_face" and pathlib.Path(entry["input"]).name == "noise.png"
  np.testing.assert_array_equal(np.asarray(Image.open(entry["output"])), noise_photo())


@pytest.mark.real_data
@pytest.mark.slow
def test_mask_file_respects_epsilon_and_carries_metadata(run):
  _, out, report = run
  mask, meta = masks_lib.load_mask(out / "mask.npz")
  assert mask.shape == tuple(CANONICAL.size) + (3,)
  assert np.abs(mask).max() <= EPSILON
  assert (meta["method"], meta["steps"], meta["epsilon"], meta["surrogate"]) == ("opom-convex", STEPS, EPSILON,
                                                                                 "dlib_resnet")
  assert meta["frame"] == CANONICAL.name and len(meta["photos"]) == N_PHOTOS + 1
  assert json.loads((out / "report.json").read_text())["settings"]["steps"] == STEPS
  assert report["objective"][-1] > report["objective"][0]


@pytest.mark.real_data
@pytest.mark.slow
def test_dlib_similarity_to_other_clean_photos_drops(run):
  _, _, report = run
  dlib = report["targets"]["dlib_resnet"]
  before = np.array(dlib["before"][:N_PHOTOS], float)
  after = np.array(dlib["after"][:N_PHOTOS], float)
  assert not np.isnan(after).any()  # every protected face is found again
  assert np.all(after < before)
  assert dlib["drop"] > 0.03, dlib


@pytest.mark.real_data
@pytest.mark.slow
def test_measured_similarity_matches_a_direct_loop(run, detector, dlib_model):
  """measure_protection's "after" for one photo, recomputed by hand: detect, align, embed, compare."""
  _, _, report = run
  entries = _protected_entries(report)
  emb = lambda photo: protect.embed_chips(dlib_model, faces.align_photo(photo, detector=detector).chip[None])[0]
  probe = emb(entries[0]["output"])
  others = [emb(e["input"]) for e in entries[1:]]
  expected = np.mean([probe @ o for o in others])
  np.testing.assert_allclose(report["targets"]["dlib_resnet"]["after"][0], expected, atol=1e-4)


@pytest.mark.real_data
@pytest.mark.parametrize("size, feather", [(None, 0.0), (1000, 6.0)])
def test_roundtrip_filter_equals_warping_into_the_photo_and_back(person_photos, detector, size, feather):
  """B delta from the weight maps equals the mask warped into the photo (footprint, feather) and cut out again."""
  photo = faces.load_photo(person_photos[0])
  if size is not None:  # a large photo: the way in box-averages before sampling
    photo = np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR))
  face = faces.align_photo(photo, detector=detector)
  delta = np.random.default_rng(2).uniform(-EPSILON, EPSILON, tuple(CANONICAL.size) + (3,)).astype(np.float32)
  back, _ = faces.warp_from_frame(delta, face.transform, photo.shape)
  weights = faces.frame_footprint(face.transform, CANONICAL, photo.shape, feather=feather)[..., None]
  expected = faces.warp_to_frame(back * weights, face.transform, CANONICAL)
  filters = protect.roundtrip_weights(face.transform, photo.shape, feather=feather)
  got = np.asarray(protect.apply_roundtrip(jnp.asarray(delta), jnp.asarray(filters)))
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert np.abs(expected - delta).mean() > 1.0  # the round trip really changes a fine-grained mask


@pytest.mark.real_data
def test_no_face_in_any_photo_is_a_clear_error(detector, dlib_model):
  with pytest.raises(faces.NoFaceError, match="none of the 2 photos"):
    protect.protect_photos([noise_photo(), noise_photo()[:200]], surrogates=(dlib_model,), detector=detector,
                           show_progress=False)


def test_bad_inputs_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="photos is empty"):
    protect.protect_photos([], surrogates=("dlib_resnet",))
  with pytest.raises(ValueError, match="no photos found"):
    protect.find_photos(tmp_path)
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="broken.jpg"):
    protect.load_photo_files(protect.find_photos(tmp_path))
  with pytest.raises(ValueError, match="both be written"):
    protect.output_paths([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"], tmp_path / "out", "png")
  with pytest.raises(ValueError, match="overwrite the original"):
    protect.output_paths([tmp_path / "x.png"], tmp_path, "png")
  with pytest.raises(ValueError, match="image_format"):
    protect.output_paths([tmp_path / "x.png"], tmp_path / "out", "gif")


def test_similarity_to_others_matches_a_loop():
  rng = np.random.default_rng(1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  gallery, probe = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(5, 6)))
  gallery[2] = np.nan  # a clean photo without a face
  probe[4] = np.nan  # a protected photo whose face was not found again
  mean, _ = protect.similarity_to_others(probe, gallery)
  for i in range(5):
    sims = [probe[i] @ gallery[j] for j in range(5) if j != i and j != 2]
    expected = np.nan if i == 4 else np.mean(sims)
    np.testing.assert_allclose(mean[i], expected)


def test_ensemble_embedding_averages_the_squared_distance_objectives():
  """On the joined embedding, FI-UAP and the class centre are the models' average; a hull distance at least it."""
  keys = jax.random.split(jax.random.key(0), 4)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  clean = [unit(jax.random.normal(keys[m], (5, 16))) for m in range(2)]
  adv = [unit(c + 0.5 * jax.random.normal(keys[2 + m], c.shape)) for m, c in enumerate(clean)]
  joined_clean, joined_adv = protect.ensemble_embedding(clean), protect.ensemble_embedding(adv)
  np.testing.assert_allclose(jnp.linalg.norm(joined_adv, axis=-1), 1.0, rtol=1e-6)
  # mean over n * (2 d) entries of a squared distance scaled by 1/2: (1/2) * mean of the per-model objectives / 2
  for fn in (objectives.fi_uap, objectives.opom_class_center):
    per_model = np.mean([fn(a, c) for a, c in zip(adv, clean)])
    np.testing.assert_allclose(fn(joined_adv, joined_clean), per_model / 2, rtol=1e-5)
  # weights w (summing to 1): the weighted average, over the 2 d entries of the joined features
  weighted = protect.ensemble_embedding(adv, (3.0, 1.0)), protect.ensemble_embedding(clean, (3.0, 1.0))
  per_model = 0.75 * objectives.fi_uap(adv[0], clean[0]) + 0.25 * objectives.fi_uap(adv[1], clean[1])
  np.testing.assert_allclose(objectives.fi_uap(*weighted), per_model / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="weights"):
    protect.ensemble_embedding(adv, (1.0, -1.0))
  # one set of hull coefficients shared by the models: at least the average of the models' own best ones
  per_model = np.mean([objectives.opom_affine_hull(a, c) for a, c in zip(adv, clean)])
  assert objectives.opom_affine_hull(joined_adv, joined_clean) >= per_model / 2 - 1e-6
