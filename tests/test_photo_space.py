"""Photo-space evaluation (opomjax.pipeline.photos) on real LFW photos: the face is found again in the saved photo."""

import numpy as np
import pytest

from opomjax import data
from opomjax import faces
from opomjax.faces import channel
from opomjax.pipeline import photos


@pytest.fixture(scope="module")
def small_protocol(lfw_root):
  """Two people's first three photos, aligned as the data set aligns them (test chips + their source files), and a
  third person's three photos as distractors."""
  names = ("Aaron_Peirsol", "Abdullah_Gul", "Abdullah")
  files = [[f"{n}/{n}_{i:04d}.jpg" for i in (1, 2, 3)] for n in names]
  chips = np.stack([[channel.to_uint8(faces.align_photo(faces.load_photo(lfw_root / f)).chip) for f in row]
                    for row in files])
  return data.Protocol(names=names[:2], train=chips[:2], test=chips[:2], distractors=chips[2],
                       frame_name="arcface128", frame_size=(128, 128), test_files=tuple(map(tuple, files[:2])),
                       distractor_files=tuple(files[2]))


def test_zero_mask_png_gives_back_the_data_set_chips(small_protocol, lfw_root):
  zeros = np.zeros((2, 128, 128, 3), np.float32)
  chips, lost = photos.realigned_chips(small_protocol, zeros, lfw_root, "photo_png")
  assert not lost.any()
  np.testing.assert_array_equal(chips, small_protocol.test.reshape(chips.shape))


@pytest.mark.parametrize("insertion", faces.MASK_INSERTIONS)
def test_masked_photo_is_found_again_and_carries_the_mask(small_protocol, lfw_root, insertion):
  rng = np.random.default_rng(0)
  masks = rng.choice([-8.0, 8.0], size=(2, 128, 128, 3)).astype(np.float32)
  for condition in channel.PHOTO_CONDITIONS:
    chips, lost = photos.realigned_chips(small_protocol, masks, lfw_root, condition, insertion=insertion)
    assert not lost.any()
    clean = small_protocol.test.reshape(chips.shape).astype(np.float32)
    seen = chips.astype(np.float32) - clean
    applied = np.repeat(masks, 3, axis=0)
    # The mask survives the trip into the photo and back (resampled twice, the face re-detected): the change in
    # the chip follows the mask, clearly above chance (a ±8 pattern re-sampled loses its finest detail).
    centre = (slice(None), slice(24, 104), slice(24, 104))
    corr = np.corrcoef(seen[centre].ravel(), applied[centre].ravel())[0, 1]
    unrelated = rng.choice([-8.0, 8.0], size=applied.shape)
    null = abs(np.corrcoef(seen[centre].ravel(), unrelated[centre].ravel())[0, 1])
    # Measured (sampled / fit / sign): 0.38 / 0.52 / 0.41 after PNG, 0.16 / 0.18 / 0.11 after JPEG 75 (which removes
    # most of a white-noise mask), null below 0.01. On this white noise the fit carries the mask best; on the
    # masks of docs/results the sign insertion protects more photos.
    assert corr > {"photo_png": 0.25, "photo_jpeg75": 0.08}[condition] and corr > 10 * null, (condition, corr, null)


def test_photo_conditions_are_refused_on_chips_and_bad_input_is_named(small_protocol, lfw_root, tmp_path):
  with pytest.raises(ValueError, match="whole photos"):
    channel.apply_condition(np.zeros((1, 8, 8, 3)), "photo_png")
  with pytest.raises(ValueError, match="masks must have shape"):
    photos.realigned_chips(small_protocol, np.zeros((3, 128, 128, 3)), lfw_root, "photo_png")
  with pytest.raises(FileNotFoundError, match="folder"):
    photos.realigned_chips(small_protocol, np.zeros((2, 128, 128, 3)), tmp_path / "none", "photo_png")
  with pytest.raises(ValueError, match="condition must be one of"):
    photos.realigned_chips(small_protocol, np.zeros((2, 128, 128, 3)), lfw_root, "jpeg75")


