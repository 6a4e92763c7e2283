"""Protecting a person's own photos: real LFW photos, YuNet detection, dlib's real weights.

One protection run (4 photos of one person plus a noise image, 12 steps on dlib) is shared by the tests of
its outputs, and one short run over photos of every layout (alpha, greyscale, 16 bits, two faces) by the tests
of those; the rest are cheap checks: a saved mask applied without an ascent, the face choice, and the
command line's checks before any work.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import opomjax
from opomjax import faces, protect
from opomjax import files as masks_lib
from opomjax.core import ensemble, objectives
from opomjax.faces import roundtrip
from opomjax.frame import CANONICAL
from opomjax.protect import cli
from opomjax.protect import photos as photos_lib

EPSILON = 8.0
STEPS = 12
PERSON = "Colin_Powell"
N_PHOTOS = 4


@pytest.fixture(scope="module")
def person_photos(lfw_root) -> list[pathlib.Path]:
  paths = sorted((lfw_root / PERSON).glob("*.jpg"))[:N_PHOTOS]
  if len(paths) < N_PHOTOS:
    pytest.skip(f"LFW at {lfw_root} lacks {N_PHOTOS} photos of {PERSON}")
  return paths


@pytest.fixture(scope="module")
def detector(yunet_onnx):
  return faces.YuNetDetector(yunet_onnx)


@pytest.fixture(scope="module")
def dlib_model(lfw_root):
  return opomjax.load_model("dlib_resnet")


def noise_photo() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, person_photos, detector, dlib_model):
  """Protects the photo files (plus a noise image) once; returns (input folder, output folder, report)."""
  src = tmp_path_factory.mktemp("photos")
  for p in person_photos:
    shutil.copy(p, src / p.name)
  Image.fromarray(noise_photo()).save(src / "noise.png")
  out = tmp_path_factory.mktemp("protected")
  with pytest.warns(UserWarning, match="no usable face"):
    report = protect.protect_files(src, out, surrogates=(dlib_model,), targets=(dlib_model,), steps=STEPS,
                                   epsilon=EPSILON, key=0, detector=detector, show_progress=False)
  return src, out, report


def _protected_entries(report):
  return [p for p in report["photos"] if p["protected"]]


@pytest.mark.real_data
@pytest.mark.slow
def test_photos_change_only_inside_face_region_and_by_at_most_epsilon(run):
  _, _, report = run
  entries = _protected_entries(report)
  assert len(entries) == N_PHOTOS
  for entry in entries:
    original = faces.load_photo(entry["input"])
    protected = np.asarray(Image.open(entry["output"]))
    assert protected.shape == original.shape and protected.dtype == original.dtype == np.uint8
    inside = faces.frame_footprint(np.array(entry["face"]["transform"]), CANONICAL, original.shape) > 0
    diff = protected.astype(int) - original.astype(int)
    np.testing.assert_array_equal(diff[~inside], 0)
    assert np.abs(diff[inside]).max() <= EPSILON + 1
    assert np.count_nonzero(diff[inside]) > 0.5 * diff[inside].size  # the mask is really there


@pytest.mark.real_data
@pytest.mark.slow
def test_change_is_the_mask_warped_back_by_scipy(run):
  """Independent reference for the warp: the mask's nearest pixel (scipy) at the chip point of each pixel."""
  _, out, report = run
  mask, _ = masks_lib.load_mask(out / "mask.npz")
  entry = _protected_entries(report)[0]
  original = faces.load_photo(entry["input"]).astype(np.float64)
  protected = np.asarray(Image.open(entry["output"])).astype(np.float64)
  _, inside, change = expected_change(mask, np.array(entry["face"]["transform"]), original.shape, grey=False,
                                      scale=1.0)
  expected = np.rint(np.clip(original[inside] + change, 0, 255))
  mismatch = np.abs(expected - protected[inside])
  assert mismatch.max() <= 1  # a value that lands on .5 may round either way in float32
  assert (mismatch > 0).mean() < 1e-3


@pytest.mark.real_data
@pytest.mark.slow
def test_photo_without_face_comes_back_unchanged_and_flagged(run):
  _, _, report = run
  (entry,) = [p for p in report["photos"] if not p["protected"]]
  assert entry["skipped"] == "no_face" and pathlib.Path(entry["input"]).name == "noise.png"
  np.testing.assert_array_equal(np.asarray(Image.open(entry["output"])), noise_photo())


