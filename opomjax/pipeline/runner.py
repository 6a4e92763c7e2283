"""Resumable, multi-device, multi-host mask generation and evaluation over a protocol's identities.

Layout under a ``workdir``::

    workdir/masks/<identity>.npz        one mask per identity (written atomically when it is finished)
    workdir/generation.json             wall time spent generating (summed over resumed runs)

The launchers put each method of a config in its own ``workdir/<method>-<surrogate>[-mdfa]/`` and write the
results tables at the top of ``workdir``; clean features are cached in ``workdir/features/`` (or
``config.feature_cache``).

Identities are processed in fixed groups of ``config.group_size`` (vmapped, and spread over the local devices
with ``config.parallel``); group ``g`` uses the key ``fold_in(PRNGKey(seed), g)``, so a mask does not depend on
how often a run was interrupted. On several hosts, group ``g`` belongs to process ``g % process_count``.
A group whose masks all exist is skipped, which is what makes a killed run resumable.

Every mask records the settings it was made with (:mod:`opomjax.pipeline.settings`); a rerun whose settings
differ is refused before any work, instead of passing the old masks off as its own. The config is checked
first (:mod:`opomjax.pipeline.validate`), then the masks already on disk, then the surrogate and the data
are loaded; only then does the first group start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import opomjax
from opomjax import frame as frame_lib
from opomjax.faces import channel as channel_lib
from opomjax.models import checkpoints
from opomjax.models import dropout as dropout_lib
from opomjax.pipeline import features as features_lib
from opomjax.pipeline import gap as gap_lib
from opomjax.pipeline import masks as masks_lib
from opomjax.pipeline import photos as photos_lib
from opomjax.pipeline import reports
from opomjax.pipeline import settings as settings_lib
from opomjax.pipeline import validate

log = logging.getLogger("opomjax")

#: Method names accepted in configs, in the order the paper's tables list them.
METHODS = validate.METHODS
method_names = validate.method_names


@dataclasses.dataclass(frozen=True)
class SyntheticProtocol:
  """Random-noise "identities" in the canonical frame: exercises the pipeline without any data set."""

  names: list
  train: np.ndarray
  test: np.ndarray
  distractors: np.ndarray
  frame_name: str = frame_lib.CANONICAL.name


def synthetic_protocol(num_identities: int, images_per_split: int = 2, num_distractors: int = 16, seed: int = 0):
  rng = np.random.default_rng(seed)
  h, w = frame_lib.CANONICAL.size
  draw = lambda *shape: rng.integers(0, 256, shape + (h, w, 3), dtype=np.uint8)
  return SyntheticProtocol(
      names=[f"synthetic_{i:04d}" for i in range(num_identities)],
      train=draw(num_identities, images_per_split),
      test=draw(num_identities, images_per_split),
      distractors=draw(num_distractors),
  )


def load_protocol(dataset_config):
  """The protocol a config's ``dataset`` block names (``synthetic`` or any of ``opomjax.data``'s)."""
  name = dataset_config.name
  num = dataset_config.get("num_identities") or None
  if name == "synthetic":
    return synthetic_protocol(num or 4, dataset_config.get("images_per_split", 2))
  from opomjax import data

  kwargs = {}
  for field in ("lfw_dir", "data_dir", "root"):
    if dataset_config.get(field):
      kwargs[field] = dataset_config.get(field)
  return data.load_protocol(name, num_identities=num, download=bool(dataset_config.get("download", False)),
                            **kwargs)


def uses_mdfa(config) -> bool:
  return bool(config.momentum) or config.dropout > 0


def variant_suffix(config, separator: str) -> str:
  """``weights0.25-0.5-0.25`` (an ensemble's unequal member weights, normalised), ``mdfa`` (momentum + DFANet),
  ``clean_once`` (DFANet's clean features taken once), ``eot`` (expectation over transformation), each transfer
  technique that is on with its value (e.g. ``ti_width7``, ``di_probability0.5``; a switch by its name alone,
  ``fill_budget``; :data:`settings.TRANSFER_OPTIONS`) and ``guided`` (refined from earlier masks,
  ``mid_feature_guide``) joined by ``separator``."""
  weights = settings_lib.ensemble_weights(config)
  parts = ["weights" + "-".join(f"{w:g}" for w in weights)] * (len(set(weights)) > 1)
  parts += ["mdfa"] * uses_mdfa(config) + ["clean_once"] * settings_lib.dfanet_clean_once(config)
  parts += ["eot"] * bool(settings_lib.eot_channels(config))
  parts += [name if isinstance(value, bool) else f"{name}{value:g}"
            for name, value in settings_lib.transfer_options(config).items()]
  parts += ["guided"] * bool(settings_lib.mid_feature_guide(config))
  return "".join(separator + p for p in parts)


def run_name(method: str, config) -> str:
  """E.g. ``opom-convex-dlib_resnet``, ``opom-convex-dlib_resnet-mdfa`` (momentum + DFANet) or
  ``opom-convex-dlib_resnet-eot`` (expectation over transformation)."""
  return f"{method}-{settings_lib.surrogate_label(config)}" + variant_suffix(config, "-")


def identity_groups(num_identities: int, group_size: int) -> list[np.ndarray]:
  if group_size <= 0:
    raise ValueError(f"group_size must be positive, got {group_size}")
  return [np.arange(s, min(s + group_size, num_identities)) for s in range(0, num_identities, group_size)]


def groups_of_process(groups: list, process_index: int, process_count: int) -> list[tuple[int, np.ndarray]]:
  """The groups process ``process_index`` of ``process_count`` owns: group g goes to g % process_count."""
  return [(g, idx) for g, idx in enumerate(groups) if g % process_count == process_index]


def surrogate_fns(model, config):
  """(apply_fn, activations_fn) of the surrogate with DFANet dropout rate ``config.dropout``; for an ensemble
  (a tuple of models) tuples of them, one per member.

  ``apply_fn(params, images[, key])`` keeps the weights out of the compiled program's constants.
  """
  if isinstance(model, tuple):
    fns = [surrogate_fns(m, config) for m in model]
    return tuple(f for f, _ in fns), tuple(a for _, a in fns)
  model = dataclasses.replace(model, dropout_rate=float(config.dropout))
  activations = lambda params, images, key=None: model.net_fn(
      params, model.to_input(images), key=key, dropout_rate=model.dropout_rate)[1]
  return model.apply, activations


def load_surrogate(config):
  """The config's surrogate, or a tuple of models for an ensemble (random weights only with
  ``config.allow_random_weights``)."""
  allow = bool(config.get("allow_random_weights", False))
  models = tuple(opomjax.load_model(name, allow_random_weights=allow) for name in settings_lib.surrogate_names(config))
  return models[0] if len(models) == 1 else models


def surrogate_fingerprint(model) -> str:
  """:func:`~opomjax.pipeline.features.model_fingerprint` of the surrogate (of each member, joined)."""
  return "+".join(features_lib.model_fingerprint(m) for m in (model if isinstance(model, tuple) else (model,)))


def surrogate_params(model):
  """The surrogate's parameters (a tuple of them for an ensemble)."""
  return tuple(m.params for m in model) if isinstance(model, tuple) else model.params


def guide_masks(config, protocol, method: str) -> np.ndarray | None:
  """The masks ``config.mid_feature_guide`` names (a method's workdir from an earlier run), ``(k, H, W, 3)`` in
  the protocol's identity order, or None when it is empty; one line (FileNotFoundError, ValueError) when a mask
  is missing or was made for another frame or a larger budget (the folder and the weight are checked by
  :func:`opomjax.pipeline.validate.check_config` before anything is loaded)."""
  where = settings_lib.mid_feature_guide(config)
  if not where:
    return None
  if method == "fi-uap-all":
    raise ValueError('config.mid_feature_guide does not apply to "fi-uap-all" (one pooled mask)')
  guides = []
  for name in protocol.names:
    try:
      mask, meta = masks_lib.load_identity_mask(where, name)
    except (FileNotFoundError, masks_lib.MaskFileError) as err:
      raise FileNotFoundError(f"config.mid_feature_guide={where!r}: no usable mask of {name!r} ({err})") from None
    if meta.get("frame") != protocol.frame_name or float(meta.get("epsilon", np.inf)) > float(config.epsilon):
      raise ValueError(f"config.mid_feature_guide={where!r}: the mask of {name!r} was made for frame "
                       f"{meta.get('frame')!r} and epsilon {meta.get('epsilon')}, not {protocol.frame_name!r} and "
                       f"{float(config.epsilon):g}")
    guides.append(mask)
  return np.stack(guides).astype(np.float32)


def expected_settings(config, protocol, method: str, group: int, indices, surrogate_fingerprint=None) -> dict:
  """The settings record of the masks of group ``group`` (config settings + data settings)."""
  return {**settings_lib.generation_settings(config, method),
          **settings_lib.group_settings(protocol, group, indices, surrogate_fingerprint)}


def reusable_mask(path: pathlib.Path, identity: str, expected: dict) -> bool:
  """Whether a finished mask of ``identity`` with the ``expected`` settings is at ``path``.

  False when there is no readable file (it is made again); SettingsMismatchError when there is one made with
  other settings, MaskFileError when it is another identity's.
  """
  try:
    _, meta = masks_lib.load_mask(path)
  except (FileNotFoundError, masks_lib.MaskFileError):
    return False
  if meta.get("identity", identity) != identity:
    raise masks_lib.MaskFileError(f"mask file {path} belongs to identity {meta['identity']!r}, not {identity!r}; "
                                  "delete it to make the mask again")
  settings_lib.check_metadata(meta, expected, path.parent)
  return True


def generate(config, protocol, model, workdir, *, method: str, show_progress: bool = True) -> dict:
  """Generates the masks of ``method`` this process owns that are not on disk yet; returns a summary.

  Masks already on disk are first checked against this run's settings (all of them, before the first group
  starts): reused when equal, refused with :class:`~opomjax.pipeline.settings.SettingsMismatchError`
  otherwise. Progress is shown per group; an interrupted run keeps every finished group's masks (each file is
  written atomically), and rerunning it resumes.
  """
  workdir = pathlib.Path(workdir)
  names = list(protocol.names)
  k = len(names)
  group_size = settings_lib.effective_group_size(config, method, k)
  groups = groups_of_process(identity_groups(k, group_size), jax.process_index(), jax.process_count())
  apply_fn, activations_fn = surrogate_fns(model, config)
  options = settings_lib.mask_options(config, method)
  fingerprint = surrogate_fingerprint(model)
  guides = guide_masks(config, protocol, method)
  metadata = dict(
      frame=protocol.frame_name, epsilon=float(config.epsilon), method=method,
      surrogate=settings_lib.surrogate_label(config),
      steps=int(config.steps), seed=int(config.seed), step_size=float(config.step_size),
      momentum=float(config.momentum or 0.0), dropout=float(config.dropout),
      lower=float(config.lower), upper=float(config.upper), group_size=group_size, num_identities=k,
  )
  plan = []  # (group, indices, pending indices, settings) -- every existing mask checked before any work
  for g, idx in groups:
    expected = expected_settings(config, protocol, method, g, idx, fingerprint)
    if guides is not None:  # the refined masks belong to these guide masks
      expected["mid_feature_guide_masks"] = features_lib.fingerprint(guides[idx])
    pending = [i for i in idx if not reusable_mask(masks_lib.mask_path(workdir, names[i]), names[i], expected)]
    plan.append((g, idx, pending, expected))
  mine = sum(len(idx) for _, idx in groups)
  done = mine - sum(len(pending) for _, _, pending, _ in plan)
  timing_path = workdir / f"generation.{jax.process_index()}.json"
  start, generated = time.time(), 0
  counted = start
  # A context manager: an interrupted run's bar still ends its line, so the launcher's message has its own.
  with tqdm(total=mine, initial=done, desc=f"{method} masks", unit="id", disable=not show_progress) as bar:
    for g, idx, pending, expected in plan:
      if not pending:
        continue
      try:
        masks = np.asarray(opomjax.generate_masks(
            apply_fn,
            jnp.asarray(protocol.train[idx], jnp.float32),
            params=surrogate_params(model),
            key=jax.random.fold_in(jax.random.PRNGKey(config.seed), g),
            activations_fn=activations_fn if method == "gd-uap" or options.get("mid_feature_weight") else None,
            parallel=None if config.parallel in ("", "none", None) else config.parallel,
            allow_large_epsilon=bool(config.get("allow_large_epsilon", False)),
            **({} if guides is None else dict(init=guides[idx], mid_feature_guide=guides[idx])),
            **options,
        ))
      except jax.errors.JaxRuntimeError as err:
        raise_if_out_of_memory(err, method, g, len(idx), done + generated)
        raise
      for row, i in enumerate(idx):
        if i in pending:
          masks_lib.save_mask(masks_lib.mask_path(workdir, names[i]), masks[row], {
              **metadata, "identity": names[i], "settings": expected, "group": g,
              "process_index": jax.process_index()})
      counted = add_generation_seconds(timing_path, counted)
      generated += len(pending)
      bar.update(len(pending))
      log.info("%s: group %d done (%d masks) in %s", method, g, len(pending), workdir / "masks")
  return {"method": method, "generated": generated, "skipped": mine - generated, "seconds": time.time() - start}


class GroupOutOfMemoryError(MemoryError):
  """A group of identities needed more device memory than there is (XLA's ``RESOURCE_EXHAUSTED``)."""


def raise_if_out_of_memory(err: Exception, method: str, group: int, group_len: int, saved: int) -> None:
  """Raises :class:`GroupOutOfMemoryError` in place of XLA's out-of-memory error ``err`` (one line: which group,
  how many masks are saved, what to lower); returns for any other error.

  Memory grows with the group (every identity's images and activations are live in one step) and, under EOT,
  VMI or SI, with the draws per step, so the remedy is a smaller ``config.group_size``.
  """
  text = str(err)
  if "RESOURCE_EXHAUSTED" not in text:
    return
  detail = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), "")
  raise GroupOutOfMemoryError(
      f"{method}: out of memory in group {group} ({group_len} identities at once; {detail}); {saved} finished "
      f"masks are saved: rerun with a smaller --config.group_size (e.g. {max(1, group_len // 2)}) to resume"
  ) from err


