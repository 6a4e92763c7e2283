"""Checks of an experiment's config and arguments, run before the first expensive step.

Every check raises ``ValueError`` (or ``FileNotFoundError`` for a missing file) with one line that names the
offending config field or flag and says what to do; the launchers in ``experiments/`` print it as
``error: ...`` and exit with a non-zero status. Pure: nothing is loaded, compiled or computed (only the workdir
is created, to check that it can be written).
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile

from opomjax.core import ascent
from opomjax.core import hulls
from opomjax.core import transfer
from opomjax.faces import channel
from opomjax.models import registry
from opomjax.pipeline import settings as settings_lib

#: Method names accepted in configs, in the order the paper's tables list them.
METHODS = ("fi-uap", "fi-uap+", "fi-uap-all", "gd-uap", "opom-affine", "opom-center", "opom-convex", "gap")

#: Largest ε (pixel units of [0, 255]) accepted without ``allow_large_epsilon``: the core's bound.
MAX_EPSILON = float(getattr(ascent, "MAX_EPSILON", 32.0))

#: ``config.parallel`` values (``""`` and ``"none"``: one device).
PARALLEL_VALUES = ("", "none", "pmap", "shard_map")

#: The data set that needs no data: random-noise identities.
SYNTHETIC = "synthetic"


def split_names(value) -> list[str]:
  """``"a, b,,c"`` (or a list) -> ``["a", "b", "c"]``."""
  items = value.split(",") if isinstance(value, str) else list(value or ())
  return [str(item).strip() for item in items if str(item).strip()]


def method_names(config) -> list[str]:
  """The methods of ``config.methods``; ValueError for an unknown or missing one."""
  names = split_names(config.methods)
  unknown = [m for m in names if m not in METHODS]
  if unknown or not names:
    raise ValueError(f"config.methods has unknown method(s) {unknown or config.methods!r}; "
                     f"choose from {', '.join(METHODS)}")
  return names


def check_number(value, name: str, *, positive: bool = False, minimum: float | None = None,
                 below: float | None = None) -> float:
  """``float(value)`` if it is a finite real number within the bounds; else ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  if positive and value <= 0:
    raise ValueError(f"{name} must be positive, got {value!r}")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be at least {minimum:g}, got {value!r}")
  if below is not None and value >= below:
    raise ValueError(f"{name} must be below {below:g}, got {value!r}")
  return float(value)