@pytest.mark.real_data
@pytest.mark.slow
def test_mask_file_respects_epsilon_and_carries_metadata(run):
  _, out, report = run
  mask, meta = masks_lib.load_mask(out / "mask.npz")
  assert mask.shape == tuple(CANONICAL.size) + (3,)
  assert np.abs(mask).max() <= EPSILON
  assert (meta["method"], meta["steps"], meta["epsilon"], meta["surrogate"]) == ("opom-convex", STEPS, EPSILON,
                                                                                 "dlib_resnet")
  assert meta["frame"] == CANONICAL.name and len(meta["photos"]) == N_PHOTOS + 1
  assert json.loads((out / "report.json").read_text())["settings"]["steps"] == STEPS
  assert report["objective"][-1] > report["objective"][0]


@pytest.mark.real_data
@pytest.mark.slow
def test_dlib_similarity_to_other_clean_photos_drops(run):
  _, _, report = run
  dlib = report["targets"]["dlib_resnet"]
  before = np.array(dlib["before"][:N_PHOTOS], float)
  after = np.array(dlib["after"][:N_PHOTOS], float)
  assert not np.isnan(after).any()  # every protected face is found again
  assert np.all(after < before)
  assert dlib["drop"] > 0.03, dlib


@pytest.mark.real_data
@pytest.mark.slow
def test_measured_similarity_matches_a_direct_loop(run, detector, dlib_model):
  """measure_protection's "after" for one photo, recomputed by hand: detect, align, embed, compare."""
  _, _, report = run
  entries = _protected_entries(report)
  emb = lambda photo: protect.embed_chips(dlib_model, faces.align_photo(photo, detector=detector).chip[None])[0]
  probe = emb(entries[0]["output"])
  others = [emb(e["input"]) for e in entries[1:]]
  expected = np.mean([probe @ o for o in others])
  np.testing.assert_allclose(report["targets"]["dlib_resnet"]["after"][0], expected, atol=1e-4)


@pytest.mark.real_data
@pytest.mark.parametrize("size, feather", [(None, 0.0), (1000, 6.0)])
def test_roundtrip_filter_equals_warping_into_the_photo_and_back(person_photos, detector, size, feather):
  """B delta from the weight maps equals the mask warped into the photo (footprint, feather) and cut out again."""
  photo = faces.load_photo(person_photos[0])
  if size is not None:  # a large photo: the way in box-averages before sampling
    photo = np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR))
  face = faces.align_photo(photo, detector=detector)
  delta = np.random.default_rng(2).uniform(-EPSILON, EPSILON, tuple(CANONICAL.size) + (3,)).astype(np.float32)
  back, _ = faces.warp_from_frame(delta, face.transform, photo.shape, sampling="nearest")
  weights = faces.frame_footprint(face.transform, CANONICAL, photo.shape, feather=feather)[..., None]
  expected = faces.warp_to_frame(back * weights, face.transform, CANONICAL)
  filters = roundtrip.roundtrip_weights(face.transform, photo.shape, feather=feather)
  got = np.asarray(roundtrip.apply_roundtrip(jnp.asarray(delta), jnp.asarray(filters)))
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert np.abs(expected - delta).mean() > 1.0  # the round trip really changes a fine-grained mask


@pytest.mark.real_data
def test_no_face_in_any_photo_is_a_clear_error(detector, dlib_model):
  with pytest.raises(faces.NoFaceError, match="none of the 2 photos"):
    protect.protect_photos([noise_photo(), noise_photo()[:200]], surrogates=(dlib_model,), detector=detector,
                           show_progress=False)


def test_bad_inputs_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="photos is empty"):
    protect.protect_photos([], surrogates=("dlib_resnet",))
  with pytest.raises(ValueError, match="no photos found"):
    protect.find_photos(tmp_path)
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="broken.jpg"):
    protect.load_photo_files(protect.find_photos(tmp_path))
  with pytest.raises(ValueError, match="both be written"):
    protect.output_paths([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"], tmp_path / "out", "png")
  with pytest.raises(ValueError, match="overwrite the original"):
    protect.output_paths([tmp_path / "x.png"], tmp_path, "png")
  with pytest.raises(ValueError, match="image_format"):
    protect.output_paths([tmp_path / "x.png"], tmp_path / "out", "gif")


def test_similarity_to_others_matches_a_loop():
  rng = np.random.default_rng(1)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  gallery, probe = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(5, 6)))
  gallery[2] = np.nan  # a clean photo without a face
  probe[4] = np.nan  # a protected photo whose face was not found again
  mean, _ = protect.similarity_to_others(probe, gallery)
  for i in range(5):
    sims = [probe[i] @ gallery[j] for j in range(5) if j != i and j != 2]
    expected = np.nan if i == 4 else np.mean(sims)
    np.testing.assert_allclose(mean[i], expected)


