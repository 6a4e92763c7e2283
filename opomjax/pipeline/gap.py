"""GAP (:mod:`opomjax.core.gap`) over a protocol: training with checkpoints, and its masks in the pipeline's format.

The method ``gap`` of the experiment configs. One generator is trained on *every* training photo of the
protocol (all identities pooled, as FI-UAP-all) for ``config.gap.epochs`` epochs of shuffled minibatches;
the universal mask it makes is then written for every identity as ``<workdir>/masks/<identity>.npz``, with the
same metadata and settings record as the other methods, so that :func:`opomjax.pipeline.runner.evaluate`
scores it unchanged.

Layout under the method's workdir (``<workdir>/gap-<surrogate>/``)::

    gap_checkpoint.msgpack   generator weights, Adam state, epoch, step, data-order key, settings record
    generation.0.json        wall time spent training (summed over resumed runs)
    masks/<identity>.npz     the universal mask, once per identity

Resuming. The checkpoint is written atomically (:func:`opomjax.files.atomic_write_bytes`) after every epoch. A
rerun with the same settings restores it and continues with the next epoch; epoch ``e`` visits the photos in
the order ``permutation(fold_in(data_key, e))``, the clean features are recomputed identically and the step is
the same compiled program, so the result equals an uninterrupted run's bit for bit. A checkpoint or mask made
with other settings is refused with one line (:class:`opomjax.pipeline.settings.SettingsMismatchError`).

Config. The GAP fields live in the block ``config.gap`` (defaults :data:`DEFAULTS`; a config without the
block gets them all): ``epochs``, ``batch_size``, ``learning_rate``, ``b1``, ``b2`` (Adam), ``scaling``
(:data:`opomjax.core.gap.SCALINGS`), ``features`` and ``blocks`` (the generator's width and depth). Shared
fields: ``surrogate`` (one model), ``epsilon``, ``seed``, ``dataset``. ``momentum``, ``dropout`` and ``eot``
do not apply and must be off.

Keys: ``fold_in(PRNGKey(seed), s)`` with ``s`` = :data:`NOISE_STREAM` (the fixed noise),
:data:`INIT_STREAM` (the generator's initial weights) and :data:`DATA_STREAM` (the order of the photos).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from opomjax import frame as frame_lib
from opomjax.core import gap as gap_core
from opomjax.pipeline import features as features_lib
from opomjax.pipeline import masks as masks_lib
from opomjax.pipeline import reports
from opomjax.pipeline import settings as settings_lib
from opomjax.pipeline import validate

log = logging.getLogger("opomjax")

#: The method's name in configs and results.
METHOD = "gap"

#: The fields of ``config.gap`` and their defaults (GAP's: Adam 2e-4, betas (0.5, 0.999), ResNet-6 of width 64).
DEFAULTS = dict(epochs=10, batch_size=32, learning_rate=2e-4, b1=0.5, b2=0.999, scaling="linf", features=64,
                blocks=6)

#: The checkpoint's file name in the method's workdir.
CHECKPOINT = "gap_checkpoint.msgpack"

#: ``fold_in`` streams of ``PRNGKey(config.seed)``.
NOISE_STREAM, INIT_STREAM, DATA_STREAM = 0, 1, 2


def options(config) -> dict:
  """``config.gap`` over :data:`DEFAULTS`; ValueError for a field GAP does not know."""
  block = config.get("gap") or {}
  block = dict(block.items()) if hasattr(block, "items") else block
  if not isinstance(block, dict):
    raise ValueError(f"config.gap must be a block of GAP fields ({', '.join(DEFAULTS)}), got {block!r}")
  unknown = sorted(set(block) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"config.gap has unknown field(s) {unknown}; known: {', '.join(DEFAULTS)}")
  return {**DEFAULTS, **block}


def gap_config(config) -> gap_core.GapConfig:
  """The core's static hyper-parameters from an experiment config."""
  opts = options(config)
  return gap_core.GapConfig(
      epsilon=float(config.epsilon), scaling=str(opts["scaling"]), features=int(opts["features"]),
      num_blocks=int(opts["blocks"]), learning_rate=float(opts["learning_rate"]), b1=float(opts["b1"]),
      b2=float(opts["b2"]))


