"""Mask files, feature cache, result tables and the run bookkeeping of opomjax.pipeline."""

import csv
import dataclasses
import json
import os
import pathlib
import re
import shutil
import stat

import numpy as np
import pytest

from experiments.configs import common
from opomjax.pipeline import features, masks, reports, runner, settings, validate


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


#: Names that the sanitisation alone maps to one file (``Ann_Smith``, ``_.x``, ...).
COLLIDING_NAMES = ["Ann Smith", "Ann/Smith", "Ann_Smith", "Ann?Smith", "Ann\u00e9Smith", "Ann\u00e8Smith",
                   ".x", "_.x", "/x", "", "_", "a" * 300, "a" * 300 + "b"]


def test_identity_filenames_are_injective_and_safe():
  files = [masks.identity_filename(name) for name in COLLIDING_NAMES]
  assert len(set(files)) == len(COLLIDING_NAMES)
  for name in files:
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.npz", name) and len(name) < 255
  assert masks.identity_filename("Ann_Smith") == "Ann_Smith.npz"  # safe names keep their file (old workdirs)
  assert masks.identity_filename("J.K._Rowling-2") == "J.K._Rowling-2.npz"


def test_colliding_names_get_their_own_mask_files(tmp_path):
  meta = dict(frame="f", epsilon=8.0, method="m", surrogate="s", steps=1, seed=0)
  for i, name in enumerate(COLLIDING_NAMES):
    masks.save_mask(masks.mask_path(tmp_path, name), np.full((2, 2, 3), i, np.float32), {**meta, "identity": name})
  assert len(list((tmp_path / "masks").iterdir())) == len(COLLIDING_NAMES)
  for i, name in enumerate(COLLIDING_NAMES):
    mask, loaded = masks.load_identity_mask(tmp_path, name)
    assert mask[0, 0, 0] == i and loaded["identity"] == name
  # A file that holds another identity's mask is refused, not used.
  shutil.copy(masks.mask_path(tmp_path, "Ann Smith"), masks.mask_path(tmp_path, "Ann/Smith"))
  with pytest.raises(masks.MaskFileError, match="belongs to identity 'Ann Smith'"):
    masks.load_identity_mask(tmp_path, "Ann/Smith")


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
  unrounded = np.clip(images.astype(np.float32) + mask, 0, 255)
  np.testing.assert_array_equal(out, np.rint(unrounded).reshape(7, -1)[:, :5])  # the saved 8-bit photo
  assert seen == [3, 3, 3]  # one shape only: a jitted embed compiles once
  out = features.embed_in_batches(embed, images, batch_size=3, masks=mask, condition="float")
  np.testing.assert_allclose(out, unrounded.reshape(7, -1)[:, :5])


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
  assert table[0].startswith(
      "| Method (surrogate) | condition | dlib_resnet Top-1 / Top-5 | sface_onnx Top-1 / Top-5")
  row = next(line for line in table if line.startswith("| opom-convex (dlib_resnet)"))
  # white-box on its own surrogate, black-box on the other target; rates in percent; rows written before
  # conditions existed were measured on float probes
  assert "| float |" in row and "50.0 / 25.0 (wb)" in row and "60.0 / 25.0 (bb)" in row
  assert table[-1].startswith("| *clean accuracy* | | 90.0 / 95.0")


def test_conditions_are_separate_rows_and_the_channel_alone_is_shown(tmp_path):
  old = _rows()
  new = [dict(r, condition=c, top1=r["top1"] + d, channel_top1=d, channel_top5=d / 2)
         for r in old for c, d in (("none", 0.0), ("jpeg75", 0.125))]
  merged = reports.merge_rows(old, new)
  assert len(merged) == 3 * len(old)  # float (old), none and jpeg75 rows of the same masks all kept
  table = reports.markdown_table(merged).splitlines()
  conditions = [line.split(" | ")[1] for line in table if line.startswith("| opom-convex (dlib_resnet)")]
  assert conditions == ["float", "none", "jpeg75"]
  assert table[-1] == "| *no mask, channel only* | jpeg75 | 12.5 / 6.2 | 12.5 / 6.2 | |"
  paths = reports.write_results(merged, tmp_path)
  with open(paths["csv"]) as f:
    assert [r["condition"] for r in csv.DictReader(f)] == [""] * 4 + ["none", "jpeg75"] * 4


@pytest.mark.parametrize("surrogate,target,white", [
    ("dlib_resnet", "dlib_resnet", True), ("dlib_resnet+mdfa", "dlib_resnet", True),
    ("sface", "sface_onnx", True), ("sface+mdfa", "sface_onnx", True),
    ("dlib_resnet+mdfa", "sface_onnx", False), ("sface", "dlib_resnet", False),
    ("dlib_resnet", "dlib_native", True), ("dlib_resnet+faceres+eot", "dlib_native", True),
    ("sface", "dlib_native", False),
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


# ------------------------------------------------------------------------------------------------------
# Runs on a toy surrogate: masks carry their settings, and a rerun with other settings is refused.
# ------------------------------------------------------------------------------------------------------


def toy_model(scale: float = 1.0):
  """A linear 'face model' on 16x16 inputs, with DFANet-style dropout: fast enough to run the pipeline."""
  import jax

  from opomjax import frame
  from opomjax.models import base

  tiny = frame.make_frame("toy16", (16, 16), frame.CANONICAL.landmarks_array * 16 / 128)

  def net(params, x, key=None, dropout_rate=0.0):
    flat = x.reshape(x.shape[0], -1) / 255.0
    if key is not None and dropout_rate > 0:
      flat = flat * jax.random.bernoulli(key, 1 - dropout_rate, flat.shape) / (1 - dropout_rate)
    return flat @ params["w"], [flat]

  weights = scale * jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8))
  return base.FaceModel("toy", net, {"w": weights}, tiny, 8)