def test_ensemble_embedding_averages_the_squared_distance_objectives():
  """On the joined embedding, FI-UAP and the class centre are the models' average; a hull distance at least it."""
  keys = jax.random.split(jax.random.key(0), 4)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  clean = [unit(jax.random.normal(keys[m], (5, 16))) for m in range(2)]
  adv = [unit(c + 0.5 * jax.random.normal(keys[2 + m], c.shape)) for m, c in enumerate(clean)]
  joined_clean, joined_adv = ensemble.ensemble_embedding(clean), ensemble.ensemble_embedding(adv)
  np.testing.assert_allclose(jnp.linalg.norm(joined_adv, axis=-1), 1.0, rtol=1e-6)
  # mean over n * (2 d) entries of a squared distance scaled by 1/2: (1/2) * mean of the per-model objectives / 2
  for fn in (objectives.fi_uap, objectives.opom_class_center):
    per_model = np.mean([fn(a, c) for a, c in zip(adv, clean)])
    np.testing.assert_allclose(fn(joined_adv, joined_clean), per_model / 2, rtol=1e-5)
  # weights w (summing to 1): the weighted average, over the 2 d entries of the joined features
  weighted = ensemble.ensemble_embedding(adv, (3.0, 1.0)), ensemble.ensemble_embedding(clean, (3.0, 1.0))
  per_model = 0.75 * objectives.fi_uap(adv[0], clean[0]) + 0.25 * objectives.fi_uap(adv[1], clean[1])
  np.testing.assert_allclose(objectives.fi_uap(*weighted), per_model / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="weights"):
    ensemble.ensemble_embedding(adv, (1.0, -1.0))
  # one set of hull coefficients shared by the models: at least the average of the models' own best ones
  per_model = np.mean([objectives.opom_affine_hull(a, c) for a, c in zip(adv, clean)])
  assert objectives.opom_affine_hull(joined_adv, joined_clean) >= per_model / 2 - 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Photos of every layout, and a photo with two people


OTHER_PERSON = "Laura_Bush"


def two_face_photo(lfw_root: pathlib.Path) -> np.ndarray:
  """Another person, full size on the left; the person, smaller, on the right."""
  other = faces.load_photo(lfw_root / OTHER_PERSON / f"{OTHER_PERSON}_0001.jpg")
  person = faces.load_photo(lfw_root / PERSON / f"{PERSON}_0001.jpg")
  canvas = np.full((250, 500, 3), 128, np.uint8)
  canvas[:, :250] = other
  canvas[60:210, 300:450] = np.asarray(Image.fromarray(person).resize((150, 150), Image.Resampling.LANCZOS))
  return canvas


def write_layouts(lfw_root: pathlib.Path, folder: pathlib.Path) -> dict[str, np.ndarray]:
  """The person's photos 2-4 as RGBA, 8-bit greyscale and 16-bit RGB PNGs; name -> the pixels written."""
  rng = np.random.default_rng(3)
  rgb = [faces.load_photo(lfw_root / PERSON / f"{PERSON}_{k:04d}.jpg") for k in (2, 3, 4)]
  alpha = np.full(rgb[0].shape[:2], 160, np.uint8)
  alpha[40:210, 40:210] = 255  # opaque face, half-transparent surroundings
  alpha[:10] = 0
  layouts = {
      "rgba.png": np.concatenate([rgb[0], alpha[..., None]], axis=-1),
      "grey.png": np.asarray(Image.fromarray(rgb[1]).convert("L")),
      "rgb48.png": (rgb[2].astype(np.uint16) * 257 + rng.integers(-128, 128, rgb[2].shape)).clip(0, 65535)
                   .astype(np.uint16),
  }
  folder.mkdir(parents=True, exist_ok=True)
  for name, pixels in layouts.items():
    (folder / name).write_bytes(faces.encode_photo(pixels, "png"))
  return layouts


