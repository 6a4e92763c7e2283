"""Diverse masks over a protocol (Sec. 4.3.4, Table 6): resumable generation, M-O / M-M evaluation, the table.

The computation of ``experiments/diverse_masks.py``. Layout under a ``workdir``::

    workdir/masks-m<M>/<identity>.npz   the M masks of one identity, (M, H, W, 3) + JSON metadata (atomic)
    workdir/masks-m<M>/generation.json  wall time spent generating them (summed over resumed runs)
    workdir/features/                   clean features of every target (cache)
    workdir/diverse_results.json        one row per (target, M): M-O and M-M protection success rates
    workdir/diverse_results.md          the same as a markdown table

Identities are processed in groups of ``group_size`` (vmapped). The random starts of identity ``i`` (its index
in the protocol) are drawn from ``fold_in(PRNGKey(seed), i)`` as
:func:`opomjax.core.diverse.generate_diverse_masks` draws them for that identity alone, so its masks depend
neither on the grouping nor on how often the run was interrupted. Each identity's masks are written as soon as
its group is finished; a rerun skips the identities whose masks exist with the same settings, and refuses files
made with other settings (delete them, or use another workdir).

Probes are saved 8-bit photos (condition ``none`` of :mod:`opomjax.faces.channel`): the clean test photo plus
one of the person's masks, rounded. M-O: the gallery holds the clean test photos; M-M: it holds the test photos
protected by another mask of the same person (:mod:`opomjax.core.diverse`). The distractors stay clean.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from opomjax.core import diverse as diverse_lib
from opomjax.files import MaskFileError, atomic_write_bytes
from opomjax.pipeline import features as features_lib
from opomjax.pipeline import masks as masks_lib

log = logging.getLogger("opomjax")

#: Ranks reported (Top-1 is the table's; Top-5 is kept in the JSON).
KS = (1, 5)

#: Result files at the top of the workdir.
RESULTS_JSON = "diverse_results.json"
RESULTS_MD = "diverse_results.md"


def masks_dir(workdir: str | os.PathLike, num_masks: int) -> pathlib.Path:
  """Where the masks of the runs with ``num_masks`` masks per identity live."""
  return pathlib.Path(workdir) / f"masks-m{num_masks}"


def identity_groups(num_identities: int, group_size: int) -> list[np.ndarray]:
  """Consecutive groups of ``group_size`` identity indices (the last one shorter)."""
  if group_size < 1:
    raise ValueError(f"group_size must be a positive integer, got {group_size}")
  return [np.arange(s, min(s + group_size, num_identities)) for s in range(0, num_identities, group_size)]


def identity_starts(seed: int, indices, num_masks: int, shape, epsilon: float) -> jax.Array:
  """``(len(indices), M, H, W, 3)``: the random starts of identities ``indices``, identity ``i`` drawn from
  ``key_i = fold_in(PRNGKey(seed), i)`` exactly as ``generate_diverse_masks(..., key=key_i)`` draws them for it
  alone (``U(-epsilon, epsilon)`` from the first half of ``split(key_i)``)."""
  starts = []
  for i in indices:
    init_key, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), int(i)))
    starts.append(jax.random.uniform(init_key, (1, num_masks) + tuple(shape), jnp.float32, -epsilon, epsilon)[0])
  return jnp.stack(starts)


def save_identity_masks(path: str | os.PathLike, masks, metadata: dict) -> None:
  """Writes the ``(M, H, W, 3)`` masks of one identity with JSON metadata, atomically."""
  masks = np.asarray(masks, np.float32)
  if masks.ndim != 4 or masks.shape[-1] != 3:
    raise ValueError(f"masks must have shape (M, H, W, 3), got {masks.shape}")
  buf = io.BytesIO()
  np.savez(buf, masks=masks, metadata=np.array(json.dumps(metadata, sort_keys=True)))
  atomic_write_bytes(path, buf.getvalue())


def load_identity_masks(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
  """``(masks (M, H, W, 3), metadata)`` of a file of :func:`save_identity_masks`; MaskFileError if damaged."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return np.asarray(z["masks"], np.float32), json.loads(str(z["metadata"]))
  except FileNotFoundError:
    raise
  except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, EOFError ...
    raise MaskFileError(f"unreadable mask file {path}: {e}; delete it to make the masks again") from e


def reusable(path: pathlib.Path, identity: str, settings: dict) -> bool:
  """Whether ``path`` holds the finished masks of ``identity`` made with ``settings``.

  False when there is no readable file (the masks are made again); ValueError naming the file when it holds
  another identity's masks or masks made with other settings.
  """
  try:
    _, meta = load_identity_masks(path)
  except (FileNotFoundError, MaskFileError):
    return False
  if meta.get("identity") != identity:
    raise MaskFileError(f"mask file {path} belongs to identity {meta.get('identity')!r}, not {identity!r}; "
                        "delete it to make the masks again")
  if meta.get("settings") != settings:
    theirs = meta.get("settings") or {}
    differ = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
    raise ValueError(f"mask file {path} was made with other settings ({', '.join(differ)} differ); delete "
                     f"{path.parent} or choose another --workdir")
  return True


