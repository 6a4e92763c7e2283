"""Identification of real people with the Flax port of dlib's ResNet (real weights) on LFW.

  .venv/bin/python bench/recognition_lfw.py [--lfw DIR] [--identities 20] [--probes 2]   # ~20 s on 2 CPU cores

For the first ``identities`` LFW people (alphabetical) with at least ``probes + 1`` photos: the first photo
is the gallery, the next ``probes`` are held apart as queries. Faces are cut as dlib does for its descriptor
(frontal detector, 5-point landmarks, ``get_face_chip`` 150x150 with padding 0.25); every query is assigned
the identity of its nearest gallery descriptor (cosine). Prints the accuracy against chance (1 / identities).
Needs ``dlib`` (``pip install dlib-bin``) for the chips only; the descriptor is the JAX port.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opomjax import data  # pylint: disable=wrong-import-position
from opomjax.models import dlib_resnet  # pylint: disable=wrong-import-position
from opomjax.models import checkpoints  # pylint: disable=wrong-import-position


def select_people(lfw_root: pathlib.Path, identities: int, per_identity: int) -> dict[str, list[pathlib.Path]]:
  """The first ``identities`` people (alphabetical) with at least ``per_identity`` photos, and those photos."""
  people = {}
  for person in sorted(p for p in pathlib.Path(lfw_root).iterdir() if p.is_dir()):
    photos = sorted(person.glob("*.jpg"))
    if len(photos) >= per_identity:
      people[person.name] = photos[:per_identity]
    if len(people) == identities:
      return people
  raise ValueError(f"only {len(people)} people in {lfw_root} have {per_identity} photos; asked for {identities}")


class DlibChipper:
  """dlib's own face-chip pipeline: frontal detector, 5-point landmarks, ``get_face_chip(150, 0.25)``."""

  def __init__(self):
    import dlib  # pylint: disable=import-outside-toplevel

    self.dlib = dlib
    self.detector = dlib.get_frontal_face_detector()
    self.predictor = dlib.shape_predictor(str(checkpoints.resolve_file("dlib_shape_predictor5")))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """An RGB uint8 photo -> its 150x150 uint8 chip (the largest detection, or the photo's centre)."""
    dets = list(self.detector(image, 1))
    if dets:
      rect = max(dets, key=lambda d: d.area())
    else:  # LFW photos are centred on the face
      h, w = image.shape[:2]
      rect = self.dlib.rectangle(w // 2 - 55, h // 2 - 55, w // 2 + 55, h // 2 + 55)
    shape = self.predictor(image, rect)
    return np.asarray(self.dlib.get_face_chip(image, shape, size=dlib_resnet.CHIP_SIZE,
                                              padding=dlib_resnet.CHIP_PADDING))


def load_rgb(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def nearest_neighbour_accuracy(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray,
                               probe_ids: np.ndarray) -> float:
  """Fraction of probes whose most cosine-similar gallery descriptor has the probe's identity."""
  g = gallery / np.linalg.norm(gallery, axis=-1, keepdims=True)
  p = probes / np.linalg.norm(probes, axis=-1, keepdims=True)
  return float(np.mean(gallery_ids[np.argmax(p @ g.T, axis=1)] == probe_ids))


def identification_accuracy(lfw_root: pathlib.Path, identities: int = 20, probes: int = 2,
                            model=None) -> dict[str, float]:
  """Runs the protocol above; returns accuracy, chance and counts."""
  model = model or dlib_resnet.build_dlib_resnet()
  people = select_people(lfw_root, identities, probes + 1)
  chipper = DlibChipper()
  chips, ids, is_gallery = [], [], []
  for i, photos in enumerate(people.values()):
    for j, photo in enumerate(photos):
      chips.append(chipper(load_rgb(photo)))
      ids.append(i)
      is_gallery.append(j == 0)
  emb = np.asarray(model.embed_native(np.stack(chips).astype(np.float32)))
  ids, is_gallery = np.asarray(ids), np.asarray(is_gallery)
  acc = nearest_neighbour_accuracy(emb[is_gallery], ids[is_gallery], emb[~is_gallery], ids[~is_gallery])
  return {"accuracy": acc, "chance": 1.0 / identities, "identities": identities,
          "queries": int((~is_gallery).sum())}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lfw", type=pathlib.Path, default=None, help="LFW folder (default: as opomjax.data finds it)")
  parser.add_argument("--identities", type=int, default=20)
  parser.add_argument("--probes", type=int, default=2)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  r = identification_accuracy(data.find_lfw_dir(args.lfw), args.identities, args.probes)
  print(f"dlib_resnet (JAX, real weights) on LFW: {r['identities']} identities, {r['queries']} held-apart "
        f"queries, nearest-neighbour accuracy {r['accuracy']:.3f} (chance {r['chance']:.3f}) "
        f"[{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
  main()