def add_generation_seconds(timing_path: pathlib.Path, since: float) -> float:
  """Adds the wall time since ``since`` to the total in ``timing_path`` (atomically); returns now.

  Called after every finished group, so a killed run keeps the time of the masks it saved.
  """
  now = time.time()
  previous = json.loads(timing_path.read_text())["seconds"] if timing_path.is_file() else 0.0
  masks_lib.atomic_write_bytes(timing_path, json.dumps({"seconds": previous + now - since}).encode())
  return now


def generation_seconds(workdir) -> float:
  """Wall time spent generating in ``workdir``: the slowest process, summed over resumed runs."""
  times = [json.loads(p.read_text())["seconds"] for p in pathlib.Path(workdir).glob("generation.*.json")]
  return max(times, default=0.0)


def load_masks(workdir, names) -> np.ndarray:
  """The masks of ``names`` in ``workdir``, each checked to be its identity's."""
  missing = [n for n in names if not masks_lib.mask_path(workdir, n).is_file()]
  if missing:
    raise FileNotFoundError(f"{len(missing)} mask(s) missing under {workdir}/masks, e.g. {missing[:3]}; "
                            "generate them first (experiments.generate with the same config and --workdir)")
  return np.stack([masks_lib.load_identity_mask(workdir, n)[0] for n in names])


