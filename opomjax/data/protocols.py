"""Evaluation protocols as pure functions over file lists, and the arrays they produce.

A privacy protocol picks *probe identities*, gives each of them ``num_train`` photos to compute a mask from and
``num_test`` photos to protect, and a set of *distractor* photos of other people that fills the gallery. The
paper's 1:N rule then asks, for every protected test photo of a person, whether a clean photo of the same person
(one of their other test photos) is retrieved from {that photo} ∪ distractors.

Privacy-LFW (the rule this library fixes for LFW):

* probe identities: every LFW person with at least 20 photos (62 people), in name order;
* each person's files sorted by name: the first 10 are the training photos, the next 10 the test photos
  (any further photos of a probe person are used nowhere);
* distractors: every photo of every other LFW person (10,210 photos).

``PRIVACY_LFW_FEW_SHOT`` is the same rule for people with 12 to 19 photos (65 people, 6 training and 6 test
photos each, 12,258 distractors).

The Privacy-Commons and Privacy-Celebrities releases of the paper's authors come as list files; see
:func:`read_list`, :func:`group_consecutive` and :func:`distractor_path` for their formats.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """Which identities are probes and how their sorted files split into training and test photos.

  Attributes:
    min_images: a person is a probe identity when they have at least this many photos ...
    max_images: ... and at most this many (None: no upper bound).
    num_train: the first ``num_train`` photos (in file-name order) compute the mask.
    num_test: the next ``num_test`` photos are protected and evaluated.
  """

  min_images: int = 20
  max_images: int | None = None
  num_train: int = 10
  num_test: int = 10

  def __post_init__(self):
    if self.num_train < 1 or self.num_test < 1:
      raise ValueError(f"num_train and num_test must be >= 1, got {self.num_train}, {self.num_test}")
    if self.min_images < self.num_train + self.num_test:
      raise ValueError(
          f"min_images={self.min_images} is smaller than num_train + num_test = "
          f"{self.num_train + self.num_test}")
    if self.max_images is not None and self.max_images < self.min_images:
      raise ValueError(f"max_images={self.max_images} is smaller than min_images={self.min_images}")

  @property
  def slug(self) -> str:
    top = "" if self.max_images is None else f"to{self.max_images}"
    return f"min{self.min_images}{top}_train{self.num_train}_test{self.num_test}"


#: Privacy-LFW: people with >= 20 photos, 10 training + 10 test photos each.
PRIVACY_LFW = SplitRule(min_images=20, max_images=None, num_train=10, num_test=10)
#: The few-shot variant: people with 12 to 19 photos, 6 training + 6 test photos each.
PRIVACY_LFW_FEW_SHOT = SplitRule(min_images=12, max_images=19, num_train=6, num_test=6)


@dataclasses.dataclass(frozen=True)
class FileSplit:
  """A protocol as file lists (paths relative to the dataset root, ``/``-separated).

  Attributes:
    names: the k probe identity names, sorted.
    train: k lists of training files (each sorted by name).
    test: k lists of test files (each sorted by name).
    distractors: the distractor files, sorted.
  """

  names: tuple[str, ...]
  train: tuple[tuple[str, ...], ...]
  test: tuple[tuple[str, ...], ...]
  distractors: tuple[str, ...]

  def first(self, num_identities: int | None) -> "FileSplit":
    """The same split restricted to the first ``num_identities`` probe identities (distractors unchanged)."""
    if num_identities is None:
      return self
    if num_identities < 1 or num_identities > len(self.names):
      raise ValueError(f"num_identities must be in [1, {len(self.names)}], got {num_identities}")
    n = num_identities
    return FileSplit(self.names[:n], self.train[:n], self.test[:n], self.distractors)


def group_by_identity(files: Iterable[str]) -> dict[str, list[str]]:
  """``["PERSON/x.jpg", ...]`` -> {PERSON: sorted files}; the identity is the parent folder's name."""
  groups: dict[str, list[str]] = {}
  for f in files:
    parts = f.replace(os.sep, "/").split("/")
    if len(parts) < 2:
      raise ValueError(f"file {f!r} is not inside an identity folder (expected PERSON/FILE)")
    groups.setdefault(parts[-2], []).append(f)
  return {name: sorted(groups[name]) for name in sorted(groups)}


def split_identities(files_by_identity: Mapping[str, Sequence[str]], rule: SplitRule = PRIVACY_LFW) -> FileSplit:
  """Applies ``rule`` to an identity -> files mapping (pure: no file system access).

  Args:
    files_by_identity: identity name -> its files (any order; they are sorted by name here).
    rule: the split rule (default: Privacy-LFW).

  Returns:
    The probe identities (sorted names), their training and test files, and the distractors: every file of
    every identity that is not a probe identity.

  Example:
    >>> split = split_identities({"a": ["a/1", "a/2"], "b": ["b/1"]}, SplitRule(2, None, 1, 1))
    >>> split.names, split.train, split.test, split.distractors
    (('a',), (('a/1',),), (('a/2',),), ('b/1',))
  """
  names, train, test, distractors = [], [], [], []
  for name in sorted(files_by_identity):
    files = sorted(files_by_identity[name])
    is_probe = len(files) >= rule.min_images and (rule.max_images is None or len(files) <= rule.max_images)
    if is_probe:
      names.append(name)
      train.append(tuple(files[:rule.num_train]))
      test.append(tuple(files[rule.num_train:rule.num_train + rule.num_test]))
    else:
      distractors.extend(files)
  return FileSplit(tuple(names), tuple(train), tuple(test), tuple(sorted(distractors)))


