"""``load_protocol``: a prepared dataset's splits as canonical-chip arrays grouped by identity.

A dataset is prepared once per data folder. Before any preparation its sources are checked
(:meth:`check_sources`: LFW found, or its download asked for, see :mod:`opomjax.data.sources`), so a missing
dataset fails at once with one line; preparation then runs under a file lock (:mod:`opomjax.data.locks`), so
that of several processes setting out to prepare the same dataset one prepares and the others wait and read.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from opomjax.data import builders
from opomjax.data import locks
from opomjax.data import protocols
from opomjax.data.sources import DatasetNotFoundError, find_lfw_dir  # pylint: disable=unused-import  (re-exported)

#: Protocol names accepted by :func:`load_protocol`.
PROTOCOLS = ("privacy_lfw", "privacy_lfw_few_shot", "privacy_commons", "privacy_celebrities", "folder")


def make_builder(name: str, *, lfw_dir=None, release_dir=None, root=None, rule=None, num_test: int | None = None,
                 data_dir=None, num_workers: int | None = None, detector_path: str | None = None,
                 download: bool = False):
  """The tfds builder behind a protocol name (see :func:`load_protocol` for the arguments).

  Raises:
    ValueError: an unknown protocol name, or a missing argument it needs.
    DatasetNotFoundError: ``lfw_dir`` is given but does not hold LFW.
  """
  common = dict(data_dir=data_dir or builders.default_data_dir(), num_workers=num_workers,
                detector_path=detector_path, download=download)
  if name in ("privacy_lfw", "privacy_lfw_few_shot"):
    rule = protocols.PRIVACY_LFW_FEW_SHOT if name == "privacy_lfw_few_shot" else protocols.PRIVACY_LFW
    return builders.PrivacyLfw(lfw_dir=lfw_dir, config=builders.config_name(rule.slug), **common)
  if name == "privacy_commons":
    config = builders.config_name(f"train10_test{num_test or 5}")
    return builders.PrivacyCommons(release_dir=release_dir, config=config, **common)
  if name == "privacy_celebrities":
    return builders.PrivacyCelebrities(release_dir=release_dir, **common)
  if name == "folder":
    if root is None:
      raise ValueError("protocol 'folder' needs root= (a folder of PERSON/ folders)")
    return builders.IdentityFolder(root=root, rule=rule or protocols.PRIVACY_LFW, **common)
  raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")


def read_records(source) -> list[dict[str, Any]]:
  """Every record of a tfds data source (``tfds.data_source(...)[split]``), text fields decoded."""
  records = source.__getitems__(list(range(len(source)))) if len(source) else []
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()} for r in records]


def group_records(records: Sequence[dict[str, Any]], num_identities: int):
  """Probe records -> ``(k, n, H, W, 3)`` chips and ``k`` tuples of files, each identity's files in name order."""
  by_label: list[list[dict[str, Any]]] = [[] for _ in range(num_identities)]
  for r in records:
    if r["label"] < num_identities:
      by_label[r["label"]].append(r)
  sizes = {len(group) for group in by_label}
  if len(sizes) != 1:
    raise ValueError(f"identities have different numbers of photos: {sorted(sizes)}")
  by_label = [sorted(group, key=lambda r: r["file_name"]) for group in by_label]
  images = np.stack([np.stack([r["image"] for r in group]) for group in by_label])
  files = tuple(tuple(r["file_name"] for r in group) for group in by_label)
  return images, files


def protocol_from_sources(sources, metadata, num_identities: int | None = None) -> protocols.Protocol:
  """A :class:`~opomjax.data.protocols.Protocol` from the three data sources of a prepared dataset."""
  train = read_records(sources["train"])
  names_by_label = {r["label"]: r["identity"] for r in train}
  k = len(names_by_label)
  if num_identities is not None:
    if not 1 <= num_identities <= k:
      raise ValueError(f"num_identities must be in [1, {k}], got {num_identities}")
    k = num_identities
  train_images, train_files = group_records(train, k)
  test = read_records(sources["test"])
  test_images, test_files = group_records(test, k)
  distractors = read_records(sources["distractors"])
  h, w = metadata["size"]
  distractor_images = (np.stack([r["image"] for r in distractors]) if distractors
                       else np.zeros((0, h, w, 3), np.uint8))
  used = [r for r in train + test if r["label"] < k] + distractors
  return protocols.Protocol(
      names=tuple(names_by_label[i] for i in range(k)),
      train=train_images,
      test=test_images,
      distractors=distractor_images,
      frame_name=metadata["frame"],
      frame_size=(int(h), int(w)),
      train_files=train_files,
      test_files=test_files,
      distractor_files=tuple(r["file_name"] for r in distractors),
      fallback_files=tuple(sorted(r["file_name"] for r in used if r["alignment"] == "fallback")),
  )


def preparation_lock_path(builder):
  """The lock file of a builder's dataset / config / version under its data folder."""
  config = builder.builder_config.name if builder.builder_config else "default"
  return locks.lock_path(builder.data_dir_root, builder.name, config, str(builder.version))


