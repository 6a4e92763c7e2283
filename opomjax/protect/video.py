r"""``opomjax protect-video``: a person's saved mask added to their face in every frame of a video.

  opomjax protect-video --video=clip.mp4 --mask=protected/mask.npz --out=clip_protected.mp4
  opomjax protect-video --video=party.mp4 --mask=mask.npz --out=party_protected.mp4 --reference=my_photos/
  opomjax protect-video --video=clip.mp4 --mask=mask.npz --out=clip_protected.mkv --lossless

One mask per person, reused on every frame (the paper's Sec. 4.3.3 and Fig. 8): the mask an ``opomjax protect``
run saved is not recomputed. For each frame the tool finds and aligns every face (YuNet, dlib's 5 landmarks:
:func:`opomjax.protect.photos.find_candidates`), follows the person from frame to frame (:class:`FaceTracker`:
the face whose box overlaps the person's previous box most), and warps the mask into that face's footprint
exactly as the photo tool does (:func:`opomjax.faces.apply_mask_to_photo`); every other pixel keeps its decoded
value. The person is picked by ``--face`` where no track exists (the first frame with faces, and after the
person has been missing for longer than ``--max_gap`` frames), with the photo tool's rules
(:func:`opomjax.protect.photos.choose_faces`).

Frames stream from the reader to the encoder (imageio with imageio-ffmpeg's packaged ffmpeg): memory does not
grow with the video's length. The frame rate, frame count and size are kept; the audio streams are copied
unchanged (``-c:a copy``; re-encoded only where the output container cannot hold their codec, noted); no
metadata (creation time, location) is copied, as the photo tool copies no EXIF. The output is written to a
temporary file next to it and renamed at the end, so an interrupted run leaves no partial file; a small
report (``OUT`` without its suffix + ``.report.json``) counts the frames left unchanged and why.

Exit status: 0 every frame protected; 2 a bad argument or input (one line ``error: ...``, nothing written);
3 some frame left unchanged (no usable face, or none of its faces the person's), or no frame with the person
at all (nothing written); 1 an unexpected failure (``$OPOMJAX_TRACEBACK=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fractions
import functools
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from opomjax.protect import commands
from opomjax.protect.commands import EXIT_INCOMPLETE, EXIT_OK

log = logging.getLogger(__name__)

#: Face rules (besides an index K >= 1, the K-th face from the left); as opomjax.protect.photos.FACE_RULES.
FACE_RULES = ("similar", "largest", "central", "best")

#: Output container (file suffix) -> the video encoders it takes, and the audio encoder used where the input's
#: audio cannot be copied into it.
CONTAINERS: dict[str, tuple[tuple[str, ...], str]] = {
    ".mp4": (("libx264", "libx265", "libx264rgb"), "aac"),
    ".mov": (("libx264", "libx265", "libx264rgb"), "aac"),
    ".mkv": (("libx264", "libx265", "libx264rgb", "libvpx-vp9"), "aac"),
    ".webm": (("libvpx-vp9",), "libopus"),
}

#: Video encoders of ``--codec`` (all take a constant rate factor, ``--crf``).
CODECS = ("libx264", "libx265", "libvpx-vp9")

#: ``--crf`` default: high quality, so that the encoder keeps most of the mask (lower = closer to lossless).
DEFAULT_CRF = 12

#: A face continues the person's track when its box overlaps the previous one at least this much (IoU) ...
TRACK_IOU = 0.3
#: ... or, failing that, when its centre lies within this many widths of the previous box from that box's.
TRACK_SHIFT = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Following the person from frame to frame


def box_iou(a, b) -> float:
  """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 for disjoint or empty ones)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0.0, None))
  union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
  return float(inter / union) if union > 0 else 0.0


def match_box(previous, boxes: Sequence, *, min_iou: float = TRACK_IOU, max_shift: float = TRACK_SHIFT) -> int | None:
  """The box that continues a track whose last box was ``previous``, or None.

  The box overlapping ``previous`` most, if its IoU is at least ``min_iou``; else the box whose centre is
  nearest to ``previous``'s, if within ``max_shift`` times ``previous``'s width (a fast move).
  """
  if not len(boxes):
    return None
  previous = np.asarray(previous, np.float64)
  overlaps = [box_iou(previous, b) for b in boxes]
  best = int(np.argmax(overlaps))
  if overlaps[best] >= min_iou:
    return best
  centre = (previous[:2] + previous[2:]) / 2
  shifts = [np.linalg.norm((np.asarray(b, np.float64)[:2] + np.asarray(b, np.float64)[2:]) / 2 - centre)
            for b in boxes]
  nearest = int(np.argmin(shifts))
  return nearest if shifts[nearest] <= max_shift * (previous[2] - previous[0]) else None