def expected_change(mask: np.ndarray, transform: np.ndarray, shape, *, grey: bool, scale: float, order: int = 0):
  """Independent reference (scipy): the mask's nearest pixel (``order`` 0; 1: its bilinear interpolation) at each
  footprint pixel's chip point.

  Returns ``(footprint, checked, change)``: ``checked`` is the footprint less the pixels whose chip point lies
  within 5e-3 of a half-pixel tie (float32 arithmetic and the report's rounded transform may round those either
  way), ``change`` its values."""
  footprint = faces.frame_footprint(transform, CANONICAL, shape) > 0
  inside = footprint.copy()
  y, x = np.nonzero(inside)
  cx = transform[0, 0] * x + transform[0, 1] * y + transform[0, 2]
  cy = transform[1, 0] * x + transform[1, 1] * y + transform[1, 2]
  tie = (np.abs(cx - np.floor(cx) - 0.5) < 5e-3) | (np.abs(cy - np.floor(cy) - 0.5) < 5e-3)
  inside[y[tie], x[tie]] = False
  warped = np.stack([ndimage.map_coordinates(mask[..., c].astype(np.float64), [cy[~tie], cx[~tie]], order=order,
                                             mode="nearest") for c in range(3)], axis=-1)
  if grey:
    warped = warped.mean(-1, keepdims=True)
  return footprint, inside, warped * scale


def assert_layout_kept(original: np.ndarray, written: np.ndarray, mask: np.ndarray, transform: np.ndarray, *,
                       signed: bool = False):
  """Same shape and dtype; alpha untouched; outside the face bit for bit; inside, the mask in its units: sampled
  as scipy samples it, or (``signed``: the sign insertion of a mask made on chips, tested on its own in
  test_faces) the mask's budget in those units with the sign of its bilinear interpolation."""
  assert written.shape == original.shape and written.dtype == original.dtype
  top = 65535.0 if original.dtype == np.uint16 else 255.0
  source = original[..., None] if original.ndim == 2 else original
  out = written[..., None] if written.ndim == 2 else written
  colour = 1 if source.shape[-1] in (1, 2) else 3
  np.testing.assert_array_equal(out[..., colour:], source[..., colour:])  # alpha
  footprint, inside, change = expected_change(mask, transform, original.shape[:2], grey=colour == 1,
                                              scale=top / 255.0, order=1 if signed else 0)
  np.testing.assert_array_equal(out[~footprint], source[~footprint])
  if signed:
    budget = np.abs(mask.mean(-1) if colour == 1 else mask).max() * top / 255.0
    change = budget * np.sign(change)
  expected = np.rint(np.clip(source[inside][:, :colour].astype(np.float64) + change, 0, top))
  mismatch = np.abs(out[inside][:, :colour].astype(np.float64) - expected)
  if signed:  # the report's rounded transform may flip the sign where the interpolated mask is near 0
    assert (mismatch > 1).mean() < 1e-2 and (mismatch > 0).mean() < 2e-2
    return
  assert mismatch.max() <= 1 and (mismatch > 0).mean() < 1e-2
  assert np.count_nonzero(out[inside][:, :colour] != source[inside][:, :colour]) > 0.5 * expected.size


def saved_mask(epsilon: float = EPSILON, seed: int = 5) -> tuple[np.ndarray, dict]:
  mask = np.random.default_rng(seed).uniform(-epsilon, epsilon, tuple(CANONICAL.size) + (3,)).astype(np.float32)
  meta = dict(frame=CANONICAL.name, epsilon=epsilon, method="opom-convex", surrogate="dlib_resnet", steps=1,
              seed=0, version=opomjax.__version__)
  return mask, meta


@pytest.mark.real_data
def test_saved_mask_keeps_alpha_greyscale_and_sixteen_bits(lfw_root, tmp_path, detector):
  """A saved mask applied to new photos: RGBA stays RGBA (same alpha), grey stays one channel, 16-bit stays
  16-bit with the mask in 16-bit units, and every pixel outside the face keeps its value."""
  layouts = write_layouts(lfw_root, tmp_path / "in")
  mask, meta = saved_mask()
  report = protect.protect_files(tmp_path / "in", tmp_path / "out", mask=(mask, meta), targets=(),
                                 detector=detector, show_progress=False)
  assert report["summary"] == dict(photos=3, protected=3, unchanged=0, lost=0)
  for entry in report["photos"]:
    name = pathlib.Path(entry["input"]).name
    written = faces.read_photo(entry["output"]).pixels
    assert_layout_kept(layouts[name], written, mask, np.array(entry["face"]["transform"]), signed=True)
    assert entry["notes"] == []
  assert {e["layout"] for e in report["photos"]} == {"8-bit RGBA", "8-bit greyscale", "16-bit RGB"}
  _, meta_out = masks_lib.load_mask(tmp_path / "out" / "mask.npz")
  assert meta_out["epsilon"] == EPSILON and meta_out["frame"] == CANONICAL.name