NUM_TOY_IDS = 4


def toy_config(**overrides):
  """The fi-uap config on 4 synthetic identities in groups of 2, 2 steps, momentum + DFANet as the ``_mdfa``
  configs run it (the clean features under dropout, "-mdfa")."""
  config = common.method_config("fi-uap", "dlib")
  config.update_from_flattened_dict({
      "dataset.name": "synthetic", "dataset.num_identities": NUM_TOY_IDS, "group_size": 2, "steps": 2,
      "momentum": 1.0, "dropout": 0.05, "dfanet_clean_once": False, "targets": "dlib_resnet",
      **{k.replace("__", "."): v for k, v in overrides.items()}})
  return config


@pytest.fixture
def toy_run(monkeypatch):
  """Patches the runner to use :func:`toy_model` and counts surrogate loads and ``generate_masks`` calls."""
  return patch_toy_run(monkeypatch)


def patch_toy_run(monkeypatch) -> dict:
  import opomjax

  calls = {"load_surrogate": 0, "generate_masks": 0}
  real_generate = opomjax.generate_masks

  def load_surrogate(config):
    calls["load_surrogate"] += 1
    return toy_model()

  def generate_masks(*args, **kwargs):
    calls["generate_masks"] += 1
    return real_generate(*args, **kwargs)

  monkeypatch.setattr(runner, "load_surrogate", load_surrogate)
  monkeypatch.setattr(opomjax, "generate_masks", generate_masks)
  monkeypatch.setattr(opomjax, "load_target", lambda name, **kw: toy_model())
  return calls


def snapshot(workdir):
  return {p.relative_to(workdir): p.read_bytes() for p in sorted(workdir.rglob("masks/*.npz"))}


@pytest.fixture(scope="module")
def generated_once(tmp_path_factory):
  """A workdir with the masks of :func:`toy_config` (fi-uap and opom-convex), made once per module."""
  workdir = tmp_path_factory.mktemp("toy_run")
  with pytest.MonkeyPatch.context() as monkeypatch:
    calls = patch_toy_run(monkeypatch)
    runner.generate_all(toy_config(methods="fi-uap,opom-convex"), workdir, protocol=toy_protocol())
  assert calls["generate_masks"] == 4  # 2 groups x 2 methods
  return workdir


@pytest.fixture
def generated(generated_once, tmp_path, toy_run):
  """A fresh copy of :func:`generated_once`'s workdir, and its {method: workdir}."""
  workdir = tmp_path / "run"
  shutil.copytree(generated_once, workdir)
  return workdir, runner.method_workdirs(toy_config(methods="fi-uap,opom-convex"), workdir)


def toy_protocol(num_identities: int = NUM_TOY_IDS, seed: int = 0):
  return runner.synthetic_protocol(num_identities, seed=seed)


def test_masks_record_their_settings_and_identity(generated):
  workdir, workdirs = generated
  _, meta = masks.load_identity_mask(workdirs["opom-convex"], "synthetic_0003")
  recorded = meta["settings"]
  assert meta["identity"] == "synthetic_0003"
  assert {k: recorded[k] for k in ("method", "surrogate", "epsilon", "step_size", "steps", "momentum", "dropout",
                                   "seed", "group_size", "dataset", "lower", "upper", "warmup_center_steps",
                                   "solver", "frame", "group", "group_members")} == dict(
      method="opom-convex", surrogate="dlib_resnet", epsilon=8.0, step_size=1.0, steps=2, momentum=1.0,
      dropout=0.05, seed=0, group_size=2, dataset="synthetic", lower=0.0, upper=1.0, warmup_center_steps=5,
      solver="osqp", frame="arcface128", group=1, group_members=2)
  protocol = toy_protocol()
  assert recorded["group_images"] == features.fingerprint(protocol.train[[2, 3]])
  assert recorded["surrogate_weights"] == features.model_fingerprint(toy_model())
  _, fi_meta = masks.load_identity_mask(workdirs["fi-uap"], "synthetic_0003")
  assert "lower" not in fi_meta["settings"]  # the hull bounds do not change an FI-UAP mask


@pytest.mark.parametrize("overrides,setting", [
    (dict(epsilon=4.0), "epsilon"), (dict(steps=3), "steps"), (dict(step_size=0.5), "step_size"),
    (dict(momentum=0.5), "momentum"), (dict(dropout=0.02), "dropout"), (dict(seed=1), "seed"),
    (dict(group_size=3), "group_size"), (dict(dataset__images_per_split=3), "images_per_split"),
    (dict(lower=0.1), "lower"), (dict(upper=0.9), "upper"), (dict(warmup_center_steps=1), "warmup_center_steps"),
    (dict(solver="fista"), "solver"),
])
def test_rerun_with_other_settings_is_refused_before_any_work(generated, toy_run, overrides, setting):
  workdir, _ = generated
  before = snapshot(workdir)
  config = toy_config(methods="fi-uap,opom-convex", **overrides)
  with pytest.raises(settings.SettingsMismatchError) as refusal:
    runner.generate_all(config, workdir, protocol=toy_protocol())
  message = str(refusal.value)
  assert f"{setting}: " in message and "in the masks" in message and str(workdir) in message
  assert "--workdir" in message and "\n" not in message
  assert toy_run == {"load_surrogate": 0, "generate_masks": 0}  # refused before the model was even loaded
  assert snapshot(workdir) == before