@dataclasses.dataclass
class FaceTracker:
  """Follows one person's face box through the frames of a video.

  Where a track exists, :meth:`update` continues it with :func:`match_box`; a frame without a match keeps
  the last box for up to ``max_gap`` frames (a missed detection, a face turned away), after which the track
  ends. Where none exists, ``choose`` (the ``--face`` rule) picks the person among the frame's faces.

  Attributes:
    max_gap: frames the track survives without a matching face.
    min_iou, max_shift: see :func:`match_box`.
    box: the person's last box, None without a track.
    missed: frames since the box was last matched.
    starts: how many times a track was started (1 + the re-acquisitions after a lost track).
  """

  max_gap: int = 12
  min_iou: float = TRACK_IOU
  max_shift: float = TRACK_SHIFT
  box: np.ndarray | None = None
  missed: int = 0
  starts: int = 0

  def update(self, boxes: Sequence, choose: Callable[[], int | None]) -> tuple[int | None, bool]:
    """The index of the person's face among this frame's ``boxes`` (None: not in this frame).

    Args:
      boxes: the frame's face boxes ``(x0, y0, x1, y1)``.
      choose: called (only) when no track exists and the frame has faces: the index of the person's face by
        the start rule, or None.

    Returns:
      ``(index, started)``: ``started`` is True when the face was picked by ``choose`` (a new track).
    """
    if self.box is not None:
      k = match_box(self.box, boxes, min_iou=self.min_iou, max_shift=self.max_shift)
      if k is not None:
        self.box, self.missed = np.asarray(boxes[k], np.float64), 0
        return k, False
      self.missed += 1
      if self.missed <= self.max_gap:
        return None, False
      self.box = None
    if not len(boxes):
      return None, False
    k = choose()
    if k is None:
      return None, False
    self.box, self.missed = np.asarray(boxes[k], np.float64), 0
    self.starts += 1
    return k, True


def frame_runs(frames: Sequence[int]) -> list[list[int]]:
  """Sorted frame indices as inclusive runs ``[[first, last], ...]`` (a compact list for the report)."""
  runs: list[list[int]] = []
  for f in frames:
    if runs and f == runs[-1][1] + 1:
      runs[-1][1] = f
    else:
      runs.append([f, f])
  return runs