@pytest.mark.real_data
def test_two_face_photo_takes_the_face_most_like_the_persons_other_photos(lfw_root, detector, dlib_model):
  others = [faces.load_photo(lfw_root / PERSON / f"{PERSON}_{k:04d}.jpg") for k in (2, 3, 4)]
  group = two_face_photo(lfw_root)
  photos = [faces.read_photo(p) for p in [group, *others]]
  candidates, skipped = photos_lib.find_candidates(photos, detector=detector)
  assert not skipped and len(candidates[0]) == 2
  assert candidates[0][0].box[2] < 250 < candidates[0][1].box[0]  # ordered from the left
  embed = lambda chips: protect.embed_chips(dlib_model, chips)
  choice = photos_lib.choose_faces(candidates, "similar", embed=embed)[0]
  assert choice.index == 1 and choice.rule == "similar" and not choice.is_largest  # the person, on the right
  assert choice.similarity > choice.largest_similarity
  # the reference: the other person's face is the larger one, and unlike the person's photos
  largest = photos_lib.choose_faces(candidates, "largest", embed=embed)[0]
  assert largest.index == 0 and largest.is_largest
  reference = np.stack([embed(c[0].chip[None])[0] for c in candidates[1:]])
  sims = [float(np.mean(reference @ embed(f.chip[None])[0])) for f in candidates[0]]
  assert sims[1] > sims[0] and choice.similarity == pytest.approx(sims[1], abs=1e-5)
  assert "not the largest" in choice.describe() and "face 2 of 2" in choice.describe()
  given = photos_lib.choose_faces(candidates, "similar", embed=embed, given={0: 0})[0]
  assert given.index == 0 and given.rule == "given"
  with pytest.raises(ValueError, match="face 3"):
    photos_lib.choose_faces(candidates, "similar", embed=embed, given={0: 2})


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory, lfw_root, detector, dlib_model):
  """A short ascent over the layout photos plus a two-face photo; then the CLI reusing its mask."""
  src = tmp_path_factory.mktemp("layouts")
  layouts = write_layouts(lfw_root, src)
  group = two_face_photo(lfw_root)
  (src / "group.png").write_bytes(faces.encode_photo(group, "png"))
  layouts["group.png"] = group
  out = tmp_path_factory.mktemp("layouts_out")
  with pytest.warns(UserWarning, match="not the largest"):
    # a random start, so that most values of a 2-step mask are non-zero and the layout checks see it everywhere
    report = protect.protect_files(src, out, surrogates=(dlib_model,), targets=(dlib_model,), steps=2,
                                   epsilon=EPSILON, key=0, detector=detector, show_progress=False, start_scale=1.0)
  return src, out, layouts, report


@pytest.mark.real_data
@pytest.mark.slow
def test_protected_files_keep_layouts_and_the_persons_face(layout_run):
  _, out, layouts, report = layout_run
  mask, _ = masks_lib.load_mask(out / "mask.npz")
  assert report["summary"]["protected"] + report["summary"]["lost"] == 4
  by_name = {pathlib.Path(e["input"]).name: e for e in report["photos"]}
  for name, entry in by_name.items():
    written = faces.read_photo(entry["output"]).pixels
    assert_layout_kept(layouts[name], written, mask, np.array(entry["face"]["transform"]))
  face = by_name["group.png"]["face"]
  assert (face["faces"], face["chosen"], face["largest"]) == (2, 2, False)
  assert face["box"][0] > 250  # the person's face, not the other person's larger one
  assert any("not the largest" in n for n in by_name["group.png"]["notes"])
  assert "not the largest" in cli.summarise(report, str(out))


@pytest.mark.real_data
@pytest.mark.slow
def test_cli_reusing_the_saved_mask_writes_the_same_photos(layout_run, tmp_path, capsys):
  src, out, _, report = layout_run
  reused = tmp_path / "reused"
  status = cli.main(["--photos", str(src), "--out", str(reused), "--mask", str(out / "mask.npz"), "--targets=",
                     "--quiet"])
  printed = capsys.readouterr().out
  assert status == 0, printed
  assert "protected 4 of 4" in printed and "not the largest" in printed
  for entry in report["photos"]:
    name = pathlib.Path(entry["output"]).name
    assert (reused / name).read_bytes() == pathlib.Path(entry["output"]).read_bytes(), name
  again, meta = masks_lib.load_mask(reused / "mask.npz")
  np.testing.assert_array_equal(again, masks_lib.load_mask(out / "mask.npz")[0])
  assert meta["reused_from"] == str(out / "mask.npz")