def check_masks_for_evaluation(config, protocol, workdirs: dict) -> None:
  """Every mask to be evaluated exists, is its identity's and was made with the config's settings."""
  names = list(protocol.names)
  for method, workdir in workdirs.items():
    if method == gap_lib.METHOD:  # one universal mask with GAP's own settings record
      gap_lib.check_masks(config, protocol, workdir)
      continue
    group_size = settings_lib.effective_group_size(config, method, len(names))
    for g, idx in enumerate(identity_groups(len(names), group_size)):
      expected = expected_settings(config, protocol, method, g, idx)
      for i in idx:
        path = masks_lib.mask_path(workdir, names[i])
        if not path.is_file():
          raise FileNotFoundError(f"no mask of {names[i]!r} under {pathlib.Path(workdir) / 'masks'}; generate the "
                                  "masks first (experiments.generate with the same config and --workdir)")
        if not reusable_mask(path, names[i], expected):
          raise masks_lib.MaskFileError(f"unreadable mask file {path}; delete it and generate it again")


def row_settings(config, protocol, method: str) -> dict:
  """The settings columns of ``method``'s results rows (see ``reports.SETTING_KEYS``)."""
  if method == gap_lib.METHOD:
    return gap_lib.row_settings(config, protocol)
  settings = {**settings_lib.generation_settings(config, method), "num_identities": len(protocol.names),
              "frame": str(protocol.frame_name)}
  row = {key: settings.get(key) for key in reports.SETTING_KEYS if key != "settings_id"}
  row["settings_id"] = settings_lib.settings_id(settings)
  return row


