"""Where LFW and the prepared data are found: the documented defaults, named locations checked, one-line errors."""

from __future__ import annotations

import pathlib

import pytest

from opomjax import data
from opomjax.data import sources


def fake_lfw(path: pathlib.Path, people=("Amy_Adams", "Bob_Brown")) -> pathlib.Path:
  """A folder shaped like LFW: ``PERSON/PERSON_0001.jpg`` (the bytes are never read here)."""
  for name in people:
    (path / name).mkdir(parents=True)
    (path / name / f"{name}_0001.jpg").write_bytes(b"\xff\xd8\xff")
  return path


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
  """No LFW / shared / data-dir variables; the working directory is an empty ``tmp/work``."""
  for var in ("OPOMJAX_LFW_DIR", "OPOMJAX_SHARED", "OPOMJAX_DATA_DIR", "OPOMJAX_CACHE"):
    monkeypatch.delenv(var, raising=False)
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  return work


def test_documented_default_next_to_the_working_directory(clean_env, tmp_path):
  expected = fake_lfw(tmp_path / "shared" / "datasets" / "lfw-deepfunneled")
  found = data.find_lfw_dir()
  # This very path (a source checkout's ../shared, when there is one, comes only after it).
  assert found.resolve() == expected.resolve()
  assert found == (tmp_path / "shared").resolve() / "datasets" / "lfw-deepfunneled"


def test_documented_default_may_be_a_link_to_lfw(clean_env, tmp_path, lfw_root):
  link = tmp_path / "shared" / "datasets" / "lfw-deepfunneled"
  link.parent.mkdir(parents=True)
  link.symlink_to(lfw_root.resolve(), target_is_directory=True)
  found = data.find_lfw_dir()
  assert found == (tmp_path / "shared").resolve() / "datasets" / "lfw-deepfunneled"
  assert found.resolve() == lfw_root.resolve()


def test_shared_variable_and_lfw_variable(clean_env, tmp_path, monkeypatch):
  shared_lfw = fake_lfw(tmp_path / "elsewhere" / "datasets" / "lfw-deepfunneled")
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path / "elsewhere"))
  assert data.find_lfw_dir().resolve() == shared_lfw.resolve()
  own = fake_lfw(tmp_path / "my_lfw")
  monkeypatch.setenv("OPOMJAX_LFW_DIR", str(own))
  assert data.find_lfw_dir() == own  # the variable comes before the shared folder
  explicit = fake_lfw(tmp_path / "explicit")
  assert data.find_lfw_dir(explicit) == explicit  # and lfw_dir= before both
  assert data.find_lfw_dir("") == own  # an empty config value means "not given"


def test_nothing_found_names_every_place_and_the_ways_to_point(clean_env, tmp_path, monkeypatch):
  empty_shared = tmp_path / "empty_shared"
  (empty_shared / "datasets" / "lfw-deepfunneled").mkdir(parents=True)  # exists, but holds no photos
  monkeypatch.setenv("OPOMJAX_SHARED", str(empty_shared))
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.find_lfw_dir()
  message = str(error.value)
  assert isinstance(error.value, FileNotFoundError)
  assert "\n" not in message
  assert str(empty_shared.resolve() / "datasets" / "lfw-deepfunneled") in message
  for hint in ("$OPOMJAX_LFW_DIR", "lfw_dir=", "--lfw_dir", "download=True", "--config.dataset.download=True"):
    assert hint in message


def not_lfw(tmp: pathlib.Path, kind: str) -> pathlib.Path:
  """A location that does not hold LFW: missing, an empty folder, a folder one level above LFW, a text file."""
  if kind == "empty":
    (tmp / "empty").mkdir()
    return tmp / "empty"
  if kind == "wrapper":
    return fake_lfw(tmp / "wrapper" / "lfw-deepfunneled").parent
  if kind == "text":
    (tmp / "lfw.txt").write_text("not an archive")
    return tmp / "lfw.txt"
  return tmp / "missing"


@pytest.mark.parametrize("kind, origin_text", [
    ("missing", "does not exist"), ("empty", "does not look like LFW"), ("wrapper", "does not look like LFW"),
    ("text", "is a file but not an LFW archive"),
])
def test_a_named_location_must_hold_lfw(clean_env, tmp_path, monkeypatch, kind, origin_text):
  path = not_lfw(tmp_path, kind)
  with pytest.raises(data.DatasetNotFoundError, match=f"^lfw_dir '.*' {origin_text}"):
    data.find_lfw_dir(path)
  # The variable is checked the same way, and a wrong one is not silently replaced by the shared folder.
  fake_lfw(tmp_path / "shared" / "datasets" / "lfw-deepfunneled")
  monkeypatch.setenv("OPOMJAX_LFW_DIR", str(path))
  with pytest.raises(data.DatasetNotFoundError, match=rf"^\$OPOMJAX_LFW_DIR '.*' {origin_text}"):
    data.find_lfw_dir()


def test_an_archive_is_accepted(tmp_path):
  archive = tmp_path / "lfw-deepfunneled.tgz"
  archive.write_bytes(b"\x1f\x8b")
  assert data.find_lfw_dir(archive) == archive


def test_download_is_the_fallback_only_when_asked_and_nothing_is_named(clean_env, tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path / "no_shared"))
  assert sources.lfw_source(None, download=True) is None  # None: download
  with pytest.raises(data.DatasetNotFoundError):
    sources.lfw_source(None, download=False)
  with pytest.raises(data.DatasetNotFoundError, match="^lfw_dir"):
    sources.lfw_source(tmp_path / "typo", download=True)  # a wrong lfw_dir is not replaced by a download


def test_default_data_dir(clean_env, tmp_path, monkeypatch):
  monkeypatch.setenv("OPOMJAX_CACHE", str(tmp_path / "cache"))
  assert pathlib.Path(data.default_data_dir()) == tmp_path / "cache" / "tfds"
  monkeypatch.setenv("OPOMJAX_DATA_DIR", str(tmp_path / "prepared"))
  assert pathlib.Path(data.default_data_dir()) == tmp_path / "prepared"
  monkeypatch.delenv("OPOMJAX_CACHE")
  monkeypatch.delenv("OPOMJAX_DATA_DIR")
  assert pathlib.Path(data.default_data_dir()) == pathlib.Path.home() / ".cache" / "opomjax" / "tfds"