def check_config(config) -> None:
  """GAP's config fields (called by :func:`opomjax.pipeline.validate.check_config`); one-line ValueErrors."""
  opts = options(config)
  validate.check_integer(opts["epochs"], "config.gap.epochs")
  validate.check_integer(opts["batch_size"], "config.gap.batch_size")
  validate.check_number(opts["learning_rate"], "config.gap.learning_rate", positive=True)
  validate.check_number(opts["b1"], "config.gap.b1", minimum=0.0, below=1.0)
  validate.check_number(opts["b2"], "config.gap.b2", minimum=0.0, below=1.0)
  validate.check_integer(opts["features"], "config.gap.features")
  validate.check_integer(opts["blocks"], "config.gap.blocks", minimum=0)
  if opts["scaling"] not in gap_core.SCALINGS:
    raise ValueError(f"config.gap.scaling must be one of {', '.join(gap_core.SCALINGS)}, got {opts['scaling']!r}")
  if len(settings_lib.surrogate_names(config)) != 1:
    raise ValueError(f"config.surrogate={config.surrogate!r}: gap trains its generator on one surrogate; "
                     "name one model")
  off = [f"config.{name}" for name, on in (("momentum", bool(config.momentum)), ("dropout", config.dropout > 0),
                                           ("eot", bool(settings_lib.eot_channels(config)))) if on]
  off += [f"config.{name}" for name in settings_lib.transfer_options(config)]
  if off:
    raise ValueError(f"{', '.join(off)} do(es) not apply to gap (a generator trained with Adam); set momentum=0, "
                     "dropout=0, eot='' and the transfer techniques off (no _mdfa or _eot variant)")
  h, w = frame_lib.CANONICAL.size
  if h % gap_core.FRAME_MULTIPLE or w % gap_core.FRAME_MULTIPLE:
    raise ValueError(f"gap: the canonical frame {h}x{w} is not a multiple of {gap_core.FRAME_MULTIPLE}")


def generation_settings(config) -> dict:
  """The config settings of GAP's masks (the record :mod:`opomjax.pipeline.settings` checks on reruns)."""
  opts = options(config)
  settings = dict(
      method=METHOD, surrogate=",".join(settings_lib.surrogate_names(config)), epsilon=float(config.epsilon),
      seed=int(config.seed), group_size="all", dataset=str(config.dataset.name), epochs=int(opts["epochs"]),
      batch_size=int(opts["batch_size"]), learning_rate=float(opts["learning_rate"]), b1=float(opts["b1"]),
      b2=float(opts["b2"]), scaling=str(opts["scaling"]), generator=f"resnet{int(opts['blocks'])}-{int(opts['features'])}")
  if config.dataset.name == "synthetic":
    settings["images_per_split"] = int(config.dataset.get("images_per_split", 2))
  return settings


def expected_settings(config, protocol, surrogate_fingerprint: str | None = None) -> dict:
  """Config settings + the data settings of the one group of every identity (and the surrogate's weights)."""
  return {**generation_settings(config),
          **settings_lib.group_settings(protocol, 0, range(len(protocol.names)), surrogate_fingerprint)}


def row_settings(config, protocol) -> dict:
  """The settings columns of GAP's results rows (``reports.SETTING_KEYS``; None where a column does not apply,
  e.g. ``steps``); ``settings_id`` hashes the whole record, epochs and learning rate included."""
  settings = {**generation_settings(config), "num_identities": len(protocol.names), "frame": str(protocol.frame_name)}
  row = {key: settings.get(key) for key in reports.SETTING_KEYS if key != "settings_id"}
  row["settings_id"] = settings_lib.settings_id(settings)
  return row