def target_embed(target):
  """A batched embed function for a target (jitted when the target is a JAX model)."""
  if isinstance(target, opomjax.FaceModel):
    apply = jax.jit(target.apply)  # weights as an argument, not folded into the program as constants
    return lambda images: apply(target.params, images)
  return target.embed


def mean_pair_cosine(probe: np.ndarray, gallery: np.ndarray) -> float:
  """Mean cosine similarity of probe i with gallery j over all ordered pairs i != j of each identity."""
  sims = np.einsum("kid,kjd->kij", probe, gallery)
  m = sims.shape[-1]
  return float(sims[:, ~np.eye(m, dtype=bool)].mean())


def target_cache_key(name: str, target) -> str:
  """The feature-cache key of a target: its name, its fingerprint and, for an ``.onnx`` path, the file's hash.

  Registered targets are sha256-checked against the registry, so their name fixes their weights; an ONNX
  file named by path can change under the same name, so its content is part of the key.
  """
  key = f"{name}-{features_lib.model_fingerprint(target)}"
  if name.endswith(".onnx"):
    key += "-" + checkpoints.sha256_file(name)[:16]
  return key


def result_row(config, protocol, method: str, target: str, condition: str, workdir, rates: dict,
               clean_rates: dict, channel_rates: dict, clean, masked, lost: int | None) -> dict:
  """One results row (``reports.RESULT_KEYS``): protection success rates of ``method``'s masks against
  ``target`` under ``condition`` (``rates``), of the clean and the unmasked-through-the-channel probes, the mean
  cosines and the masks' generation time; ``faces_lost`` and ``insertion`` for photo conditions."""
  return dict(
      method=method, surrogate=settings_lib.surrogate_label(config) + variant_suffix(config, "+"), target=target,
      condition=condition,
      **row_settings(config, protocol, method),
      **{f"top{t}": float(rates[t]) if t in rates else None for t in (1, 5, 10)},
      clean_top1=1.0 - float(clean_rates[1]),
      clean_top5=1.0 - float(clean_rates[5]) if 5 in clean_rates else None,
      channel_top1=float(channel_rates[1]),
      channel_top5=float(channel_rates[5]) if 5 in channel_rates else None,
      cos_before=mean_pair_cosine(clean, clean), cos_after=mean_pair_cosine(masked, clean),
      seconds=generation_seconds(workdir),
      **({} if lost is None else {"faces_lost": lost, "insertion": validate.photo_insertion(config)}))


