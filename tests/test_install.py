"""The package installed as a user installs it (not editable), used from a directory outside the checkout.

``pip install --no-deps --target`` puts a copy of the package (built from a copy of the sources, so nothing is
written into the checkout) in a temporary folder; a fresh interpreter imports it from there (the
dependencies come from the test environment) with the working directory elsewhere. The installed copy must
find its registry as package data, put its caches in ``$OPOMJAX_CACHE`` and offer the ``opomjax`` command.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import shared_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "requirements-test.txt", "opomjax", "experiments")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
  """The folder the package was installed into."""
  base = tmp_path_factory.mktemp("install")
  src = base / "src"
  for name in SOURCES:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      src.mkdir(exist_ok=True)
      shutil.copy(ROOT / name, src / name)
  target = base / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                  "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
  return target


def _run(installed: pathlib.Path, args: list[str], cwd: pathlib.Path, **env) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items() if not k.startswith("OPOMJAX_")}
  environ.update(PYTHONPATH=str(installed), **env)
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=300)


CHECK_INSTALLED_COPY = """
import os, pathlib, sys
import opomjax
from opomjax.models import checkpoints
installed, shared = pathlib.Path(sys.argv[1]), sys.argv[2]
package = pathlib.Path(opomjax.__file__).parent
assert package == installed / "opomjax", package
assert checkpoints.registry_path() == package / "models" / "registry.toml"
assert {"dlib_resnet", "sface", "yunet", "dlib_shape_predictor5", "ir50"} <= set(checkpoints.load_registry())
assert checkpoints.cache_dir() == pathlib.Path(os.environ["OPOMJAX_CACHE"]) / "checkpoints"
# only ../shared next to the working directory: an installed copy has no checkout to look next to
here = (pathlib.Path.cwd().parent / "shared").resolve()
assert checkpoints.shared_dir_candidates() == [here]
try:
  checkpoints.resolve_file("yunet")
  raise AssertionError("found YuNet without a shared folder")
except FileNotFoundError as e:
  assert "no weights found for 'yunet'" in str(e) and str(here) in str(e), e
if shared:
  os.environ["OPOMJAX_SHARED"] = shared
  print(checkpoints.resolve_file("yunet"))
"""


def test_installed_copy_finds_its_registry_cache_and_models(installed, tmp_path):
  elsewhere = tmp_path / "work"
  elsewhere.mkdir()
  yunet = shared_dir() / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
  shared = str(shared_dir()) if yunet.is_file() else ""
  out = _run(installed, ["-c", CHECK_INSTALLED_COPY, str(installed), shared], elsewhere,
             OPOMJAX_CACHE=str(tmp_path / "cache"))
  assert out.returncode == 0, out.stderr
  if not shared:
    pytest.skip(f"YuNet not found at {yunet} (set OPOMJAX_SHARED); the registry and cache were checked")
  assert pathlib.Path(out.stdout.strip()).resolve() == yunet.resolve()


def test_installed_command_runs_outside_the_checkout(installed, tmp_path):
  out = _run(installed, ["-m", "opomjax", "--help"], tmp_path)
  assert out.returncode == 0 and "checkpoints" in out.stdout, out.stderr
  out = _run(installed, ["-m", "opomjax", "checkpoints", "list"], tmp_path, OPOMJAX_CACHE=str(tmp_path / "c"))
  assert out.returncode == 0 and "dlib_shape_predictor5:" in out.stdout, out.stderr
  script = installed / "bin" / "opomjax"
  assert script.is_file()  # the console script pip wrote (pyproject's [project.scripts])
  assert "from opomjax.cli import main" in script.read_text()
