"""tensorflow-datasets builders of canonical-frame face chips, readable without TensorFlow.

Every builder stores one record per photo in ``array_record`` files, in three splits ``train`` / ``test`` /
``distractors`` (see :mod:`opomjax.data.protocols`), with the features

* ``image``: ``(H, W, 3)`` uint8 chip in :data:`opomjax.frame.CANONICAL` (zlib-compressed tensor),
* ``identity``: the person's name; ``label``: the probe index (``-1`` for distractors),
* ``file_name``: the photo's path relative to the dataset root,
* ``alignment``: ``"detected"``, ``"fallback"`` (no face found, aligned by a fixed template) or ``"given"``
  (the photo was already aligned), and ``transform``: the ``(2, 3)`` photo -> chip matrix.

Detection and alignment run once, at preparation; later runs read the prepared files through
``tfds.data_source`` (no TensorFlow needed). Records keep the order they were written in: probe identities in
name order, each identity's files in name order.

Builders: ``privacy_lfw`` (LFW, from a local folder / archive, or downloaded when asked), ``privacy_commons`` and
``privacy_celebrities`` (the official OPOM releases, already aligned 112x112 images), ``identity_folder``
(any ``root/PERSON/*.jpg`` set).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from opomjax import frame as frame_lib
from opomjax.data import alignment
from opomjax.data import locks
from opomjax.data import protocols
from opomjax.data import sources

SPLITS = ("train", "test", "distractors")

#: The LFW deep-funneled archive on the official LFW site.
LFW_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_HOMEPAGE = "http://vis-www.cs.umass.edu/lfw/"
OPOM_HOMEPAGE = "https://github.com/zhongyy/OPOM"


default_data_dir = sources.default_data_dir


def chip_features(frame: frame_lib.Frame) -> tfds.features.FeaturesDict:
  h, w = frame.size
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
      "identity": tfds.features.Text(),
      "label": tfds.features.Scalar(dtype=np.int64),
      "file_name": tfds.features.Text(),
      "alignment": tfds.features.Text(),
      "transform": tfds.features.Tensor(shape=(2, 3), dtype=np.float32),
  })


def frame_metadata(frame: frame_lib.Frame) -> tfds.core.MetadataDict:
  return tfds.core.MetadataDict(frame=frame.name, size=list(frame.size),
                                landmarks=[list(p) for p in frame.landmarks])


def config_name(*parts: str) -> str:
  """Config names carry the frame, so a change of :data:`opomjax.frame.CANONICAL` prepares new data."""
  return "_".join((frame_lib.CANONICAL.name,) + parts)


def short_hash(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:10]


def split_records(split: protocols.FileSplit, part: str) -> list[tuple[str, str, int]]:
  """(file, identity, label) for one split of a protocol, in storage order."""
  if part == "distractors":
    return [(f, protocols.identity_of(f), -1) for f in split.distractors]
  groups = split.train if part == "train" else split.test
  return [(f, name, i) for i, (name, files) in enumerate(zip(split.names, groups)) for f in files]


def find_identity_root(path: pathlib.Path) -> pathlib.Path:
  """The folder holding ``PERSON/`` folders inside an extracted archive (descends single-folder wrappers)."""
  path = pathlib.Path(path)
  while True:
    children = [p for p in path.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in children if p.is_dir()]
    if len(dirs) == 1 and not any(p.is_file() and p.suffix.lower() in protocols.IMAGE_SUFFIXES
                                  for p in dirs[0].iterdir()):
      path = dirs[0]
    else:
      return path


class _ChipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared parts: features, metadata, the three splits, and the alignment of photo files."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Canonical-frame chips, train / test / distractors splits.",
      "1.1.0": "Faces aligned by dlib's 5-point shape predictor in YuNet's box (was: YuNet's own landmarks).",
  }
  HOMEPAGE = ""
  FALLBACK: str | None = "center"

  def __init__(self, *, num_workers: int | None = None, detector_path: str | None = None, download: bool = False,
               **kwargs):
    self._num_workers = num_workers
    self._detector_path = detector_path
    self.download = download
    super().__init__(**kwargs)

  def check_sources(self) -> None:
    """Raises (one line, no network access) when the photos to prepare from are missing; see subclasses."""

  @property
  def frame(self) -> frame_lib.Frame:
    """The frame the chips are stored in."""
    return frame_lib.CANONICAL

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().split("\n")[0],
        features=chip_features(self.frame),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,
        metadata=frame_metadata(self.frame),
    )

  def _file_split(self, dl_manager) -> tuple[pathlib.Path, protocols.FileSplit]:
    """The dataset root (files are relative to it) and the protocol's file lists."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    root, split = self._file_split(dl_manager)
    return {part: self._generate_examples(root, split_records(split, part), part) for part in SPLITS}

  def _chips(self, root: pathlib.Path, files: Sequence[str], part: str) -> Iterator[alignment.Chip]:
    return alignment.align_files(
        [str(root / f) for f in files], frame=self.frame, fallback=self.FALLBACK, num_workers=self._num_workers,
        detector_path=self._detector_path, desc=f"Aligning {self.name} {part}")

  def _generate_examples(self, root, records, part):
    chips = self._chips(root, [f for f, _, _ in records], part)
    for (file_name, identity, label), chip in zip(records, chips):
      yield file_name, {
          "image": chip.image, "identity": identity, "label": label, "file_name": file_name,
          "alignment": chip.alignment, "transform": chip.transform,
      }


