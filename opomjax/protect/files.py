"""Files: a folder (or glob) of photos in; protected photos, the mask and a report out.

:func:`protect_files` checks every argument (formats, names, the output folder, every photo, a saved mask)
before the first expensive step, then protects (or applies a saved mask), writes the photos in their own
layout, ``mask.npz`` and ``report.json``, and measures the result. The report counts the photos left unchanged
and the faces lost (not found again in the protected photo, or not measurable there).
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from opomjax import faces as faces_lib
from opomjax import files as files_lib
from opomjax.faces import io as io_lib
from opomjax.protect import measure as measure_lib
from opomjax.protect import photos as photos_lib

#: File name endings :func:`find_photos` picks up in a folder.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Settings that define a mask: they cannot be given together with a saved mask.
MASK_SETTINGS = ("surrogates", "surrogate_weights", "method", "steps", "step_size", "momentum", "dropout", "key",
                 "roundtrip", "eot", "eot_samples", "ti_width", "di_probability", "start_scale",
                 "fill_budget")

encode_photo = io_lib.encode_photo


def find_photos(spec: str | os.PathLike) -> list[pathlib.Path]:
  """The photo files a folder holds (not recursive, by suffix) or a glob pattern matches, sorted.

  Raises:
    ValueError: nothing matches.
  """
  spec = os.fspath(spec)
  if os.path.isdir(spec):
    paths = [p for p in pathlib.Path(spec).iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES]
  else:
    paths = [pathlib.Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
  if not paths:
    raise ValueError(f"no photos found at {spec!r} (a folder holding {'/'.join(PHOTO_SUFFIXES)} files, or a "
                     "glob pattern such as 'photos/*.jpg')")
  return sorted(paths)


def output_paths(inputs: Sequence[pathlib.Path], out_dir: str | os.PathLike, image_format: str) -> list[pathlib.Path]:
  """Output path per input: same file name in ``out_dir``, the suffix of ``image_format`` (png/jpeg)."""
  suffix = {"png": ".png", "jpeg": ".jpg"}.get(image_format)
  if suffix is None:
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  out_dir = pathlib.Path(out_dir)
  outs = [out_dir / (p.stem + suffix) for p in inputs]
  seen: dict[pathlib.Path, pathlib.Path] = {}
  for src, dst in zip(inputs, outs):
    if dst in seen:
      raise ValueError(f"{seen[dst]} and {src} would both be written to {dst}; rename one of them")
    if dst.resolve() == src.resolve():
      raise ValueError(f"writing {dst} would overwrite the original photo; choose another out folder")
    if dst.name in ("mask.npz", "report.json"):
      raise ValueError(f"{src} would be written over the run's own {dst.name}; rename it")
    seen[dst] = src
  return outs


def check_writable(out_dir: str | os.PathLike) -> pathlib.Path:
  """Creates ``out_dir`` if needed and writes (and removes) a test file in it; ValueError naming it otherwise."""
  out_dir = pathlib.Path(out_dir)
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".opomjax-write-test-"):
      pass
  except OSError as e:
    raise ValueError(f"cannot write to the output folder {out_dir}: {e.strerror or e}; choose a writable one") from e
  return out_dir


def load_photo_files(paths: Sequence[pathlib.Path]) -> list[faces_lib.Photo]:
  """Reads every file (:func:`opomjax.faces.read_photo`); one ValueError naming all the unreadable ones."""
  photos, bad = [], []
  for p in paths:
    try:
      photos.append(faces_lib.read_photo(p))
    except (ValueError, OSError) as e:
      bad.append(f"{p}: {e}")
  if bad:
    raise ValueError(f"{len(bad)} unreadable photo(s): " + "; ".join(bad))
  return photos


def _photo_paths(photos) -> list[pathlib.Path]:
  if isinstance(photos, (str, os.PathLike)):
    return find_photos(photos)
  paths = [pathlib.Path(p) for p in photos]
  if not paths:
    raise ValueError("photos is empty; give a folder, a glob pattern or a list of files")
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise ValueError(f"photo(s) not found: {', '.join(missing)}")
  return paths


def _face_indices(face_index: Mapping[Any, int] | None, paths: Sequence[pathlib.Path]) -> dict[int, int]:
  """``face_index`` keyed by photo index or file name (or path) -> photo index -> face index (0-based)."""
  out = {}
  for key, k in (face_index or {}).items():
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
      raise ValueError(f"face index for {key!r} must be a non-negative integer (0 = the leftmost face), got {k!r}")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
      if not 0 <= key < len(paths):
        raise ValueError(f"face index given for photo {key}, but there are {len(paths)} photos")
      out[int(key)] = int(k)
      continue
    matches = [i for i, p in enumerate(paths) if str(key) in (p.name, p.stem, str(p))]
    if len(matches) != 1:
      raise ValueError(f"a face index was given for {key!r}, which names {'no' if not matches else 'more than one'} "
                       "of the photos")
    out[matches[0]] = int(k)
  return out


def load_saved_mask(mask, allow_large_epsilon: bool) -> tuple[np.ndarray, dict, str]:
  """``(mask, metadata, name)`` of a mask file an ``opomjax protect`` run wrote (or an ``(array, metadata)``
  pair), checked by :func:`opomjax.protect.photos.check_saved_mask`; ValueError when the file is missing."""
  if isinstance(mask, (str, os.PathLike)):
    name = os.fspath(mask)
    try:
      array, meta = files_lib.load_mask(name, required=("frame", "epsilon"))
    except FileNotFoundError:
      raise ValueError(f"mask file not found: {name}") from None
  else:
    array, meta = mask
    array, meta, name = np.asarray(array, np.float32), dict(meta), "mask"
  photos_lib.check_saved_mask(array, meta, allow_large_epsilon=allow_large_epsilon, name=name)
  return array, meta, name


def protect_files(photos: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  image_format: str = "png", jpeg_quality: int = 95,
                  targets=("dlib_resnet", "sface_onnx"), mask=None,
                  face_index: Mapping[Any, int] | None = None, allow_random_weights: bool = False,
                  allow_large_epsilon: bool = False, **protect_options) -> dict:
  """Protects photo files: writes the protected photos, ``mask.npz`` and ``report.json`` to ``out_dir``.

  Every argument is checked before the first expensive step (loading models, finding faces, the ascent).

  Args:
    photos: a folder, a glob pattern, or a list of files.
    out_dir: the output folder (created; it must be writable). Protected photos keep their file names
      (suffix ``.png``, or ``.jpg`` for ``image_format="jpeg"``) and their layout: greyscale stays greyscale,
      transparency and 16 bits are kept in PNG; they carry no EXIF data (the pixels are already upright).
    image_format: ``"png"`` (lossless, keeps the mask intact and every layout) or ``"jpeg"`` (quality
      ``jpeg_quality``; photos with transparency are refused, 16-bit photos are written at 8 bits, noted).
    jpeg_quality: JPEG quality, an integer in [1, 100].
    targets: models to measure the protection with (see :func:`~opomjax.protect.measure.measure_protection`),
      measured on the files as written; empty to skip.
    mask: a saved mask to apply instead of computing one: the path of a ``mask.npz`` of an earlier run, or
      ``(mask, metadata)``. Its frame and epsilon are checked; the settings that define a mask (surrogates,
      method, steps, ...) cannot be given with it.
    face_index: photo (index, or file name) -> the face to take, counted from the left (0-based); the
      others follow ``select``.
    allow_random_weights: accept surrogates/targets without real weights (random networks).
    allow_large_epsilon: accept ``epsilon`` above :data:`opomjax.protect.photos.MAX_EPSILON`.
    **protect_options: passed to :func:`~opomjax.protect.photos.protect_photos` (surrogates, method, epsilon,
      steps, key, select, ...).

  Returns:
    The report (also written to ``report.json``): settings, per-photo results (``status``: ``"protected"``,
    ``"unchanged"`` or ``"lost"``, and notes), a summary of the counts, per-target summaries, times.

  Raises:
    ValueError: a bad argument, an unreadable photo or mask, an unwritable ``out_dir`` (before any work).
    opomjax.faces.NoFaceError: no photo has a usable face.
  """
  # 1. arguments that need no file
  io_lib.check_image_format(image_format, jpeg_quality)
  protect_options = {k: v for k, v in protect_options.items() if v is not None}
  show = protect_options.pop("show_progress", True)
  select = protect_options.get("select", "similar")
  min_face_size = protect_options.get("min_face_size", faces_lib.DEFAULT_MIN_FACE_SIZE)
  if mask is not None:
    given = sorted(k for k in (*MASK_SETTINGS, "epsilon") if k in protect_options)
    if given:
      raise ValueError(f"{', '.join(given)} cannot be given with a saved mask (it is already computed, with its "
                       "own settings)")
    unknown = sorted(set(protect_options) - {"detector", "min_face_size", "select", "feather"})
    if unknown:
      raise ValueError(f"unknown option(s) with a saved mask: {', '.join(unknown)}")
    photos_lib.check_options(select=select, min_face_size=min_face_size,
                             feather=protect_options.get("feather") or 0.0)
  else:
    options = protect_options
    unknown = sorted(set(options) - set(inspect.signature(photos_lib.protect_photos).parameters) - {"photos"})
    if unknown:
      raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    surrogates = options.get("surrogates", photos_lib.DEFAULT_SURROGATES)
    if isinstance(surrogates, (str, os.PathLike)):
      surrogates = (surrogates,)
    checked = set(inspect.signature(photos_lib.check_options).parameters) - {"surrogate_count", "allow_large_epsilon"}
    photos_lib.check_options(**{k: v for k, v in options.items() if k in checked},
                             surrogate_count=len(surrogates), allow_large_epsilon=allow_large_epsilon)
    for s in surrogates:
      if isinstance(s, (str, os.PathLike)):
        photos_lib.check_model_name(s)
  targets = () if not targets else ((targets,) if isinstance(targets, (str, os.PathLike)) else tuple(targets))
  for t in targets:
    if isinstance(t, (str, os.PathLike)):
      photos_lib.check_model_name(t, what="target", targets=True)
  # 2. files: photos, output folder, saved mask
  paths = _photo_paths(photos)
  outs = output_paths(paths, out_dir, image_format)
  face_index = _face_indices(face_index, paths)
  out_dir = check_writable(out_dir)
  saved = load_saved_mask(mask, allow_large_epsilon) if mask is not None else None
  loaded = load_photo_files(paths)
  no_alpha = [p.name for p, photo in zip(paths, loaded)
              if any(loss.startswith("transparency") for loss in io_lib.format_losses(photo, image_format))]
  if no_alpha:
    raise ValueError(f"JPEG cannot keep the transparency of {', '.join(no_alpha)}; use image_format='png' "
                     "(--format=png)")
  # 3. models (a refused one stops here, before the faces and the ascent)
  measured = measure_lib.load_targets(targets, allow_random_weights=allow_random_weights) if targets else []

  start = time.time()
  if saved is None:
    options = dict(protect_options)
    if "surrogates" in options:
      options["surrogates"] = photos_lib.load_surrogates(options["surrogates"], options.get("dropout", 0.0),
                                                         allow_random_weights=allow_random_weights)
    result = photos_lib.protect_photos(loaded, face_index=face_index, allow_large_epsilon=allow_large_epsilon,
                                       allow_random_weights=allow_random_weights, show_progress=show, **options)
  else:
    array, meta, _ = saved
    result = photos_lib.apply_saved_mask(
        loaded, array, meta, detector=protect_options.get("detector"), min_face_size=min_face_size,
        select=select, face_index=face_index, feather=protect_options.get("feather"),
        allow_large_epsilon=allow_large_epsilon, show_progress=show)
    if not result.protected:
      raise faces_lib.NoFaceError(f"none of the {len(loaded)} photos has a usable face; nothing to protect",
                                  reason="no_face")
  seconds_protect = time.time() - start
  for dst, pixels in tqdm(list(zip(outs, result.photos)), desc="writing", unit="photo", disable=not show):
    files_lib.atomic_write_bytes(dst, io_lib.encode_photo(pixels, image_format, jpeg_quality))
  metadata = {**result.metadata, "photos": [p.name for p in paths]}
  if saved is not None:
    metadata["reused_from"] = saved[2]
  files_lib.save_mask(out_dir / "mask.npz", result.mask, metadata)

  # 4. what a recognition system finds in the files as written
  start = time.time()
  written = [faces_lib.read_photo(o) for o in outs]
  detector = protect_options.get("detector")
  refound = measure_lib.refind_faces(written, result.faces, detector=detector, show_progress=show)
  measurements = {}
  if measured and len(result.protected) >= 2:
    measurements = measure_lib.measure_protection(loaded, written, measured, detector=detector,
                                                  faces=result.faces, show_progress=show)
  seconds_measure = time.time() - start
  report = _report(paths, outs, loaded, result, refound, measurements, image_format, jpeg_quality)
  report["seconds"] = dict(protect=seconds_protect, measure=seconds_measure)
  files_lib.atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
  return report


def _number_or_none(value) -> float | None:
  return None if np.isnan(value) else float(value)


def _report(paths, outs, loaded, result, refound, measurements, image_format, jpeg_quality) -> dict:
  per_photo = []
  for i, (src, dst) in enumerate(zip(paths, outs)):
    face, choice = result.faces[i], (result.choices[i] if result.choices else None)
    unmeasured = [name for name, m in measurements.items() if i in m.unmeasured]
    lost = face is not None and (refound[i] is None or bool(unmeasured))
    status = "unchanged" if face is None else ("lost" if lost else "protected")
    notes = list(loaded[i].notes) + [f"{loss} lost in {image_format.upper()}"
                                     for loss in io_lib.format_losses(loaded[i], image_format)]
    if choice is not None and choice.count > 1:
      notes.append(choice.describe())
    if lost:
      notes.append("the face was not found again in the protected photo" if refound[i] is None else
                   f"not measurable after protection by {', '.join(unmeasured)}")
    entry = dict(input=str(src), output=str(dst), status=status, protected=face is not None,
                 skipped=result.skipped.get(i), lost=lost, layout=loaded[i].describe(), notes=notes)
    if face is not None:
      entry["face"] = dict(box=face.box.tolist(), landmarks=face.landmarks.tolist(), score=face.score,
                           transform=face.transform.tolist(), **(choice.to_dict() if choice is not None else {}))
    entry["similarity"] = {name: dict(before=_number_or_none(m.before[i]), after=_number_or_none(m.after[i]))
                           for name, m in measurements.items()}
    per_photo.append(entry)
  counts = {s: sum(p["status"] == s for p in per_photo) for s in ("protected", "unchanged", "lost")}
  return dict(settings={**result.metadata, "image_format": image_format,
                        "jpeg_quality": jpeg_quality if image_format == "jpeg" else None},
              summary=dict(photos=len(per_photo), **counts),
              photos=per_photo, targets={name: m.to_dict() for name, m in measurements.items()},
              objective=[float(v) for v in result.trace],
              table=measure_lib.format_table(measurements) if measurements else "")