def list_identity_folder(root: str | os.PathLike) -> dict[str, list[str]]:
  """Lists ``root/PERSON/*.{jpg,png,...}`` as {PERSON: sorted relative paths} (hidden files skipped)."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"root {str(root)!r} is not a directory")
  groups = {}
  for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    files = sorted(
        f"{person.name}/{f.name}" for f in person.iterdir()
        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    if files:
      groups[person.name] = files
  if not groups:
    raise ValueError(f"no identity folders with images under {str(root)!r} (expected root/PERSON/*.jpg)")
  return groups


# ----------------------------------------------------------------------------------------------------------
# The list files of the official Privacy-Commons / Privacy-Celebrities releases.
#
# Training and test lists hold one image path per line (relative to the release's data folder), the photos of
# one identity on consecutive lines: identity i owns lines [i * n, (i + 1) * n) with n = 10 training photos and
# n = 5 (Privacy-Commons) or 10 (Privacy-Celebrities) test photos. Distractor lists hold either a bare path or
# "LABEL PATH" (the MegaFace-style ``common_distractor.lst``); the path is then the second field.
# ----------------------------------------------------------------------------------------------------------


def read_list(path: str | os.PathLike) -> list[str]:
  """The non-empty, stripped lines of a list file."""
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def group_consecutive(lines: Sequence[str], per_identity: int) -> list[list[str]]:
  """Consecutive groups of ``per_identity`` lines (one group per identity)."""
  if per_identity < 1:
    raise ValueError(f"per_identity must be >= 1, got {per_identity}")
  if len(lines) % per_identity:
    raise ValueError(f"{len(lines)} lines do not split into groups of per_identity={per_identity}")
  return [list(lines[i:i + per_identity]) for i in range(0, len(lines), per_identity)]


def distractor_path(line: str) -> str:
  """The image path of a distractor-list line: ``"PATH"`` or ``"LABEL PATH"``."""
  fields = line.split()
  if not fields or len(fields) > 2:
    raise ValueError(f"distractor line {line!r} is neither 'PATH' nor 'LABEL PATH'")
  return fields[-1]


def identity_of(path: str) -> str:
  """The identity name of a release image: its parent folder (or the file stem at top level)."""
  parts = path.replace(os.sep, "/").split("/")
  return parts[-2] if len(parts) > 1 else pathlib.PurePosixPath(parts[-1]).stem


def release_split(train_lines: Sequence[str], test_lines: Sequence[str], distractor_lines: Sequence[str], *,
                  num_train: int = 10, num_test: int = 5, num_distractors: int | None = None) -> FileSplit:
  """A Privacy-Commons / Privacy-Celebrities protocol from its list files' lines (pure).

  Identity i's training files are training lines ``[i * num_train, (i + 1) * num_train)`` and its test files
  test lines ``[i * num_test, (i + 1) * num_test)``; its name is the parent folder of its first training file.
  ``num_distractors`` keeps the first lines of the distractor list (the paper: 10,000 for Privacy-Commons).
  """
  train = group_consecutive(train_lines, num_train)
  test = group_consecutive(test_lines, num_test)
  if len(train) != len(test):
    raise ValueError(f"training list has {len(train)} identities but test list has {len(test)}")
  distractors = [distractor_path(line) for line in distractor_lines]
  if num_distractors is not None:
    distractors = distractors[:num_distractors]
  names = tuple(identity_of(files[0]) for files in train)
  return FileSplit(names, tuple(map(tuple, train)), tuple(map(tuple, test)), tuple(distractors))


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A protocol's photos as canonical-frame chips.

  Attributes:
    names: the k probe identity names.
    train: ``(k, n_train, H, W, 3)`` uint8 training chips (mask generation), files in name order.
    test: ``(k, n_test, H, W, 3)`` uint8 test chips (protected and evaluated).
    distractors: ``(D, H, W, 3)`` uint8 gallery distractors.
    frame_name: name of the frame the chips are in (``opomjax.frame.CANONICAL.name``).
    frame_size: its (height, width).
    train_files, test_files: the source files, same shape as the leading axes of ``train`` / ``test``.
    distractor_files: the source files of the distractors.
    fallback_files: files in which no face was found (aligned by the dataset's fallback instead).
  """

  names: tuple[str, ...]
  train: np.ndarray
  test: np.ndarray
  distractors: np.ndarray
  frame_name: str
  frame_size: tuple[int, int]
  train_files: tuple[tuple[str, ...], ...] = ()
  test_files: tuple[tuple[str, ...], ...] = ()
  distractor_files: tuple[str, ...] = ()
  fallback_files: tuple[str, ...] = ()

  @property
  def num_identities(self) -> int:
    return len(self.names)

  def __repr__(self) -> str:
    return (f"Protocol(k={len(self.names)}, train={self.train.shape}, test={self.test.shape}, "
            f"distractors={self.distractors.shape}, frame={self.frame_name!r}, "
            f"fallbacks={len(self.fallback_files)})")