def generate(embed_fn: Callable, params, protocol, workdir, *, num_masks: int, settings: dict, group_size: int,
             seed: int, show_progress: bool = True, **mask_options) -> dict:
  """Generates the ``num_masks`` masks of every identity of ``protocol`` not on disk yet; returns a summary.

  Args:
    embed_fn: the surrogate (``embed_fn(params, images)`` with ``params``, e.g. ``FaceModel.apply``).
    params: its parameters, or None.
    protocol: ``names`` and ``train`` ``(K, n, H, W, 3)`` (the photos the masks are made from).
    workdir: the run's folder (masks under :func:`masks_dir`).
    num_masks: masks per identity.
    settings: what the masks depend on (recorded in each file, compared on resume).
    group_size: identities vmapped together.
    seed: identity ``i`` starts from :func:`identity_starts` of ``fold_in(PRNGKey(seed), i)``.
    show_progress: a tqdm bar of identities (the step of the current group as its postfix).
    **mask_options: passed to :func:`opomjax.core.diverse.generate_diverse_masks` (``method``,
      ``diversity_weight``, ``epsilon``, ``steps`` ...).

  Returns:
    ``{"num_masks", "generated", "skipped", "seconds"}`` (``seconds``: all generation time in the folder).
  """
  folder = masks_dir(workdir, num_masks)
  names = list(protocol.names)
  plan = []
  for g, idx in enumerate(identity_groups(len(names), group_size)):  # every file checked before any work
    pending = [i for i in idx if not reusable(folder / masks_lib.identity_filename(names[i]), names[i], settings)]
    plan.append((g, idx, pending))
  done = len(names) - sum(len(p) for _, _, p in plan)
  timing = folder / "generation.json"
  generated, counted = 0, time.time()
  with tqdm(total=len(names), initial=done, desc=f"M={num_masks} masks", unit="id",
            disable=not show_progress) as bar:
    for g, idx, pending in plan:
      if not pending:
        continue
      steps_seen = lambda step, total: bar.set_postfix_str(f"group {g} step {step}/{total}")
      images = jnp.asarray(protocol.train[idx], jnp.float32)
      init = identity_starts(seed, idx, num_masks, images.shape[2:], float(mask_options.get("epsilon", 8.0)))
      masks = diverse_lib.generate_diverse_masks(embed_fn, images, params=params, num_masks=num_masks, init=init,
                                                 progress=steps_seen, **mask_options)
      masks = np.asarray(masks)
      for row, i in enumerate(idx):
        if i in pending:
          save_identity_masks(folder / masks_lib.identity_filename(names[i]), masks[row],
                              {"identity": names[i], "index": int(i), "settings": settings})
      counted = _add_seconds(timing, counted)
      generated += len(pending)
      bar.update(len(pending))
      log.info("M=%d: group %d done (%d identities)", num_masks, g, len(pending))
  return {"num_masks": num_masks, "generated": generated, "skipped": len(names) - generated,
          "seconds": generation_seconds(workdir, num_masks)}


def _add_seconds(path: pathlib.Path, since: float) -> float:
  now = time.time()
  previous = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
  atomic_write_bytes(path, json.dumps({"seconds": previous + now - since}).encode())
  return now


def generation_seconds(workdir, num_masks: int) -> float:
  """Wall time spent generating the masks of ``num_masks`` in ``workdir`` (summed over resumed runs)."""
  path = masks_dir(workdir, num_masks) / "generation.json"
  return json.loads(path.read_text())["seconds"] if path.is_file() else 0.0


def load_masks(workdir, num_masks: int, names: Sequence[str], settings: dict) -> np.ndarray:
  """``(K, M, H, W, 3)``: the masks of ``names``, each checked to be its identity's and made with ``settings``."""
  folder = masks_dir(workdir, num_masks)
  out = []
  for name in names:
    path = folder / masks_lib.identity_filename(name)
    if not reusable(path, name, settings):
      raise FileNotFoundError(f"no masks of {name!r} under {folder}; generate them first")
    out.append(load_identity_masks(path)[0])
  return np.stack(out)