# ---------------------------------------------------------------------------------------------------------------
# The command line: every argument checked before the work, one line per error, exit statuses


@pytest.fixture
def no_work(monkeypatch):
  """Makes every expensive step fail loudly: a test using it proves the error came before them."""

  def boom(*args, **kwargs):
    raise AssertionError("an expensive step was reached")

  monkeypatch.setattr(faces, "align_photo", boom)
  monkeypatch.setattr(opomjax, "generate_masks", boom, raising=False)
  monkeypatch.setattr(opomjax, "load_model", boom, raising=False)
  monkeypatch.setattr(opomjax, "load_target", boom, raising=False)


@pytest.fixture
def photo_folder(tmp_path) -> pathlib.Path:
  folder = tmp_path / "photos"
  folder.mkdir()
  rng = np.random.default_rng(4)
  for k in range(2):
    Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(folder / f"p{k}.png")
  return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
  status = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def assert_one_line_error(status, out, err, *needles):
  assert status == cli.EXIT_USAGE, (status, out, err)
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  for needle in needles:
    assert needle in err, err


@pytest.mark.parametrize("flags, needle", [
    (["--epsilon=300"], "epsilon=300"),
    (["--jpeg_quality=0", "--format=jpeg"], "--jpeg_quality"),
    (["--jpeg_quality=101"], "--jpeg_quality"),
    (["--jpeg_quality=high"], "--jpeg_quality"),
    (["--format=gif"], "--format"),
    (["--surrogates=no_such_model"], "no_such_model"),
    (["--targets=dlib_resnet,missing.onnx"], "missing.onnx"),
    (["--steps=0"], "steps"),
    (["--method=opom-nothing"], "method"),
    (["--face=tallest"], "--face"),
    (["--surrogate_weights=1,2", "--surrogates=dlib_resnet"], "weights"),
    (["--eot=jpeg,gif"], "EOT channels"),
    (["--eot=jpeg", "--eot_samples=0"], "eot_samples"),
    (["--ti_width=4"], "ti_width"),
    (["--ti_width=0"], "ti_width"),
    (["--di_probability=1.5"], "di_probability"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(capsys, tmp_path, photo_folder, no_work, flags, needle):
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", *flags)
  assert_one_line_error(status, out, err, needle)
  assert not list((tmp_path / "out").glob("*.png"))


def test_fill_budget_must_be_a_switch():
  protect.check_options(fill_budget=True)
  with pytest.raises(ValueError, match="fill_budget must be True or False, got 'yes'"):
    protect.check_options(fill_budget="yes")


@pytest.mark.parametrize("bad, message", [(1.5, "start_scale must be <= 1, got 1.5"),
                                          (-0.1, "start_scale must be >= 0, got -0.1"),
                                          (float("nan"), "start_scale must be a finite number")])
def test_start_scale_must_lie_in_zero_to_one(bad, message):
  protect.check_options(start_scale=0.0)
  with pytest.raises(ValueError, match=message):
    protect.check_options(start_scale=bad)


def test_unwritable_out_is_refused_before_any_work(capsys, tmp_path, photo_folder, no_work):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", blocker / "out", "--targets=")
  assert_one_line_error(status, out, err, "output folder", str(blocker / "out"))
  with pytest.raises(ValueError, match="cannot write to the output folder"):
    protect.check_writable(blocker / "out")


def test_missing_photos_and_unreadable_photo_are_one_line_errors(capsys, tmp_path, photo_folder, no_work):
  status, out, err = run_cli(capsys, "--photos", tmp_path / "nowhere", "--out", tmp_path / "out")
  assert_one_line_error(status, out, err, "no photos found")
  (photo_folder / "broken.jpg").write_bytes(b"not an image")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--targets=")
  assert_one_line_error(status, out, err, "broken.jpg")


def test_jpeg_output_of_a_transparent_photo_is_refused(capsys, tmp_path, photo_folder, no_work):
  Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(photo_folder / "clear.png")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--format=jpeg",
                             "--targets=")
  assert_one_line_error(status, out, err, "transparency", "clear.png")


@pytest.mark.real_data
def test_model_without_real_weights_is_refused_as_surrogate_and_target(capsys, tmp_path, photo_folder, monkeypatch):
  monkeypatch.setattr(faces, "align_photo", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work")))
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--targets=",
                             "--surrogates=mobilefacenet")
  assert_one_line_error(status, out, err, "mobilefacenet", "real weights")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out",
                             "--targets=mobilefacenet")
  assert_one_line_error(status, out, err, "mobilefacenet", "real weights")


def test_saved_mask_that_does_not_fit_is_refused_in_one_line(capsys, tmp_path, photo_folder, no_work):
  mask, meta = saved_mask()
  cases = {
      "frame.npz": (mask, {**meta, "frame": "arcface112"}),
      "epsilon.npz": (mask, {**meta, "epsilon": 4.0}),
      "large.npz": (mask * 40, {**meta, "epsilon": 320.0}),
      "shape.npz": (mask[:100], meta),
  }
  needles = {"frame.npz": "arcface112", "epsilon.npz": "more than its epsilon", "large.npz": "exceeds",
             "shape.npz": "shape"}
  for name, (array, metadata) in cases.items():
    masks_lib.save_mask(tmp_path / name, array, metadata)
    status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                               tmp_path / name, "--targets=")
    assert_one_line_error(status, out, err, name, needles[name])
  (tmp_path / "cut.npz").write_bytes((tmp_path / "frame.npz").read_bytes()[:100])
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "cut.npz", "--targets=")
  assert_one_line_error(status, out, err, "cut.npz")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "nothing.npz")
  assert_one_line_error(status, out, err, "nothing.npz")
  masks_lib.save_mask(tmp_path / "good.npz", mask, meta)
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "good.npz", "--steps=4")
  assert_one_line_error(status, out, err, "--steps", "--mask")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "good.npz", "--no-fill_budget")
  assert_one_line_error(status, out, err, "--fill_budget", "--mask")
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "good.npz", "--start_scale=0.5")
  assert_one_line_error(status, out, err, "--start_scale", "--mask")


