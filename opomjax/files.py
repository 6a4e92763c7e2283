"""Files the library writes: atomic writes and the mask file format (one ``.npz``: mask + JSON metadata).

Example:
  >>> import numpy as np, tempfile, os
  >>> d = tempfile.mkdtemp()
  >>> save_mask(os.path.join(d, "a.npz"), np.zeros((128, 128, 3), np.float32), {"method": "opom-convex"})
  >>> mask, meta = load_mask(os.path.join(d, "a.npz"), required=("method",))
  >>> mask.shape, meta["method"]
  ((128, 128, 3), 'opom-convex')
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile

import numpy as np

from opomjax import __version__


#: Metadata every mask file carries (more keys are allowed).
REQUIRED_METADATA = ("frame", "epsilon", "method", "surrogate", "steps", "seed", "version")


class MaskFileError(ValueError):
  """A mask file is missing, truncated or lacks its metadata."""


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
  mask = np.asarray(mask, np.float32)
  if mask.ndim != 3 or mask.shape[-1] != 3:
    raise ValueError(f"mask must have shape (H, W, 3), got {mask.shape}")
  meta = {"version": __version__, **metadata}
  buf = io.BytesIO()
  np.savez(buf, mask=mask, metadata=np.array(json.dumps(meta, sort_keys=True)))
  atomic_write_bytes(path, buf.getvalue())


def load_mask(path: str | os.PathLike, required=REQUIRED_METADATA) -> tuple[np.ndarray, dict]:
  """Loads a mask file written by :func:`save_mask`; raises :class:`MaskFileError` if it is unusable.

  ``required`` lists the metadata keys the file must carry.
  """
  try:
    with np.load(path, allow_pickle=False) as z:
      mask = np.asarray(z["mask"], np.float32)
      meta = json.loads(str(z["metadata"]))
  except FileNotFoundError:
    raise
  except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, EOFError ...
    raise MaskFileError(f"unreadable mask file {path}: {e}") from e
  missing = [k for k in required if k not in meta]
  if missing:
    raise MaskFileError(f"mask file {path} lacks metadata {missing}")
  return mask, meta


