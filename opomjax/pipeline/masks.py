"""Mask files: one ``.npz`` per identity holding the mask and its metadata, written atomically.

Example:
  >>> import numpy as np, tempfile, os
  >>> d = tempfile.mkdtemp()
  >>> save_mask(os.path.join(d, "a.npz"), np.zeros((128, 128, 3), np.float32), {"method": "opom-convex"})
  >>> mask, meta = load_mask(os.path.join(d, "a.npz"))
  >>> mask.shape, meta["method"]
  ((128, 128, 3), 'opom-convex')
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile

import numpy as np

import opomjax

#: Metadata every mask file carries (more keys are allowed).
REQUIRED_METADATA = ("frame", "epsilon", "method", "surrogate", "steps", "seed", "version")


class MaskFileError(ValueError):
  """A mask file is missing, truncated or lacks its metadata."""


def identity_filename(identity: str) -> str:
  """A file-system-safe file name for an identity (LFW names are already safe; others may not be)."""
  safe = re.sub(r"[^A-Za-z0-9._-]", "_", identity)
  if not safe or safe.startswith("."):
    safe = "_" + safe
  return safe + ".npz"


def mask_path(workdir: str | os.PathLike, identity: str) -> pathlib.Path:
  return pathlib.Path(workdir) / "masks" / identity_filename(identity)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_mask(path: str | os.PathLike, mask, metadata: dict) -> None:
  """Saves a float32 ``(H, W, 3)`` mask (canonical frame, 0-255 units) with JSON metadata, atomically."""
  import io

  mask = np.asarray(mask, np.float32)
  if mask.ndim != 3 or mask.shape[-1] != 3:
    raise ValueError(f"mask must have shape (H, W, 3), got {mask.shape}")
  meta = {"version": opomjax.__version__, **metadata}
  buf = io.BytesIO()
  np.savez(buf, mask=mask, metadata=np.array(json.dumps(meta, sort_keys=True)))
  atomic_write_bytes(path, buf.getvalue())


def load_mask(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
  """Loads a mask file written by :func:`save_mask`; raises :class:`MaskFileError` if it is unusable."""
  try:
    with np.load(path, allow_pickle=False) as z:
      mask = np.asarray(z["mask"], np.float32)
      meta = json.loads(str(z["metadata"]))
  except FileNotFoundError:
    raise
  except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, EOFError ...
    raise MaskFileError(f"unreadable mask file {path}: {e}") from e
  missing = [k for k in REQUIRED_METADATA if k not in meta]
  if missing:
    raise MaskFileError(f"mask file {path} lacks metadata {missing}")
  return mask, meta


def is_complete(path: str | os.PathLike) -> bool:
  """True when ``path`` holds a readable mask file (used to resume runs)."""
  try:
    load_mask(path)
    return True
  except (FileNotFoundError, MaskFileError):
    return False
