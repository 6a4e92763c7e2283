"""Datasets and protocols: split rules against independent counts, builders written and read back without TF."""

import collections
import csv
import pathlib
import shutil
import socket
import time
import types

import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

from opomjax import data
from opomjax import faces
from opomjax import frame as frame_lib
from opomjax.data import alignment
from opomjax.data import builders
from opomjax.data import loading
from opomjax.data import protocols

CANONICAL = frame_lib.CANONICAL


# ------------------------------------------------------------------------------------------------------
# Pure split logic.
# ------------------------------------------------------------------------------------------------------


def test_split_identities_small_example():
  files = {
      "bob": [f"bob/bob_{i:04d}.jpg" for i in (3, 1, 2, 5, 4)],  # 5 photos, unsorted
      "amy": [f"amy/amy_{i:04d}.jpg" for i in range(1, 5)],  # 4 photos
      "cat": ["cat/cat_0001.jpg", "cat/cat_0002.jpg"],  # too few: distractor
      "dan": [f"dan/dan_{i:04d}.jpg" for i in range(1, 8)],  # too many for max_images=6: distractor
  }
  split = protocols.split_identities(files, protocols.SplitRule(min_images=4, max_images=6, num_train=2,
                                                                num_test=2))
  assert split.names == ("amy", "bob")
  assert split.train == (("amy/amy_0001.jpg", "amy/amy_0002.jpg"), ("bob/bob_0001.jpg", "bob/bob_0002.jpg"))
  assert split.test == (("amy/amy_0003.jpg", "amy/amy_0004.jpg"), ("bob/bob_0003.jpg", "bob/bob_0004.jpg"))
  assert split.distractors == tuple(sorted(files["cat"] + files["dan"]))
  assert split.first(1).names == ("amy",) and split.first(1).distractors == split.distractors


@pytest.mark.parametrize("kwargs", [dict(num_train=0), dict(min_images=5), dict(max_images=19)])
def test_split_rule_rejects_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    protocols.SplitRule(**kwargs)


def test_release_split_groups_consecutive_lines():
  train = [f"id{i}/{j}.jpg" for i in range(3) for j in range(10)]
  test = [f"id{i}/t{j}.jpg" for i in range(3) for j in range(5)]
  distractors = ["0 mega/a.jpg", "1 mega/b.jpg", "2 mega/c.jpg"]
  split = protocols.release_split(train, test, distractors, num_train=10, num_test=5, num_distractors=2)
  assert split.names == ("id0", "id1", "id2")
  assert split.train[1] == tuple(f"id1/{j}.jpg" for j in range(10))
  assert split.test[2] == tuple(f"id2/t{j}.jpg" for j in range(5))
  assert split.distractors == ("mega/a.jpg", "mega/b.jpg")
  assert protocols.distractor_path("Aaron/Aaron_0001.jpg") == "Aaron/Aaron_0001.jpg"
  with pytest.raises(ValueError, match="per_identity"):
    protocols.release_split(train[:-1], test, distractors)
  with pytest.raises(ValueError, match="identities"):
    protocols.release_split(train, test[:5], distractors, num_test=5)


def _manifest_counts(lfw_root):
  with open(lfw_root / "manifest.csv") as f:
    rows = list(csv.DictReader(f))
  files = collections.defaultdict(list)
  for row in rows:
    files[row["identity"]].append(row["path"])
  return rows, files


@pytest.mark.parametrize("rule, lo, hi, n", [(protocols.PRIVACY_LFW, 20, 10**9, 10),
                                             (protocols.PRIVACY_LFW_FEW_SHOT, 12, 19, 6)])