def check_integer(value, name: str, *, minimum: int = 1) -> int:
  """``value`` if it is an integer >= ``minimum``; else ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return value


def check_epsilon(epsilon, name: str = "config.epsilon", *, allow_large: bool = False,
                  override: str = "config.allow_large_epsilon=True", zero_ok: bool = False) -> float:
  """ε in pixel units of [0, 255]: positive (or 0 with ``zero_ok``), finite, at most :data:`MAX_EPSILON`."""
  epsilon = check_number(epsilon, name, minimum=0.0) if zero_ok else check_number(epsilon, name, positive=True)
  if epsilon > MAX_EPSILON and not allow_large:
    raise ValueError(f"{name}={epsilon:g} exceeds {MAX_EPSILON:g} (pixel units of [0, 255]; the paper uses 8): "
                     f"such a mask visibly destroys the face; set {override} if that is meant")
  return epsilon


def check_model_name(name: str, what: str, *, allow_random_weights: bool = False, target: bool = False) -> None:
  """A registry name (surrogate, or also a black-box target with ``target``) or an existing ``.onnx`` file.

  A registered architecture without weights of its own is refused unless ``allow_random_weights``: a random
  network would pass for a face model.
  """
  if name in registry.MODEL_BUILDERS:
    has_weights = getattr(registry, "has_registered_weights", lambda _: True)
    if not allow_random_weights and not has_weights(name):
      raise ValueError(f"{what}: model {name!r} has no real weights here; prepare them (opomjax checkpoints "
                       f"prepare {name} --source PATH) or set config.allow_random_weights=True for a test run")
    return
  if target and name in registry.TARGET_BUILDERS:
    return
  if name.endswith(".onnx"):
    if not pathlib.Path(name).is_file():
      raise FileNotFoundError(f"{what}: no ONNX file {name}")
    return
  known = sorted(registry.MODEL_BUILDERS) + (sorted(registry.TARGET_BUILDERS) if target else [])
  raise ValueError(f"{what}: unknown model {name!r}; known: {', '.join(known)}, or the path of an .onnx file")


def check_writable(path: str | os.PathLike, what: str) -> pathlib.Path:
  """Creates folder ``path`` if needed and writes (and removes) a temporary file in it."""
  path = pathlib.Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".opomjax-write-check-"):
      pass
  except OSError as e:
    raise ValueError(f"{what}={path} cannot be written ({e.strerror or e}); choose another folder") from e
  return path


def known_datasets() -> tuple[str, ...]:
  from opomjax import data  # imported only when a real data set is asked for (it pulls in tfds)

  return (SYNTHETIC,) + tuple(data.PROTOCOLS)


def check_dataset(dataset) -> None:
  """``config.dataset``: a known name, a non-negative ``num_identities``, existing folders, a boolean ``download``."""
  name = dataset.name
  if name != SYNTHETIC and name not in known_datasets():
    raise ValueError(f"config.dataset.name: unknown data set {name!r}; choose from {', '.join(known_datasets())}")
  check_integer(dataset.get("num_identities") or 0, "config.dataset.num_identities", minimum=0)
  if name == SYNTHETIC:
    check_integer(dataset.get("images_per_split", 2), "config.dataset.images_per_split")
  if not isinstance(dataset.get("download", False), bool):
    raise ValueError(f"config.dataset.download must be True or False, got {dataset.get('download')!r}")
  for field in ("lfw_dir", "root"):
    value = dataset.get(field)
    if value and not pathlib.Path(value).exists():
      raise FileNotFoundError(f"config.dataset.{field}: {value} does not exist")
  if name == "folder" and not dataset.get("root"):
    raise ValueError("config.dataset.root must name a PERSON/*.jpg folder for the 'folder' data set")


def check_config(config, workdir: str | os.PathLike, *, targets: bool = True, dataset: bool = True) -> None:
  """Every field of an experiment config, and that ``workdir`` can be written.

  Args:
    config: the experiment's ConfigDict (see ``experiments/configs/common.py``).
    workdir: where masks and results go.
    targets: also check ``config.targets`` and ``config.eval_batch_size`` (the evaluation's fields).
    dataset: also check ``config.dataset`` (off when the training chips come from a file, which is checked to
      hold the config's data set: :mod:`opomjax.pipeline.chips`).

  Raises:
    ValueError, FileNotFoundError: one line naming the bad field.
  """
  methods = method_names(config)
  allow_random = bool(config.get("allow_random_weights", False))
  surrogates = settings_lib.surrogate_names(config)
  if not surrogates:
    raise ValueError("config.surrogate is empty; name a model (or several, comma-separated, for an ensemble)")
  if len(set(surrogates)) != len(surrogates):
    raise ValueError(f"config.surrogate names a model twice: {config.surrogate!r}")
  for name in surrogates:
    check_model_name(name, "config.surrogate", allow_random_weights=allow_random)
  settings_lib.ensemble_weights(config)  # one line for bad weights
  if targets:
    names = split_names(config.targets)
    if not names:
      raise ValueError("config.targets is empty; name at least one model to evaluate against")
    checked = conditions(config)
    photo_insertion(config)
    for name in names:
      if name == DLIB_NATIVE:
        if not set(checked) & set(channel.PHOTO_CONDITIONS):
          raise ValueError(f"config.targets: {DLIB_NATIVE} (dlib's own detector, landmarks and chips) judges whole "
                           f"photos; add {' or '.join(channel.PHOTO_CONDITIONS)} to config.conditions")
        continue
      check_model_name(name, "config.targets", allow_random_weights=allow_random, target=True)
    check_integer(config.eval_batch_size, "config.eval_batch_size")
  check_epsilon(config.epsilon, allow_large=bool(config.get("allow_large_epsilon", False)))
  check_number(config.step_size, "config.step_size", positive=True)
  check_integer(config.steps, "config.steps")
  check_integer(config.group_size, "config.group_size")
  check_number(config.momentum or 0.0, "config.momentum", minimum=0.0)
  check_number(config.dropout, "config.dropout", minimum=0.0, below=1.0)
  once = config.get("dfanet_clean_once", True)
  if not isinstance(once, bool):
    raise ValueError(f"config.dfanet_clean_once must be True or False, got {once!r}")
  check_integer(config.seed, "config.seed", minimum=0)
  if "opom-convex" in methods:
    lower = check_number(config.lower, "config.lower")
    upper = check_number(config.upper, "config.upper")
    if lower > upper:
      raise ValueError(f"config.lower={lower:g} exceeds config.upper={upper:g}")
    check_integer(config.get("warmup_center_steps", 0), "config.warmup_center_steps", minimum=0)
    if config.get("solver", "osqp") not in hulls.SOLVERS:
      raise ValueError(f"config.solver must be one of {', '.join(hulls.SOLVERS)}, got {config.solver!r}")
  try:  # the transfer techniques, by the library's own checks, before anything is loaded
    ascent.validate_transfer_options(ascent.AscentConfig(**settings_lib.transfer_options(config)))
  except (TypeError, ValueError) as err:
    raise ValueError(f"config.{err}") from None
  guide = settings_lib.mid_feature_guide(config)
  if guide and not float(config.get("mid_feature_weight", 0.0)) > 0:
    raise ValueError("config.mid_feature_guide needs config.mid_feature_weight > 0 (the weight of its term)")
  if guide and not (pathlib.Path(guide) / "masks").is_dir():
    raise FileNotFoundError(f"config.mid_feature_guide={guide!r}: no masks/ folder there (give the workdir of one "
                            "method's run, e.g. runs/x/opom-convex-dlib_resnet)")
  eot = settings_lib.eot_channels(config)
  if eot:
    try:
      transfer.check_channels(eot)
    except ValueError:
      raise ValueError(f"config.eot: unknown channel in {config.eot!r}; use a comma-separated subset of "
                       f"{', '.join(transfer.EOT_CHANNELS)} (empty: no EOT)") from None
    check_integer(config.get("eot_samples", 4), "config.eot_samples")
    if config.get("eot_rounding", "ste") not in transfer.ROUNDINGS:
      raise ValueError(f"config.eot_rounding must be one of {', '.join(transfer.ROUNDINGS)}, "
                       f"got {config.eot_rounding!r}")
  if (config.parallel or "") not in PARALLEL_VALUES:
    raise ValueError(f"config.parallel must be one of {', '.join(PARALLEL_VALUES[1:])}, got {config.parallel!r}")
  if "gap" in methods:  # GAP's generator and Adam fields (config.gap)
    from opomjax.pipeline import gap  # pylint: disable=g-import-not-at-top  (it imports this module)

    gap.check_config(config)
  if dataset:
    check_dataset(config.dataset)
  check_writable(workdir, "--workdir")
  if config.get("feature_cache"):
    check_writable(config.feature_cache, "config.feature_cache")


#: The photo-space target of dlib's reference pipeline (:mod:`opomjax.pipeline.dlib_native`).
DLIB_NATIVE = "dlib_native"


def conditions(config) -> tuple[str, ...]:
  """``config.conditions`` (default ``none``: the probe as a saved 8-bit photo) as checked condition names."""
  try:
    names = channel.parse_conditions(config.get("conditions", "none"))
  except ValueError as e:
    raise ValueError(f"config.{e}") from None
  photo = [n for n in names if n in channel.PHOTO_CONDITIONS]
  if photo and config.dataset.name == "synthetic":
    raise ValueError(f"config.conditions: {', '.join(photo)} put the mask into the original photos; the synthetic "
                     "data set has none")
  return names


def photo_insertion(config) -> str:
  """``config.photo_insertion``: how the photo conditions put each mask into its photo
  (:data:`opomjax.faces.MASK_INSERTIONS`; default :data:`opomjax.faces.MASK_INSERTION`)."""
  from opomjax.faces import align  # pylint: disable=g-import-not-at-top

  name = config.get("photo_insertion", align.MASK_INSERTION)
  if name not in align.MASK_INSERTIONS:
    raise ValueError(f"config.photo_insertion must be one of {', '.join(align.MASK_INSERTIONS)}; got {name!r}")
  return name


def check_reduced_hull(config, methods, images_per_identity: int) -> None:
  """OPOM-ConvexHull's bounds against the data: the reduced hull needs ``lower <= 1/n <= upper``."""
  if "opom-convex" in methods and not config.lower <= 1.0 / images_per_identity <= config.upper:
    raise ValueError(f"config.lower={config.lower:g} / config.upper={config.upper:g}: the reduced hull is empty for "
                     f"{images_per_identity} training photos per identity (need lower <= 1/n <= upper)")