@pytest.mark.real_data
def test_lost_faces_are_printed_counted_and_give_exit_status_3(capsys, lfw_root, tmp_path, detector):
  """A mask of epsilon 300 (allowed explicitly) destroys the faces: never 'protected 2 of 2', exit status 3."""
  folder = tmp_path / "photos"
  folder.mkdir()
  for p in sorted((lfw_root / PERSON).glob("*.jpg"))[1:3]:
    shutil.copy(p, folder / p.name)
  mask, meta = saved_mask(epsilon=300.0)
  masks_lib.save_mask(tmp_path / "huge.npz", mask, meta)
  status, out, err = run_cli(capsys, "--photos", folder, "--out", tmp_path / "refused", "--mask",
                             tmp_path / "huge.npz", "--targets=")
  assert_one_line_error(status, out, err, "exceeds")
  report = protect.protect_files(folder, tmp_path / "out", mask=tmp_path / "huge.npz", allow_large_epsilon=True,
                                 targets=(), detector=detector, show_progress=False)
  assert report["summary"] == dict(photos=2, protected=0, unchanged=0, lost=2)
  printed = cli.summarise(report, "out")
  assert printed.startswith("protected 0 of 2") and "lost" in printed
  assert cli.exit_status(report) == cli.EXIT_INCOMPLETE
  assert cli.exit_status({"summary": dict(photos=2, protected=1, unchanged=1, lost=0)}) == cli.EXIT_INCOMPLETE
  assert cli.exit_status({"summary": dict(photos=2, protected=2, unchanged=0, lost=0)}) == cli.EXIT_OK


def test_table_shows_no_number_for_a_mean_over_no_photo():
  nan = np.full(3, np.nan)
  lost = protect.TargetSimilarity(target="m", before=np.array([0.9, 0.8, 0.7]), after=nan, threshold=0.3,
                                  match_before=1.0, match_after=float("nan"), lost_faces=[0, 1, 2])
  row = protect.format_table({"m": lost}).splitlines()[-1]
  assert "nan" not in row and row.count("n/a") == 3
  assert lost.unmeasured == [0, 1, 2]
  assert lost.to_dict()["mean_after"] is None


def test_face_flag_takes_one_rule_and_faces_by_name():
  options = cli._options(cli.build_parser().parse_args(  # pylint: disable=protected-access
      ["--photos", "p", "--out", "o", "--face=central,party.jpg=2,b.png=1"]))
  assert options["select"] == "central" and options["face_index"] == {"party.jpg": 1, "b.png": 0}
  for bad in ("--face=similar,largest", "--face=party.jpg=0", "--face=x=two"):
    with pytest.raises(cli.UsageError, match="--face"):
      cli._options(cli.build_parser().parse_args(["--photos", "p", "--out", "o", bad]))  # pylint: disable=protected-access
  paths = [pathlib.Path("a/party.jpg"), pathlib.Path("a/b.png")]
  assert protect.files._face_indices({"party.jpg": 1, "b": 0}, paths) == {0: 1, 1: 0}  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="names no"):
    protect.files._face_indices({"c.jpg": 0}, paths)  # pylint: disable=protected-access