def test_privacy_lfw_split_matches_manifest(lfw_root, rule, lo, hi, n):
  rows, manifest = _manifest_counts(lfw_root)
  split = protocols.split_identities(protocols.list_identity_folder(lfw_root), rule)
  probes = sorted(name for name, fs in manifest.items() if lo <= len(fs) <= hi)
  assert split.names == tuple(probes)
  assert [list(t) for t in split.train] == [sorted(manifest[p])[:n] for p in probes]
  assert [list(t) for t in split.test] == [sorted(manifest[p])[n:2 * n] for p in probes]
  assert len(split.distractors) == len(rows) - sum(len(manifest[p]) for p in probes)
  assert set(split.distractors).isdisjoint(f for p in probes for f in manifest[p])
  if rule == protocols.PRIVACY_LFW:  # the numbers the documentation states
    assert (len(split.names), sum(map(len, split.train)), sum(map(len, split.test))) == (62, 620, 620)
    assert len(split.distractors) == 10210


# ------------------------------------------------------------------------------------------------------
# Builders on tiny synthetic sets (alignment replaced by a deterministic stand-in).
# ------------------------------------------------------------------------------------------------------

#: The stand-in aligner: photo -> chip by a fixed similarity (scale 1/2, shift 3 px).
FAKE_TRANSFORM = np.array([[0.5, 0.0, 3.0], [0.0, 0.5, 3.0]])


def fake_align_photo(photo, *, frame=CANONICAL, detector=None, **_):
  del detector
  photo = faces.load_photo(photo)
  if photo.mean() < 20:  # dark photos have "no face"
    raise faces.NoFaceError("no face found", reason="no_face")
  return types.SimpleNamespace(chip=faces.warp_to_frame(photo, FAKE_TRANSFORM, frame), transform=FAKE_TRANSFORM)


@pytest.fixture
def fake_aligner(monkeypatch):
  calls = []

  def align(photo, **kwargs):
    calls.append(1)
    return fake_align_photo(photo, **kwargs)

  monkeypatch.setattr(faces, "align_photo", align)
  monkeypatch.setattr(faces, "YuNetDetector", lambda *a, **k: None)
  return calls


