"""The checkpoint registry: fields, sha256 refusal of corrupted or swapped files, and the cache."""

import dataclasses
import shutil

import numpy as np
import pytest

from opomjax.models import checkpoints
from opomjax.models import dlib_resnet
from opomjax.models import registry as model_registry


@pytest.fixture(scope="module")
def dlib_weights():
  try:
    return checkpoints.resolve_file("dlib_resnet")
  except FileNotFoundError as e:
    pytest.skip(str(e))


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
  shutil.copy(checkpoints.resolve_file("dlib_shape_predictor5"), swapped)
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


def test_a_copy_of_the_dlib_file_is_checked_too(dlib_weights, tmp_path, cache):
  """``build_dlib_resnet("copy.dat")`` goes through the registry: a damaged copy is refused, not converted."""
  del cache
  corrupted = tmp_path / "copy.dat"
  data = bytearray(dlib_weights.read_bytes())
  data[-5] ^= 0x01  # a weight's low byte: still a well-formed network file
  corrupted.write_bytes(bytes(data))
  with pytest.raises(checkpoints.ChecksumError, match="sha256"):
    dlib_resnet.load_params(corrupted)


def test_every_weight_file_resolves_with_its_checksum():
  """Each registered file with a sha256 is found by the one resolver; a registry with another hash refuses it."""
  registry = checkpoints.load_registry()
  found = {}
  for name, entry in registry.items():
    if entry.sha256 is None:
      continue
    try:
      found[name] = checkpoints.resolve_file(name, registry=registry)
    except FileNotFoundError:
      continue
    assert checkpoints.sha256_file(found[name]) == entry.sha256
  if not found:
    pytest.skip("no registered weight file present on this machine")
  wrong = {name: dataclasses.replace(registry[name], sha256="0" * 64) for name in found}
  for name in found:
    with pytest.raises(checkpoints.ChecksumError, match=name):
      checkpoints.resolve_file(name, registry=wrong)


def test_models_without_real_weights_are_refused_unless_asked(monkeypatch):
  weightless = sorted(n for n, e in checkpoints.load_registry().items()
                      if n in model_registry.MODEL_BUILDERS and all(s["kind"] == "user" for s in e.sources))
  assert {"ir50", "ir100", "ir152", "ir_se50", "iresnet50", "iresnet100", "mobilefacenet",
          "inception_resnet_v1"} <= set(weightless)
  built = []
  monkeypatch.setattr(model_registry, "_resolve", lambda spec: lambda **kw: built.append((spec, kw)) or spec)
  for name in weightless:
    for load in (model_registry.load_model, model_registry.load_target):
      with pytest.raises(ValueError, match=f"{name!r} has no real weights.*allow_random_weights=True") as e:
        load(name)
      assert "\n" not in str(e.value)
  assert not built  # refused before anything is built
  # Explicit permission, a weight file or random_init=True build the model (random_init is not passed on to
  # builders that have no such option: they initialise randomly whenever weights is None).
  assert model_registry.load_model("ir50", allow_random_weights=True, seed=1) == model_registry.MODEL_BUILDERS["ir50"]
  model_registry.load_target("ir50", allow_random_weights=True)
  model_registry.load_model("ir50", weights="ir50.pth")
  model_registry.load_model("ir50", random_init=True)
  assert [kw for _, kw in built] == [dict(weights=None, seed=1), dict(weights=None), dict(weights="ir50.pth"),
                                     dict(weights=None)]
  with pytest.raises(ValueError, match="either weights or random_init"):
    model_registry.load_model("dlib_resnet", weights="w.dat", random_init=True)
  # models with registered weights need no permission (a real random build: tests/test_ports.py)
  model_registry.load_model("dlib_resnet")
  assert built[-1] == (model_registry.MODEL_BUILDERS["dlib_resnet"], dict(weights=None))


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