def protected_features(embed: Callable, test: np.ndarray, masks: np.ndarray, *, batch_size: int = 64,
                       condition: str = "none", desc: str | None = None) -> np.ndarray:
  """``(M, K, n, d)``: features of the ``(K, n, H, W, 3)`` test photos, each protected by mask ``p`` of its
  identity (``masks`` ``(K, M, H, W, 3)``) and passed through ``condition`` (default: saved at 8 bits)."""
  k, n = test.shape[:2]
  flat = test.reshape((k * n,) + test.shape[2:])
  out = []
  for p in range(masks.shape[1]):
    feats = features_lib.embed_in_batches(embed, flat, masks=np.repeat(masks[:, p], n, axis=0),
                                          condition=condition, batch_size=batch_size,
                                          desc=None if desc is None else f"{desc}, mask {p + 1}/{masks.shape[1]}")
    out.append(feats.reshape(k, n, -1))
  return np.stack(out)


def evaluate_masks(protected: np.ndarray, clean: np.ndarray, distractors: np.ndarray,
                   ks: Sequence[int] = KS) -> dict:
  """M-O and M-M of one set of masks against one target: per-mask / per-pair rates and their mean and std.

  Args:
    protected: ``(M, K, n, d)`` features of the protected test photos (:func:`protected_features`).
    clean: ``(K, n, d)`` features of the clean test photos.
    distractors: ``(D, d)`` features of the distractors.
    ks: ranks.

  Returns:
    ``{"num_masks", "mo_top{k}", "mo_top{k}_std", "mm_top{k}", "mm_top{k}_std", "clean_top{k}",
    "mo_per_mask": {k: list}, "mm_per_pair": {k: list}, "mask_feature_distance"}``; the M-M entries and the
    feature distance are None for one mask.
  """
  ks = tuple(ks)
  num_masks = protected.shape[0]
  row = {"num_masks": int(num_masks)}
  clean_rates = diverse_lib.mask_original_rates(clean[None], clean, distractors, ks)[0]
  mo = diverse_lib.mask_original_rates(protected, clean, distractors, ks)
  mo_mean, mo_std = diverse_lib.mean_std(mo)
  mm = diverse_lib.mask_mask_rates(protected, distractors, ks) if num_masks >= 2 else None
  mm_mean, mm_std = diverse_lib.mean_std(mm) if mm is not None else (None, None)
  for i, k in enumerate(ks):
    row[f"clean_top{k}"] = float(clean_rates[i])
    row[f"mo_top{k}"], row[f"mo_top{k}_std"] = float(mo_mean[i]), float(mo_std[i])
    row[f"mm_top{k}"] = None if mm is None else float(mm_mean[i])
    row[f"mm_top{k}_std"] = None if mm is None else float(mm_std[i])
  row["mo_per_mask"] = {str(k): mo[:, i].tolist() for i, k in enumerate(ks)}
  row["mm_per_pair"] = None if mm is None else {str(k): mm[:, i].tolist() for i, k in enumerate(ks)}
  row["mask_feature_distance"] = (diverse_lib.pairwise_feature_distance(protected) if num_masks >= 2 else None)
  return row


def _pct(mean, std=None) -> str:
  if mean is None:
    return "—"
  return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def markdown_table(rows: Sequence[dict]) -> str:
  """Table 6 as markdown: one line per (target, M): the M-O and M-M Top-1 protection success rates (mean ± std
  over masks / mask pairs, in %), that of unprotected probes, the mean squared distance between the unit
  features of one photo under two different masks (:func:`opomjax.core.diverse.pairwise_feature_distance`) and
  the generation time per identity."""
  lines = ["| target | masks M | M-O top-1 (%) | M-M top-1 (%) | clean probes top-1 (%) | "
           "‖f̂ᵖ − f̂ᵠ‖² | generation s / identity |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    distance = "—" if r.get("mask_feature_distance") is None else f"{r['mask_feature_distance']:.3f}"
    seconds = r.get("seconds_per_identity")
    lines.append(f"| {r['target']} | {r['num_masks']} | {_pct(r['mo_top1'], r['mo_top1_std'])} | "
                 f"{_pct(r['mm_top1'], r['mm_top1_std'])} | {_pct(r['clean_top1'])} | {distance} | "
                 f"{'—' if seconds is None else f'{seconds:.0f}'} |")
  return "\n".join(lines) + "\n"


def write_results(rows: Sequence[dict], workdir, meta: dict) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``diverse_results.json`` (``{"settings": meta, "rows": rows}``) and ``diverse_results.md``."""
  workdir = pathlib.Path(workdir)
  json_path, md_path = workdir / RESULTS_JSON, workdir / RESULTS_MD
  atomic_write_bytes(json_path, (json.dumps({"settings": meta, "rows": list(rows)}, indent=2) + "\n").encode())
  header = (f"Diverse masks (Sec. 4.3.4, Table 6): {meta.get('method')}, surrogate {meta.get('surrogate')}, "
            f"{meta.get('num_identities')} identities, {meta.get('steps')} steps, ε = {meta.get('epsilon')}, "
            f"diversity weight λ = {meta.get('diversity_weight')}; probes saved at 8 bits.\n\n")
  atomic_write_bytes(md_path, (header + markdown_table(rows)).encode())
  return json_path, md_path