def ramp_photo(size, seed):
  """A photo linear in x and y (bilinear sampling reproduces it exactly), brightness set by ``seed``."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  return np.stack([40 + 0.3 * x + seed, 40 + 0.2 * y + seed, 90 + 0.1 * (x + y)], -1).round().astype(np.uint8)


@pytest.fixture
def identity_folder(tmp_path):
  """3 people with 5, 4 and 2 photos; amy_0003 is dark (no face)."""
  root = tmp_path / "people"
  for name, count in (("amy", 4), ("bob", 5), ("cat", 2)):
    (root / name).mkdir(parents=True)
    for i in range(1, count + 1):
      photo = ramp_photo(168, seed=10 * i + len(name))
      if (name, i) == ("amy", 3):
        photo = np.full_like(photo, 5)
      Image.fromarray(photo).save(root / name / f"{name}_{i:04d}.png")
  return root


RULE = protocols.SplitRule(min_images=4, num_train=2, num_test=2)


def test_identity_folder_builder_round_trip(identity_folder, tmp_path, fake_aligner, monkeypatch):
  data_dir = tmp_path / "tfds"
  protocol = loading.load_protocol("folder", root=identity_folder, rule=RULE, data_dir=data_dir, num_workers=0)
  assert protocol.names == ("amy", "bob")
  assert protocol.train.shape == (2, 2, *CANONICAL.size, 3) and protocol.train.dtype == np.uint8
  assert protocol.test_files == (("amy/amy_0003.png", "amy/amy_0004.png"), ("bob/bob_0003.png", "bob/bob_0004.png"))
  assert protocol.distractor_files == ("cat/cat_0001.png", "cat/cat_0002.png")
  assert protocol.fallback_files == ("amy/amy_0003.png",)
  assert (protocol.frame_name, protocol.frame_size) == (CANONICAL.name, CANONICAL.size)
  # Detected chips: what the aligner gives for that very file.
  expected = fake_align_photo(str(identity_folder / "bob/bob_0004.png")).chip
  np.testing.assert_array_equal(protocol.test[1, 1], np.rint(expected).astype(np.uint8))
  expected = fake_align_photo(str(identity_folder / "cat/cat_0002.png")).chip
  np.testing.assert_array_equal(protocol.distractors[1], np.rint(expected).astype(np.uint8))
  # The fallback chip: the ArcFace template over the 168 px photo, i.e. photo = (chip - (8, 4)) * 1.5 ;
  # the dark photo is constant, so every chip pixel whose source lies inside the photo is 5.
  chip = protocol.test[0, 0].astype(int)
  v, u = np.mgrid[0:CANONICAL.size[0], 0:CANONICAL.size[1]]
  inside = (np.abs((u - 8) * 1.5 - 83.5) < 83.49) & (np.abs((v - 4) * 1.5 - 83.5) < 83.49)  # off the rim
  assert np.all(chip[inside] == 5) and np.all(chip[~inside] <= 5)
  assert len(fake_aligner) == 2 * 2 + 2 * 2 + 2

  # Second run: read back from the prepared files, no alignment at all.
  def fail(*args, **kwargs):
    raise AssertionError("the prepared data should have been reused")

  monkeypatch.setattr(faces, "align_photo", fail)
  again = loading.load_protocol("folder", root=identity_folder, rule=RULE, data_dir=data_dir, num_workers=0,
                                num_identities=1)
  assert again.names == ("amy",)
  np.testing.assert_array_equal(again.train, protocol.train[:1])
  np.testing.assert_array_equal(again.distractors, protocol.distractors)


def test_fallback_chip_samples_the_template_geometry():
  """A linear-ramp photo through the centred ArcFace template: chip(u, v) = photo((u - 8) * s, (v - 4) * s)."""
  photo = ramp_photo(168, seed=0).astype(np.float64)
  chip = alignment.template_chip(photo.astype(np.uint8), alignment.centered_arcface_frame(168, 168), CANONICAL,
                                 "fallback")
  s = 168 / 112
  v, u = np.mgrid[0:128, 0:128].astype(np.float64)
  x, y = (u - 8) * s, (v - 4) * s
  inside = (np.abs(x - 83.5) < 83.49) & (np.abs(y - 83.5) < 83.49)
  expected = np.stack([40 + 0.3 * x, 40 + 0.2 * y, 90 + 0.1 * (x + y)], -1)
  assert np.abs(chip.image[inside] - expected[inside]).max() <= 1.0
  np.testing.assert_allclose(faces.apply_transform(chip.transform, alignment.centered_arcface_frame(168, 168)
                                                   .landmarks_array), CANONICAL.landmarks_array, atol=1e-4)


@pytest.fixture
def opom_release(tmp_path):
  """A tiny release: 2 identities x (10 train + 5 test), 3 MegaFace-style and 4 LFW-style distractors."""
  root = tmp_path / "release"
  rng = np.random.default_rng(0)
  images = {}

  def write(rel):
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / rel)
    images[rel] = img
    return rel

  train = [write(f"privacy/id{i}/train_{j}.png") for i in range(2) for j in range(10)]
  test5 = [write(f"privacy/id{i}/test_{j}.png") for i in range(2) for j in range(5)]
  test10 = [write(f"celeb/c{i}/test_{j}.png") for i in range(2) for j in range(10)]
  mega = [write(f"mega/m{j}.png") for j in range(3)]
  lfw = [write(f"lfw_112x112/P{j}/P{j}_0001.png")[len("lfw_112x112/"):] for j in range(4)]
  (root / "privacy_train_v3_10.lst").write_text("\n".join(train) + "\n")
  (root / "privacy_test_v3_5.lst").write_text("\n".join(test5) + "\n")
  (root / "common_distractor.lst").write_text("\n".join(f"{j} {p}" for j, p in enumerate(mega)) + "\n")
  (root / "privacy_ms90w_train.lst").write_text("\n".join(train) + "\n")
  (root / "privacy_ms90w_test.lst").write_text("\n".join(test10) + "\n")
  (root / "lfw.txt").write_text("\n".join(lfw) + "\n")
  return root, images


def canonical_pad(img):
  """An ArcFace-aligned 112x112 image in the canonical frame: shifted by (8, 4), zero elsewhere."""
  out = np.zeros((*CANONICAL.size, 3), np.uint8)
  out[4:116, 8:120] = img
  return out


def test_opom_release_builders(opom_release, tmp_path, monkeypatch):
  root, images = opom_release
  monkeypatch.setattr(faces, "align_photo", lambda *a, **k: pytest.fail("release images must not be detected"))
  commons = loading.load_protocol("privacy_commons", release_dir=root, data_dir=tmp_path / "tfds")
  assert commons.names == ("id0", "id1")
  assert commons.train.shape == (2, 10, *CANONICAL.size, 3) and commons.test.shape[:2] == (2, 5)
  np.testing.assert_array_equal(commons.train[1, 3], canonical_pad(images["privacy/id1/train_3.png"]))
  np.testing.assert_array_equal(commons.test[0, 4], canonical_pad(images["privacy/id0/test_4.png"]))
  assert commons.distractor_files == ("mega/m0.png", "mega/m1.png", "mega/m2.png")
  np.testing.assert_array_equal(commons.distractors[2], canonical_pad(images["mega/m2.png"]))

  celebs = loading.load_protocol("privacy_celebrities", release_dir=root, data_dir=tmp_path / "tfds")
  assert celebs.test.shape[:2] == (2, 10) and celebs.distractors.shape[0] == 4
  np.testing.assert_array_equal(celebs.test[1, 9], canonical_pad(images["celeb/c1/test_9.png"]))
  np.testing.assert_array_equal(celebs.distractors[3], canonical_pad(images["lfw_112x112/P3/P3_0001.png"]))


def test_prepared_data_reads_through_tfds_data_source(identity_folder, tmp_path, fake_aligner):
  data_dir = tmp_path / "tfds"
  builder = loading.make_builder("folder", root=identity_folder, rule=RULE, data_dir=data_dir, num_workers=0)
  loading.prepare(builder)
  sources = loading.open_prepared(f"identity_folder/{builder.builder_config.name}", data_dir=data_dir)
  record = sources["distractors"][0]
  assert record["file_name"] == b"cat/cat_0001.png" and record["label"] == -1
  assert record["image"].shape == (*CANONICAL.size, 3) and record["image"].dtype == np.uint8
  assert [r["alignment"] for r in sources["test"]] == [b"fallback", b"detected", b"detected", b"detected"]


def test_load_protocol_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="unknown protocol"):
    loading.load_protocol("lfw_typo", data_dir=tmp_path)
  with pytest.raises(ValueError, match="root"):
    loading.load_protocol("folder", data_dir=tmp_path)
  with pytest.raises(ValueError, match="release_dir"):
    loading.load_protocol("privacy_commons", release_dir=tmp_path / "nowhere", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------------
# Where LFW comes from: the documented default, a clear error when it is missing, downloads only when asked.
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
  """Every attempt to download or open a connection is recorded and refused."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise AssertionError("network access attempted")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  for method in ("download", "download_and_extract"):
    monkeypatch.setattr(tfds.download.DownloadManager, method, refuse)
  return attempts


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
  """No LFW / shared / data-dir variables; the working directory is an empty ``tmp/work``."""
  for var in ("OPOMJAX_LFW_DIR", "OPOMJAX_SHARED", "OPOMJAX_DATA_DIR"):
    monkeypatch.delenv(var, raising=False)
  (tmp_path / "work").mkdir()
  monkeypatch.chdir(tmp_path / "work")


