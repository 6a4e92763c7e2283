"""Mask files of an experiment workdir: one ``.npz`` per identity under ``<workdir>/masks/``.

The file format itself (mask + JSON metadata, atomic writes) is :mod:`opomjax.files`. Each file also records
the identity it belongs to (``metadata["identity"]``) and, from the runner, the settings it was made with
(:mod:`opomjax.pipeline.settings`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re

from opomjax.files import REQUIRED_METADATA, MaskFileError, atomic_write_bytes, load_mask, save_mask

__all__ = ["REQUIRED_METADATA", "MaskFileError", "atomic_write_bytes", "load_mask", "save_mask", "identity_filename",
           "mask_path", "is_complete", "load_identity_mask"]

#: Longest file stem kept as is (file systems allow 255 bytes; room for the hash and ``.npz``).
MAX_STEM = 200


def identity_filename(identity: str) -> str:
  """A file-system-safe file name for an identity, different for different identities.

  A name made only of ``[A-Za-z0-9._-]`` that does not start with a dot (every LFW name) is kept as it is.
  Any other name is sanitised (other characters become ``_``) and gets ``-`` plus a 12-digit hash of the
  original name, so that ``"Ann Smith"`` and ``"Ann/Smith"`` do not share a file. The identity is also stored
  in the file (see :func:`load_identity_mask`), which catches the remote chance of a hash collision.

  Example:
    >>> identity_filename("George_W_Bush")
    'George_W_Bush.npz'
    >>> identity_filename("Ann Smith") != identity_filename("Ann/Smith")
    True
  """
  safe = re.sub(r"[^A-Za-z0-9._-]", "_", identity)
  if safe.startswith(".") or not safe:
    safe = "_" + safe
  if safe != identity or len(safe) > MAX_STEM:
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    safe = f"{safe[:MAX_STEM]}-{digest}"
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


def load_identity_mask(workdir: str | os.PathLike, identity: str, required=REQUIRED_METADATA):
  """``(mask, metadata)`` of ``identity`` in ``workdir``; MaskFileError if the file is another identity's.

  Files written before the identity was recorded (no ``"identity"`` key) are accepted as they are.
  """
  path = mask_path(workdir, identity)
  mask, meta = load_mask(path, required=required)
  if meta.get("identity", identity) != identity:
    raise MaskFileError(f"mask file {path} belongs to identity {meta['identity']!r}, not {identity!r}; "
                        "delete it to make the mask again")
  return mask, meta
