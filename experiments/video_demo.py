r"""One person's mask on a video (the paper's Sec. 4.3.3, Fig. 8), measured on a clip built from LFW photos.

    python -m experiments.video_demo --person=Colin_Powell --workdir=/tmp/video_demo --results=docs/results

No public video can be fetched here, so the clip is made of one Privacy-LFW person's *test* photos (sorted
files 11-14: never seen by the mask) with camera-like motion: a slow pan, zoom and roll, and short cross-fades
from one photo to the next, 5 s at 15 frames/s, 352x288, H.264 (crf 18) with a sine audio track. The person's
mask is the one ``opomjax protect`` computes from their 10 *training* photos (files 1-10; dlib surrogate,
OPOM-ConvexHull, epsilon 8, 16 steps), saved as ``mask.npz`` (``--mask`` takes an existing one instead). The
clip goes through ``opomjax protect-video`` losslessly and at each ``--crfs`` value; every frame of the clean
and of each protected clip is decoded, its face detected and aligned anew (as a recognition system would), and
compared by cosine similarity with the person's clean reference: the normalised mean feature of 20 other
photos (files 21-40), for every target. Writes ``video_similarity.png`` (per-frame curves, one panel per
target, as Fig. 8), ``video_frames.png`` (frames before/after) and ``video_demo.json`` to ``--results``
(``--prefix`` renames them).

Cost on 2 CPU cores shared with other jobs (load average 8-10), measured: the mask 133 s, the three
protect-video passes 34 s (75 frames each, 5-8 frames/s), the four targets' embeddings 457 s (320 faces each);
about 11 minutes in all. With ``--mask`` and ``--crfs=12``: about 6 minutes.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import time

from absl import app
from absl import flags
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
from PIL import Image

from experiments import launcher
from opomjax import faces
from opomjax.files import atomic_write_bytes
from opomjax.models import checkpoints
from opomjax.protect import files as protect_files
from opomjax.protect import photos as photos_lib
from opomjax.protect import video

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The launcher's flags, defined only when it runs (so that importing this module defines none)."""
  flags.DEFINE_string("person", "Colin_Powell", "A Privacy-LFW identity (>= 40 photos for the default split).")
  flags.DEFINE_string("lfw_dir", None, "LFW deep-funneled folder (default: $OPOMJAX_LFW_DIR or ../shared).")
  flags.DEFINE_string("workdir", "/tmp/video_demo", "Clip, mask and protected videos.")
  flags.DEFINE_string("results", "docs/results", "Where the figures and video_demo.json go.")
  flags.DEFINE_string("mask", None, "An existing mask.npz (default: computed from the 10 training photos).")
  flags.DEFINE_list("targets", ["dlib_resnet", "sface", "faceres", "mobileface"], "Models measuring the frames.")
  flags.DEFINE_list("crfs", ["12", "23"], "H.264 rate factors of the lossy passes (12: the tool's default).")
  flags.DEFINE_float("seconds", 5.0, "Clip length.")
  flags.DEFINE_integer("fps", 15, "Clip frame rate.")
  flags.DEFINE_integer("seed", 0, "Seed of the camera motion.")
  flags.DEFINE_string("prefix", "video", "Names of the results: PREFIX_similarity.png, PREFIX_frames.png, "
                      "PREFIX_demo.json.")


# ---------------------------------------------------------------------------------------------------------------
# The clip


def camera_motion(frames: int, rng: np.random.Generator) -> np.ndarray:
  """``(frames, 4)`` smooth pan x, pan y (pixels), zoom and roll (degrees): sums of two slow sines each."""
  t = np.arange(frames)[:, None] / max(frames - 1, 1)
  phases = rng.uniform(0, 2 * np.pi, (2, 4))
  scale = np.array([12.0, 8.0, 0.08, 4.0])
  wave = np.sin(2 * np.pi * 0.6 * t + phases[0]) + 0.5 * np.sin(2 * np.pi * 1.7 * t + phases[1])
  motion = wave * scale / 1.5
  motion[:, 2] += 1.0
  return motion