def photo_probes(config, protocol, workdirs: dict, conditions, *, show_progress=True) -> dict:
  """For each photo condition of ``conditions``: ``{(method or None, condition): (chips, lost)}``, the chips a
  system finds in the saved test photos with each method's masks (None: unmasked), see
  :func:`opomjax.pipeline.photos.realigned_chips`. Empty without photo conditions."""
  wanted = [c for c in conditions if c in channel_lib.PHOTO_CONDITIONS]
  if not wanted:
    return {}
  from opomjax import data  # pylint: disable=g-import-not-at-top

  lfw_dir = data.find_lfw_dir(config.dataset.get("lfw_dir") or None)
  zeros = np.zeros((len(protocol.names),) + protocol.test.shape[2:], np.float32)
  probes = {}
  for condition in wanted:
    for method, masks in [(None, zeros)] + [(m, load_masks(w, protocol.names)) for m, w in workdirs.items()]:
      desc = f"{method or 'unmasked'} photos, {condition}" if show_progress else None
      probes[(method, condition)] = photos_lib.realigned_chips(protocol, masks, lfw_dir, condition,
                                                               insertion=validate.photo_insertion(config), desc=desc)
  return probes


def evaluate(config, protocol, workdirs: dict, cache: features_lib.FeatureCache, *, show_progress=True) -> list:
  """Protection success rates of the masks in each ``workdirs[method]`` against every target in the config,
  under every condition of ``config.conditions`` (:mod:`opomjax.faces.channel`; default ``none``: the masked
  probe rounded to 8 bits as a saved photo holds it; ``photo_png`` / ``photo_jpeg75``: the mask put into the
  original photo, saved, and the face found again, :mod:`opomjax.pipeline.photos`).

  Each row carries the settings the masks were made with (``reports.SETTING_KEYS``), its ``condition``, and
  ``channel_top1/5``: the protection success rate of the *unmasked* probes through the same channel (what the
  channel alone does; the clean rate for ``none`` and ``float``). The gallery and distractors stay clean. Photo
  conditions add ``faces_lost``: test photos in which no face was found any more; such a probe matches nothing
  (a zero feature) and counts as protected; and ``insertion``: how the masks went into the photos
  (``config.photo_insertion``).
  """
  rows = []
  k, m = protocol.test.shape[:2]
  flat_test = protocol.test.reshape((k * m,) + protocol.test.shape[2:])
  ks = tuple(t for t in (1, 5, 10) if t <= len(protocol.distractors) + 1)  # no rank beyond the gallery
  conditions = validate.conditions(config)
  photo_chips = photo_probes(config, protocol, workdirs, conditions, show_progress=show_progress)
  allow_random = bool(config.get("allow_random_weights", False))
  for target_name in validate.split_names(config.targets):
    if target_name == validate.DLIB_NATIVE:
      rows += dlib_native_rows(config, protocol, workdirs, cache, conditions, show_progress=show_progress)
      continue
    try:
      target = opomjax.load_target(target_name, allow_random_weights=allow_random)
    except (FileNotFoundError, ImportError) as e:
      log.warning("skipping target %s: %s", target_name, e)
      continue
    embed = target_embed(target)
    batch = int(config.eval_batch_size)
    desc = (lambda what: f"{target_name} {what}") if show_progress else (lambda what: None)
    cache_key = target_cache_key(target_name, target)
    embed_cached = lambda images, what: cache.get_or_compute(cache_key, images, lambda x: (
        features_lib.embed_in_batches(embed, x, batch_size=batch, desc=desc(what))))
    clean = embed_cached(flat_test, "clean test")
    distractors = embed_cached(protocol.distractors, "distractors")
    clean = clean.reshape(k, m, -1)
    clean_rates = opomjax.protection_success_rate(clean, clean, distractors, ks=ks)

    def probes(method, condition):
      """Features of the probes of ``method`` (None: unmasked) under ``condition``, and the faces lost."""
      if condition in channel_lib.PHOTO_CONDITIONS:
        chips, lost = photo_chips[(method, condition)]
        features = embed_cached(chips, f"{method or 'unmasked'} photos, {condition}").copy()
        features[lost] = 0.0
        return features.reshape(k, m, -1), int(lost.sum())
      if method is None:  # unmasked chips through the channel, cached by content
        return embed_cached(channel_lib.apply_condition(flat_test, condition).astype(np.uint8),
                            f"{condition} unmasked").reshape(k, m, -1), None
      masks = np.repeat(load_masks(workdirs[method], protocol.names), m, axis=0)
      return features_lib.embed_in_batches(embed, flat_test, masks=masks, condition=condition, batch_size=batch,
                                           desc=desc(f"{method} masked, {condition}")).reshape(k, m, -1), None

    for condition in conditions:
      channel_rates = clean_rates
      if condition not in ("none", "float"):  # the channel alone: unmasked probes through it
        channel_rates = opomjax.protection_success_rate(probes(None, condition)[0], clean, distractors, ks=ks)
      for method, workdir in workdirs.items():
        masked, lost = probes(method, condition)
        rates = opomjax.protection_success_rate(masked, clean, distractors, ks=ks)
        rows.append(result_row(config, protocol, method, target_name, condition, workdir, rates, clean_rates,
                               channel_rates, clean, masked, lost))
  return rows