def checkpoint_path(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / CHECKPOINT


def _read_checkpoint(path: pathlib.Path) -> dict:
  try:
    return flax.serialization.msgpack_restore(path.read_bytes())
  except FileNotFoundError:
    raise
  except Exception as e:  # a damaged file: msgpack's own errors, truncation
    raise ValueError(f"unreadable GAP checkpoint {path} ({type(e).__name__}); delete it to train from the "
                     "start") from None


def _check_checkpoint_settings(path: pathlib.Path, raw: dict, expected: dict) -> None:
  try:
    recorded = json.loads(raw["settings"])
  except (KeyError, TypeError, ValueError):
    recorded = None
  found = settings_lib.differences(expected, recorded) if isinstance(recorded, dict) else ["no settings record"]
  if found:
    raise settings_lib.SettingsMismatchError(
        f"the GAP checkpoint {path} was made with other settings ({'; '.join(found)}); rerun with a new --workdir, "
        f"or delete {path} to train again with the current settings")


def check_workdir(config, workdir) -> int:
  """The config-settings check of GAP's masks and checkpoint already in ``workdir`` (before any data or model
  is loaded); returns how many files were checked. Raises SettingsMismatchError."""
  workdir = pathlib.Path(workdir)
  expected = generation_settings(config)
  checked = 0
  path = checkpoint_path(workdir)
  if path.is_file():
    _check_checkpoint_settings(path, _read_checkpoint(path), expected)
    checked += 1
  masks_dir = workdir / "masks"
  for mask_file in sorted(masks_dir.glob("*.npz")):
    try:
      _, metadata = masks_lib.load_mask(mask_file, required=())
    except (OSError, masks_lib.MaskFileError):
      continue  # made again
    settings_lib.check_metadata(metadata, expected, masks_dir)
    checked += 1
  return checked


def check_masks(config, protocol, workdir) -> None:
  """Every identity's GAP mask exists, is its own and was made with the config's settings (for evaluation)."""
  from opomjax.pipeline import runner  # pylint: disable=g-import-not-at-top  (runner imports this module)

  expected = expected_settings(config, protocol)
  for name in protocol.names:
    path = masks_lib.mask_path(workdir, name)
    if not path.is_file():
      raise FileNotFoundError(f"no mask of {name!r} under {pathlib.Path(workdir) / 'masks'}; generate the masks "
                              "first (experiments.generate with the same config and --workdir)")
    if not runner.reusable_mask(path, name, expected):
      raise masks_lib.MaskFileError(f"unreadable mask file {path}; delete it and generate it again")


def save_checkpoint(path, state: gap_core.TrainState, epoch: int, data_key, settings: dict) -> None:
  """The training state after ``epoch`` finished epochs, written atomically (flax msgpack)."""
  payload = dict(params=state.params, opt_state=state.opt_state, step=state.step, epoch=int(epoch),
                 data_key=np.asarray(data_key), settings=json.dumps(settings, sort_keys=True))
  masks_lib.atomic_write_bytes(path, flax.serialization.to_bytes(payload))


def restore_checkpoint(path, template: gap_core.TrainState, data_key, expected: dict):
  """``(state, finished epochs, data_key)`` from ``path``, after checking its settings against ``expected``.

  ``template`` (a fresh state) and ``data_key`` give the structure to restore into.
  """
  path = pathlib.Path(path)
  raw = _read_checkpoint(path)
  _check_checkpoint_settings(path, raw, expected)
  target = dict(params=template.params, opt_state=template.opt_state, step=template.step, epoch=0,
                data_key=np.asarray(data_key), settings="")
  try:
    restored = flax.serialization.from_state_dict(target, raw)
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"GAP checkpoint {path} does not fit this generator ({e}); delete it to train from the "
                     "start") from None
  state = gap_core.TrainState(jax.tree.map(jnp.asarray, restored["params"]),
                              jax.tree.map(jnp.asarray, restored["opt_state"]), jnp.asarray(restored["step"]))
  return state, int(restored["epoch"]), jnp.asarray(restored["data_key"], jnp.uint32)


def minibatches(order: np.ndarray, batch_size: int):
  """``(indices, weights)`` per minibatch of one epoch: every photo once; the last batch padded (weight 0)."""
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    real = len(idx)
    weights = np.zeros(batch_size, np.float32)
    weights[:real] = 1.0
    yield np.concatenate([idx, np.full(batch_size - real, idx[0], idx.dtype)]), weights