def test_settings_an_fi_uap_mask_does_not_read_do_not_refuse_it(generated, toy_run):
  workdir, _ = generated
  before = snapshot(workdir)
  runner.generate_all(toy_config(methods="fi-uap", lower=0.1), workdir, protocol=toy_protocol())
  assert toy_run["generate_masks"] == 0 and snapshot(workdir) == before


def test_rerun_with_the_same_settings_resumes_bit_for_bit(generated, toy_run):
  workdir, workdirs = generated
  before = snapshot(workdir)
  config = toy_config(methods="fi-uap,opom-convex")
  runner.generate_all(config, workdir, protocol=toy_protocol())
  assert toy_run["generate_masks"] == 0 and snapshot(workdir) == before
  lost = masks.mask_path(workdirs["fi-uap"], "synthetic_0001")  # group 0
  old_mask, _ = masks.load_mask(lost)
  lost.unlink()
  runner.generate_all(config, workdir, protocol=toy_protocol())
  assert toy_run["generate_masks"] == 1  # only the group of the lost mask
  np.testing.assert_array_equal(masks.load_mask(lost)[0], old_mask)


@pytest.mark.parametrize("change,setting", [
    ("data", "group_images"), ("num_identities", "group_members"), ("surrogate", "surrogate_weights")])
def test_rerun_on_other_data_or_weights_is_refused_before_generation(generated, toy_run, monkeypatch, change,
                                                                     setting):
  workdir, _ = generated
  before = snapshot(workdir)
  protocol = toy_protocol()
  config = toy_config(methods="fi-uap,opom-convex")
  if change == "data":
    protocol = toy_protocol(seed=1)
  elif change == "num_identities":  # group 1 held identities 2 and 3; with 3 identities only 2
    protocol = toy_protocol(3)
    config.dataset.num_identities = 3
  else:
    monkeypatch.setattr(runner, "load_surrogate", lambda config: toy_model(scale=2.0))
  with pytest.raises(settings.SettingsMismatchError, match=f"{setting}: "):
    runner.generate_all(config, workdir, protocol=protocol)
  assert toy_run["generate_masks"] == 0 and snapshot(workdir) == before


def test_masks_without_a_settings_record_are_refused(generated, toy_run):
  workdir, workdirs = generated
  path = masks.mask_path(workdirs["fi-uap"], "synthetic_0000")
  mask, meta = masks.load_mask(path)
  del meta["settings"]
  masks.save_mask(path, mask, meta)
  with pytest.raises(settings.SettingsMismatchError, match="no settings record"):
    runner.generate_all(toy_config(methods="fi-uap,opom-convex"), workdir, protocol=toy_protocol())


def test_results_rows_carry_settings_and_do_not_merge_across_them(generated, toy_run, tmp_path_factory):
  workdir, workdirs = generated
  protocol = toy_protocol()
  config = toy_config(methods="fi-uap,opom-convex")
  rows = runner.evaluate_all(config, workdirs, workdir, protocol=protocol)
  assert len(rows) == 2
  row = next(r for r in rows if r["method"] == "fi-uap")
  assert {k: row[k] for k in ("epsilon", "steps", "step_size", "momentum", "dropout", "seed", "group_size",
                              "num_identities", "dataset", "frame", "lower")} == dict(
      epsilon=8.0, steps=2, step_size=1.0, momentum=1.0, dropout=0.05, seed=0, group_size=2, num_identities=4,
      dataset="synthetic", frame="arcface128", lower=None)
  with open(workdir / "results.csv") as f:
    assert float(next(r for r in csv.DictReader(f) if r["method"] == "fi-uap")["epsilon"]) == 8.0
  # FI-UAP with ε = 4 in another workdir, evaluated into the same results: two FI-UAP rows.
  other = tmp_path_factory.mktemp("eps4")
  config4 = toy_config(methods="fi-uap", epsilon=4.0)
  workdirs4 = runner.generate_all(config4, other, protocol=protocol)
  runner.evaluate_all(config4, workdirs4, workdir, protocol=protocol)
  stored = reports.read_results(workdir)
  assert sorted((r["method"], r["epsilon"]) for r in stored) == [
      ("fi-uap", 4.0), ("fi-uap", 8.0), ("opom-convex", 8.0)]
  table = (workdir / "results.md").read_text()
  assert "| fi-uap (dlib_resnet+mdfa, ε=4.0)" in table and "| fi-uap (dlib_resnet+mdfa, ε=8.0)" in table