class IdentityFolder(_ChipBuilder):
  """Any identity-folder photo set ``root/PERSON/*.jpg`` under a probe / distractor split rule."""

  def __init__(self, *, root: str | os.PathLike | None = None, rule: protocols.SplitRule = protocols.PRIVACY_LFW,
               config: str | tfds.core.BuilderConfig | None = None, **kwargs):
    self._root = None if root is None else pathlib.Path(root).resolve()
    self._rule = rule
    if config is None:
      if self._root is None:
        raise ValueError("identity_folder needs root= (or the name of a prepared config)")
      config = tfds.core.BuilderConfig(
          name=config_name(rule.slug, self._root.name.replace("-", "_"), short_hash(str(self._root))),
          description=f"{self._root} ({rule})")
    super().__init__(config=config, **kwargs)

  def check_sources(self) -> None:
    if self._root is None:
      raise ValueError("identity_folder needs root= to prepare its data")
    if not self._root.is_dir():
      raise ValueError(f"root {str(self._root)!r} is not a directory")

  def _file_split(self, dl_manager):
    del dl_manager
    self.check_sources()
    return self._root, protocols.split_identities(protocols.list_identity_folder(self._root), self._rule)


_LFW_RULES = {rule.slug: rule for rule in (protocols.PRIVACY_LFW, protocols.PRIVACY_LFW_FEW_SHOT)}


class PrivacyLfw(_ChipBuilder):
  """Privacy-LFW: LFW (deep-funneled) probe identities with >= 20 photos, 10 train + 10 test each.

  Photos come from ``lfw_dir`` (a folder of ``PERSON/`` folders, or the ``.tgz`` archive), else from
  ``$OPOMJAX_LFW_DIR``, else from ``datasets/lfw-deepfunneled`` in the shared data folder
  (:func:`opomjax.data.sources.find_lfw_dir`); with ``download=True`` and none of these, from the official LFW
  site (:data:`LFW_URL`). The deep-funneled photos are centred on their subject: where the detector finds no
  face, the fixed
  :data:`opomjax.data.alignment.LFW_DEEPFUNNELED_LANDMARKS` template aligns the photo.
  """

  HOMEPAGE = LFW_HOMEPAGE
  FALLBACK = "lfw"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=config_name(slug), description=str(rule)) for slug, rule in _LFW_RULES.items()
  ]

  def __init__(self, *, lfw_dir: str | os.PathLike | None = None, **kwargs):
    if lfw_dir is not None and str(lfw_dir):
      lfw_dir = sources.check_lfw_source(lfw_dir, "lfw_dir")
    self._lfw_dir = lfw_dir or None
    super().__init__(**kwargs)

  @property
  def rule(self) -> protocols.SplitRule:
    return _LFW_RULES[self.builder_config.name[len(frame_lib.CANONICAL.name) + 1:]]

  def check_sources(self) -> None:
    sources.lfw_source(self._lfw_dir, download=self.download)

  def _lfw_root(self, dl_manager) -> pathlib.Path:
    source = sources.lfw_source(self._lfw_dir, download=self.download)
    if source is not None and source.is_dir():
      return source
    # Downloads and extractions land in the data folder's shared downloads/: one process at a time.
    with locks.file_lock(locks.lock_path(self.data_dir_root, "downloads", "lfw"),
                         waiting_message="waiting for another process downloading / extracting LFW"):
      if source is None:
        return find_identity_root(pathlib.Path(dl_manager.download_and_extract(LFW_URL)))
      return find_identity_root(pathlib.Path(dl_manager.extract(source)))

  def _file_split(self, dl_manager):
    root = self._lfw_root(dl_manager)
    return root, protocols.split_identities(protocols.list_identity_folder(root), self.rule)