def small_lfw(path: pathlib.Path) -> pathlib.Path:
  """An LFW-shaped folder: one person with 21 photos (a Privacy-LFW probe), two with one (distractors)."""
  for name, count in (("Ann_Probe", 21), ("Bo_Other", 1), ("Cy_Other", 1)):
    (path / name).mkdir(parents=True)
    for i in range(1, count + 1):
      Image.fromarray(ramp_photo(96, seed=i + len(name))).save(path / name / f"{name}_{i:04d}.jpg", quality=95)
  return path


def test_missing_lfw_fails_at_once_without_network(clean_env, tmp_path, monkeypatch, no_network):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path / "no_shared"))  # no LFW there, nor at the checkout's
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load_protocol("privacy_lfw", data_dir=tmp_path / "tfds", num_workers=0)
  assert time.monotonic() - start < 5
  assert no_network == []
  message = str(error.value)
  assert "\n" not in message and str((tmp_path / "no_shared").resolve()) in message
  assert "lfw_dir=" in message and "$OPOMJAX_LFW_DIR" in message and "download=True" in message
  assert not (tmp_path / "tfds" / "privacy_lfw").exists()  # nothing prepared, nothing half-written


def test_documented_default_lfw_is_prepared(clean_env, tmp_path, fake_aligner, no_network):
  lfw = small_lfw(tmp_path / "shared" / "datasets" / "lfw-deepfunneled")
  assert data.find_lfw_dir().resolve() == lfw.resolve()  # ../shared next to the working directory
  protocol = data.load_protocol("privacy_lfw", data_dir=tmp_path / "tfds", num_workers=0)
  assert no_network == []
  assert protocol.names == ("Ann_Probe",)
  assert protocol.train_files == (tuple(f"Ann_Probe/Ann_Probe_{i:04d}.jpg" for i in range(1, 11)),)
  assert protocol.distractor_files == ("Bo_Other/Bo_Other_0001.jpg", "Cy_Other/Cy_Other_0001.jpg")
  expected = fake_align_photo(str(lfw / "Ann_Probe" / "Ann_Probe_0012.jpg")).chip
  np.testing.assert_array_equal(protocol.test[0, 1], np.rint(expected).astype(np.uint8))
  # Prepared data is read back even when the photos are gone (no LFW needed any more).
  shutil.rmtree(lfw)
  again = data.load_protocol("privacy_lfw", data_dir=tmp_path / "tfds")
  np.testing.assert_array_equal(again.test, protocol.test)


