"""File locks that let several processes share one data folder: one prepares, the others wait.

Multi-host runs start the same command on every host, so every host may set out to prepare the same dataset at
once. Each preparation holds an exclusive ``flock`` on a lock file under ``DATA_DIR/.locks/`` (one per
dataset, config and version); a process that finds the lock taken says so on stderr and waits, then reads what
the other one prepared. ``flock`` locks are released by the kernel when their process ends, so a crashed
preparation never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
from typing import Iterator

try:
  import fcntl
except ImportError:  # not POSIX: no locking
  fcntl = None

#: The folder under a data folder that holds the lock files.
LOCK_FOLDER = ".locks"


def lock_path(data_dir: str | os.PathLike, *parts: str) -> pathlib.Path:
  """``data_dir/.locks/PART1-PART2-....lock``, characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
  name = "-".join(re.sub(r"[^A-Za-z0-9._-]", "_", str(p)) for p in parts)
  return pathlib.Path(data_dir) / LOCK_FOLDER / f"{name}.lock"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, waiting_message: str = "") -> Iterator[bool]:
  """Holds an exclusive lock on ``path`` (created with its folders) for the ``with`` block.

  Args:
    path: the lock file.
    waiting_message: printed to stderr, with the lock file's path, when the lock is held by another process.

  Yields:
    Whether this process had to wait for another one.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    if fcntl is None:
      yield False
      return
    waited = False
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      waited = True
      print(f"{waiting_message or 'waiting for another process'} (lock {path})", file=sys.stderr, flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield waited
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
