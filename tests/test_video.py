"""Protecting a video with a saved mask (``opomjax protect-video``): tiny clips built from real LFW photos.

The tracker, the frame-rate restoration and the command's refusals need no data. One module-scoped clip (one
LFW person's photos moving, a frame without a face, a sine audio track) is protected twice losslessly and twice
with the default lossy encoder; the lossless output is compared pixel for pixel with the photo tool's own
``apply_mask_to_photo`` on each decoded input frame, and the lossy one with the same clip passed through the
tool with a zero mask (the same decoding and re-encoding, no mask), so that codec noise is not taken for the
mask.
"""

import fractions
import json
import pathlib
import subprocess
import sys

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from opomjax import cli
from opomjax import faces
from opomjax import files as files_lib
from opomjax.frame import CANONICAL
from opomjax.protect import video

# the clips are written by ffmpeg processes started after JAX is up: a fork followed at once by exec
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")

PERSON = "Colin_Powell"
FPS = 25
SIZE = (320, 256)  # width, height
NO_FACE_FRAME = 5


# ---------------------------------------------------------------------------------------------------------------
# No data needed


def _box(cx, cy, size=60.0):
  return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def test_tracker_keeps_identity_when_two_faces_swap_order():
  # A walks right along y=60, B walks left along y=100: their left-to-right order swaps halfway.
  steps = 21
  a = [_box(20 + 10 * t, 60) for t in range(steps)]
  b = [_box(220 - 10 * t, 100) for t in range(steps)]
  frames = [sorted([("A", a[t]), ("B", b[t])], key=lambda item: item[1][0]) for t in range(steps)]
  assert [name for name, _ in frames[0]] == ["A", "B"] and [name for name, _ in frames[-1]] == ["B", "A"]
  tracker = video.FaceTracker(max_gap=3)
  followed = []
  for t, faces_now in enumerate(frames):
    boxes = [box for _, box in faces_now]
    k, started = tracker.update(boxes, lambda: 0)  # the rule picks the leftmost face: A, at the start
    assert started == (t == 0)
    followed.append(faces_now[k][0])
  assert followed == ["A"] * steps
  assert tracker.starts == 1


def test_tracker_waits_through_a_gap_then_picks_again():
  tracker = video.FaceTracker(max_gap=2)
  calls = []

  def choose(k):
    return lambda: calls.append(k) or k

  assert tracker.update([_box(50, 50)], choose(0)) == (0, True)
  # the person's face is missing for two frames (another face elsewhere): the rule is not asked
  assert tracker.update([_box(250, 50)], choose(0)) == (None, False)
  assert tracker.update([], choose(0)) == (None, False)
  assert calls == [0]
  # back near the old place within the gap: the same track continues
  assert tracker.update([_box(250, 50), _box(58, 52)], choose(0)) == (1, False)
  # missing for longer than the gap (two frames): on the third the rule picks again
  for _ in range(2):
    assert tracker.update([_box(250, 50)], choose(0)) == (None, False)
  assert tracker.update([_box(250, 50)], choose(0)) == (0, True)
  assert calls == [0, 0] and tracker.starts == 2


def test_match_box_prefers_overlap_then_a_near_centre():
  previous = _box(100, 100)
  assert video.match_box(previous, [_box(300, 100), _box(104, 100)]) == 1
  assert video.match_box(previous, [_box(300, 100), _box(125, 100)]) == 1  # IoU < 0.3, shift < half a width
  assert video.match_box(previous, [_box(300, 100), _box(140, 100)]) is None
  assert video.match_box(previous, []) is None


def test_box_iou_against_areas():
  assert video.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
  assert video.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_frame_rate_restores_ntsc_rates():
  assert video.frame_rate(29.97) == fractions.Fraction(30000, 1001)
  assert video.frame_rate(23.98) == fractions.Fraction(24000, 1001)
  assert video.frame_rate(59.94) == fractions.Fraction(60000, 1001)
  assert video.frame_rate(25.0) == 25 and video.frame_rate(30) == 30 and video.frame_rate(12.5) == fractions.Fraction(25, 2)
  with pytest.raises(ValueError):
    video.frame_rate(0)


def test_frame_runs():
  assert video.frame_runs([0, 1, 2, 5, 7, 8]) == [[0, 2], [5, 5], [7, 8]]
  assert video.frame_runs([]) == []


def test_encoding_refuses_what_the_container_cannot_hold():
  assert video.encoding(".mp4", (320, 256)).pixel_format == "yuv420p"
  assert video.encoding(".mp4", (321, 256)).pixel_format == "yuv444p"  # 4:2:0 cannot hold an odd width
  assert video.encoding(".mkv", (320, 256), lossless=True).codec == "libx264rgb"
  with pytest.raises(ValueError, match="webm"):
    video.encoding(".webm", (320, 256), codec="libx264")
  with pytest.raises(ValueError, match="--out must end"):
    video.encoding(".gif", (320, 256))
  with pytest.raises(ValueError, match="--crf"):
    video.encoding(".mp4", (320, 256), crf=60)