def test_every_condition_is_a_row_and_probes_are_what_the_channel_makes(generated, toy_run):
  workdir, workdirs = generated
  protocol = toy_protocol()
  config = toy_config(methods="fi-uap,opom-convex", conditions="float,none,jpeg50")
  rows = runner.evaluate_all(config, workdirs, workdir, protocol=protocol)
  assert sorted((r["method"], r["condition"]) for r in rows) == sorted(
      (m, c) for m in ("fi-uap", "opom-convex") for c in ("float", "none", "jpeg50"))
  # Independently: the probes as the channel makes them, embedded by the target, against the clean probes.
  model = toy_model()
  k, m = protocol.test.shape[:2]
  mask = runner.load_masks(workdirs["fi-uap"], protocol.names)[:, None]
  clean = np.asarray(model.embed(protocol.test.reshape((k * m,) + protocol.test.shape[2:]).astype(np.float32)))
  for condition, probes in (("float", np.clip(protocol.test + mask, 0, 255)),
                            ("none", np.rint(np.clip(protocol.test + mask, 0, 255)))):
    masked = np.asarray(model.embed(probes.reshape(clean.shape[:1] + probes.shape[2:]).astype(np.float32)))
    row = next(r for r in rows if r["method"] == "fi-uap" and r["condition"] == condition)
    expected = runner.mean_pair_cosine(masked.reshape(k, m, -1), clean.reshape(k, m, -1))
    np.testing.assert_allclose(row["cos_after"], expected, rtol=1e-5)
  float_row, none_row = (next(r for r in rows if r["method"] == "fi-uap" and r["condition"] == c)
                         for c in ("float", "none"))
  assert float_row["cos_after"] != none_row["cos_after"]  # the rounding is seen
  jpeg = [r for r in rows if r["condition"] == "jpeg50"]
  assert all(r["channel_top1"] is not None for r in jpeg)
  assert all(r["channel_top1"] == 1 - r["clean_top1"] for r in rows if r["condition"] != "jpeg50")
  assert "| *no mask, channel only* | jpeg50 |" in (workdir / "results.md").read_text()


def test_evaluation_refuses_masks_of_other_settings(generated, toy_run):
  workdir, workdirs = generated
  with pytest.raises(settings.SettingsMismatchError, match="epsilon: 8.0 in the masks, 4.0 now"):
    runner.evaluate_all(toy_config(methods="fi-uap,opom-convex", epsilon=4.0), workdirs, workdir,
                        protocol=toy_protocol())
  assert not (workdir / "results.json").exists()


def test_merge_rows_keeps_rows_of_other_settings():
  rows = [dict(r, epsilon=8.0, settings_id="a") for r in _rows()]
  other = [dict(r, epsilon=4.0, settings_id="b", top1=0.1) for r in _rows()]
  merged = reports.merge_rows(rows, other)
  assert len(merged) == 2 * len(rows)
  again = reports.merge_rows(merged, [dict(other[0], top1=0.2)])
  assert len(again) == len(merged) and sum(r["top1"] == 0.2 for r in again) == 1
  labels = reports.row_labels(merged)
  assert len(set(labels)) == 4 and "fi-uap (dlib_resnet, ε=4.0)" in labels


# ------------------------------------------------------------------------------------------------------
# Config validation: every field is checked before anything is loaded.
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,error,fragment", [
    (dict(methods="fi-uap,bogus"), ValueError, "config.methods"),
    (dict(methods=""), ValueError, "config.methods"),
    (dict(surrogate="nope"), ValueError, "config.surrogate: unknown model 'nope'"),
    (dict(surrogate="/no/such/model.onnx"), FileNotFoundError, "config.surrogate: no ONNX file"),
    (dict(targets="dlib_resnet,nope"), ValueError, "config.targets: unknown model 'nope'"),
    (dict(targets="/no/such/model.onnx"), FileNotFoundError, "config.targets: no ONNX file"),
    (dict(targets=" , "), ValueError, "config.targets is empty"),
    (dict(epsilon=300.0), ValueError, "config.allow_large_epsilon=True"),
    (dict(epsilon=0.0), ValueError, "config.epsilon"),
    (dict(epsilon=float("nan")), ValueError, "config.epsilon"),
    (dict(steps=0), ValueError, "config.steps"),
    (dict(step_size=-1.0), ValueError, "config.step_size"),
    (dict(group_size=0), ValueError, "config.group_size"),
    (dict(eval_batch_size=0), ValueError, "config.eval_batch_size"),
    (dict(conditions="none,jpeg80"), ValueError, "config.conditions: unknown 'jpeg80'"),
    (dict(eot="jpeg,gif"), ValueError, "config.eot: unknown channel"),
    (dict(conditions="none,photo_png"), ValueError, "config.conditions: photo_png put the mask into the original"),
    (dict(targets="dlib_native"), ValueError, "config.targets: dlib_native (dlib's own detector"),
    (dict(eot="jpeg", eot_samples=0), ValueError, "config.eot_samples"),
    (dict(eot="jpeg", eot_rounding="floor"), ValueError, "config.eot_rounding"),
    (dict(momentum=-0.5), ValueError, "config.momentum"),
    (dict(dropout=1.0), ValueError, "config.dropout"),
    (dict(seed=-1), ValueError, "config.seed"),
    (dict(parallel="gpu"), ValueError, "config.parallel"),
    (dict(methods="opom-convex", lower=0.9, upper=0.1), ValueError, "config.lower"),
    (dict(methods="opom-convex", solver="cvx"), ValueError, "config.solver"),
    (dict(dataset__name="nope"), ValueError, "config.dataset.name"),
    (dict(dataset__num_identities=-1), ValueError, "config.dataset.num_identities"),
    (dict(dataset__name="privacy_lfw", dataset__lfw_dir="/no/such/lfw"), FileNotFoundError,
     "config.dataset.lfw_dir"),
])
def test_bad_config_fields_are_named(tmp_path, overrides, error, fragment):
  with pytest.raises(error, match=re.escape(fragment)):
    validate.check_config(toy_config(**overrides), tmp_path)


