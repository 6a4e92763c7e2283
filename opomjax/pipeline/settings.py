"""What a workdir's masks were made with, and the check that refuses to pass them off as another run's.

Every mask file the runner writes carries ``metadata["settings"]``, the union of

* the **config settings** of its method (:func:`generation_settings`): every config field that changes the
  mask — method, surrogate, ε, step size, steps, momentum, DFANet dropout (and, when on, the generator of
  its keep masks), seed, group size, data set, for
  OPOM-ConvexHull the hull bounds, warm-up steps and QP solver, and the EOT channels, draws and rounding when
  EOT is on. They are known before any data or model is
  loaded, so a rerun with another ε is refused at once (:func:`check_workdir`);
* the **data settings** of its identity's group (:func:`group_settings`): the frame, the group's index and size
  and the content hash of its training photos (together with the seed they fix the group's random start), and
  the surrogate's weights. They are checked once the data and the surrogate are loaded, still before any
  mask is computed.

A resumed run reuses a mask only when all of them are equal; otherwise it stops with one line naming the
differing settings (:class:`SettingsMismatchError`). Settings that cannot change a mask (``parallel``, the
number of processes, ``eval_batch_size``, ``targets``) are not part of the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

from opomjax.core import ascent
from opomjax.core import ensemble
from opomjax.files import MaskFileError, load_mask
from opomjax.models import dropout
from opomjax.pipeline import features as features_lib

#: Config fields only OPOM-ConvexHull reads (the other methods' masks do not depend on them).
CONVEX_ONLY = ("lower", "upper", "warmup_center_steps", "solver")

#: Plain-words names of the data settings, for the refusal message.
_DESCRIPTIONS = {
    "group_images": "the training photos of the identity's group differ: another data set or num_identities",
    "group_members": "the identity's group has another size: another dataset.num_identities",
    "surrogate_weights": "the surrogate's weights differ",
}


class SettingsMismatchError(ValueError):
  """Masks on disk were made with settings other than the current run's."""


def effective_group_size(config, method: str, num_identities: int | None = None):
  """Identities per group: ``config.group_size``, or ``"all"`` for FI-UAP-all (one mask for everyone)."""
  if method == "fi-uap-all":
    return "all" if num_identities is None else int(num_identities)
  return int(config.group_size)


def surrogate_names(config) -> tuple[str, ...]:
  """``config.surrogate`` as model names: one, or several (comma-separated) for an ensemble."""
  return tuple(n.strip() for n in str(config.surrogate).split(",") if n.strip())


def surrogate_label(config) -> str:
  """The surrogate as run names and result rows show it: ``sface``, or ``dlib_resnet+faceres`` for an
  ensemble (result rows add the variants: ``dlib_resnet+faceres+mdfa``)."""
  return "+".join(surrogate_names(config))


def ensemble_weights(config) -> tuple[float, ...]:
  """The ensemble's member weights (``config.ensemble_weights``, comma-separated; empty: equal), normalised
  to sum to 1; empty for one surrogate."""
  count = len(surrogate_names(config))
  text = str(config.get("ensemble_weights", "") or "")
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
    if count == 1:
      if values:
        raise ValueError("it needs several surrogates in config.surrogate (comma-separated)")
      return ()
    return tuple(float(w) for w in ensemble.check_weights(values or [1.0] * count, count))
  except ValueError as err:
    raise ValueError(f"config.ensemble_weights={text!r}: {err}") from None


def mask_options(config, method: str) -> dict:
  """The :func:`opomjax.generate_masks` arguments a config gives ``method`` (besides images, key, device set).

  The one place that turns config fields into mask arguments, so that what is recorded is what is run.
  """
  options = dict(
      method=method, epsilon=float(config.epsilon), step_size=float(config.step_size), steps=int(config.steps),
      momentum=float(config.momentum) if config.momentum else None, dfanet=float(config.dropout) > 0)
  if options["dfanet"]:
    options["dfanet_clean_once"] = dfanet_clean_once(config)
  weights = ensemble_weights(config)
  if weights:
    options["surrogate_weights"] = weights
  eot = eot_channels(config)
  if eot:
    options.update(eot=eot, eot_samples=int(config.get("eot_samples", 4)),
                   eot_rounding=str(config.get("eot_rounding", "ste")))
  options.update(transfer_options(config))
  if method == "opom-convex":
    options.update(
        lower=float(config.lower), upper=float(config.upper),
        warmup_center_steps=int(config.get("warmup_center_steps", ascent.OFFICIAL_WARMUP_CENTER_STEPS)),
        solver=str(config.get("solver", "osqp")))
  return options


#: Transfer techniques of :func:`opomjax.generate_masks`: config field -> (type, the value that means off).
TRANSFER_OPTIONS = {"ti_width": (int, 1), "vmi_samples": (int, 0), "vmi_beta": (float, 1.5),
                    "di_probability": (float, 0.0), "photometric_probability": (float, 0.0),
                    "si_copies": (int, 1), "ssa_rho": (float, 0.0),
                    "input_samples": (int, 1), "mask_cell": (int, 1), "mid_feature_weight": (float, 0.0),
                    "mid_feature_depth": (float, 0.5), "fill_budget": (bool, False),
                    "start_scale": (float, 1.0)}