def dlib_native_rows(config, protocol, workdirs: dict, cache: features_lib.FeatureCache, conditions, *,
                     show_progress=True) -> list:
  """The rows of the ``dlib_native`` target (:mod:`opomjax.pipeline.dlib_native`) for the photo conditions:
  the gallery (clean test photos, distractor photos) and the saved protected photos all go through dlib's own
  detector, landmarks and ``get_face_chip``. Chip conditions do not apply to it and give no row."""
  from opomjax import data  # pylint: disable=g-import-not-at-top
  from opomjax import faces  # pylint: disable=g-import-not-at-top
  from opomjax.pipeline import dlib_native  # pylint: disable=g-import-not-at-top

  k, m = protocol.test.shape[:2]
  ks = tuple(t for t in (1, 5, 10) if t <= len(protocol.distractors) + 1)
  lfw_dir = pathlib.Path(data.find_lfw_dir(config.dataset.get("lfw_dir") or None))
  native = dlib_native.DlibNative()
  key = f"{dlib_native.NAME}-{features_lib.model_fingerprint(native.model)}"
  desc = (lambda what: f"{dlib_native.NAME} {what}") if show_progress else (lambda what: None)

  def gallery(files, what):  # cached by the list of files (their content is the data set's)
    names = np.frombuffer("\n".join(files).encode(), np.uint8)
    return cache.get_or_compute(key, names, lambda _: native.describe_chips(native.chips(
        [faces.load_photo(lfw_dir / f) for f in files], fallback=True, desc=desc(what))[0]))

  clean = gallery([f for row in protocol.test_files for f in row], "clean test photos").reshape(k, m, -1)
  distractors = gallery(list(protocol.distractor_files), "distractor photos")
  clean_rates = opomjax.protection_success_rate(clean, clean, distractors, ks=ks)
  zeros = np.zeros((k,) + protocol.test.shape[2:], np.float32)
  rows = []
  for condition in (c for c in conditions if c in channel_lib.PHOTO_CONDITIONS):
    def probes(masks, what):
      photos = [photo for _, photo in photos_lib.saved_photos(protocol, masks, lfw_dir, condition,
                                                              insertion=validate.photo_insertion(config))]
      chips, lost = native.chips(photos, fallback=False, desc=desc(what))
      return native.describe_chips(chips).reshape(k, m, -1), int(lost.sum())

    channel_rates = opomjax.protection_success_rate(probes(zeros, f"unmasked, {condition}")[0], clean,
                                                    distractors, ks=ks)
    for method, workdir in workdirs.items():
      masked, lost = probes(load_masks(workdir, protocol.names), f"{method}, {condition}")
      rates = opomjax.protection_success_rate(masked, clean, distractors, ks=ks)
      rows.append(result_row(config, protocol, method, dlib_native.NAME, condition, workdir, rates, clean_rates,
                             channel_rates, clean, masked, lost))
  return rows