def test_the_photo_insertion_is_a_checked_setting():
  from experiments.configs import common
  from opomjax.pipeline import validate

  config = common.method_config("fi-uap", "dlib")
  assert validate.photo_insertion(config) == faces.MASK_INSERTION == "sign"
  config.photo_insertion = "fit"
  assert validate.photo_insertion(config) == "fit"
  config.photo_insertion = "refined"
  with pytest.raises(ValueError, match="config.photo_insertion must be one of sign, fit, sampled"):
    validate.check_config(config, "/tmp/unused")


def evaluate_zero_masks(protocol, lfw_root, tmp_path, targets: str, conditions: str) -> list:
  """The runner's rows for zero FI-UAP masks of ``protocol``'s people: every condition must give clean rates."""
  from experiments.configs import common
  from opomjax.pipeline import features, masks, runner

  workdir = tmp_path / "fi-uap"
  for name in protocol.names:
    masks.save_mask(masks.mask_path(workdir, name), np.zeros((128, 128, 3), np.float32), dict(
        identity=name, frame="arcface128", epsilon=8.0, method="fi-uap", surrogate="dlib_resnet", steps=0, seed=0))
  config = common.method_config("fi-uap", "dlib")
  config.update_from_flattened_dict({"targets": targets, "conditions": conditions, "dataset.lfw_dir": str(lfw_root)})
  return runner.evaluate(config, protocol, {"fi-uap": workdir}, features.FeatureCache(tmp_path / "cache"),
                         show_progress=False)


def test_runner_evaluates_photo_conditions_beside_chip_conditions(small_protocol, lfw_root, tmp_path):
  rows = evaluate_zero_masks(small_protocol, lfw_root, tmp_path, "dlib_resnet", "none,photo_png,photo_jpeg75")
  by = {r["condition"]: r for r in rows}
  assert set(by) == {"none", "photo_png", "photo_jpeg75"}
  assert by["photo_png"]["faces_lost"] == by["photo_jpeg75"]["faces_lost"] == 0 and "faces_lost" not in by["none"]
  assert by["photo_png"]["insertion"] == by["photo_jpeg75"]["insertion"] == "sign" and "insertion" not in by["none"]
  for key in ("top1", "top5", "cos_after", "channel_top1"):
    assert by["photo_png"][key] == by["none"][key]  # the same chips, so the same features
  assert by["photo_jpeg75"]["top1"] == by["photo_jpeg75"]["channel_top1"]  # unmasked = zero-masked
  assert abs(by["photo_jpeg75"]["cos_after"] - by["none"]["cos_after"]) < 0.02


def test_dlib_native_target_runs_dlibs_own_pipeline_on_the_photos(small_protocol, lfw_root, tmp_path):
  import dlib

  from opomjax.models import checkpoints
  from opomjax.pipeline import dlib_native

  native = dlib_native.DlibNative()
  photos_ = [faces.load_photo(lfw_root / f) for f in small_protocol.test_files[0]]
  chips, lost = native.chips(photos_, fallback=False)
  assert not lost.any()
  cpp = dlib.face_recognition_model_v1(str(checkpoints.resolve_file("dlib_resnet")))
  reference = np.stack([np.asarray(cpp.compute_face_descriptor(c)) for c in chips])
  reference /= np.linalg.norm(reference, axis=1, keepdims=True)
  np.testing.assert_allclose(native.describe_chips(chips), reference, atol=2e-6)  # dlib's C++ descriptor

  rows = evaluate_zero_masks(small_protocol, lfw_root, tmp_path, "dlib_native", "none,photo_png")
  (row,) = rows  # no row for the chip condition
  assert (row["target"], row["condition"], row["faces_lost"]) == ("dlib_native", "photo_png", 0)
  assert row["top1"] == 1.0 - row["clean_top1"] and abs(row["cos_after"] - row["cos_before"]) < 1e-6
