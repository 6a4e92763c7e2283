"""Where a dataset's photos and its prepared files are found, checked before any preparation starts.

LFW (deep-funneled) is looked for, in order, at

1. ``lfw_dir=`` when given (a folder of ``PERSON/`` folders, or the ``.tgz`` archive);
2. ``$OPOMJAX_LFW_DIR`` when set;
3. ``datasets/lfw-deepfunneled`` in the shared data folder: ``$OPOMJAX_SHARED`` when set, else ``../shared``
   next to the working directory, then next to a source checkout
   (:func:`opomjax.models.checkpoints.shared_dir_candidates`).

A location named by the caller (1, 2) must hold LFW; the shared-folder candidates (3) are simply skipped when
absent. When none holds it, :func:`find_lfw_dir` raises :class:`DatasetNotFoundError` naming every path it
looked at; downloading LFW is the builders' business and happens only when asked (``download=True``).

Prepared datasets live under :func:`default_data_dir`: ``$OPOMJAX_DATA_DIR``, else
``$OPOMJAX_CACHE/tfds`` (default ``~/.cache/opomjax/tfds``).
"""

from __future__ import annotations

import os
import pathlib

from opomjax.data import protocols
from opomjax.models import checkpoints

#: The environment variables read here.
LFW_ENV = "OPOMJAX_LFW_DIR"
DATA_DIR_ENV = "OPOMJAX_DATA_DIR"
#: LFW's folder name inside the shared folder's ``datasets/``.
LFW_FOLDER = "lfw-deepfunneled"
#: File names accepted as an LFW archive.
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")

HOW_TO_POINT = (f"point at the {LFW_FOLDER} folder or .tgz with lfw_dir= (--lfw_dir) or ${LFW_ENV}, "
                "or allow the download with download=True (--config.dataset.download=True)")


class DatasetNotFoundError(FileNotFoundError):
  """A dataset's photos are not where they were looked for (and downloading them was not asked for)."""


def default_data_dir() -> str:
  """``$OPOMJAX_DATA_DIR``, else ``checkpoints.user_cache_dir() / "tfds"``: where prepared datasets live."""
  return os.environ.get(DATA_DIR_ENV) or str(checkpoints.user_cache_dir() / "tfds")


def shared_lfw_candidates() -> list[pathlib.Path]:
  """``datasets/lfw-deepfunneled`` in every shared-folder candidate, in the order they are tried."""
  return [shared / "datasets" / LFW_FOLDER for shared in checkpoints.shared_dir_candidates()]


def is_archive(path: pathlib.Path) -> bool:
  return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def holds_identity_folders(path: pathlib.Path) -> bool:
  """Whether ``path`` has a ``PERSON/`` folder holding a photo (stops at the first one found)."""
  for person in path.iterdir():
    if person.is_dir() and not person.name.startswith("."):
      if any(f.suffix.lower() in protocols.IMAGE_SUFFIXES and not f.name.startswith(".")
             for f in person.iterdir()):
        return True
  return False


def check_lfw_source(path: str | os.PathLike, origin: str = "lfw_dir") -> pathlib.Path:
  """An LFW location named by the caller, checked: a folder of ``PERSON/`` photo folders, or an archive.

  Args:
    path: the folder or archive.
    origin: how the caller named it (``"lfw_dir"``, ``"$OPOMJAX_LFW_DIR"``), for the error message.

  Returns:
    ``path`` as a :class:`pathlib.Path` (``~`` expanded).

  Raises:
    DatasetNotFoundError: ``path`` does not exist, or is neither an archive nor a folder of photo folders.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise DatasetNotFoundError(f"{origin} {str(path)!r} does not exist; {HOW_TO_POINT}")
  if path.is_file():
    if not is_archive(path):
      raise DatasetNotFoundError(
          f"{origin} {str(path)!r} is a file but not an LFW archive ({', '.join(ARCHIVE_SUFFIXES)}); "
          f"{HOW_TO_POINT}")
    return path
  if not holds_identity_folders(path):
    raise DatasetNotFoundError(
        f"{origin} {str(path)!r} does not look like LFW: no PERSON/ folders with photos in it "
        f"(expected {LFW_FOLDER}/PERSON/PERSON_0001.jpg); {HOW_TO_POINT}")
  return path


def not_found_message(candidates: list[pathlib.Path]) -> str:
  looked = ", ".join(str(p) for p in candidates)
  return f"LFW not found: ${LFW_ENV} is not set and no LFW folder is at {looked}; {HOW_TO_POINT}"


def find_lfw_dir(lfw_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The LFW folder (or archive) to prepare the LFW protocols from; reads the file system only.

  Args:
    lfw_dir: an explicit LFW folder or archive (``None`` or ``""``: look where the module docstring says).

  Returns:
    The first location that holds LFW: a folder of ``PERSON/`` folders, or an archive file.

  Raises:
    DatasetNotFoundError: ``lfw_dir`` / ``$OPOMJAX_LFW_DIR`` does not hold LFW, or neither is given and no
      shared-folder candidate holds it. The one-line message names every path looked at and how to point at
      LFW.
  """
  if lfw_dir is not None and str(lfw_dir):
    return check_lfw_source(lfw_dir, "lfw_dir")
  if os.environ.get(LFW_ENV):
    return check_lfw_source(os.environ[LFW_ENV], f"${LFW_ENV}")
  candidates = shared_lfw_candidates()
  for candidate in candidates:
    if candidate.is_dir() and holds_identity_folders(candidate):
      return candidate
  raise DatasetNotFoundError(not_found_message(candidates))


def lfw_source(lfw_dir: str | os.PathLike | None = None, *, download: bool = False) -> pathlib.Path | None:
  """:func:`find_lfw_dir`, or ``None`` (meaning: download LFW) when nothing was named, nothing found, and
  ``download`` is true. A location named by the caller that does not hold LFW is an error either way."""
  named = (lfw_dir is not None and str(lfw_dir)) or os.environ.get(LFW_ENV)
  try:
    return find_lfw_dir(lfw_dir)
  except DatasetNotFoundError:
    if download and not named:
      return None
    raise