def render(photo: np.ndarray, motion, size: tuple[int, int]) -> np.ndarray:
  """The photo seen by a camera at ``motion`` (pan x, pan y, zoom, roll): ``(h, w, 3)`` uint8 of ``size`` (w, h).

  The photo (its outer 15 pixels, where deep-funnelled LFW photos can be black, cut off; reflect-padded, so
  that no black corner shows) is scaled to cover the frame, then zoomed, rolled about the frame's centre and
  panned.
  """
  photo = photo[15:-15, 15:-15]
  pad = 80
  padded = np.pad(photo, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  width, height = size
  dx, dy, zoom, roll = motion
  scale = max(width, height) / photo.shape[1] * zoom
  c, s = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
  # frame pixel (x, y) -> padded photo pixel: centre, un-roll, un-scale, back to the photo's centre
  a = np.array([[c, s], [-s, c]]) / scale
  centre_photo = np.array([padded.shape[1], padded.shape[0]]) / 2
  offset = centre_photo - a @ (np.array([width / 2 + dx, height / 2 + dy]))
  data = (a[0, 0], a[0, 1], offset[0], a[1, 0], a[1, 1], offset[1])
  return np.asarray(Image.fromarray(padded).transform(size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR))


def build_clip(photos: list[np.ndarray], path: pathlib.Path, *, seconds: float, fps: int, size: tuple[int, int],
               seed: int, fade: int = 4) -> int:
  """Writes the clip (H.264 crf 18 + a 440 Hz sine track); returns its frame count."""
  count = int(round(seconds * fps))
  motion = camera_motion(count, np.random.default_rng(seed))
  segment = count / len(photos)
  silent = path.with_name(path.stem + "_silent.mp4")
  writer = imageio.get_writer(str(silent), format="FFMPEG", fps=fps, codec="libx264", quality=None,
                              macro_block_size=1, ffmpeg_params=["-crf", "18"], ffmpeg_log_level="error")
  for i in range(count):
    k = min(int(i / segment), len(photos) - 1)
    frame = render(photos[k], motion[i], size).astype(np.float32)
    into_next = i - (k + 1) * segment + fade  # the last `fade` frames of a segment fade into the next photo
    if k + 1 < len(photos) and into_next > 0:
      w = into_next / (fade + 1)
      frame = (1 - w) * frame + w * render(photos[k + 1], motion[i], size)
    writer.append_data(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
  writer.close()
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(silent),
                  "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={count / fps}",
                  "-c:v", "copy", "-c:a", "aac", str(path)], check=True, timeout=300)
  silent.unlink()
  return count


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def embed(target, chips: np.ndarray, batch: int = 16) -> np.ndarray:
  """Unit embeddings ``(n, d)`` float64, in batches of one fixed shape (zero-padded: one compilation)."""
  out = []
  for s in range(0, len(chips), batch):
    x = np.zeros((batch,) + chips.shape[1:], np.float32)
    part = np.clip(chips[s:s + batch], 0, 255)
    x[:len(part)] = part
    out.append(np.asarray(target.embed(x), np.float64)[:len(part)])
  return np.concatenate(out)


def frame_chips(frames, detector) -> tuple[np.ndarray, np.ndarray]:
  """The largest face of each frame as a canonical chip ``(n, H, W, 3)``, and ``(n,)`` whether one was found."""
  chips, found = [], []
  for frame in frames:
    try:
      chips.append(faces.align_photo(frame, detector=detector).chip)
      found.append(True)
    except faces.NoFaceError:
      chips.append(np.zeros((128, 128, 3), np.float32))
      found.append(False)
  return np.stack(chips), np.array(found)


def similarity_to_reference(target, chips, found, reference_chips) -> np.ndarray:
  """Per frame, the cosine of its face to the normalised mean of the reference faces (NaN without a face)."""
  ref = embed(target, reference_chips).mean(0)
  ref /= np.linalg.norm(ref)
  cos = embed(target, chips) @ ref
  return np.where(found, cos, np.nan)


