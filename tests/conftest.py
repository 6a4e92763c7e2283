"""Shared test fixtures: where the real data lives, and clean skips where it is absent."""

import os
import pathlib
import shutil
import tempfile

import pytest

# One compilation cache for the whole test run, shared with the subprocesses the tests start (they inherit the
# environment): the same small programs are compiled by many tests and processes (test_experiments.py: 80 s ->
# 61 s). Set before JAX reads its configuration; a cache the caller chose is kept as it is.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="opomjax-test-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # pylint: disable=wrong-import-position

if _OWN_CACHE:  # also where JAX was imported before this file
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from opomjax.models import checkpoints  # pylint: disable=wrong-import-position


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def shared_dir() -> pathlib.Path:
  """The package's own lookup: ``$OPOMJAX_SHARED``, else ``../shared`` (next to the cwd or the checkout)."""
  return checkpoints.shared_dir()


def lfw_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("OPOMJAX_LFW_DIR") or shared_dir() / "datasets" / "lfw-deepfunneled")


def canonical_lfw_chips(lfw_root: pathlib.Path, count: int):
  """Fixed crops of the first ``count`` people's first deep-funneled 250x250 LFW photo, roughly in the canonical
  128x128 frame: ``(count, 128, 128, 3)`` float32."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  people = sorted(p for p in lfw_root.iterdir() if p.is_dir())[:count]
  crops = [Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB").crop((60, 64, 190, 194)).resize(
      (128, 128), Image.BILINEAR) for p in people]
  return np.stack([np.asarray(c, np.float32) for c in crops])


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