@pytest.mark.real_data
@pytest.mark.slow
def test_eot_option_reaches_the_ascent_and_is_recorded(person_photos, detector, dlib_model):
  run = lambda **kw: protect.protect_photos(person_photos[:3], surrogates=(dlib_model,), detector=detector, steps=1,
                                            show_progress=False, **kw)
  plain, robust = run(), run(eot=("jpeg", "blur"), eot_samples=2)
  assert robust.metadata["eot"] == "jpeg,blur" and robust.metadata["eot_samples"] == 2
  assert plain.metadata["eot"] == "" and np.abs(robust.mask).max() <= 8.0
  assert not np.array_equal(plain.mask, robust.mask)


@pytest.mark.real_data
@pytest.mark.slow
def test_transfer_options_reach_the_ascent_and_are_recorded(person_photos, detector, dlib_model, monkeypatch):
  seen = {}
  real = opomjax.generate_masks

  def generate_masks(*args, **kwargs):
    seen.update(ti_width=kwargs["ti_width"], di_probability=kwargs["di_probability"],
                start_scale=kwargs["start_scale"], fill_budget=kwargs["fill_budget"])
    return real(*args, **kwargs)

  monkeypatch.setattr(opomjax, "generate_masks", generate_masks)
  common = dict(surrogates=(dlib_model,), detector=detector, steps=1, show_progress=False, ti_width=5,
                di_probability=0.5)
  result = protect.protect_photos(person_photos[:3], start_scale=1.0, fill_budget=False, **common)
  assert seen == {"ti_width": 5, "di_probability": 0.5, "start_scale": 1.0, "fill_budget": False}
  assert result.metadata["ti_width"] == 5 and result.metadata["di_probability"] == 0.5
  assert result.metadata["fill_budget"] is False and result.metadata["start_scale"] == 1.0
  assert np.abs(result.mask).max() <= 8.0
  assert np.mean(np.abs(result.mask) == 8.0) < 0.5  # one step of 1 from a random start: most values inside
  filled = protect.protect_photos(person_photos[:3], start_scale=1.0, fill_budget=True, **common)
  assert seen["fill_budget"] is True and filled.metadata["fill_budget"] is True
  np.testing.assert_array_equal(filled.mask, 8.0 * np.sign(result.mask))  # the same mask, moved to the budget
  # the defaults: a zero start, so one step of 1 leaves every value at +-1 before the budget is filled
  default = protect.protect_photos(person_photos[:3], fill_budget=False, **common)
  assert seen["start_scale"] == 0.0 and default.metadata["start_scale"] == 0.0
  assert set(np.unique(np.abs(default.mask))) <= {0.0, 1.0}


@pytest.mark.parametrize("flags, expected", [
    ([], dict(surrogates=("dlib_resnet", "sface", "faceres", "mobileface"), ti_width=7, di_probability=0.5,
              steps=50, start_scale=0.0, fill_budget=True)),
    (["--preset=fast"], dict(surrogates=("dlib_resnet",), ti_width=1, di_probability=0.0, steps=16,
                             start_scale=1.0, fill_budget=True)),
    (["--preset=fast", "--no-fill_budget"], dict(surrogates=("dlib_resnet",), fill_budget=False)),
    (["--no-fill_budget", "--start_scale=1"], dict(steps=50, start_scale=1.0, fill_budget=False)),
    (["--preset=fast", "--ti_width=5"], dict(surrogates=("dlib_resnet",), ti_width=5, di_probability=0.0)),
    (["--preset=fast", "--steps=30"], dict(surrogates=("dlib_resnet",), steps=30)),
    (["--surrogates=sface"], dict(surrogates=["sface"], ti_width=7, di_probability=0.5, steps=50)),
])
def test_presets_fill_in_only_the_settings_not_given(flags, expected):
  args = cli.build_parser().parse_args(["--photos", "p", "--out", "o", *flags])
  options = cli._options(args)  # pylint: disable=protected-access
  assert {k: options[k] for k in expected} == expected


def test_a_preset_with_a_saved_mask_is_refused(capsys, tmp_path, photo_folder, no_work):
  status, out, err = run_cli(capsys, "--photos", photo_folder, "--out", tmp_path / "out", "--mask",
                             tmp_path / "mask.npz", "--preset=fast")
  assert_one_line_error(status, out, err, "--preset")
