r"""``opomjax protect``: protects a person's photos with one OPOM mask and reports what a recognition system sees.

  opomjax protect --photos=my_photos/ --out=protected/
  opomjax protect --photos='my_photos/*.jpg' --out=protected/ --surrogates=dlib_resnet,sface
  opomjax protect --photos=new_photos/ --out=protected_new/ --mask=protected/mask.npz   # reuse the mask

Writes OUT/<name>.png (or .jpg with --format=jpeg) per photo, OUT/mask.npz and OUT/report.json, and prints the
before/after similarity table. Exit status: 0 every photo protected; 2 a bad argument or input (one line
``error: ...``, nothing done); 3 some photo left unchanged (no usable face) or its face lost after protection
(not found again, or not measurable); 1 an unexpected failure (``$OPOMJAX_TRACEBACK=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import warnings
from typing import Sequence

from opomjax.protect import commands
from opomjax.protect import defaults
from opomjax.protect.commands import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, UsageError
from opomjax.protect.commands import Parser as _Parser

#: Must match opomjax.protect.photos.FACE_RULES (kept here so that --help needs no JAX).
_FACE_RULES = ("similar", "largest", "central", "best")


def _comma_list(text: str) -> list[str]:
  return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="opomjax protect", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Protects a person's photos with one OPOM privacy mask (or a saved one: --mask).",
      epilog="exit status: 0 all photos protected; 2 bad argument or input (nothing done); 3 a photo left "
             "unchanged or a face lost after protection; 1 unexpected failure.")
  add = parser.add_argument
  add("--photos", nargs="+", required=True, metavar="PHOTOS",
      help="a folder of photos of one person, a glob pattern ('photos/*.jpg'), or photo files")
  add("--out", required=True, help="output folder for the protected photos, mask.npz and report.json")
  add("--mask", default=None, help="apply this saved mask (the mask.npz of an earlier run) instead of computing one")
  add("--face", type=_comma_list, default=["similar"], metavar="RULE[,NAME=K...]",
      help="which face is the person's in a photo with several: similar (most like the person's other photos; "
           "default), largest, central or best; NAME=K takes the K-th face from the left (K >= 1) in photo NAME")
  add("--select", dest="face", type=_comma_list, help=argparse.SUPPRESS)  # the flag's former name
  add("--preset", choices=tuple(defaults.PRESETS), default=None,
      help="transfer (default): computed on dlib_resnet, sface, faceres and mobileface with TI and DI, for "
           "recognisers the mask never saw; fast: dlib_resnet alone, plain steps, the mask moved to its "
           "budget (less than half the time, little protection beyond dlib). Flags given explicitly override "
           "the preset")
  add("--surrogates", type=_comma_list, default=None,
      help=f"models the mask is computed on (default: the preset's, {','.join(defaults.SURROGATES)})")
  add("--surrogate_weights", type=_comma_list, default=None, help="one weight per surrogate (default: equal)")
  add("--method", default=None, help="mask method (see opomjax.generate_masks; default opom-convex)")
  add("--epsilon", type=float, default=None, help="largest change of a pixel value, in [0, 255] units (default 8)")
  add("--allow_large_epsilon", action="store_true", help="accept --epsilon above 32")
  add("--steps", type=int, default=None, help=f"ascent steps (default: the preset's, {defaults.STEPS})")
  add("--step_size", type=float, default=None, help="change of each mask pixel per step (default 1)")
  add("--momentum", type=float, default=None, help="momentum decay (Eq. 14; default none)")
  add("--dropout", type=float, default=None, help="DFANet dropout rate of the surrogates (default 0: off)")
  add("--seed", type=int, default=None, help="seed of the mask's random start (default 0)")
  add("--eot", type=_comma_list, default=None, metavar="CHANNELS",
      help="make the mask survive saving and re-encoding: average each step over random versions of these "
           "channels, e.g. none,jpeg,resize,blur (default: off; costs --eot_samples times the steps)")
  add("--eot_samples", type=int, default=None, help="random channel draws per step with --eot (default 4)")
  add("--ti_width", type=int, default=None,
      help=f"smooth each step's gradient with a Gaussian of this odd width (TI; helps unseen models; 1: off; "
           f"default: the preset's, {defaults.TI_WIDTH})")
  add("--di_probability", type=float, default=None,
      help=f"probability that a step sees the faces randomly shrunk and shifted (DI; helps unseen models; 0: "
           f"off; default: the preset's, {defaults.DI_PROBABILITY})")
  add("--start_scale", type=float, default=None,
      help=f"the mask's random start as a fraction of --epsilon, 0..1 (0: start from no mask; default: the "
           f"preset's, {defaults.START_SCALE:g})")
  add("--fill_budget", action=argparse.BooleanOptionalAction, default=None,
      help="move every value of the finished mask to +-epsilon in its own direction (more protection at few "
           "steps, no cost; default: the preset's, on)")
  add("--feather", type=float, default=None, help="pixels over which the mask fades out at the face region's edge")
  add("--min_face_size", type=float, default=None, help="faces smaller than this (pixels) are left unprotected")
  add("--format", dest="image_format", choices=("png", "jpeg"), default="png",
      help="output format: png (lossless; keeps greyscale, alpha and 16 bits) or jpeg")
  add("--jpeg_quality", type=int, default=95, help="JPEG quality for --format=jpeg, 1..100 (default 95)")
  add("--targets", type=_comma_list, default=["dlib_resnet", "sface_onnx"],
      help="models to measure the protection with ('' to skip)")
  add("--allow_random_weights", action="store_true",
      help="accept surrogates/targets without real weights (random networks; for tests only)")
  add("--quiet", action="store_true", help="no progress bars or log lines")
  return parser


def _face_options(items: Sequence[str]) -> tuple[str | None, dict[str, int]]:
  rule, given = None, {}
  for item in items:
    if "=" in item:
      name, _, k = item.rpartition("=")
      if not name or not k.strip().isdigit() or int(k) < 1:
        raise UsageError(f"--face: {item!r} must be NAME=K with K >= 1 (the K-th face from the left)")
      given[name] = int(k) - 1
    elif item in _FACE_RULES:
      if rule is not None and rule != item:
        raise UsageError(f"--face names two rules, {rule} and {item}; give one")
      rule = item
    else:
      raise UsageError(f"--face: unknown rule {item!r}; use one of {', '.join(_FACE_RULES)} or NAME=K")
  return rule, given


def _options(args: argparse.Namespace) -> dict:
  """The keyword arguments of :func:`opomjax.protect.files.protect_files` from the parsed flags."""
  if not 1 <= args.jpeg_quality <= 100:
    raise UsageError(f"--jpeg_quality must lie in 1..100, got {args.jpeg_quality}")
  rule, given = _face_options(args.face)
  weights = None
  if args.surrogate_weights is not None:
    try:
      weights = [float(w) for w in args.surrogate_weights]
    except ValueError:
      raise UsageError(f"--surrogate_weights must be numbers, got {','.join(args.surrogate_weights)}") from None
  preset = defaults.PRESETS[args.preset or defaults.PRESET]
  mask_settings = dict(surrogates=args.surrogates, surrogate_weights=weights, method=args.method,
                       epsilon=args.epsilon, steps=args.steps, step_size=args.step_size, momentum=args.momentum,
                       dropout=args.dropout, key=args.seed, eot=args.eot, eot_samples=args.eot_samples,
                       ti_width=args.ti_width, di_probability=args.di_probability, start_scale=args.start_scale,
                       fill_budget=args.fill_budget)
  if args.mask is not None:
    given_settings = [f"--{'seed' if k == 'key' else k}" for k, v in mask_settings.items() if v is not None]
    if args.preset is not None:
      given_settings.append("--preset")
    if given_settings:
      raise UsageError(f"{', '.join(given_settings)} cannot be used with --mask: the saved mask is already "
                       "computed, with its own settings")
    mask_settings = {}
  else:
    mask_settings.update({k: v for k, v in preset.items() if mask_settings[k] is None})
  photos = args.photos[0] if len(args.photos) == 1 else args.photos
  return dict(photos=photos, out_dir=args.out, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
              targets=tuple(args.targets), mask=args.mask, face_index=given or None,
              allow_random_weights=args.allow_random_weights, allow_large_epsilon=args.allow_large_epsilon,
              select=rule, feather=args.feather, min_face_size=args.min_face_size, show_progress=not args.quiet,
              **mask_settings)


def exit_status(report: dict) -> int:
  """0 when every photo was protected and found again, else :data:`EXIT_INCOMPLETE`."""
  summary = report["summary"]
  return EXIT_OK if summary["unchanged"] == 0 and summary["lost"] == 0 else EXIT_INCOMPLETE


def summarise(report: dict, out: str) -> str:
  """The lines printed after a run: counts, every photo left unchanged / lost / noted, the table."""
  summary = report["summary"]
  lines = [f"protected {summary['protected']} of {summary['photos']} photos in {report['seconds']['protect']:.0f} s "
           f"-> {out}"]
  if summary["unchanged"]:
    lines.append(f"{summary['unchanged']} photo(s) left unchanged (no usable face):")
    lines += [f"  {p['input']} ({p['skipped']})" for p in report["photos"] if p["status"] == "unchanged"]
  if summary["lost"]:
    lines.append(f"{summary['lost']} photo(s) masked, but the face is lost after protection (written; not counted "
                 "as protected):")
    lines += [f"  {p['input']}: {p['notes'][-1]}" for p in report["photos"] if p["status"] == "lost"]
  noted = [p for p in report["photos"] if p["notes"] and p["status"] != "lost"]
  if noted:
    lines.append("notes:")
    lines += [f"  {p['input']}: {note}" for p in noted for note in p["notes"]]
  if report["table"]:
    lines += ["", "mean cosine similarity to the person's other clean photos (lower after = better hidden):",
              report["table"]]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``opomjax protect`` with ``argv`` (without the program name; default ``sys.argv[1:]``).

  Returns:
    The exit status (see the module docstring).
  """
  args, status = commands.parse_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
  if args is None:
    return status
  try:
    options = _options(args)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  if not args.quiet:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
  # pylint: disable=import-outside-toplevel
  from opomjax import faces as faces_lib
  from opomjax import files as files_lib
  from opomjax.protect import files as protect_files_lib
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # the same facts are in the report, printed below
      report = protect_files_lib.protect_files(**options)
  except Exception as e:  # pylint: disable=broad-except  # every failure: one line and its exit status
    return commands.error_status(e, incomplete=(faces_lib.NoFaceError,),
                                 usage=(ValueError, FileNotFoundError, files_lib.MaskFileError))
  print(summarise(report, str(pathlib.Path(args.out))))
  return exit_status(report)


if __name__ == "__main__":
  sys.exit(main())