def _save_mask(path, mask):
  files_lib.save_mask(path, mask, dict(frame=CANONICAL.name, epsilon=8.0, method="test", surrogate="dlib_resnet",
                                       steps=0, seed=0))
  return path


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  return err


def test_command_refuses_a_file_that_is_not_a_video(tmp_path, capsys):
  mask = _save_mask(tmp_path / "mask.npz", np.zeros((128, 128, 3), np.float32))
  for name, data in (("notes.txt", b"not a video"), ("fake.mp4", b"not a video either" * 10)):
    (tmp_path / name).write_bytes(data)
    assert cli.main(["protect-video", "--video", str(tmp_path / name), "--mask", str(mask),
                     "--out", str(tmp_path / "out.mp4")]) == 2
    assert f"--video {tmp_path / name}: not a video" in _one_error_line(capsys)
  assert cli.main(["protect-video", "--video", str(tmp_path / "missing.mp4"), "--mask", str(mask),
                   "--out", str(tmp_path / "out.mp4")]) == 2
  assert "no such file" in _one_error_line(capsys)
  assert not (tmp_path / "out.mp4").exists()


def test_command_line_without_a_traceback_in_a_fresh_process(tmp_path):
  (tmp_path / "a.txt").write_text("text")
  done = subprocess.run([sys.executable, "-m", "opomjax", "protect-video", "--video", str(tmp_path / "a.txt"),
                         "--mask", str(tmp_path / "m.npz"), "--out", str(tmp_path / "o.mp4")],
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: --video")


# ---------------------------------------------------------------------------------------------------------------
# A clip of a real person


def _place(photo: np.ndarray, shift: int, zoom: float = 1.0) -> np.ndarray:
  """The photo on a grey canvas of SIZE, moved right by ``shift`` pixels and scaled by ``zoom``."""
  canvas = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
  side = int(round(250 * zoom))
  img = np.asarray(Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR))
  top, left = (SIZE[1] - side) // 2, 20 + shift
  h, w = min(side, SIZE[1] - top), min(side, SIZE[0] - left)
  canvas[top:top + h, left:left + w] = img[:h, :w]
  return canvas


def _ffmpeg(*args):
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                 timeout=120)


def _write_clip(path: pathlib.Path, frames, *, audio: bool):
  silent = path.with_name(path.stem + "_silent" + path.suffix)
  writer = imageio.get_writer(str(silent if audio else path), format="FFMPEG", fps=FPS, codec="libx264",
                              quality=None, macro_block_size=1, ffmpeg_params=["-crf", "18"],
                              ffmpeg_log_level="error")
  for f in frames:
    writer.append_data(f)
  writer.close()
  if audio:
    seconds = len(frames) / FPS
    _ffmpeg("-i", str(silent), "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}",
            "-c:v", "copy", "-c:a", "aac", str(path))


def _audio_packets_md5(path) -> str:
  """MD5 of the audio stream's packets (ffmpeg's md5 muxer on a stream copy)."""
  done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                         "-map", "0:a", "-c", "copy", "-f", "md5", "-"], capture_output=True, text=True, check=True,
                        timeout=60)
  return done.stdout.strip()


def _decode(path) -> list[np.ndarray]:
  return [np.asarray(f) for f in video.read_frames(path)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, lfw_root, yunet_onnx):
  paths = sorted((lfw_root / PERSON).glob("*.jpg"))[:3]
  if len(paths) < 3:
    pytest.skip(f"LFW at {lfw_root} lacks 3 photos of {PERSON}")
  photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  frames = [_place(photos[0], 0), _place(photos[0], 6), _place(photos[1], 12), _place(photos[1], 16, 0.95),
            _place(photos[2], 20), np.full((SIZE[1], SIZE[0], 3), 90, np.uint8), _place(photos[2], 24, 0.9),
            _place(photos[0], 28, 0.9)]
  d = tmp_path_factory.mktemp("clip")
  path = d / "clip.mp4"
  _write_clip(path, frames, audio=True)
  return path


@pytest.fixture(scope="module")
def detector(yunet_onnx):
  return faces.YuNetDetector(yunet_onnx)


@pytest.fixture(scope="module")
def random_mask() -> np.ndarray:
  return np.random.default_rng(0).uniform(-8, 8, (128, 128, 3)).astype(np.float32)


def _protect(clip, mask, out, detector, **options):
  return video.protect_video(clip, (mask, dict(frame=CANONICAL.name, epsilon=8.0)), out, detector=detector,
                             show_progress=False, **options)


