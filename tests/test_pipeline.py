"""Mask files, feature cache, result tables and the run bookkeeping of opomjax.pipeline."""

import csv
import json
import os
import stat

import numpy as np
import pytest

from opomjax.pipeline import features, masks, reports, runner


def test_mask_roundtrip_and_metadata(tmp_path):
  mask = np.random.default_rng(0).uniform(-8, 8, (128, 128, 3)).astype(np.float32)
  meta = dict(frame="arcface128", epsilon=8.0, method="opom-convex", surrogate="dlib_resnet", steps=16, seed=3)
  path = masks.mask_path(tmp_path, "Ann_Smith")
  masks.save_mask(path, mask, meta)
  loaded, loaded_meta = masks.load_mask(path)
  np.testing.assert_array_equal(loaded, mask)
  assert {k: loaded_meta[k] for k in meta} == meta and "version" in loaded_meta
  assert masks.is_complete(path)
  assert [p.name for p in path.parent.iterdir()] == ["Ann_Smith.npz"]  # no temporary files left
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would create it


def test_truncated_or_foreign_mask_file_is_not_complete(tmp_path):
  path = tmp_path / "m.npz"
  masks.save_mask(path, np.zeros((4, 4, 3)), dict(frame="f", epsilon=8, method="m", surrogate="s", steps=1, seed=0))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  assert not masks.is_complete(path)
  with pytest.raises(masks.MaskFileError):
    masks.load_mask(path)
  np.savez(path, mask=np.zeros((4, 4, 3)), metadata=np.array("{}"))
  with pytest.raises(masks.MaskFileError, match="lacks metadata"):
    masks.load_mask(path)
  assert not masks.is_complete(tmp_path / "absent.npz")


def test_identity_filenames_are_safe_and_distinct():
  assert masks.identity_filename("George_W_Bush") == "George_W_Bush.npz"
  assert "/" not in masks.identity_filename("../etc/passwd")
  assert not masks.identity_filename(".hidden").startswith(".")


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "f.bin"
  masks.atomic_write_bytes(path, b"old")

  def disk_full(fd):
    raise OSError("disk full")

  monkeypatch.setattr(masks.os, "fsync", disk_full)
  with pytest.raises(OSError, match="disk full"):
    masks.atomic_write_bytes(path, b"new")
  assert path.read_bytes() == b"old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_embed_in_batches_pads_and_applies_masks():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
  mask = rng.uniform(-8, 8, (4, 4, 3)).astype(np.float32)
  seen = []

  def embed(x):
    seen.append(x.shape[0])
    return x.reshape(x.shape[0], -1)[:, :5]

  out = features.embed_in_batches(embed, images, batch_size=3, masks=mask)
  expected = np.clip(images.astype(np.float32) + mask, 0, 255).reshape(7, -1)[:, :5]
  np.testing.assert_allclose(out, expected)
  assert seen == [3, 3, 3]  # one shape only: a jitted embed compiles once


def test_feature_cache_computes_once_per_content(tmp_path):
  cache = features.FeatureCache(tmp_path)
  calls = []
  compute = lambda x: calls.append(1) or x.reshape(len(x), -1).astype(np.float32)
  a = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
  first = cache.get_or_compute("model/x", a, compute)
  again = cache.get_or_compute("model/x", a.copy(), compute)
  np.testing.assert_array_equal(first, again)
  assert len(calls) == 1
  cache.get_or_compute("model/x", a + 1, compute)
  assert len(calls) == 2


def _rows():
  rows = []
  for method, surrogate in (("fi-uap", "dlib_resnet"), ("opom-convex", "dlib_resnet")):
    for j, target in enumerate(("dlib_resnet", "sface_onnx")):
      rows.append(dict(method=method, surrogate=surrogate, target=target, top1=0.5 + 0.1 * j, top5=0.25,
                       top10=0.125, clean_top1=0.9, clean_top5=0.95, cos_before=0.7, cos_after=0.3, seconds=12.0))
  return rows