def initialize_distributed(config) -> None:
  """Joins a multi-process run when ``config.distributed`` is set (CPU: gloo collectives). Idempotent."""
  if not config.get("distributed", False) or jax.distributed.is_initialized():
    return
  # Cross-process collectives between CPU devices (GPU/TPU devices use their own); set before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if config.get("coordinator_address"):
    kwargs = dict(coordinator_address=config.coordinator_address, num_processes=int(config.num_processes),
                  process_id=int(config.process_id))
  jax.distributed.initialize(**kwargs)


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def method_workdirs(config, workdir) -> dict:
  """{method: ``workdir/<run_name>``} for every method in ``config.methods``."""
  return {method: pathlib.Path(workdir) / run_name(method, config) for method in method_names(config)}


def check_workdirs(config, workdirs: dict) -> None:
  """The config-settings check of the masks already in every ``workdirs[method]`` (GAP: its own record and
  checkpoint, :func:`opomjax.pipeline.gap.check_workdir`)."""
  settings_lib.check_workdir(config, {m: w for m, w in workdirs.items() if m != gap_lib.METHOD})
  if gap_lib.METHOD in workdirs:
    gap_lib.check_workdir(config, workdirs[gap_lib.METHOD])


def prepare_generation(config, workdir, *, dataset: bool = True) -> dict:
  """Everything a generation checks before its first expensive step; returns {method: its workdir}.

  The config's fields (``config.dataset`` too unless ``dataset`` is False: the data is given) and the workdir
  (:func:`validate.check_config`), then the masks already on disk against the config's settings
  (:func:`settings.check_workdir`).
  """
  validate.check_config(config, workdir, dataset=dataset)
  workdirs = method_workdirs(config, workdir)
  check_workdirs(config, workdirs)
  return workdirs