# ---------------------------------------------------------------------------------------------------------------
# The video file


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What ffmpeg reports about a video file.

  Attributes:
    path: the file.
    size: ``(width, height)`` of the decoded (upright) frames.
    fps: the frame rate as a fraction (NTSC rates such as 30000/1001 restored from ffmpeg's rounded value).
    codec: the video codec, e.g. ``"h264"``.
    audio_codec: the (first) audio stream's codec, or None without audio.
    duration: seconds, as the container states it (0 when unknown).
    rotate: the rotation tag (degrees) ffmpeg applied to the decoded frames.
  """

  path: pathlib.Path
  size: tuple[int, int]
  fps: fractions.Fraction
  codec: str
  audio_codec: str | None
  duration: float
  rotate: int = 0

  @property
  def estimated_frames(self) -> int | None:
    """Frame count from the duration (for a progress bar; the exact count is known after decoding)."""
    return int(round(self.duration * self.fps)) if self.duration > 0 else None

  def to_dict(self) -> dict:
    return dict(path=str(self.path), width=self.size[0], height=self.size[1], fps=str(self.fps),
                fps_value=float(self.fps), codec=self.codec, audio_codec=self.audio_codec, duration=self.duration,
                rotate=self.rotate)


def frame_rate(fps: float) -> fractions.Fraction:
  """The exact frame rate behind ffmpeg's rounded value: ``N * 1000/1001`` (NTSC) where that is within 0.005."""
  fps = float(fps)
  if not np.isfinite(fps) or fps <= 0:
    raise ValueError(f"frame rate must be a positive number, got {fps}")
  ntsc = fractions.Fraction(round(fps * 1.001) * 1000, 1001)
  if round(fps * 1.001) >= 1 and abs(float(ntsc) - fps) < 0.005 and abs(fps - round(fps)) > 0.005:
    return ntsc
  return fractions.Fraction(fps).limit_denominator(1001)


@contextlib.contextmanager
def _spawning_ffmpeg():
  """Silences JAX's warning on ``os.fork()``: the fork that starts ffmpeg is followed at once by ``exec``."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    yield


def _ffmpeg_exe() -> str:
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

  return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else "no message"


def _open_reader(path: pathlib.Path):
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel

  with _spawning_ffmpeg():
    return imageio.get_reader(os.fspath(path), format="FFMPEG")


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Opens a video file with ffmpeg and reads its properties; ValueError naming it where that fails."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f"--video {path}: no such file")
  if not path.is_file():
    raise ValueError(f"--video {path}: not a file")
  if not os.access(path, os.R_OK):
    raise ValueError(f"--video {path}: not readable (permission denied)")
  try:
    reader = _open_reader(path)
    try:
      meta = reader.get_meta_data()
    finally:
      reader.close()
  except Exception as e:  # pylint: disable=broad-except  # imageio raises RuntimeError / OSError / ValueError ...
    why = "not a video file type" if "can not handle the given uri" in str(e) else _last_line(e)
    raise ValueError(f"--video {path}: not a video ffmpeg can read ({why})") from None
  size, fps = meta.get("size"), meta.get("fps")
  if not size or not fps or min(size) <= 0:
    raise ValueError(f"--video {path}: no video stream found")
  duration = float(meta.get("duration") or 0.0)
  return VideoInfo(path=path, size=(int(size[0]), int(size[1])), fps=frame_rate(fps), codec=str(meta.get("codec")),
                   audio_codec=meta.get("audio_codec") or None,
                   duration=duration if np.isfinite(duration) else 0.0, rotate=int(meta.get("rotate") or 0))


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
  """The decoded frames, ``(h, w, 3)`` uint8 RGB, one at a time (streamed: memory independent of length)."""
  reader = _open_reader(pathlib.Path(path))
  try:
    for frame in reader:
      yield np.asarray(frame)
  finally:
    reader.close()


@dataclasses.dataclass(frozen=True)
class Encoding:
  """How the frames are encoded: the encoder, its pixel format and options (see :func:`encoding`)."""

  codec: str
  pixel_format: str
  options: tuple[str, ...]
  lossless: bool = False

  def to_dict(self) -> dict:
    return dict(codec=self.codec, pixel_format=self.pixel_format, options=list(self.options), lossless=self.lossless)


def encoding(suffix: str, size: tuple[int, int], *, codec: str = "libx264", crf: int = DEFAULT_CRF,
             lossless: bool = False) -> Encoding:
  """The encoder settings for an output file; ValueError for a container / codec / quality that do not fit.

  ``lossless`` writes RGB H.264 at ``crf=0`` (``libx264rgb``): the decoded frames are exactly the protected
  ones (large files; some players cannot show it). Otherwise ``codec`` at constant rate factor ``crf`` (0..51
  for x264/x265, 0..63 for VP9) in YUV 4:2:0 (4:4:4 where the width or height is odd, which 4:2:0 cannot
  hold).
  """
  suffix = suffix.lower()
  if suffix not in CONTAINERS:
    raise ValueError(f"--out must end in one of {', '.join(CONTAINERS)}, got {suffix or 'no suffix'!r}")
  if lossless:
    codec = "libx264rgb"
  elif codec not in CODECS:
    raise ValueError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
  if codec not in CONTAINERS[suffix][0]:
    fits = [s for s, (codecs, _) in CONTAINERS.items() if codec in codecs]
    raise ValueError(f"a {suffix} file cannot hold {codec}{' (--lossless)' if lossless else ''}; use an output "
                     f"ending in {' or '.join(fits)}")
  top = 63 if codec == "libvpx-vp9" else 51
  if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= top:
    raise ValueError(f"--crf must be an integer in 0..{top} for {codec}, got {crf!r}")
  if lossless:
    return Encoding(codec, "rgb24", ("-crf", "0"), lossless=True)
  pixel_format = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
  options = ("-crf", str(int(crf))) + (("-b:v", "0") if codec == "libvpx-vp9" else ())
  return Encoding(codec, pixel_format, options)


def _writer(path: pathlib.Path, fps: fractions.Fraction, settings: Encoding):
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel

  return imageio.get_writer(os.fspath(path), format="FFMPEG", fps=fps, codec=settings.codec,
                            pixelformat=settings.pixel_format, quality=None, macro_block_size=1,
                            ffmpeg_params=list(settings.options), ffmpeg_log_level="error")


def add_audio(video_only: pathlib.Path, source: pathlib.Path, out: pathlib.Path, *, fallback_codec: str) -> str | None:
  """Writes ``out``: the video stream of ``video_only`` and every audio stream of ``source``, both copied.

  Where the container of ``out`` cannot hold the audio's codec, the audio is re-encoded with
  ``fallback_codec``. No metadata is copied.

  Returns:
    A note when the audio was re-encoded, else None.

  Raises:
    OSError: ffmpeg failed both ways (the message has its last line).
  """
  base = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", os.fspath(video_only),
          "-i", os.fspath(source), "-map", "0:v:0", "-map", "1:a", "-map_metadata", "-1", "-c:v", "copy"]
  with _spawning_ffmpeg():
    copied = subprocess.run(base + ["-c:a", "copy", os.fspath(out)], capture_output=True, text=True, check=False)
  if copied.returncode == 0:
    return None
  with _spawning_ffmpeg():
    again = subprocess.run(base + ["-c:a", fallback_codec, os.fspath(out)], capture_output=True, text=True,
                           check=False)
  if again.returncode != 0:
    raise OSError(f"ffmpeg could not add the audio of {source} to {out}: {_last_line(again.stderr)}")
  return f"the audio's codec cannot be stored in a {out.suffix} file as it is; re-encoded with {fallback_codec}"


def _temporary(out: pathlib.Path, what: str) -> pathlib.Path:
  fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{what}.", suffix=out.suffix)
  os.close(fd)
  return pathlib.Path(name)


def _publish(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Gives ``tmp`` a plain file's permissions (not mkstemp's 0600) and renames it to ``out`` (atomic)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  os.replace(tmp, out)


@dataclasses.dataclass(frozen=True)
class Written:
  """What :func:`encode_frames` wrote: frame count, size ``(w, h)``, encoding, and the frames left unchanged.

  Attributes:
    count: frames written.
    changed: frames the mask was added to.
    size: ``(width, height)``.
    encoding: the encoder settings.
    unchanged: reason -> the indices of the frames written unchanged for it.
  """

  count: int
  changed: int
  size: tuple[int, int]
  encoding: Encoding | None
  unchanged: dict[str, list[int]]


def encode_frames(frames, protect: Callable[[np.ndarray, int], tuple[np.ndarray, str | None]],
                  path: pathlib.Path, fps: fractions.Fraction, suffix: str, *, codec: str = "libx264",
                  crf: int = DEFAULT_CRF, lossless: bool = False) -> Written:
  """Streams ``frames`` through ``protect`` into a video-only file at ``path`` (container of ``suffix``).

  Args:
    frames: iterable of ``(h, w, 3)`` uint8 frames (e.g. :func:`read_frames`).
    protect: ``(frame, index) -> (frame out, None)``, or ``(frame, reason)`` for a frame left unchanged.
    path: the file written (overwritten).
    fps: the frame rate.
    suffix, codec, crf, lossless: see :func:`encoding` (the size is the first frame's).
  """
  writer, settings, size = None, None, (0, 0)
  unchanged: dict[str, list[int]] = {"no_face": [], "too_small": [], "not_the_person": []}
  count = changed = 0
  try:
    for index, frame in enumerate(frames):
      if writer is None:  # the decoded size (a rotation tag may have turned the stored one)
        size = (frame.shape[1], frame.shape[0])
        settings = encoding(suffix, size, codec=codec, crf=crf, lossless=lossless)
        writer = _writer(path, fps, settings)
      out, reason = protect(frame, index)
      if reason is None:
        changed += 1
      else:
        unchanged.setdefault(reason, []).append(index)
      writer.append_data(out)
      count = index + 1
  finally:
    if writer is not None:
      writer.close()
  return Written(count=count, changed=changed, size=size, encoding=settings, unchanged=unchanged)


def report_path(out: str | os.PathLike) -> pathlib.Path:
  """The report written next to an output video: ``clip.mp4`` -> ``clip.report.json``."""
  out = pathlib.Path(out)
  return out.with_name(out.stem + ".report.json")


# ---------------------------------------------------------------------------------------------------------------
# Protecting the frames


def parse_face_rule(text: str | int | None, has_reference: bool) -> str | int:
  """``--face``: a rule of :data:`FACE_RULES`, or ``K`` (the K-th face from the left, K >= 1) -> ``K - 1``.

  Default (None): ``"similar"`` with reference photos, else ``"largest"``.
  """
  if text is None:
    return "similar" if has_reference else "largest"
  if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
    text = str(int(text))
  text = str(text).strip()
  if text.isdigit():
    if int(text) < 1:
      raise ValueError(f"--face={text}: K counts faces from the left starting at 1")
    return int(text) - 1
  if text not in FACE_RULES:
    raise ValueError(f"--face: unknown rule {text!r}; use one of {', '.join(FACE_RULES)} or K (the K-th face "
                     "from the left)")
  if text == "similar" and not has_reference:
    raise ValueError("--face=similar needs photos of the person to compare with: give --reference PHOTOS")
  return text


def _check_number(value, name: str, low: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(
      value) or value < low:
    raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")
  return float(value)


def load_video_mask(mask, *, allow_large_epsilon: bool = False) -> tuple[np.ndarray, dict, str]:
  """A saved mask (path of an ``opomjax protect`` run's ``mask.npz``, or ``(mask, metadata)``), checked.

  Returns:
    ``(mask, metadata, name)``.

  Raises:
    ValueError: missing, unreadable, or not fit for the tool (:func:`opomjax.protect.photos.check_saved_mask`).
  """
  # pylint: disable=import-outside-toplevel
  from opomjax import files as files_lib
  from opomjax.protect import files as protect_files_lib

  if isinstance(mask, (str, os.PathLike)) and not os.path.isfile(os.fspath(mask)):
    raise ValueError(f"--mask {os.fspath(mask)}: no such file (the mask.npz an 'opomjax protect' run wrote)")
  try:
    return protect_files_lib.load_saved_mask(mask, allow_large_epsilon)
  except files_lib.MaskFileError as e:
    why = " ".join(str(e).split()).split(". ")[0]
    raise ValueError(f"--mask {os.fspath(mask)}: not a mask file an 'opomjax protect' run wrote ({why})") from None


def _check_output(out: pathlib.Path, video: pathlib.Path, overwrite: bool) -> None:
  report = report_path(out)
  if out.exists() and out.resolve() == video.resolve():
    raise ValueError(f"--out {out} is the input video; choose another file")
  for path in (out, report):
    if path.is_dir():
      raise ValueError(f"--out: {path} is a folder; name the output file, e.g. {path / 'protected.mp4'}")
    if path.exists() and not overwrite:
      raise ValueError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
  from opomjax.protect import files as protect_files_lib  # pylint: disable=import-outside-toplevel

  protect_files_lib.check_writable(out.parent)


def _start_rule(rule: str | int, *, reference_faces: Sequence, embed: Callable | None):
  """``choose(faces, shape) -> index or None``: the person's face by ``rule`` where no track exists."""
  from opomjax.protect import photos as photos_lib  # pylint: disable=import-outside-toplevel

  def choose(faces, shape) -> int | None:
    if isinstance(rule, int):
      return rule if rule < len(faces) else None
    if rule == "similar":  # the frame's faces against the reference photos' faces (choose_faces, "similar")
      candidates = [list(faces)] + [[f] for f in reference_faces]
      return photos_lib.choose_faces(candidates, "similar", embed=embed)[0].index
    return photos_lib.choose_faces([list(faces)], rule, shapes=[shape])[0].index

  return choose


def _reference_faces(reference, *, detector, min_face_size: float, embed: Callable) -> list:
  """One face per reference photo (the photo tool's ``"similar"`` choice among them); ValueError if none."""
  # pylint: disable=import-outside-toplevel
  from opomjax.protect import files as protect_files_lib
  from opomjax.protect import photos as photos_lib

  paths = (protect_files_lib.find_photos(reference) if isinstance(reference, (str, os.PathLike))
           else [pathlib.Path(p) for p in reference])
  loaded = protect_files_lib.load_photo_files(paths)
  candidates, _ = photos_lib.find_candidates(loaded, detector=detector, min_face_size=min_face_size)
  choices = photos_lib.choose_faces(candidates, "similar", embed=embed, shapes=[p.shape for p in loaded])
  faces = [c.face for c in choices if c is not None]
  if not faces:
    raise ValueError(f"--reference: none of the {len(loaded)} photos has a usable face")
  return faces


def protect_video(video: str | os.PathLike, mask, out: str | os.PathLike, *, face: str | int | None = None,
                  reference=None, feather: float | None = None, min_face_size: float | None = None,
                  max_gap: int | None = None, codec: str = "libx264", crf: int = DEFAULT_CRF,
                  lossless: bool = False, overwrite: bool = False, allow_large_epsilon: bool = False,
                  detector=None, chooser=None, show_progress: bool = True) -> dict:
  """Adds a person's saved mask to their face in every frame of a video; writes the video and its report.

  Every argument and file is checked before the first frame is decoded.

  Args:
    video: the input video (anything ffmpeg reads with a video stream).
    mask: the saved mask: path of a ``mask.npz`` an ``opomjax protect`` run wrote, or ``(mask, metadata)``.
    out: the output video (``.mp4``, ``.mov``, ``.mkv`` or ``.webm``); its report goes to :func:`report_path`.
    face: who the person is where no track exists: ``"largest"`` (default without ``reference``),
      ``"central"``, ``"best"``, ``"similar"`` (most like the ``reference`` photos, by the mask's first
      surrogate; the default with them), or ``K`` (int or digits) for the K-th face from the left (K >= 1).
    reference: photos of the person (folder, glob pattern or files) for ``face="similar"``.
    feather: fade-out width at the face region's edge, pixels; default the mask's own (else 0).
    min_face_size: faces with a shorter box side (pixels) are not protected (default 32).
    max_gap: frames the track survives without the person's face (default: half a second of frames).
    codec, crf, lossless: the encoding (:func:`encoding`).
    overwrite: replace an existing output (and report).
    allow_large_epsilon: accept a mask whose epsilon exceeds 32.
    detector: face detector (default: the shared YuNet).
    chooser: model comparing faces for ``face="similar"`` (default: the mask's first surrogate).
    show_progress: a progress bar over the frames, and log lines.

  Returns:
    The report (also written next to the output): input and output properties, settings, frame counts
    (``protected``, ``unchanged`` by reason: ``no_face``, ``too_small``, ``not_the_person``), the unchanged frames
    as runs, the frames where the person was picked by the rule, and times.

  Raises:
    ValueError: a bad argument or input (before any frame is decoded).
    opomjax.faces.NoFaceError: no frame has the person's face (nothing is written).
    OSError: ffmpeg failed to write the output.
  """
  # 1. arguments that need no file
  rule = parse_face_rule(face, reference is not None)
  encoding(pathlib.Path(out).suffix, (2, 2), codec=codec, crf=crf, lossless=lossless)
  if feather is not None:
    _check_number(feather, "--feather", 0.0)
  if min_face_size is not None:
    _check_number(min_face_size, "--min_face_size", 0.0)
  if max_gap is not None and (isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0):
    raise ValueError(f"--max_gap must be an integer >= 0 (frames), got {max_gap!r}")
  # 2. files: the video, the mask, the output, the reference photos
  info = probe_video(video)
  mask, metadata, mask_name = load_video_mask(mask, allow_large_epsilon=allow_large_epsilon)
  out = pathlib.Path(out)
  _check_output(out, info.path, overwrite)
  # pylint: disable=import-outside-toplevel
  import opomjax
  from opomjax import faces as faces_lib
  from opomjax.frame import CANONICAL
  from opomjax.protect import photos as photos_lib
  from tqdm import tqdm

  feather = float(metadata.get("feather", 0.0) if feather is None else feather)
  insertion = photos_lib.insertion_for(metadata)
  min_face_size = faces_lib.DEFAULT_MIN_FACE_SIZE if min_face_size is None else float(min_face_size)
  max_gap = int(round(float(info.fps) / 2)) if max_gap is None else int(max_gap)

  @functools.cache
  def comparer():
    if chooser is not None:
      return chooser
    return opomjax.load_model(str(metadata.get("surrogate", "dlib_resnet")).split("+")[0])

  embed = lambda chips: photos_lib.embed_chips(comparer(), chips)  # pylint: disable=unnecessary-lambda-assignment
  reference_faces = (_reference_faces(reference, detector=detector, min_face_size=min_face_size, embed=embed)
                     if rule == "similar" else [])
  choose = _start_rule(rule, reference_faces=reference_faces, embed=embed)
  tracker = FaceTracker(max_gap=max_gap)

  # 3. the frames: decode, find, follow, mask, encode (streamed); then the audio
  def mask_frame(frame: np.ndarray, index: int) -> tuple[np.ndarray, str | None]:
    candidates, skipped = photos_lib.find_candidates([frame], detector=detector, min_face_size=min_face_size)
    found = candidates[0]
    k, started = tracker.update([f.box for f in found], lambda: choose(found, frame.shape))
    if k is None:
      return frame, skipped.get(0, "not_the_person")
    if started:
      starts.append(dict(frame=index, face=k + 1, faces=len(found)))
    return faces_lib.apply_mask_to_photo(frame, mask, found[k].transform, frame=CANONICAL, feather=feather,
                                         insertion=insertion), None

  starts: list[dict[str, Any]] = []
  if show_progress:
    log.info("%s: %dx%d at %s frames/s (%s%s); the person: %s", info.path, *info.size, info.fps, info.codec,
             f", audio {info.audio_codec}" if info.audio_codec else ", no audio",
             f"face {rule + 1} from the left" if isinstance(rule, int) else rule)
  frames = tqdm(read_frames(info.path), total=info.estimated_frames, desc="protecting frames", unit="frame",
                disable=not show_progress)
  start = time.time()
  video_only, muxed, note = _temporary(out, "video"), None, None
  try:
    with _spawning_ffmpeg():  # the reader, the encoder and the audio copy each start an ffmpeg process
      written = encode_frames(frames, mask_frame, video_only, info.fps, out.suffix, codec=codec, crf=crf,
                              lossless=lossless)
      if written.count == 0:
        raise ValueError(f"--video {info.path}: no frame could be decoded")
      if written.changed == 0:
        raise faces_lib.NoFaceError(f"none of the {written.count} frames of {info.path} has a usable face of the "
                                    "person; nothing written", reason="no_face")
      if info.audio_codec is not None:
        muxed = _temporary(out, "audio")
        note = add_audio(video_only, info.path, muxed, fallback_codec=CONTAINERS[out.suffix.lower()][1])
        _publish(muxed, out)
      else:
        _publish(video_only, out)
      seconds = time.time() - start
  finally:
    for tmp in (video_only, muxed):
      if tmp is not None and tmp.exists():
        tmp.unlink()

  notes = [note] if note else []
  if info.rotate:
    notes.append(f"the input's rotation tag ({info.rotate} degrees) was applied to the frames; the output is "
                 "upright and untagged")
  count, unchanged = written.count, written.unchanged
  report = dict(
      input=info.to_dict(), output=dict(path=str(out), frames=count, width=written.size[0], height=written.size[1],
                                        fps=str(info.fps), audio=info.audio_codec is not None,
                                        **written.encoding.to_dict()),
      mask=dict(path=mask_name, **{k: metadata.get(k) for k in ("method", "surrogate", "epsilon", "steps", "seed",
                                                                "photos")}),
      settings=dict(face=rule + 1 if isinstance(rule, int) else rule, reference=None if reference is None else
                    (os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else
                     [os.fspath(p) for p in reference]), feather=feather, min_face_size=min_face_size,
                    max_gap=max_gap),
      summary=dict(frames=count, protected=written.changed, unchanged=count - written.changed,
                   **{reason: len(frames_) for reason, frames_ in unchanged.items()}, tracks=len(starts)),
      unchanged_frames={reason: frame_runs(frames_) for reason, frames_ in unchanged.items()},
      track_starts=starts, notes=notes,
      seconds=dict(total=seconds, frames_per_second=count / seconds if seconds > 0 else None))
  from opomjax import files as files_lib  # pylint: disable=import-outside-toplevel

  files_lib.atomic_write_bytes(report_path(out), json.dumps(report, indent=2).encode())
  return report


# ---------------------------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
  parser = commands.Parser(
      prog="opomjax protect-video", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Adds a person's saved mask (the mask.npz of an 'opomjax protect' run) to their face in every "
                  "frame of a video; keeps the frame rate, frame count, size and audio.",
      epilog="exit status: 0 every frame protected; 2 bad argument or input (nothing written); 3 some frame left "
             "unchanged (or no frame with the person: nothing written); 1 unexpected failure.")
  add = parser.add_argument
  add("--video", required=True, help="the input video")
  add("--mask", required=True, help="the person's saved mask (mask.npz of an 'opomjax protect' run)")
  add("--out", required=True, help="the output video (.mp4, .mov, .mkv or .webm); the report goes next to it")
  add("--face", default=None, metavar="RULE",
      help="who the person is where no track exists (first frame with faces, or after the person was lost): "
           "largest (default), central, best, similar (most like the --reference photos; the default with "
           "them), or K: the K-th face from the left (K >= 1)")
  add("--reference", nargs="+", default=None, metavar="PHOTOS",
      help="photos of the person (folder, glob pattern or files) for --face=similar")
  add("--max_gap", type=int, default=None,
      help="frames the person may be missing before they are picked again by --face (default: half a second)")
  add("--feather", type=float, default=None, help="pixels over which the mask fades out at the face region's edge "
                                                  "(default: the mask's own)")
  add("--min_face_size", type=float, default=None, help="faces smaller than this (pixels) are left unprotected")
  add("--codec", default="libx264", help=f"video encoder: {', '.join(CODECS)} (default libx264)")
  add("--crf", type=int, default=DEFAULT_CRF,
      help=f"constant rate factor: lower keeps more of the mask, larger files (default {DEFAULT_CRF})")
  add("--lossless", action="store_true",
      help="lossless RGB H.264 (.mp4/.mov/.mkv): the frames exactly as protected (large; not every player)")
  add("--overwrite", action="store_true", help="replace an existing output video and report")
  add("--allow_large_epsilon", action="store_true", help="accept a mask whose epsilon exceeds 32")
  add("--quiet", action="store_true", help="no progress bar or log lines")
  return parser


def summarise(report: dict) -> str:
  """The lines printed after a run."""
  s = report["summary"]
  lines = [f"protected {s['protected']} of {s['frames']} frames in {report['seconds']['total']:.0f} s "
           f"({report['seconds']['frames_per_second']:.1f} frames/s) -> {report['output']['path']}"]
  if s["unchanged"]:
    why = {"no_face": "no face found", "too_small": "faces too small", "not_the_person": "none of the faces "
           "is the person's"}
    for reason, runs in report["unchanged_frames"].items():
      if runs:
        shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:8]) + (" ..." if len(runs) > 8 else "")
        lines.append(f"{s[reason]} frame(s) left unchanged, {why[reason]}: {shown}")
  if s["tracks"] > 1:
    lines.append(f"the person was lost and picked again by the --face rule {s['tracks'] - 1} time(s), at frames "
                 f"{', '.join(str(t['frame']) for t in report['track_starts'][1:])}")
  lines += [f"note: {n}" for n in report["notes"]]
  lines.append(f"report: {report_path(report['output']['path'])}")
  return "\n".join(lines)


def _no_face_error_types() -> tuple[type, ...]:
  """``(opomjax.faces.NoFaceError,)`` once that module is loaded (only then can it have been raised), else ()."""
  faces_module = sys.modules.get("opomjax.faces")
  return () if faces_module is None else (faces_module.NoFaceError,)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``opomjax protect-video`` with ``argv`` (without the program name; default ``sys.argv[1:]``).

  Returns:
    The exit status (see the module docstring).
  """
  args, status = commands.parse_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
  if args is None:
    return status
  if not args.quiet:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
  reference = None if args.reference is None else (args.reference[0] if len(args.reference) == 1 else args.reference)
  try:
    report = protect_video(args.video, args.mask, args.out, face=args.face, reference=reference,
                           feather=args.feather, min_face_size=args.min_face_size, max_gap=args.max_gap,
                           codec=args.codec, crf=args.crf, lossless=args.lossless, overwrite=args.overwrite,
                           allow_large_epsilon=args.allow_large_epsilon, show_progress=not args.quiet)
  except Exception as e:  # pylint: disable=broad-except  # every failure: one line and its exit status
    # a bad argument or input is a ValueError; opomjax.faces.NoFaceError (one too): no frame with the person
    return commands.error_status(e, incomplete=_no_face_error_types())
  print(summarise(report))
  return EXIT_OK if report["summary"]["unchanged"] == 0 else EXIT_INCOMPLETE


if __name__ == "__main__":
  sys.exit(main())
