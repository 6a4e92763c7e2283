"""Mask files of an experiment workdir: one ``.npz`` per identity under ``<workdir>/masks/``.

The file format itself (mask + JSON metadata, atomic writes) is :mod:`opomjax.files`.
"""

from __future__ import annotations

import os
import pathlib
import re

from opomjax.files import REQUIRED_METADATA, MaskFileError, atomic_write_bytes, load_mask, save_mask

__all__ = ["REQUIRED_METADATA", "MaskFileError", "atomic_write_bytes", "load_mask", "save_mask", "identity_filename",
           "mask_path", "is_complete"]


def identity_filename(identity: str) -> str:
  """A file-system-safe file name for an identity (LFW names are already safe; others may not be)."""
  safe = re.sub(r"[^A-Za-z0-9._-]", "_", identity)
  if not safe or safe.startswith("."):
    safe = "_" + safe
  return safe + ".npz"


def mask_path(workdir: str | os.PathLike, identity: str) -> pathlib.Path:
  return pathlib.Path(workdir) / "masks" / identity_filename(identity)


def is_complete(path: str | os.PathLike) -> bool:
  """True when ``path`` holds a readable mask file (used to resume runs)."""
  try:
    load_mask(path)
    return True
  except (FileNotFoundError, MaskFileError):
    return False