def generate_all(config, workdir, *, protocol=None) -> dict:
  """Generates every method in ``config.methods``; returns {method: its workdir}."""
  workdirs = prepare_generation(config, workdir, dataset=protocol is None)
  generate_methods(config, workdirs, protocol=protocol)
  return workdirs


def generate_methods(config, workdirs: dict, *, protocol=None):
  """Generates the masks of each ``workdirs[method]`` (checked by :func:`prepare_generation`); returns the data.

  Order: the surrogate, the data (unless given), the data's checks, the settings of every mask on disk (in
  :func:`generate`) -- and only then the first group.
  """
  initialize_distributed(config)
  model = load_surrogate(config)
  protocol = protocol or load_protocol(config.dataset)
  validate.check_reduced_hull(config, list(workdirs), protocol.train.shape[1])
  if config.dropout > 0:  # one identity's training images through each member, before any step
    dropout_lib.check_dropout_tolerance(model if isinstance(model, tuple) else (model,),
                                        jnp.asarray(protocol.train[0], jnp.float32), float(config.dropout))
  for method, wd in workdirs.items():
    if method == gap_lib.METHOD:  # a generator trained with Adam (process 0), not the signed-gradient ascent
      summary = (gap_lib.train(config, protocol, model, wd) if jax.process_index() == 0
                 else {"method": method, "generated": 0})
    else:
      summary = generate(config, protocol, model, wd, method=method, show_progress=jax.process_index() == 0)
    log.info("process %d: %s", jax.process_index(), summary)
  barrier("opomjax-generate")
  return protocol


def evaluate_all(config, workdirs: dict, results_dir, *, protocol=None, checked: bool = False) -> list:
  """Evaluates and writes/merges the result tables in ``results_dir`` (process 0 only).

  Unless ``checked`` (the caller validated the config already), the config and ``results_dir`` are checked
  first; the masks are always checked (present, their identity's, made with the config's settings) before the
  first target is loaded.
  """
  if not checked:
    validate.check_config(config, results_dir)
    check_workdirs(config, workdirs)  # the config settings, before the data is loaded
  if jax.process_index() != 0:
    return []
  protocol = protocol or load_protocol(config.dataset)
  check_masks_for_evaluation(config, protocol, workdirs)
  cache = features_lib.FeatureCache(config.get("feature_cache") or pathlib.Path(results_dir) / "features")
  rows = evaluate(config, protocol, workdirs, cache)
  rows = reports.merge_rows(reports.read_results(results_dir), rows)
  reports.write_results(rows, results_dir)
  reports.bar_chart(rows, pathlib.Path(results_dir) / "results.png")
  for method, wd in workdirs.items():
    shown = min(4, len(protocol.names))
    reports.mask_grid(protocol.test[:shown, 0], load_masks(wd, protocol.names[:shown]), protocol.names[:shown],
                      pathlib.Path(wd) / "masks.png", epsilon=float(config.epsilon))
  return rows


def run_all(config, workdir, *, protocol=None) -> list:
  """``generate_all`` (one sub-folder per method) then ``evaluate_all`` into ``workdir``."""
  workdirs = prepare_generation(config, workdir)
  protocol = generate_methods(config, workdirs, protocol=protocol)
  return evaluate_all(config, workdirs, workdir, protocol=protocol, checked=True)