def test_download_only_when_asked(clean_env, tmp_path, monkeypatch, fake_aligner):
  monkeypatch.setenv("OPOMJAX_SHARED", str(tmp_path / "no_shared"))
  extracted = small_lfw(tmp_path / "downloads" / "extracted" / "lfw-deepfunneled")
  urls = []

  def download_and_extract(self, url):
    urls.append(url)
    return extracted.parent  # the archive's own top folder is descended into

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  with pytest.raises(data.DatasetNotFoundError):
    data.load_protocol("privacy_lfw", data_dir=tmp_path / "tfds", num_workers=0)
  assert urls == []
  protocol = data.load_protocol("privacy_lfw", data_dir=tmp_path / "tfds", num_workers=0, download=True)
  assert urls == [builders.LFW_URL]
  assert protocol.names == ("Ann_Probe",) and protocol.distractors.shape[0] == 2


def test_a_wrong_lfw_dir_fails_before_any_preparation(tmp_path, no_network):
  with pytest.raises(data.DatasetNotFoundError, match="^lfw_dir .* does not exist"):
    data.load_protocol("privacy_lfw", lfw_dir=tmp_path / "lfw-typo", data_dir=tmp_path / "tfds", download=True)
  with pytest.raises(data.DatasetNotFoundError, match="^lfw_dir .* does not look like LFW"):
    data.make_builder("privacy_lfw", lfw_dir=tmp_path, data_dir=tmp_path / "tfds")
  assert no_network == [] and not (tmp_path / "tfds").exists()