def reuse_prepared(builder) -> None:
  """Reads the info of the prepared files into a builder made before they existed (another process wrote them).

  A builder made when the files already exist has read their info at construction; one made before holds the
  code's defaults (file format included), which the files' ``dataset_info.json`` replaces here.
  """
  if builder.info.initialized:
    return
  written = tfds.core.dataset_info.read_from_json(tfds.core.dataset_info.dataset_info_path(builder.data_dir))
  builder.info.set_file_format(written.file_format or None, override=True)
  builder.info.read_from_directory(builder.data_dir)


def prepare(builder, *, download: bool | None = None) -> bool:
  """Detects and aligns every photo of the builder's dataset once; reads the prepared files when they exist.

  The sources are checked first (a missing dataset raises at once, without network access); preparation
  holds the dataset's lock file, so a concurrent process preparing the same dataset is waited for (a line on
  stderr says so) and its files are read instead of being prepared again.

  Args:
    builder: a builder of :func:`make_builder`.
    download: whether LFW may be downloaded when no local copy is found (None: the builder's own setting).

  Returns:
    True when this call prepared the dataset, False when it was prepared already.

  Raises:
    DatasetNotFoundError: the dataset's photos are not found and downloading them was not asked for.
  """
  if download is not None:
    builder.download = download
  if builder.is_prepared():
    reuse_prepared(builder)
    return False
  if hasattr(builder, "check_sources"):
    builder.check_sources()
  lock = preparation_lock_path(builder)
  message = f"waiting for another process preparing {lock.stem} in {builder.data_dir_root}"
  with locks.file_lock(lock, waiting_message=message):
    if builder.is_prepared():
      reuse_prepared(builder)
      return False
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return True


def load_protocol(name: str = "privacy_lfw", *, lfw_dir: str | os.PathLike | None = None,
                  num_identities: int | None = None, data_dir: str | os.PathLike | None = None,
                  release_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                  rule: protocols.SplitRule | None = None, num_test: int | None = None,
                  num_workers: int | None = None, detector_path: str | None = None,
                  download: bool = False) -> protocols.Protocol:
  """Loads a privacy protocol as canonical-frame chips, preparing the dataset on first use.

  Preparation is safe under concurrency: of several processes preparing the same dataset in one data folder,
  one prepares while the others wait, then read its files.

  Args:
    name: ``"privacy_lfw"`` (62 people, 10 + 10 photos, 10,210 distractors), ``"privacy_lfw_few_shot"``
      (people with 12-19 photos, 6 + 6), ``"privacy_commons"``, ``"privacy_celebrities"`` or ``"folder"``.
    lfw_dir: LFW folder or ``.tgz`` (LFW protocols; default ``$OPOMJAX_LFW_DIR``, else
      ``datasets/lfw-deepfunneled`` in the shared folder: ``$OPOMJAX_SHARED``, else ``../shared`` next to the
      working directory or to a source checkout; see :func:`opomjax.data.sources.find_lfw_dir`).
    num_identities: keep the first N probe identities in name order (quick runs); distractors unchanged.
    data_dir: where prepared data lives (default ``$OPOMJAX_DATA_DIR``, else ``$OPOMJAX_CACHE/tfds``, i.e.
      ``~/.cache/opomjax/tfds``).
    release_dir: the data folder of an official OPOM release (``privacy_commons`` / ``privacy_celebrities``).
    root: a ``root/PERSON/*.jpg`` folder (``folder``).
    rule: the split rule for ``folder`` (default: the Privacy-LFW rule).
    num_test: test photos per person for ``privacy_commons`` (5, the paper's, or 10).
    num_workers: alignment processes at preparation (default: all cores).
    detector_path: YuNet ONNX file for preparation (default: the detector's own default).
    download: download LFW from its official site when it is not found locally (default: never download).

  Returns:
    A :class:`~opomjax.data.protocols.Protocol`.

  Raises:
    DatasetNotFoundError: LFW is not found (and ``download`` is false), or ``lfw_dir`` does not hold it; the
      one-line message names every path looked at. Raised before any preparation or network access.
    ValueError: an unknown protocol or a missing / bad argument.

  Example:
    >>> protocol = load_protocol("privacy_lfw", lfw_dir="lfw-deepfunneled", num_identities=5)  # doctest: +SKIP
    >>> protocol.train.shape, protocol.distractors.shape  # doctest: +SKIP
    ((5, 10, 128, 128, 3), (10210, 128, 128, 3))
  """
  builder = make_builder(name, lfw_dir=lfw_dir, release_dir=release_dir, root=root, rule=rule, num_test=num_test,
                         data_dir=data_dir, num_workers=num_workers, detector_path=detector_path,
                         download=download)
  prepare(builder)
  return protocol_from_sources(builder.as_data_source(), builder.info.metadata, num_identities)


def open_prepared(name: str, data_dir: str | os.PathLike | None = None):
  """The data sources of a prepared dataset by tfds name (``"privacy_lfw/CONFIG"``), without preparing."""
  return tfds.data_source(name, data_dir=data_dir or builders.default_data_dir())