@pytest.mark.parametrize("allow", [False, True])
def test_large_epsilon_needs_the_override_and_passes_it_on(tmp_path, toy_run, monkeypatch, allow):
  import opomjax

  seen = []

  def generate_masks(embed, images, **kwargs):  # records the arguments; no ascent
    seen.append(kwargs)
    return np.zeros((images.shape[0],) + images.shape[2:], np.float32)

  monkeypatch.setattr(opomjax, "generate_masks", generate_masks)
  config = toy_config(epsilon=40.0, allow_large_epsilon=allow)
  if not allow:
    with pytest.raises(ValueError, match="config.epsilon=40 exceeds 32"):
      runner.generate_all(config, tmp_path, protocol=toy_protocol())
    assert not seen
    return
  runner.generate_all(config, tmp_path, protocol=toy_protocol())
  assert [(kw["epsilon"], kw["allow_large_epsilon"]) for kw in seen] == [(40.0, True), (40.0, True)]


def test_unwritable_workdir_is_refused_before_the_surrogate_loads(tmp_path, toy_run):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match=re.escape(f"--workdir={blocker / 'run'} cannot be written")):
    runner.generate_all(toy_config(), blocker / "run", protocol=toy_protocol())
  with pytest.raises(ValueError, match="config.targets"):
    runner.run_all(toy_config(targets="nope"), tmp_path / "run", protocol=toy_protocol())
  assert toy_run == {"load_surrogate": 0, "generate_masks": 0}
  assert not (tmp_path / "run").exists()


def test_download_flag_reaches_the_data_loader(monkeypatch):
  from opomjax import data

  seen = {}
  monkeypatch.setattr(data, "load_protocol", lambda name, **kwargs: seen.update(kwargs, name=name))
  config = toy_config(dataset__name="privacy_lfw", dataset__download=True)
  runner.load_protocol(config.dataset)
  assert seen["name"] == "privacy_lfw" and seen["download"] is True and seen["num_identities"] == NUM_TOY_IDS
  runner.load_protocol(toy_config(dataset__name="privacy_lfw").dataset)
  assert seen["download"] is False


def test_onnx_target_cache_key_follows_the_file_content(tmp_path):
  from opomjax import frame
  from opomjax.models import base

  target = base.BlackBoxTarget("model", lambda x: x, frame.ARCFACE_112, 2)
  path = tmp_path / "model.onnx"
  path.write_bytes(b"first model")
  first = runner.target_cache_key(str(path), target)
  path.write_bytes(b"second model")
  os.utime(path, ns=(1, 1))  # a different mtime too, as a real rewrite would have
  assert runner.target_cache_key(str(path), target) != first
  assert runner.target_cache_key("sface_onnx", target) == runner.target_cache_key("sface_onnx", target)


def test_every_shipped_config_loads_and_passes_validation(tmp_path):
  import importlib

  configs = sorted(p.stem for p in (pathlib.Path(common.__file__).parent).glob("*.py")
                   if p.stem not in ("__init__", "common"))
  assert "default" in configs and "opom_convex" in configs
  for name in configs:
    module = importlib.import_module(f"experiments.configs.{name}")
    for variant in ("dlib", "sface_mdfa_full", "faceres_full_all", "mobileface"):
      if name == "gap" and "mdfa" in variant:  # a generator trained with Adam: refused when the config is made
        with pytest.raises(ValueError, match="do not apply"):
          module.get_config(variant)
        continue
      config = module.get_config(variant)
      config.dataset.name = "synthetic"  # no data set needed here
      validate.check_config(config, tmp_path)
      assert settings.generation_settings(config, validate.method_names(config)[0])["dataset"] == "synthetic"


def test_config_variants_evaluate_the_surrogate_white_box_and_all_four_on_request():
  assert common.method_config("fi-uap", "faceres").targets == "dlib_resnet,sface_onnx,faceres"
  assert common.method_config("fi-uap", "sface").targets == "dlib_resnet,sface_onnx"
  assert common.method_config("fi-uap", "dlib_all").targets.split(",") == [
      "dlib_resnet", "sface_onnx", "faceres", "mobileface"]
  white = [t for t in common.ALL_TARGETS.split(",") if reports.is_white_box("mobileface", t)]
  assert white == ["mobileface"]
  with pytest.raises(ValueError, match="unknown config variant"):
    common.method_config("fi-uap", "dlib_everything")


def test_eot_masks_have_their_own_workdir_settings_and_rows(tmp_path, toy_run):
  config = toy_config(methods="fi-uap", eot="jpeg,blur", eot_samples=2, steps=1)
  workdirs = runner.generate_all(config, tmp_path, protocol=toy_protocol())
  assert workdirs["fi-uap"].name == "fi-uap-dlib_resnet-mdfa-eot"
  _, meta = masks.load_identity_mask(workdirs["fi-uap"], "synthetic_0000")
  assert {k: meta["settings"][k] for k in ("eot", "eot_samples", "eot_rounding")} == dict(
      eot="jpeg,blur", eot_samples=2, eot_rounding="ste")
  # Settings of masks made without EOT carry no EOT keys: masks made before EOT existed stay valid.
  assert "eot" not in settings.generation_settings(toy_config(), "fi-uap")
  rows = runner.evaluate_all(config, workdirs, tmp_path, protocol=toy_protocol())
  assert {r["surrogate"] for r in rows} == {"dlib_resnet+mdfa+eot"}
  with pytest.raises(settings.SettingsMismatchError, match="eot_samples: 2 in the masks, 3 now"):
    runner.generate_all(toy_config(methods="fi-uap", eot="jpeg,blur", eot_samples=3, steps=1), tmp_path,
                        protocol=toy_protocol())