class _OpomRelease(_ChipBuilder, skip_registration=True):
  """An official OPOM release: 112x112 ArcFace-aligned images and list files under one data folder."""

  HOMEPAGE = OPOM_HOMEPAGE
  TRAIN_LIST = ""
  TEST_LIST = ""
  DISTRACTOR_LIST = ""
  DISTRACTOR_ROOT = ""
  NUM_TEST = 10
  NUM_DISTRACTORS: int | None = None

  def __init__(self, *, release_dir: str | os.PathLike | None = None, **kwargs):
    self._release_dir = None if release_dir is None else pathlib.Path(release_dir)
    super().__init__(**kwargs)

  def check_sources(self) -> None:
    root = self._release_dir
    if root is None or not root.is_dir():
      raise ValueError(f"release_dir must be the release's data folder, got {root!r}")

  def _file_split(self, dl_manager):
    del dl_manager
    self.check_sources()
    root = self._release_dir
    split = protocols.release_split(
        protocols.read_list(root / self.TRAIN_LIST), protocols.read_list(root / self.TEST_LIST),
        protocols.read_list(root / self.DISTRACTOR_LIST), num_train=10, num_test=self.NUM_TEST,
        num_distractors=self.NUM_DISTRACTORS)
    if self.DISTRACTOR_ROOT:
      split = protocols.FileSplit(split.names, split.train, split.test,
                                  tuple(f"{self.DISTRACTOR_ROOT}/{f}" for f in split.distractors))
    return root, split

  def _chips(self, root, files, part):
    """The images are already aligned to the ArcFace template: mapped into the canonical frame, not detected."""
    from opomjax import faces  # pylint: disable=g-import-not-at-top

    import tqdm  # pylint: disable=g-import-not-at-top

    for f in tqdm.tqdm(files, desc=f"Reading {self.name} {part}", unit="photo"):
      photo = faces.load_photo(str(root / f))
      yield alignment.template_chip(photo, alignment.centered_arcface_frame(*photo.shape[:2]), self.frame,
                                    "given")


class PrivacyCommons(_OpomRelease):
  """Privacy-Commons (OPOM release): 10 training + 5 (or 10) test photos per person, 10,000 distractors.

  Configs ``..._train10_test5`` (``privacy_test_v3_5.lst``, the paper's setting) and ``..._train10_test10``
  (``privacy_test_v3_10.lst``); the distractors are the first 10,000 lines of ``common_distractor.lst``.
  """

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name(f"train10_test{n}")) for n in (5, 10)]
  TRAIN_LIST = "privacy_train_v3_10.lst"
  DISTRACTOR_LIST = "common_distractor.lst"
  NUM_DISTRACTORS = 10000

  @property
  def NUM_TEST(self) -> int:  # pylint: disable=invalid-name
    return int(self.builder_config.name.rsplit("test", 1)[1])

  @property
  def TEST_LIST(self) -> str:  # pylint: disable=invalid-name
    return f"privacy_test_v3_{self.NUM_TEST}.lst"


class PrivacyCelebrities(_OpomRelease):
  """Privacy-Celebrities (OPOM release): 10 training + 10 test photos per celebrity, LFW as distractors.

  Lists ``privacy_ms90w_train.lst`` / ``privacy_ms90w_test.lst``; distractors: ``lfw.txt`` (``PERSON/FILE``
  lines) under ``lfw_112x112/``, all 13,233 of them.
  """

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name("train10_test10"))]
  TRAIN_LIST = "privacy_ms90w_train.lst"
  TEST_LIST = "privacy_ms90w_test.lst"
  DISTRACTOR_LIST = "lfw.txt"
  DISTRACTOR_ROOT = "lfw_112x112"
  NUM_TEST = 10
