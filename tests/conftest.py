"""Shared test fixtures: where the real data lives, and clean skips where it is absent."""

import os
import pathlib

import pytest

from opomjax.models import checkpoints


def shared_dir() -> pathlib.Path:
  """The package's own lookup: ``$OPOMJAX_SHARED``, else ``../shared`` (next to the cwd or the checkout)."""
  return checkpoints.shared_dir()


def lfw_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("OPOMJAX_LFW_DIR") or shared_dir() / "datasets" / "lfw-deepfunneled")


@pytest.fixture(scope="session")
def lfw_root() -> pathlib.Path:
  d = lfw_dir()
  if not d.is_dir():
    pytest.skip(f"LFW not found at {d} (set OPOMJAX_LFW_DIR)")
  return d


@pytest.fixture(scope="session")
def sface_onnx() -> pathlib.Path:
  p = shared_dir() / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
  if not p.is_file():
    pytest.skip(f"SFace ONNX not found at {p} (set OPOMJAX_SHARED)")
  return p


@pytest.fixture(scope="session")
def yunet_onnx() -> pathlib.Path:
  p = shared_dir() / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
  if not p.is_file():
    pytest.skip(f"YuNet ONNX not found at {p} (set OPOMJAX_SHARED)")
  return p