def test_dfanet_masks_record_their_keep_mask_generator_and_refuse_another(tmp_path, toy_run, monkeypatch):
  from opomjax.models import dropout
  config = toy_config(methods="fi-uap", steps=1)  # momentum + DFANet
  assert settings.generation_settings(config, "fi-uap")["dropout_generator"] == dropout.GENERATOR
  assert "dropout_generator" not in settings.generation_settings(toy_config(dropout=0.0), "fi-uap")
  runner.generate_all(config, tmp_path, protocol=toy_protocol())
  monkeypatch.setattr(dropout, "GENERATOR", "threefry")
  with pytest.raises(settings.SettingsMismatchError, match="dropout_generator"):
    runner.generate_all(config, tmp_path, protocol=toy_protocol())


def test_an_ensemble_of_surrogates_runs_records_its_members_and_weights(tmp_path, toy_run, monkeypatch):
  """Two surrogates (comma-separated); with weights 1,0 the masks are the first surrogate's alone."""
  monkeypatch.setattr(runner, "load_surrogate", lambda config: (
      toy_model() if "," not in config.surrogate else (toy_model(), toy_model(scale=-3.0))))
  plain = dict(methods="fi-uap", steps=2, momentum=0.0, dropout=0.0)
  single = runner.generate_all(toy_config(**plain), tmp_path / "single", protocol=toy_protocol())
  config = toy_config(surrogate="dlib_resnet,sface", ensemble_weights="1,0", **plain)
  pair = runner.generate_all(config, tmp_path / "pair", protocol=toy_protocol())
  assert pair["fi-uap"].name == "fi-uap-dlib_resnet+sface-weights1-0"  # unequal weights name the run
  _, meta = masks.load_identity_mask(pair["fi-uap"], "synthetic_0000")
  assert meta["settings"]["surrogate"] == "dlib_resnet,sface" and meta["settings"]["ensemble_weights"] == [1.0, 0.0]
  for name in ("synthetic_0000", "synthetic_0003"):
    np.testing.assert_array_equal(masks.load_identity_mask(pair["fi-uap"], name)[0],
                                  masks.load_identity_mask(single["fi-uap"], name)[0])
  equal = runner.generate_all(toy_config(surrogate="dlib_resnet,sface", **plain), tmp_path / "equal",
                              protocol=toy_protocol())
  assert np.any(masks.load_identity_mask(equal["fi-uap"], "synthetic_0000")[0]
                != masks.load_identity_mask(single["fi-uap"], "synthetic_0000")[0])
  rows = runner.evaluate_all(config, pair, tmp_path / "pair", protocol=toy_protocol())
  assert {r["surrogate"] for r in rows} == {"dlib_resnet+sface+weights1-0"}
  assert all(reports.is_white_box("dlib_resnet+sface+weights1-0", t) for t in ("dlib_resnet", "sface_onnx"))
  assert reports.is_white_box("dlib_resnet+sface+mdfa", "sface_onnx")
  assert not reports.is_white_box("dlib_resnet+sface", "faceres")
  with pytest.raises(ValueError, match=r"config.ensemble_weights='1': weights must be 2"):
    runner.generate_all(toy_config(surrogate="dlib_resnet,sface", ensemble_weights="1", **plain), tmp_path / "bad",
                        protocol=toy_protocol())
  with pytest.raises(ValueError, match="names a model twice"):
    runner.generate_all(toy_config(surrogate="sface,sface", **plain), tmp_path / "bad", protocol=toy_protocol())