@pytest.fixture(scope="module")
def lossless(clip, random_mask, detector, tmp_path_factory):
  out = tmp_path_factory.mktemp("lossless") / "protected.mkv"
  return out, _protect(clip, random_mask, out, detector, lossless=True)


@pytest.fixture(scope="module")
def lossy(clip, random_mask, detector, tmp_path_factory):
  d = tmp_path_factory.mktemp("lossy")
  masked = _protect(clip, random_mask, d / "masked.mp4", detector)
  zero = _protect(clip, np.zeros_like(random_mask), d / "zero.mp4", detector)
  return d / "masked.mp4", masked, d / "zero.mp4", zero


@pytest.mark.real_data
def test_lossless_frames_are_the_photo_tools_masked_frames(clip, lossless, random_mask, detector):
  out, report = lossless
  inputs, outputs = _decode(clip), _decode(out)
  assert len(outputs) == len(inputs) == 8
  for i, (frame, protected) in enumerate(zip(inputs, outputs)):
    assert protected.shape == frame.shape == (SIZE[1], SIZE[0], 3)
    if i == NO_FACE_FRAME:
      np.testing.assert_array_equal(protected, frame)  # no face: unchanged
      continue
    face = faces.align_photo(frame, detector=detector, select="largest")  # found independently of the tool
    expected = faces.apply_mask_to_photo(frame, random_mask, face.transform, frame=CANONICAL)
    np.testing.assert_array_equal(protected, expected)
    outside = faces.frame_footprint(face.transform, CANONICAL, frame.shape) == 0
    np.testing.assert_array_equal(protected[outside], frame[outside])
    assert np.abs(protected[~outside].astype(int) - frame[~outside]).mean() > 2.0  # the mask is there
  assert report["summary"] == dict(frames=8, protected=7, unchanged=1, no_face=1, too_small=0, not_the_person=0,
                                   tracks=1)
  assert report["unchanged_frames"]["no_face"] == [[NO_FACE_FRAME, NO_FACE_FRAME]]
  written = json.loads(video.report_path(out).read_text())
  assert written["summary"] == report["summary"]


@pytest.mark.real_data
def test_frame_rate_count_size_and_audio_kept(clip, lossless, lossy):
  source = video.probe_video(clip)
  assert source.audio_codec == "aac" and source.fps == FPS
  for out in (lossless[0], lossy[0]):
    info = video.probe_video(out)
    assert info.fps == source.fps and info.size == source.size
    assert info.audio_codec == "aac"
    assert _audio_packets_md5(out) == _audio_packets_md5(clip)  # the audio copied, not re-encoded
    assert len(_decode(out)) == len(_decode(clip))


@pytest.mark.real_data
def test_lossy_output_differs_from_a_zero_mask_pass_only_at_the_face(clip, lossy, detector):
  masked, report, zero, zero_report = lossy
  assert report["summary"]["protected"] == zero_report["summary"]["protected"] == 7
  for i, (frame, a, b) in enumerate(zip(_decode(clip), _decode(masked), _decode(zero))):
    diff = np.abs(a.astype(np.float64) - b).mean(axis=-1)
    if i == NO_FACE_FRAME:
      assert diff.mean() < 0.5
      continue
    face = faces.align_photo(frame, detector=detector, select="largest")
    inside = faces.frame_footprint(face.transform, CANONICAL, frame.shape) > 0
    near = ndimage.binary_dilation(inside, iterations=16)  # the codec's blocks spread the change a little
    # a uniform +-8 mask changes a pixel by 4 on average; H.264 at crf 12 keeps about half of that white noise
    assert diff[inside].mean() > 1.5, i
    assert diff[~near].mean() < 0.25 * diff[inside].mean(), i


