"""Protect your own photos: one OPOM mask for a person, added to each of their photos.

The rooms of the tool:

* :mod:`opomjax.protect.photos`: the mask of a person — their face in each photo (with several faces, the one
  most like their other photos), one mask from all faces, the mask added to each photo in its own layout
  (:func:`protect_photos`), or a saved mask added to new photos (:func:`apply_saved_mask`);
* :mod:`opomjax.protect.measure`: what a recognition system finds in the protected photos
  (:func:`measure_protection`, :func:`format_table`);
* :mod:`opomjax.protect.files`: folders of photo files in, protected files, ``mask.npz`` and ``report.json``
  out (:func:`protect_files`), every argument checked before the work;
* :mod:`opomjax.protect.cli`: the ``opomjax protect`` command.

The ensemble maths is in :mod:`opomjax.core.ensemble`, the photo round trip in :mod:`opomjax.faces.roundtrip`.

Example:
  >>> from opomjax import protect  # doctest: +SKIP
  >>> result = protect.protect_photos(["me_1.jpg", "me_2.jpg", "me_3.jpg"])  # doctest: +SKIP
  >>> report = protect.measure_protection(["me_1.jpg", "me_2.jpg", "me_3.jpg"], result.photos,  # doctest: +SKIP
  ...                                     faces=result.faces)
  >>> print(protect.format_table(report))  # doctest: +SKIP

What the mask can and cannot do: it is computed on the surrogate models only. Against those (white-box) it
works reliably; against a system it has never seen it *usually lowers* the similarity (the transfer the paper
measures), but no protection against an unseen system is guaranteed, and lossy re-compression or resizing of
the protected photo weakens it.

The names are imported lazily, so that ``opomjax protect --help`` does not wait for JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # the mask of a person
    "DEFAULT_STEPS": "opomjax.protect.photos",
    "FACE_RULES": "opomjax.protect.photos",
    "MAX_EPSILON": "opomjax.protect.photos",
    "FaceChoice": "opomjax.protect.photos",
    "ProtectionResult": "opomjax.protect.photos",
    "apply_saved_mask": "opomjax.protect.photos",
    "check_options": "opomjax.protect.photos",
    "check_saved_mask": "opomjax.protect.photos",
    "choose_faces": "opomjax.protect.photos",
    "embed_chips": "opomjax.protect.photos",
    "find_candidates": "opomjax.protect.photos",
    "find_faces": "opomjax.protect.photos",
    "load_surrogates": "opomjax.protect.photos",
    "protect_photos": "opomjax.protect.photos",
    "read_photos": "opomjax.protect.photos",
    "insertion_for": "opomjax.protect.photos",
    # measurement
    "MATCH_THRESHOLDS": "opomjax.protect.measure",
    "TargetSimilarity": "opomjax.protect.measure",
    "format_table": "opomjax.protect.measure",
    "load_targets": "opomjax.protect.measure",
    "measure_protection": "opomjax.protect.measure",
    "refind_faces": "opomjax.protect.measure",
    "similarity_to_others": "opomjax.protect.measure",
    # files
    "PHOTO_SUFFIXES": "opomjax.protect.files",
    "check_writable": "opomjax.protect.files",
    "encode_photo": "opomjax.protect.files",
    "find_photos": "opomjax.protect.files",
    "load_photo_files": "opomjax.protect.files",
    "output_paths": "opomjax.protect.files",
    "protect_files": "opomjax.protect.files",
    # the maths, where it lives now
    "ensemble_embedding": "opomjax.core.ensemble",
    "roundtrip_weights": "opomjax.faces.roundtrip",
    "apply_roundtrip": "opomjax.faces.roundtrip",
    # the command line
    "main": "opomjax.protect.cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in ("photos", "measure", "files", "cli", "video"):
    return importlib.import_module(f"opomjax.protect.{name}")
  raise AttributeError(f"module 'opomjax.protect' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