def test_transfer_techniques_reach_generate_masks_are_recorded_and_name_the_run(tmp_path, toy_run, monkeypatch):
  import opomjax
  seen = []
  real = opomjax.generate_masks
  monkeypatch.setattr(opomjax, "generate_masks", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  config = toy_config(methods="fi-uap", steps=1, momentum=0.0, dropout=0.0, ti_width=3, mask_cell=2,
                      fill_budget=True, start_scale=0.5)
  workdirs = runner.generate_all(config, tmp_path, protocol=toy_protocol())
  assert workdirs["fi-uap"].name == "fi-uap-dlib_resnet-ti_width3-mask_cell2-fill_budget-start_scale0.5"
  assert seen and all(kw["ti_width"] == 3 and kw["mask_cell"] == 2 and kw["fill_budget"] is True
                      and kw["start_scale"] == 0.5 and "si_copies" not in kw for kw in seen)
  mask, meta = masks.load_identity_mask(workdirs["fi-uap"], "synthetic_0000")
  assert meta["settings"]["ti_width"] == 3 and meta["settings"]["mask_cell"] == 2
  assert meta["settings"]["fill_budget"] is True and set(np.unique(np.abs(mask))) <= {0.0, 8.0}
  assert meta["settings"]["start_scale"] == 0.5
  # Off techniques are neither passed nor recorded: masks made before they existed keep their record.
  assert not set(settings.TRANSFER_OPTIONS) & set(settings.generation_settings(toy_config(), "fi-uap"))
  with pytest.raises(settings.SettingsMismatchError, match="ti_width: 3 in the masks, 5 now"):
    settings.check_workdir(toy_config(methods="fi-uap", steps=1, momentum=0.0, dropout=0.0, ti_width=5, mask_cell=2),
                           {"fi-uap": workdirs["fi-uap"]})  # the same folder, another TI width


def test_dfanet_clean_once_reaches_generate_masks_is_recorded_and_names_the_run(tmp_path, toy_run, monkeypatch):
  import opomjax
  seen = []
  real = opomjax.generate_masks
  monkeypatch.setattr(opomjax, "generate_masks", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  workdirs = runner.generate_all(toy_config(dfanet_clean_once=True), tmp_path, protocol=toy_protocol())
  assert workdirs["fi-uap"].name == "fi-uap-dlib_resnet-mdfa-clean_once"
  assert seen and all(kw["dfanet_clean_once"] is True and kw["dfanet"] for kw in seen)
  _, meta = masks.load_identity_mask(workdirs["fi-uap"], "synthetic_0000")
  assert meta["settings"]["dfanet_clean_once"] is True
  assert "dfanet_clean_once" not in settings.generation_settings(toy_config(), "fi-uap")  # off: not recorded
  # On by default, off in the _mdfa configs (the official code's DFANet, as their records were made).
  assert common.base_config().dfanet_clean_once is True
  assert common.method_config("fi-uap", "dlib_mdfa").dfanet_clean_once is False
  assert common.method_config("fi-uap", "sface_mdfa_full").dfanet_clean_once is False
  # Without DFANet it changes nothing: neither passed, recorded nor named.
  plain = toy_config(dropout=0.0, momentum=0.0, dfanet_clean_once=True)
  assert "dfanet_clean_once" not in settings.mask_options(plain, "fi-uap")
  assert "dfanet_clean_once" not in settings.generation_settings(plain, "fi-uap")
  assert runner.run_name("fi-uap", plain) == runner.run_name("fi-uap", toy_config(dropout=0.0, momentum=0.0))


def test_unequal_ensemble_weights_are_part_of_the_run_name():
  """Masks of one ensemble with other member weights get their own folder and result row label; equal weights,
  however written, name the run as no weights do."""
  def name(weights):
    return runner.run_name("fi-uap", toy_config(surrogate="dlib_resnet,sface", ensemble_weights=weights))
  assert name("") == name("1,1") == name("3,3") == "fi-uap-dlib_resnet+sface-mdfa"
  assert name("1,3") == name("2,6") == "fi-uap-dlib_resnet+sface-weights0.25-0.75-mdfa"
  assert name("3,1") != name("1,3")


@pytest.mark.parametrize("field,value,match", [
    ("ti_width", 4, "config.ti_width must be a positive odd"), ("si_copies", 0, "config.si_copies must be a "),
    ("di_probability", 2.0, "config.di_probability must lie in"), ("mask_cell", 0, "config.mask_cell")])
def test_bad_transfer_technique_fields_are_refused_in_one_line(tmp_path, toy_run, field, value, match):
  with pytest.raises(ValueError, match=match) as refusal:
    runner.generate_all(toy_config(methods="fi-uap", **{field: value}), tmp_path, protocol=toy_protocol())
  assert "\n" not in str(refusal.value) and toy_run["load_surrogate"] == 0


# ------------------------------------------------------------------------------------------------------
# Training chips in a file: masks made from it are the data set's own masks.
# ------------------------------------------------------------------------------------------------------


def test_training_chips_file_gives_back_the_chips_and_refuses_mismatches(tmp_path):
  from opomjax.pipeline import chips

  protocol = toy_protocol(3)
  path = chips.save_training_chips(protocol, tmp_path / "chips.npz", "synthetic")
  loaded = chips.load_training_chips(path, dataset="synthetic")
  assert loaded.names == list(protocol.names) and loaded.frame_name == protocol.frame_name
  np.testing.assert_array_equal(loaded.train, protocol.train)  # lossless, pixel for pixel
  first = chips.load_training_chips(path, 2)
  assert first.names == list(protocol.names[:2])
  np.testing.assert_array_equal(first.train, protocol.train[:2])
  with pytest.raises(ValueError, match="holds 3 identities, the config asks for 4"):
    chips.load_training_chips(path, 4)
  with pytest.raises(ValueError, match="holds data set 'synthetic', the config names 'privacy_lfw'"):
    chips.load_training_chips(path, dataset="privacy_lfw")
  with pytest.raises(FileNotFoundError, match="--export_chips"):
    chips.load_training_chips(tmp_path / "none.npz")
  np.savez(tmp_path / "other.npz", train=protocol.train)
  with pytest.raises(ValueError, match="not a training chips file"):
    chips.load_training_chips(tmp_path / "other.npz")
  with pytest.raises(ValueError, match="uint8"):
    chips.save_training_chips(dataclasses.replace(protocol, train=protocol.train.astype(np.float32)),
                              tmp_path / "f.npz", "synthetic")


def test_masks_made_from_a_chips_file_are_reused_by_a_run_on_the_data_set(tmp_path, toy_run):
  from opomjax.pipeline import chips

  config = toy_config()
  protocol = toy_protocol()
  path = chips.save_training_chips(protocol, tmp_path / "chips.npz", "synthetic")
  from_file = chips.load_training_chips(path, config.dataset.num_identities, config.dataset.name)
  runner.generate_all(config, tmp_path / "from_file", protocol=from_file)
  runner.generate_all(config, tmp_path / "from_data", protocol=protocol)
  assert toy_run["generate_masks"] == 4  # 2 groups, twice
  assert snapshot(tmp_path / "from_file") == snapshot(tmp_path / "from_data")  # same bytes, settings included
  runner.generate_all(config, tmp_path / "from_file", protocol=protocol)
  assert toy_run["generate_masks"] == 4  # the data set's run found every mask made and made none again


def test_out_of_memory_in_a_group_is_one_line_naming_the_group_size_and_keeps_finished_groups(tmp_path, toy_run,
                                                                                              monkeypatch, capsys):
  import jax
  import opomjax
  from experiments import launcher

  real_generate = opomjax.generate_masks
  calls = []

  def generate_masks(*args, **kwargs):  # the first group fits, the second does not
    calls.append(1)
    if len(calls) == 2:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 26705450744 bytes.")
    return real_generate(*args, **kwargs)

  monkeypatch.setattr(opomjax, "generate_masks", generate_masks)
  config = toy_config(methods="opom-convex")
  main = launcher.one_line_errors(lambda argv: runner.generate_all(config, tmp_path, protocol=toy_protocol()))
  with pytest.raises(SystemExit) as exit_info:
    main([])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0])  # the progress bar aside
  assert errors[0].startswith("error: opom-convex: out of memory in group 1 (2 identities")
  assert "26705450744 bytes" in errors[0] and "--config.group_size (e.g. 1)" in errors[0]
  assert "2 finished masks are saved" in errors[0]
  assert len(snapshot(tmp_path)) == 2  # the first group's masks stay on disk for the rerun

  def other_failure(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  monkeypatch.setattr(opomjax, "generate_masks", other_failure)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):  # not every runtime error is memory
    runner.generate_all(toy_config(methods="fi-uap"), tmp_path / "other", protocol=toy_protocol())