def test_results_files_roundtrip(tmp_path):
  rows = _rows()
  paths = reports.write_results(rows, tmp_path)
  assert json.loads(paths["json"].read_text()) == rows
  with open(paths["csv"]) as f:
    read = list(csv.DictReader(f))
  assert [r["method"] for r in read] == [r["method"] for r in rows]
  assert [float(r["top1"]) for r in read] == [r["top1"] for r in rows]
  assert list(read[0]) == list(reports.RESULT_KEYS)


def test_markdown_table_layout():
  table = reports.markdown_table(_rows()).splitlines()
  assert table[0].startswith("| Method (surrogate) | dlib_resnet Top-1 / Top-5 | sface_onnx Top-1 / Top-5")
  row = next(line for line in table if line.startswith("| opom-convex (dlib_resnet)"))
  # white-box on its own surrogate, black-box on the other target; rates in percent
  assert "50.0 / 25.0 (wb)" in row and "60.0 / 25.0 (bb)" in row
  assert table[-1].startswith("| *clean accuracy* | 90.0 / 95.0")


@pytest.mark.parametrize("surrogate,target,white", [
    ("dlib_resnet", "dlib_resnet", True), ("dlib_resnet+mdfa", "dlib_resnet", True),
    ("sface", "sface_onnx", True), ("sface+mdfa", "sface_onnx", True),
    ("dlib_resnet+mdfa", "sface_onnx", False), ("sface", "dlib_resnet", False),
])
def test_white_box_is_the_surrogate_itself_in_any_variant(surrogate, target, white):
  assert reports.is_white_box(surrogate, target) is white


def test_merge_rows_replaces_same_key():
  rows = _rows()
  new = dict(rows[0], top1=0.99)
  merged = reports.merge_rows(rows, [new])
  assert len(merged) == len(rows) and merged[0]["top1"] == 0.99


def test_figures_are_written(tmp_path):
  reports.bar_chart(_rows(), tmp_path / "bars.png")
  faces = np.full((2, 16, 16, 3), 128, np.uint8)
  reports.mask_grid(faces, np.zeros((2, 16, 16, 3)), ["a", "b"], tmp_path / "grid.png")
  for name in ("bars.png", "grid.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_groups_split_disjointly_over_processes():
  groups = runner.identity_groups(11, 3)
  assert [len(g) for g in groups] == [3, 3, 3, 2]
  owned = [runner.groups_of_process(groups, p, 3) for p in range(3)]
  flat = sorted(i for own in owned for _, idx in own for i in idx)
  assert flat == list(range(11))
  with pytest.raises(ValueError):
    runner.identity_groups(3, 0)


def test_mean_pair_cosine_matches_loop():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(3, 4, 5))
  b = rng.normal(size=(3, 4, 5))
  loop = np.mean([a[k, i] @ b[k, j] for k in range(3) for i in range(4) for j in range(4) if i != j])
  assert runner.mean_pair_cosine(a, b) == pytest.approx(loop)


def test_model_fingerprint_changes_with_geometry_and_weights():
  import dataclasses

  import jax.numpy as jnp

  from opomjax import frame
  from opomjax.models import base

  net = lambda params, x, key=None, dropout_rate=0.0: (x.reshape(x.shape[0], -1) @ params["w"], [])
  model = base.FaceModel("toy", net, {"w": jnp.ones((3, 2))}, frame.ARCFACE_112, 2)
  same = base.FaceModel("toy", net, {"w": jnp.ones((3, 2))}, frame.ARCFACE_112, 2)
  assert features.model_fingerprint(model) == features.model_fingerprint(same)
  moved = dataclasses.replace(model, input_frame=frame.make_frame("other", (112, 112), frame.ARCFACE_112_LANDMARKS + 1))
  reweighted = dataclasses.replace(model, params={"w": jnp.full((3, 2), 2.0)})
  assert len({features.model_fingerprint(m) for m in (model, moved, reweighted)}) == 3