@pytest.mark.real_data
def test_existing_output_needs_overwrite_and_failures_leave_nothing(clip, random_mask, tmp_path, capsys,
                                                                    monkeypatch):
  mask = _save_mask(tmp_path / "mask.npz", random_mask)
  out = tmp_path / "out.mp4"
  out.write_bytes(b"keep me")
  argv = ["protect-video", "--video", str(clip), "--mask", str(mask), "--out", str(out), "--quiet"]
  assert cli.main(argv) == 2
  assert "exists; pass --overwrite" in _one_error_line(capsys) and out.read_bytes() == b"keep me"
  # a bad mask file
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
  assert cli.main(argv[:4] + ["--mask", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o.mp4")]) == 2
  assert "--mask" in _one_error_line(capsys)
  # a crash half-way: no output, no temporary file left
  original, calls = faces.apply_mask_to_photo, []

  def crash(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError("disk on fire")
    return original(*args, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(faces, "apply_mask_to_photo", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
      video.protect_video(clip, str(mask), tmp_path / "crash.mp4", show_progress=False)
  assert len(calls) == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "mask.npz", "out.mp4"]
  # with --overwrite: replaced; the frame without a face makes the exit status 3 (as the photo tool's)
  assert cli.main(argv + ["--overwrite"]) == 3
  assert "1 frame(s) left unchanged, no face found: 5" in capsys.readouterr().out
  assert len(_decode(out)) == 8 and video.report_path(out).is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "mask.npz", "out.mp4", "out.report.json"]


def _two_people(lfw_root, index: int = 0, right_side: int = 150) -> list[np.ndarray]:
  """Frames of two people side by side (LFW crops), moving towards each other; the right one (George W. Bush)
  steps out in frame 4."""
  crops = []
  for person, side in (("Colin_Powell", 150), ("George_W_Bush", right_side)):
    path = sorted((lfw_root / person).glob("*.jpg"))[index]
    crop = Image.fromarray(np.asarray(Image.open(path).convert("RGB"))[50:200, 50:200])
    crops.append(np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR)))
  frames = []
  for t in range(8):
    canvas = np.full((220, 400, 3), 90, np.uint8)
    canvas[35:185, 10 + 4 * t:160 + 4 * t] = crops[0]
    if t != 4:
      top, left = 35 + (150 - right_side) // 2, 230 - 4 * t
      canvas[top:top + right_side, left:left + right_side] = crops[1]
    frames.append(canvas)
  return frames


@pytest.mark.real_data
def test_face_rule_picks_the_second_face_and_the_tracker_keeps_it(lfw_root, detector, random_mask, tmp_path):
  """Two people; --face=2 protects the right one. When they leave, nothing is masked (counted), and they are
  followed again when back: the other person is never masked."""
  frames = _two_people(lfw_root)
  present = [t != 4 for t in range(len(frames))]
  clip = tmp_path / "two.mp4"
  _write_clip(clip, frames, audio=False)
  out = tmp_path / "two_protected.mkv"
  report = _protect(clip, random_mask, out, detector, face="2", lossless=True)
  assert report["summary"]["not_the_person"] == 1 and report["unchanged_frames"]["not_the_person"] == [[4, 4]]
  assert report["track_starts"] == [dict(frame=0, face=2, faces=2)]
  for frame, protected, there in zip(_decode(clip), _decode(out), present):
    found = sorted(faces.align_photo(frame, detector=detector, select="all"), key=lambda f: f.box[0])
    left = faces.frame_footprint(found[0].transform, CANONICAL, frame.shape) > 0
    if there:
      left &= faces.frame_footprint(found[1].transform, CANONICAL, frame.shape) == 0
    assert left.sum() > 5000
    np.testing.assert_array_equal(protected[left], frame[left])  # the other person: never masked
    if there:
      expected = faces.apply_mask_to_photo(frame, random_mask, found[1].transform, frame=CANONICAL)
      np.testing.assert_array_equal(protected, expected)
    else:
      np.testing.assert_array_equal(protected, frame)
  assert not video.probe_video(out).audio_codec  # a clip without audio stays without


@pytest.mark.real_data
@pytest.mark.slow  # loads dlib's network to compare faces (~10-30 s)
def test_face_similar_to_reference_photos_finds_the_person_who_is_not_the_largest(lfw_root, detector,
                                                                                   random_mask, tmp_path):
  frames = _two_people(lfw_root, right_side=110)  # George W. Bush, on the right, is the smaller face
  clip = tmp_path / "two.mp4"
  _write_clip(clip, frames, audio=False)
  reference = sorted((lfw_root / "George_W_Bush").glob("*.jpg"))[1:4]
  mask = (random_mask, dict(frame=CANONICAL.name, epsilon=8.0, surrogate="dlib_resnet"))
  report = video.protect_video(clip, mask, tmp_path / "out.mp4", reference=[str(p) for p in reference],
                               detector=detector, show_progress=False)
  assert report["settings"]["face"] == "similar"
  assert report["track_starts"] == [dict(frame=0, face=2, faces=2)]
  largest = video.protect_video(clip, mask, tmp_path / "largest.mp4", detector=detector, show_progress=False)
  assert largest["track_starts"] == [dict(frame=0, face=1, faces=2)]  # without the reference: the other one


@pytest.mark.real_data
def test_video_without_the_person_writes_nothing(tmp_path, random_mask, detector, yunet_onnx):
  blank = tmp_path / "blank.mp4"
  _write_clip(blank, [np.full((SIZE[1], SIZE[0], 3), 90 + 10 * i, np.uint8) for i in range(4)], audio=False)
  with pytest.raises(faces.NoFaceError):
    _protect(blank, random_mask, tmp_path / "out.mp4", detector)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.mp4"]