def test_prepare_reports_whether_it_prepared(identity_folder, tmp_path, fake_aligner):
  builder = loading.make_builder("folder", root=identity_folder, rule=RULE, data_dir=tmp_path / "tfds",
                                 num_workers=0)
  late = loading.make_builder("folder", root=identity_folder, rule=RULE, data_dir=tmp_path / "tfds",
                              num_workers=0)  # made before the files exist, like a process that waited
  assert loading.prepare(builder) is True
  assert len(fake_aligner) == 10
  assert loading.prepare(late) is False and len(fake_aligner) == 10
  assert (tmp_path / "tfds" / ".locks").is_dir()
  reread = loading.protocol_from_sources(late.as_data_source(), late.info.metadata)
  first = loading.protocol_from_sources(builder.as_data_source(), builder.info.metadata)
  np.testing.assert_array_equal(reread.train, first.train)
  np.testing.assert_array_equal(reread.distractors, first.distractors)


# ------------------------------------------------------------------------------------------------------
# Real photos and the real detector (LFW, YuNet), with worker processes.
# ------------------------------------------------------------------------------------------------------


def test_identity_folder_on_real_lfw_photos(lfw_root, yunet_onnx, tmp_path):
  root = tmp_path / "lfw_subset"
  for name in ("Aaron_Peirsol", "Abdullah_Gul", "Zico"):
    shutil.copytree(lfw_root / name, root / name)
  rule = protocols.SplitRule(min_images=4, num_train=2, num_test=2)
  protocol = loading.load_protocol("folder", root=root, rule=rule, data_dir=tmp_path / "tfds", num_workers=2,
                                   detector_path=str(yunet_onnx))
  counts = {p.name: len(list(p.iterdir())) for p in root.iterdir()}
  assert protocol.names == tuple(sorted(n for n, c in counts.items() if c >= 4))
  assert protocol.distractors.shape[0] == sum(c for c in counts.values() if c < 4)
  # A chip of the protocol is the chip the faces module gives for that photo.
  face = faces.align_photo(str(root / protocol.train_files[0][1]), detector=faces.YuNetDetector(yunet_onnx))
  np.testing.assert_array_equal(protocol.train[0, 1], np.rint(face.chip).astype(np.uint8))
  assert protocol.fallback_files == ()


# ------------------------------------------------------------------------------------------------------
# The clean-baseline launcher's computation, on a protocol whose answer is plain.
# ------------------------------------------------------------------------------------------------------


def test_baseline_accuracy_on_colour_coded_protocol():
  from experiments import baselines  # pylint: disable=g-import-not-at-top

  def solid(rgb, n):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (n, 8, 8, 3)).copy()

  # Each person's photos share a colour; distractors have other colours. Embedding = mean colour direction.
  people = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
  test = np.stack([solid(c, 4) for c in people])
  distractors = np.concatenate([solid((150, 150, 20), 2), solid((20, 150, 150), 2)])
  protocol = protocols.Protocol(names=("a", "b", "c"), train=test, test=test, distractors=distractors,
                                frame_name="test", frame_size=(8, 8))
  embed = lambda x: np.asarray(x, np.float32).mean((1, 2)) - 100.0
  clean = baselines.baseline(embed, protocol, batch_size=5)
  assert clean == {"top1": 1.0, "top5": 1.0}  # top10 needs at least 9 distractors
  # A "mask" that turns person a's photos into distractor 0's colour: a is never found first, b and c always.
  masks = np.zeros((3, 8, 8, 3), np.float32)
  masks[0] = np.array([150, 150, 20]) - np.array(people[0])
  masked = baselines.baseline(embed, protocol, batch_size=5, masks=masks)
  assert masked["random_mask_top1"] == pytest.approx(2 / 3) and masked["top1"] == 1.0
  # Through a channel: solid colours survive JPEG, so only the masked person is still hidden.
  jpeg = baselines.baseline(embed, protocol, batch_size=5, masks=masks, conditions=("none", "jpeg50"))
  assert jpeg["jpeg50_top1"] == 1.0 and jpeg["jpeg50_random_mask_top1"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="--conditions: unknown 'gif'"):
    baselines.check_arguments(["dlib_resnet"], protocol="privacy_lfw", num_identities=None, batch_size=8,
                              random_mask_epsilon=0.0, conditions=["gif"])
