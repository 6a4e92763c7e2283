"""``load_protocol``: a prepared dataset's splits as canonical-chip arrays grouped by identity."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from opomjax.data import builders
from opomjax.data import protocols

#: Protocol names accepted by :func:`load_protocol`.
PROTOCOLS = ("privacy_lfw", "privacy_lfw_few_shot", "privacy_commons", "privacy_celebrities", "folder")


def make_builder(name: str, *, lfw_dir=None, release_dir=None, root=None, rule=None, num_test: int | None = None,
                 data_dir=None, num_workers: int | None = None, detector_path: str | None = None):
  """The tfds builder behind a protocol name (see :func:`load_protocol` for the arguments)."""
  common = dict(data_dir=data_dir or builders.default_data_dir(), num_workers=num_workers,
                detector_path=detector_path)
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


def prepare(builder) -> None:
  """Detects and aligns every photo of the builder's dataset once; a no-op when already prepared."""
  builder.download_and_prepare(file_format="array_record")


def load_protocol(name: str = "privacy_lfw", *, lfw_dir: str | os.PathLike | None = None,
                  num_identities: int | None = None, data_dir: str | os.PathLike | None = None,
                  release_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                  rule: protocols.SplitRule | None = None, num_test: int | None = None,
                  num_workers: int | None = None, detector_path: str | None = None) -> protocols.Protocol:
  """Loads a privacy protocol as canonical-frame chips, preparing the dataset on first use.

  Args:
    name: ``"privacy_lfw"`` (62 people, 10 + 10 photos, 10,210 distractors), ``"privacy_lfw_few_shot"``
      (people with 12-19 photos, 6 + 6), ``"privacy_commons"``, ``"privacy_celebrities"`` or ``"folder"``.
    lfw_dir: LFW folder or ``.tgz`` (LFW protocols; default ``$OPOMJAX_LFW_DIR``, else downloaded).
    num_identities: keep the first N probe identities in name order (quick runs); distractors unchanged.
    data_dir: where prepared data lives (default ``$OPOMJAX_DATA_DIR`` or ``~/.cache/opomjax/tfds``).
    release_dir: the data folder of an official OPOM release (``privacy_commons`` / ``privacy_celebrities``).
    root: a ``root/PERSON/*.jpg`` folder (``folder``).
    rule: the split rule for ``folder`` (default: the Privacy-LFW rule).
    num_test: test photos per person for ``privacy_commons`` (5, the paper's, or 10).
    num_workers: alignment processes at preparation (default: all cores).
    detector_path: YuNet ONNX file for preparation (default: the detector's own default).

  Returns:
    A :class:`~opomjax.data.protocols.Protocol`.

  Example:
    >>> protocol = load_protocol("privacy_lfw", lfw_dir="lfw-deepfunneled", num_identities=5)  # doctest: +SKIP
    >>> protocol.train.shape, protocol.distractors.shape  # doctest: +SKIP
    ((5, 10, 128, 128, 3), (10210, 128, 128, 3))
  """
  builder = make_builder(name, lfw_dir=lfw_dir, release_dir=release_dir, root=root, rule=rule, num_test=num_test,
                         data_dir=data_dir, num_workers=num_workers, detector_path=detector_path)
  prepare(builder)
  return protocol_from_sources(builder.as_data_source(), builder.info.metadata, num_identities)


def open_prepared(name: str, data_dir: str | os.PathLike | None = None):
  """The data sources of a prepared dataset by tfds name (``"privacy_lfw/CONFIG"``), without preparing."""
  return tfds.data_source(name, data_dir=data_dir or builders.default_data_dir())
