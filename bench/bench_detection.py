"""Face detection and alignment throughput on LFW (CPU), and the detection rate.

Run:  python bench/bench_detection.py --limit 500            (about 10 s on 2 CPU cores)
      python bench/bench_detection.py --limit 0              (all 13,233 LFW photos, about 2 min)

Prints, for one run: photos per second for loading, YuNet at the photo's own size (padded to 256x256 for LFW)
and at the published 640x640 input, alignment into the canonical frame, and the share of photos with a face.
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np
import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from opomjax import faces  # pylint: disable=g-import-not-at-top,wrong-import-position
from opomjax.models import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position


def lfw_photos(root: pathlib.Path, limit: int) -> list[pathlib.Path]:
  """``limit`` photos spread evenly over the sorted LFW file list (all when ``limit`` is 0)."""
  paths = sorted(root.glob("*/*.jpg"))
  if limit and limit < len(paths):
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
  return paths


def main():
  default_lfw = os.environ.get("OPOMJAX_LFW_DIR") or checkpoints.shared_dir() / "datasets" / "lfw-deepfunneled"
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lfw", type=pathlib.Path, default=default_lfw,
                      help="LFW folder (default: $OPOMJAX_LFW_DIR, else datasets/lfw-deepfunneled in the shared folder)")
  parser.add_argument("--limit", type=int, default=500, help="photos to use (0: all)")
  parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
  parser.add_argument("--skip-640", action="store_true", help="do not time the 640x640 input")
  args = parser.parse_args()

  paths = lfw_photos(args.lfw, args.limit)
  if not paths:
    parser.error(f"no LFW photos (*/*.jpg) under {args.lfw}; pass --lfw or set $OPOMJAX_LFW_DIR")
  print(f"{len(paths)} LFW photos from {args.lfw}, onnxruntime threads: {args.threads or 'default'}")

  detector = faces.YuNetDetector(num_threads=args.threads)
  detector(faces.load_photo(paths[0]))  # warm-up
  t_load = t_detect = t_align = 0.0
  found = central = 0
  missed = []
  sample = []  # a few photos kept for the network-only comparison below
  for path in tqdm.tqdm(paths, desc="photos", mininterval=5):
    t0 = time.perf_counter()
    photo = faces.load_photo(path)
    t1 = time.perf_counter()
    detections = detector(photo)
    t2 = time.perf_counter()
    h, w = photo.shape[:2]
    if any(d.box[0] < w / 2 < d.box[2] and d.box[1] < h / 2 < d.box[3] for d in detections):
      central += 1
    else:
      missed.append(path.name)
    if detections:
      found += 1
      faces.align_face(photo, max(detections, key=lambda d: d.area))
    t3 = time.perf_counter()
    t_load, t_detect, t_align = t_load + t1 - t0, t_detect + t2 - t1, t_align + t3 - t2
    if len(sample) < 100:
      sample.append(photo)

  n = len(paths)
  per_photo = (t_load + t_detect + t_align) / n
  print(f"load   {1e3 * t_load / n:7.2f} ms/photo")
  print(f"detect {1e3 * t_detect / n:7.2f} ms/photo (own size, padded to a multiple of 32)")
  print(f"align  {1e3 * t_align / n:7.2f} ms/photo")
  print(f"a face found in {found}/{n} photos ({100 * found / n:.2f}%); the central face (the box holds the "
        f"photo's centre) in {central}/{n} ({100 * central / n:.2f}%)")
  if missed:
    print("central face missed in:", ", ".join(missed[:20]), "..." if len(missed) > 20 else "")
  print(f"total  {1e3 * per_photo:7.2f} ms/photo -> {per_photo * 13233 / 60:.1f} min for all 13,233 LFW photos")

  if not args.skip_640:
    blob = np.zeros((640, 640, 3), np.uint8)
    t0 = time.perf_counter()
    for p in sample:
      blob[: p.shape[0], : p.shape[1]] = p
      detector.raw_outputs(blob)
    t_640 = (time.perf_counter() - t0) / len(sample)
    t0 = time.perf_counter()
    for p in sample:
      detector.raw_outputs(p)
    t_own = (time.perf_counter() - t0) / len(sample)
    print(f"network only: 640x640 {1e3 * t_640:.2f} ms, own size {1e3 * t_own:.2f} ms "
          f"(ratio {t_640 / t_own:.1f}x)")


if __name__ == "__main__":
  main()
