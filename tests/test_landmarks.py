"""Tests of opomjax.faces.landmarks: dlib's 5-point predictor as the alignment points, against dlib itself."""

import jax.numpy as jnp
import numpy as np
import pytest

from opomjax import faces
from opomjax import frame as frame_lib
from opomjax.faces import landmarks
from opomjax.models import checkpoints
from opomjax.models import dlib_resnet

dlib = pytest.importorskip("dlib")
real_data = pytest.mark.real_data

PEOPLE = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "George_W_Bush/George_W_Bush_0010.jpg",
          "Serena_Williams/Serena_Williams_0003.jpg", "Colin_Powell/Colin_Powell_0001.jpg")


def test_canonical_template_is_dlibs_chip_placed_by_the_dlib_frame():
  scale, shift = frame_lib.fit_scale_translation(dlib_resnet.DLIB_CHIP_150.landmarks_array,
                                                 frame_lib.CANONICAL.landmarks_array)
  derived = scale * landmarks.dlib_chip_template(dlib_resnet.CHIP_SIZE, dlib_resnet.CHIP_PADDING) + shift
  np.testing.assert_allclose(landmarks.CANONICAL_DLIB5_LANDMARKS, derived, atol=1e-3)
  # in any other frame the template moves with the frame's own landmarks
  in_dlib_chip = landmarks.canonical_dlib5_template(dlib_resnet.DLIB_CHIP_150)
  np.testing.assert_allclose(in_dlib_chip, landmarks.dlib_chip_template(150, 0.25), atol=1e-2)


def test_unknown_landmark_model_is_refused():
  with pytest.raises(ValueError, match="landmarks must be one of"):
    landmarks.resolve("dlib68")
  with pytest.raises(TypeError, match="template"):
    landmarks.resolve(lambda photo, box: np.zeros((5, 2)))
  assert landmarks.resolve("yunet") is None and landmarks.resolve(None) is None


def test_missing_predictor_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="shape predictor"):
    landmarks.DlibLandmarks(tmp_path / "none.dat")


def test_predictor_file_is_the_registered_one():
  """The default comes from the registry's resolver; another (valid) predictor file is refused by its sha256."""
  try:
    default = landmarks.default_shape_predictor_path()
    other = checkpoints.resolve_file("dlib_shape_predictor68")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  assert checkpoints.sha256_file(default) == checkpoints.get_entry("dlib_shape_predictor5").sha256
  with pytest.raises(checkpoints.ChecksumError, match="dlib_shape_predictor5"):
    landmarks.DlibLandmarks(other)


@pytest.fixture(scope="module")
def dlib_faces(lfw_root):
  """(photo, dlib's own 5 points from its HOG detector + predictor, dlib's 150x150 chip) for a few people."""
  hog = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(str(landmarks.default_shape_predictor_path()))
  out = []
  for name in PEOPLE:
    photo = faces.load_photo(lfw_root / name)
    shape = predictor(photo, max(hog(photo, 1), key=lambda r: r.area()))
    points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
    chip = np.asarray(dlib.get_face_chip(photo, shape, size=150, padding=0.25), np.float32)
    out.append((photo, points, chip))
  return out


@real_data
def test_canonical_chip_resampled_for_dlib_is_dlibs_own_chip(dlib_faces):
  """Aligning by the 5 points into the canonical frame, then the model's resample, cuts dlib's get_face_chip."""
  for photo, points, reference in dlib_faces:

    def dlib_input(template):
      chip = faces.warp_to_frame(photo, faces.similarity_transform(points, template), frame_lib.CANONICAL)
      return np.asarray(frame_lib.resample(jnp.asarray(chip), frame_lib.CANONICAL, dlib_resnet.DLIB_CHIP_150))

    error = np.abs(dlib_input(landmarks.CANONICAL_DLIB5_LANDMARKS) - reference).mean()
    shifted = np.abs(dlib_input(landmarks.CANONICAL_DLIB5_LANDMARKS + [1.5, 0.0]) - reference).mean()
    assert error < 4.0  # two different bilinear resamplers, 0-255 units
    assert shifted > 2 * error  # a 2 px shift in dlib's chip is far outside that


@real_data
def test_align_photo_fits_dlibs_points_in_the_detectors_box(lfw_root, yunet_onnx):
  detector = faces.YuNetDetector(yunet_onnx, num_threads=2)
  predictor = dlib.shape_predictor(str(landmarks.default_shape_predictor_path()))
  photo = faces.load_photo(lfw_root / PEOPLE[-1])
  face = faces.align_photo(photo, detector=detector)
  box = dlib.rectangle(*(int(round(v)) for v in face.box))
  want = np.array([(p.x, p.y) for p in predictor(photo, box).parts()], np.float64)
  np.testing.assert_array_equal(face.fit_points, want)
  np.testing.assert_allclose(face.transform, faces.similarity_transform(want, landmarks.CANONICAL_DLIB5_LANDMARKS))
  # the detector's own points are still reported; the fitted points land where their template says
  assert face.landmarks.shape == (5, 2) and not np.array_equal(face.landmarks, face.fit_points)
  residual = faces.apply_transform(face.transform, face.fit_points) - landmarks.CANONICAL_DLIB5_LANDMARKS
  assert np.abs(residual).max() < 3
  yunet = faces.align_photo(photo, detector=detector, landmarks="yunet")
  np.testing.assert_array_equal(yunet.fit_points, yunet.landmarks)
  np.testing.assert_allclose(yunet.transform,
                             faces.similarity_transform(yunet.landmarks, frame_lib.CANONICAL.landmarks_array))