def test_mid_feature_term_gets_the_surrogate_activations_is_recorded_and_names_the_run(tmp_path, toy_run,
                                                                                       monkeypatch):
  import opomjax
  seen = []
  real = opomjax.generate_masks
  monkeypatch.setattr(opomjax, "generate_masks", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  config = toy_config(methods="fi-uap", steps=1, momentum=0.0, dropout=0.0, mid_feature_weight=0.5)
  workdirs = runner.generate_all(config, tmp_path, protocol=toy_protocol())
  assert workdirs["fi-uap"].name == "fi-uap-dlib_resnet-mid_feature_weight0.5"
  assert seen and all(kw["mid_feature_weight"] == 0.5 and callable(kw["activations_fn"]) for kw in seen)
  _, meta = masks.load_identity_mask(workdirs["fi-uap"], "synthetic_0000")
  assert meta["settings"]["mid_feature_weight"] == 0.5 and "mid_feature_depth" not in meta["settings"]
  with pytest.raises(ValueError, match="mid_feature_depth must lie in"):
    runner.generate_all(toy_config(methods="fi-uap", steps=1, momentum=0.0, dropout=0.0, mid_feature_weight=0.5,
                                   mid_feature_depth=2.0), tmp_path / "bad", protocol=toy_protocol())


def test_guided_run_starts_from_the_guide_masks_records_them_and_refuses_missing_ones(tmp_path, toy_run,
                                                                                      monkeypatch):
  import opomjax
  plain = dict(methods="fi-uap", steps=1, momentum=0.0, dropout=0.0)
  guide_dir = runner.generate_all(toy_config(**plain), tmp_path / "guide", protocol=toy_protocol())["fi-uap"]
  seen = []
  real = opomjax.generate_masks
  monkeypatch.setattr(opomjax, "generate_masks", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  config = toy_config(mid_feature_weight=1.0, mid_feature_guide=str(guide_dir), **plain)
  workdir = runner.generate_all(config, tmp_path / "refined", protocol=toy_protocol())["fi-uap"]
  assert workdir.name == "fi-uap-dlib_resnet-mid_feature_weight1-guided"
  guide, _ = masks.load_identity_mask(guide_dir, "synthetic_0000")
  first = seen[0]
  np.testing.assert_array_equal(np.asarray(first["init"][0]), guide)
  np.testing.assert_array_equal(np.asarray(first["mid_feature_guide"]), np.asarray(first["init"]))
  _, meta = masks.load_identity_mask(workdir, "synthetic_0000")
  assert meta["settings"]["mid_feature_guide"] == str(guide_dir) and meta["settings"]["mid_feature_guide_masks"]
  (guide_dir / "masks" / masks.identity_filename("synthetic_0001")).unlink()
  with pytest.raises(FileNotFoundError, match="no usable mask of 'synthetic_0001'"):
    runner.generate_all(config, tmp_path / "again", protocol=toy_protocol())
  with pytest.raises(ValueError, match="needs config.mid_feature_weight > 0"):
    runner.generate_all(toy_config(mid_feature_guide=str(guide_dir), **plain), tmp_path / "x",
                        protocol=toy_protocol())
  with pytest.raises(FileNotFoundError, match="no masks/ folder there"):
    runner.generate_all(toy_config(mid_feature_weight=1.0, mid_feature_guide=str(tmp_path / "nowhere"), **plain),
                        tmp_path / "y", protocol=toy_protocol())