def train(config, protocol, model, workdir, *, show_progress: bool = True) -> dict:
  """Trains GAP's generator on ``protocol``'s training photos (resuming from the checkpoint) and writes its
  universal mask for every identity whose mask is not on disk yet; returns a summary.

  Masks already on disk are checked against this run's settings first; when all are there, nothing is done.

  Args:
    config: the experiment config (see the module docstring for its GAP fields).
    protocol: the data (``names``, ``train`` ``(k, n, H, W, 3)``, ``frame_name``).
    model: the surrogate, a :class:`opomjax.models.base.FaceModel`.
    workdir: the method's workdir (``<workdir>/gap-<surrogate>``).
    show_progress: a progress bar over the optimiser steps.
  """
  from opomjax.pipeline import runner  # pylint: disable=g-import-not-at-top  (runner imports this module)

  start = time.time()
  workdir = pathlib.Path(workdir)
  names = list(protocol.names)
  expected = expected_settings(config, protocol, features_lib.model_fingerprint(model))
  pending = [n for n in names if not runner.reusable_mask(masks_lib.mask_path(workdir, n), n, expected)]
  if not pending:
    return {"method": METHOD, "generated": 0, "skipped": len(names), "seconds": time.time() - start}
  opts, cfg = options(config), gap_config(config)
  images = np.asarray(protocol.train).reshape((-1,) + protocol.train.shape[2:])
  if images.shape[0] == 0:
    raise ValueError("gap: the protocol has no training photos")
  batch_size = min(int(opts["batch_size"]), images.shape[0])
  steps_per_epoch = math.ceil(images.shape[0] / batch_size)
  epochs = int(opts["epochs"])

  base = jax.random.PRNGKey(int(config.seed))
  noise = gap_core.fixed_noise(jax.random.fold_in(base, NOISE_STREAM), images.shape[1:3])
  state = gap_core.init_state(jax.random.fold_in(base, INIT_STREAM), noise, cfg)
  data_key, epoch = jax.random.fold_in(base, DATA_STREAM), 0
  path = checkpoint_path(workdir)
  if path.is_file():
    state, epoch, data_key = restore_checkpoint(path, state, data_key, expected)
    log.info("gap: resuming after epoch %d of %d from %s", epoch, epochs, path)

  timing_path = workdir / f"generation.{jax.process_index()}.json"
  counted = start
  if epoch < epochs:
    apply = jax.jit(model.apply)
    clean = features_lib.embed_in_batches(lambda x: apply(model.params, x), images, batch_size=batch_size,
                                          desc="gap clean features" if show_progress else None)
    step = jax.jit(functools.partial(gap_core.train_step, embed_fn=model.apply, cfg=cfg))
    with tqdm(total=epochs * steps_per_epoch, initial=epoch * steps_per_epoch, desc=f"{METHOD} training",
              unit="step", disable=not show_progress) as bar:
      for e in range(epoch, epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, e), images.shape[0]))
        for idx, weights in minibatches(order, batch_size):
          state, loss = step(state, noise, jnp.asarray(images[idx], jnp.float32), jnp.asarray(clean[idx]),
                             jnp.asarray(weights), model.params)
          bar.set_postfix(epoch=e + 1, loss=f"{float(loss):.3g}", refresh=False)
          bar.update(1)
        save_checkpoint(path, state, e + 1, data_key, expected)
        counted = runner.add_generation_seconds(timing_path, counted)
        log.info("gap: epoch %d of %d done (checkpoint %s)", e + 1, epochs, path)

  mask = np.asarray(gap_core.universal_mask(state.params, noise, cfg))
  metadata = dict(
      frame=protocol.frame_name, epsilon=float(config.epsilon), method=METHOD,
      surrogate=settings_lib.surrogate_label(config), steps=int(state.step), seed=int(config.seed),
      epochs=epochs, batch_size=batch_size, learning_rate=float(opts["learning_rate"]), scaling=cfg.scaling,
      group_size="all", num_identities=len(names), group=0, process_index=jax.process_index())
  for name in pending:
    masks_lib.save_mask(masks_lib.mask_path(workdir, name), mask, {**metadata, "identity": name, "settings": expected})
  runner.add_generation_seconds(timing_path, counted)
  return {"method": METHOD, "generated": len(pending), "skipped": len(names) - len(pending),
          "seconds": time.time() - start}
