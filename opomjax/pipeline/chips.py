"""A data set's training chips in one file, so masks can be made on a machine that lacks the data set.

Making masks needs only each identity's training chips; evaluating them needs the test photos, the distractors
and every target's weights. On a GPU machine without the prepared data set (or without network access),
``experiments.generate --chips=PATH`` makes the masks from a file written where the data set is
(``--export_chips=PATH``). The masks record the same settings as masks made from the data set itself (same
names, same uint8 chips, hence the same fingerprints), so ``experiments.run`` with the same config, on the
machine with the data set, evaluates them as they are instead of making them again.

  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib_full --export_chips=chips.npz
  # on the GPU machine:
  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib_full --chips=chips.npz \
      --workdir=runs/privacy_lfw
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib

import numpy as np
from PIL import Image

from opomjax.files import atomic_write_bytes

FORMAT = "opomjax-training-chips-2"


@dataclasses.dataclass(frozen=True)
class TrainingChips:
  """The part of a protocol that mask generation reads: names, uint8 training chips (k, n, H, W, 3), frame."""

  names: list
  train: np.ndarray
  frame_name: str
  dataset: str


def save_training_chips(protocol, path: str | os.PathLike, dataset: str) -> pathlib.Path:
  """Writes ``protocol``'s names and training chips (uint8, as loaded; each as lossless WebP) to ``path``
  (atomically)."""
  train = np.asarray(protocol.train)
  if train.dtype != np.uint8 or train.ndim != 5 or train.shape[-1] != 3:
    raise ValueError(f"training chips must be uint8 of shape (k, n, H, W, 3), got {train.dtype} {train.shape}")
  if len(protocol.names) != train.shape[0]:
    raise ValueError(f"{len(protocol.names)} names for {train.shape[0]} identities of training chips")
  encoded = [_lossless_webp(chip) for chip in train.reshape(-1, *train.shape[2:])]
  buffer = io.BytesIO()
  np.savez(buffer, format=np.array(FORMAT), names=np.array(list(protocol.names)), shape=np.array(train.shape),
           webp=np.frombuffer(b"".join(encoded), np.uint8), ends=np.cumsum([len(e) for e in encoded]),
           frame_name=np.array(str(protocol.frame_name)), dataset=np.array(str(dataset)))
  path = pathlib.Path(path)
  atomic_write_bytes(path, buffer.getvalue())
  return path


def load_training_chips(path: str | os.PathLike, num_identities: int | None = None,
                        dataset: str | None = None) -> TrainingChips:
  """The first ``num_identities`` identities (None: all) of a file written by :func:`save_training_chips`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a chips file, another data set than ``dataset``, or fewer identities than asked for.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no training chips at {path} (write them with --export_chips where the data set is)")
  try:
    with np.load(path, allow_pickle=False) as f:
      fmt = str(f["format"])
      if fmt != FORMAT:
        raise ValueError(f"{path} has format {fmt!r}, this version reads {FORMAT!r}")
      names, shape, webp, ends = [str(n) for n in f["names"]], tuple(int(d) for d in f["shape"]), f["webp"], f["ends"]
      frame_name, saved_dataset = str(f["frame_name"]), str(f["dataset"])
  except (KeyError, OSError) as e:
    raise ValueError(f"{path} is not a training chips file ({e})") from e
  if dataset is not None and saved_dataset != dataset:
    raise ValueError(f"{path} holds data set {saved_dataset!r}, the config names {dataset!r}")
  if num_identities is not None:
    if not 1 <= num_identities <= len(names):
      raise ValueError(f"{path} holds {len(names)} identities, the config asks for {num_identities}")
    names, shape = names[:num_identities], (num_identities,) + shape[1:]
  count = int(np.prod(shape[:2]))  # decode only the identities asked for
  starts = np.concatenate([[0], ends[:-1]])[:count]
  train = np.stack([_decode(webp[a:b].tobytes()) for a, b in zip(starts, ends[:count])]).reshape(shape)
  return TrainingChips(names=names, train=train, frame_name=frame_name, dataset=saved_dataset)


def _decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


def _lossless_webp(chip: np.ndarray) -> bytes:
  """``chip`` as lossless WebP (~0.7x the size of PNG), checked to decode to the same pixels."""
  buffer = io.BytesIO()
  Image.fromarray(chip).save(buffer, "WEBP", lossless=True, quality=100, method=4, exact=True)
  data = buffer.getvalue()
  if not np.array_equal(_decode(data), chip):
    raise ValueError("this Pillow's lossless WebP does not give back the same pixels; cannot write chips")
  return data