def transfer_options(config) -> dict:
  """The transfer-technique fields of ``config`` that differ from off (:data:`TRANSFER_OPTIONS`), typed: only
  these are passed and recorded, so masks made before the techniques existed keep their record."""
  out = {}
  for name, (kind, off) in TRANSFER_OPTIONS.items():
    value = config.get(name, off)
    if kind is int and (isinstance(value, bool) or not float(value).is_integer()):
      raise ValueError(f"{name} must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
      raise ValueError(f"{name} must be True or False, got {value!r}")
    if value != off:
      out[name] = kind(value)
  return out


def mid_feature_guide(config) -> str:
  """``config.mid_feature_guide``: the workdir of the masks the intermediate-level attack refines, or ""."""
  return str(config.get("mid_feature_guide", "") or "")


def dfanet_clean_once(config) -> bool:
  """Whether DFANet takes the clean features once without dropout (``config.dfanet_clean_once``, default on)
  rather than under dropout at every step (off: the official code, as the ``_mdfa`` configs run it); False
  without DFANet (``config.dropout`` 0), where it changes nothing."""
  return float(config.dropout) > 0 and bool(config.get("dfanet_clean_once", True))


def eot_channels(config) -> tuple[str, ...]:
  """``config.eot`` (comma-separated channels of ``opomjax.core.transfer``; empty: no EOT) as a tuple."""
  return tuple(n.strip() for n in str(config.get("eot", "") or "").split(",") if n.strip())


def generation_settings(config, method: str) -> dict:
  """The config settings of ``method``'s masks (JSON-ready; see the module docstring)."""
  options = mask_options(config, method)
  settings = dict(
      method=method, surrogate=",".join(surrogate_names(config)), epsilon=options["epsilon"],
      step_size=options["step_size"], steps=options["steps"], momentum=float(config.momentum or 0.0),
      dropout=float(config.dropout), seed=int(config.seed), group_size=effective_group_size(config, method),
      dataset=str(config.dataset.name))
  if config.dataset.name == "synthetic":
    settings["images_per_split"] = int(config.dataset.get("images_per_split", 2))
  settings.update({k: options[k] for k in CONVEX_ONLY if k in options})
  if "surrogate_weights" in options:  # an ensemble
    settings["ensemble_weights"] = list(options["surrogate_weights"])
  if options["dfanet"]:  # the keep-mask generator decides the masks too
    settings["dropout_generator"] = dropout.GENERATOR
  if options.get("dfanet_clean_once"):  # recorded only when on: DFANet masks made before it existed keep their record
    settings["dfanet_clean_once"] = True
  settings.update({k: options[k] for k in TRANSFER_OPTIONS if k in options})
  if mid_feature_guide(config):  # the guide masks' content is recorded per group (runner.generate)
    settings["mid_feature_guide"] = mid_feature_guide(config)
  if "eot" in options:  # recorded only when on, so that masks made before EOT existed keep their record
    settings.update(eot=",".join(options["eot"]), eot_samples=options["eot_samples"],
                    eot_rounding=options["eot_rounding"])
  return settings


def group_settings(protocol, group: int, indices, surrogate_fingerprint: str | None = None) -> dict:
  """The data settings shared by the masks of group ``group`` (identities ``indices`` of ``protocol``)."""
  settings = dict(frame=str(protocol.frame_name), group=int(group), group_members=len(indices),
                  group_images=features_lib.fingerprint(protocol.train[list(indices)]))
  if surrogate_fingerprint is not None:
    settings["surrogate_weights"] = surrogate_fingerprint
  return settings


def settings_id(settings: dict) -> str:
  """A short hash of a settings dict (the same settings give the same id)."""
  return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()


def _shown(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 24 else text[:12] + "..."


def differences(expected: dict, recorded: dict) -> list[str]:
  """``"key: RECORDED in the masks, EXPECTED now"`` for every key of ``expected`` that ``recorded`` differs in."""
  missing = object()
  found = []
  for key, value in expected.items():
    old = recorded.get(key, missing)
    if old != value:
      old_text = "not recorded" if old is missing else _shown(old)
      note = f" ({_DESCRIPTIONS[key]})" if key in _DESCRIPTIONS else ""
      found.append(f"{key}: {old_text} in the masks, {_shown(value)} now{note}")
  return found


def check_metadata(metadata: dict, expected: dict, masks_dir: str | os.PathLike) -> None:
  """Raises :class:`SettingsMismatchError` unless ``metadata["settings"]`` agrees with ``expected``."""
  recorded = metadata.get("settings")
  advice = (f"rerun with a new --workdir, or delete {masks_dir} to make them again with the current settings")
  if not isinstance(recorded, dict):
    raise SettingsMismatchError(
        f"the masks in {masks_dir} carry no settings record (written by an older opomjax), so they cannot be "
        f"checked against this run's settings; {advice}")
  found = differences(expected, recorded)
  if found:
    raise SettingsMismatchError(
        f"the masks in {masks_dir} were made with other settings ({'; '.join(found)}); {advice}")


def check_workdir(config, workdirs: dict) -> int:
  """The config-settings check of every mask already in ``workdirs`` ({method: its workdir}).

  Reads only the mask files (no data, no model); unreadable files are left to the runner, which makes them
  again. Returns how many masks were checked.

  Raises:
    SettingsMismatchError: a mask was made with other config settings (or records none).
  """
  checked = 0
  for method, workdir in workdirs.items():
    expected = generation_settings(config, method)
    masks_dir = pathlib.Path(workdir) / "masks"
    for path in sorted(masks_dir.glob("*.npz")):
      try:
        _, metadata = load_mask(path, required=())
      except (OSError, MaskFileError):
        continue
      check_metadata(metadata, expected, masks_dir)
      checked += 1
  return checked