def plot_similarity(curves: dict, fps: int, path: pathlib.Path, person: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  targets = list(curves)
  fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), sharex=True, squeeze=False)
  for ax, target in zip(axes[0], targets):
    for name, values in curves[target].items():
      t = np.arange(len(values)) / fps
      ax.plot(t, values, label=name, lw=2 if name == "clean" else 1.3, color="k" if name == "clean" else None)
    ax.set_title(target)
    ax.set_xlabel("time (s)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"cosine to {person}'s reference")
  axes[0][-1].legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_frames(clean, protected: dict, indices, path: pathlib.Path) -> None:
  """Rows: clean frames, the protected versions given, and the lossless difference x10 (grey = 0)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  rows = [("clean", clean)] + list(protected.items())
  lossless = protected.get("lossless")
  fig, axes = plt.subplots(len(rows) + (lossless is not None), len(indices),
                           figsize=(2.6 * len(indices), 2.2 * (len(rows) + 1)), squeeze=False)
  for r, (name, frames) in enumerate(rows):
    for c, i in enumerate(indices):
      axes[r][c].imshow(frames[i])
      axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
      if c == 0:
        axes[r][c].set_ylabel(name)
      if r == 0:
        axes[r][c].set_title(f"frame {i}")
  if lossless is not None:
    for c, i in enumerate(indices):
      diff = np.clip(128 + 10 * (lossless[i].astype(np.float32) - clean[i]), 0, 255).astype(np.uint8)
      axes[-1][c].imshow(diff)
      axes[-1][c].set_xticks([]), axes[-1][c].set_yticks([])
    axes[-1][0].set_ylabel("difference x10")
  fig.tight_layout()
  fig.savefig(path, dpi=60)
  plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# The run


@launcher.one_line_errors
def main(argv):
  del argv
  import opomjax  # pylint: disable=import-outside-toplevel

  lfw = pathlib.Path(FLAGS.lfw_dir or os.environ.get("OPOMJAX_LFW_DIR") or
                     checkpoints.shared_dir() / "datasets" / "lfw-deepfunneled")
  files = sorted((lfw / FLAGS.person).glob("*.jpg"))
  if len(files) < 40:
    raise ValueError(f"--person={FLAGS.person}: {len(files)} photos under {lfw}; this split needs 40")
  train, clip_photos, reference = files[:10], files[10:14], files[20:40]
  workdir, results = pathlib.Path(FLAGS.workdir), pathlib.Path(FLAGS.results)
  workdir.mkdir(parents=True, exist_ok=True)
  results.mkdir(parents=True, exist_ok=True)
  detector = faces.YuNetDetector(faces.default_yunet_path())
  timings = {}

  # 1. the mask, from the training photos, as `opomjax protect` computes it
  mask_path = pathlib.Path(FLAGS.mask) if FLAGS.mask else workdir / "mask" / "mask.npz"
  if not mask_path.is_file():
    start = time.time()
    protect_files.protect_files(train, workdir / "mask", targets=(), show_progress=False)
    timings["mask_seconds"] = time.time() - start
  # 2. the clip
  size = (352, 288)
  clip = workdir / "clip.mp4"
  count = build_clip([np.asarray(Image.open(p).convert("RGB")) for p in clip_photos], clip, seconds=FLAGS.seconds,
                     fps=FLAGS.fps, size=size, seed=FLAGS.seed)
  # 3. the tool
  passes = {"lossless": dict(lossless=True, suffix=".mkv")}
  passes.update({f"crf {c}": dict(crf=int(c), suffix=".mp4") for c in FLAGS.crfs})
  reports = {}
  for name, options in passes.items():
    out = workdir / f"protected_{name.replace(' ', '')}{options.pop('suffix')}"
    reports[name] = video.protect_video(clip, mask_path, out, detector=detector, overwrite=True,
                                        show_progress=False, **options)
    reports[name]["output"]["path"] = out.name
    print(f"{name}: {reports[name]['summary']}, {reports[name]['seconds']['frames_per_second']:.2f} frames/s",
          flush=True)
  # 4. what the targets see, frame by frame
  clean = [np.asarray(f) for f in video.read_frames(clip)]
  decoded = {name: [np.asarray(f) for f in video.read_frames(workdir / r["output"]["path"])]
             for name, r in reports.items()}
  chips = {"clean": frame_chips(clean, detector)}
  chips.update({name: frame_chips(frames, detector) for name, frames in decoded.items()})
  ref_faces, _ = photos_lib.find_faces(reference, detector=detector, select="largest")
  reference_chips = np.stack([f.chip for f in ref_faces if f is not None])
  curves, summary = {}, {}
  start = time.time()
  for target_name in FLAGS.targets:
    target = opomjax.load_target(target_name)
    curves[target_name] = {name: similarity_to_reference(target, c, found, reference_chips)
                           for name, (c, found) in chips.items()}
    summary[target_name] = {name: dict(mean=float(np.nanmean(v)), min=float(np.nanmin(v)), max=float(np.nanmax(v)),
                                       frames_without_face=int(np.isnan(v).sum()))
                            for name, v in curves[target_name].items()}
    print(target_name, {k: round(v["mean"], 3) for k, v in summary[target_name].items()}, flush=True)
  timings["measure_seconds"] = time.time() - start
  plot_similarity(curves, FLAGS.fps, results / f"{FLAGS.prefix}_similarity.png", FLAGS.person)
  shown = {name: decoded[name] for name in list(decoded)[:2]}  # lossless and the first crf
  plot_frames(clean, shown, [5, 25, 45, 65], results / f"{FLAGS.prefix}_frames.png")

  import jax  # pylint: disable=import-outside-toplevel

  result = dict(
      person=FLAGS.person, clip=dict(frames=count, fps=FLAGS.fps, seconds=FLAGS.seconds, width=size[0],
                                     height=size[1], photos=[p.name for p in clip_photos], codec="libx264 crf 18"),
      mask=dict(path=str(mask_path), photos=[p.name for p in train]), reference=[p.name for p in reference],
      summary=summary, per_frame={t: {k: [None if np.isnan(x) else round(float(x), 4) for x in v]
                                      for k, v in c.items()} for t, c in curves.items()},
      tool={name: dict(summary=r["summary"], frames_per_second=r["seconds"]["frames_per_second"],
                       seconds=r["seconds"]["total"], encoding={k: r["output"][k] for k in ("codec", "options")})
            for name, r in reports.items()},
      timings=timings,
      machine=dict(cpus=os.cpu_count(), load_average=list(os.getloadavg()), platform=platform.platform(),
                   jax_backend=jax.default_backend(),
                   note="2 CPU cores shared with other jobs: frames/s are a lower bound"))
  atomic_write_bytes(results / f"{FLAGS.prefix}_demo.json", (json.dumps(result, indent=2) + "\n").encode())
  print(json.dumps(dict(summary=summary, tool=result["tool"], machine=result["machine"]), indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
