"""Results tables and figures: ``results.json`` / ``results.csv``, a markdown table laid out like the paper's
Table 2 (rows: methods, columns: targets, cells: Top-1 / Top-5 protection success rate), a bar chart, and a grid
of masks and masked faces like the paper's Fig. 3."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import numpy as np

from opomjax.pipeline import masks as masks_lib

#: What a results row measured (rates are fractions in [0, 1]); every row has these.
METRIC_KEYS = ("top1", "top5", "top10", "clean_top1", "clean_top5", "cos_before", "cos_after", "seconds")

#: The settings the row's masks were made with (None where a setting does not apply to the method, e.g. the hull
#: bounds outside OPOM-ConvexHull); ``settings_id`` is a hash of all of them. Rows written before these columns
#: existed lack them.
SETTING_KEYS = (
    "dataset", "num_identities", "frame", "epsilon", "step_size", "steps", "momentum", "dropout", "seed",
    "group_size", "lower", "upper", "warmup_center_steps", "solver", "eot", "eot_samples", "settings_id",
)

#: What the probes went through before the target embedded them (``opomjax.faces.channel``), and the protection
#: success rate of the unmasked probes through the same channel. Rows written before conditions existed lack
#: them: they were measured on float probes (condition ``float``). ``faces_lost`` and ``insertion`` (how the masks
#: went into the photos, :func:`opomjax.faces.apply_mask_to_photo`): photo conditions only.
CONDITION_KEYS = ("condition", "channel_top1", "channel_top5", "faces_lost", "insertion")

#: Columns of the results files, in order.
RESULT_KEYS = ("method", "surrogate", "target", "condition") + SETTING_KEYS + METRIC_KEYS + CONDITION_KEYS[1:]


def condition_of(row: dict) -> str:
  """A row's condition; ``float`` for rows written before conditions existed (they embedded unrounded probes)."""
  return row.get("condition") or "float"


def validate_rows(rows: list[dict]) -> None:
  for i, row in enumerate(rows):
    missing = [k for k in ("method", "surrogate", "target") + METRIC_KEYS if k not in row]
    if missing:
      raise ValueError(f"results row {i} lacks {missing}")


def write_results(rows: list[dict], workdir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Writes ``results.json``, ``results.csv`` and ``results.md`` (atomically) and returns their paths."""
  validate_rows(rows)
  workdir = pathlib.Path(workdir)
  paths = {k: workdir / f"results.{k}" for k in ("json", "csv", "md")}
  masks_lib.atomic_write_bytes(paths["json"], json.dumps(rows, indent=2).encode())
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(RESULT_KEYS), extrasaction="ignore", restval="", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  masks_lib.atomic_write_bytes(paths["csv"], buf.getvalue().encode())
  masks_lib.atomic_write_bytes(paths["md"], markdown_table(rows).encode())
  return paths


def read_results(workdir: str | os.PathLike) -> list[dict]:
  path = pathlib.Path(workdir) / "results.json"
  return json.loads(path.read_text()) if path.is_file() else []


def row_key(row: dict) -> tuple:
  """What makes two rows the same measurement: method, surrogate, target, condition and the masks' settings."""
  return (row["method"], row["surrogate"], row["target"], condition_of(row), row.get("settings_id"))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
  """``old`` with the rows of ``new`` replacing those of the same :func:`row_key`; rows of other settings stay."""
  merged = {row_key(r): r for r in old}
  merged.update({row_key(r): r for r in new})
  return list(merged.values())


def row_label(row: dict, shown: tuple[str, ...] = ()) -> str:
  """``method (surrogate)``, followed by the settings named in ``shown``, e.g. ``fi-uap (dlib_resnet, ε=4.0)``."""
  names = {"epsilon": "ε", "settings_id": "settings"}
  extra = "".join(f", {names.get(k, k)}={row.get(k, '?')}" for k in shown)
  return f"{row['method']} ({row['surrogate']}{extra})"


def row_labels(rows: list[dict]) -> list[str]:
  """One label per row: rows of one (method, surrogate) made with different settings are told apart by the
  settings they differ in (or by their settings id when only unlisted settings differ)."""
  by_name: dict[tuple, list[dict]] = {}
  for r in rows:
    by_name.setdefault((r["method"], r["surrogate"]), []).append(r)
  shown = {}
  for name, group in by_name.items():
    differing = tuple(k for k in SETTING_KEYS[:-1] if len({repr(r.get(k)) for r in group}) > 1)
    if not differing and len({r.get("settings_id") for r in group}) > 1:
      differing = ("settings_id",)
    shown[name] = differing
  return [row_label(r, shown[(r["method"], r["surrogate"])]) for r in rows]


#: The variant marks a result row's surrogate label may carry after the model names.
VARIANTS = ("mdfa", "eot")


#: Targets that run a surrogate's network behind their own photo pipeline: ``dlib_native`` is dlib's detector,
#: landmarks and chips in front of the dlib ResNet's weights.
TARGET_NETWORK = {"dlib_native": "dlib_resnet"}


def is_white_box(surrogate: str, target: str) -> bool:
  """Whether ``target`` is the surrogate itself or a member of its ensemble: ``dlib_resnet+mdfa`` attacks
  ``dlib_resnet`` (and ``dlib_native``, the same network behind dlib's own pipeline), ``sface`` (the JAX
  translation) attacks ``sface_onnx`` (the original), ``dlib_resnet+faceres`` attacks both."""
  members = [m for m in surrogate.split("+") if m not in VARIANTS]
  network = TARGET_NETWORK.get(target, target)
  return any(m == network or m == network.removesuffix("_onnx") for m in members)



def _percent(rate) -> str:
  """A rate as a percentage with one decimal; "–" for a rank the gallery was too small to measure."""
  return "–" if rate is None else f"{100 * rate:.1f}"


def markdown_table(rows: list[dict]) -> str:
  """Paper-style table: one row per (method, surrogate, condition), one column per target, "Top-1 / Top-5" in
  percent.

  The surrogate's own column is white-box; the others are black-box. Last column: wall time of the method. The
  last rows give the clean accuracy and, for each channel condition, the protection success rate of the unmasked
  probes through that channel (what the channel alone does).
  """
  targets = list(dict.fromkeys(r["target"] for r in rows))
  row_names = [(label, condition_of(r)) for label, r in zip(row_labels(rows), rows)]
  labels = list(dict.fromkeys(row_names))
  cell = {(name, r["target"]): r for name, r in zip(row_names, rows)}
  head = "| Method (surrogate) | condition | " + " | ".join(f"{t} Top-1 / Top-5" for t in targets) + " | seconds |"
  lines = [head, "|" + "---|" * (len(targets) + 3)]
  for label, condition in labels:
    cells, seconds = [], None
    for t in targets:
      r = cell.get(((label, condition), t))
      if r is None:
        cells.append("–")
        continue
      box = "wb" if is_white_box(r["surrogate"], t) else "bb"
      cells.append(f"{_percent(r['top1'])} / {_percent(r['top5'])} ({box})")
      seconds = r["seconds"]
    lines.append(f"| {label} | {condition} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  clean = {r["target"]: r for r in rows}
  lines.append(
      "| *clean accuracy* | | "
      + " | ".join(f"{_percent(clean[t]['clean_top1'])} / {_percent(clean[t]['clean_top5'])}" for t in targets)
      + " | |"
  )
  channel = {(condition_of(r), r["target"]): r for r in rows if r.get("channel_top1") is not None}
  for condition in dict.fromkeys(c for c, _ in channel):
    if condition in ("none", "float"):
      continue
    cells = [channel.get((condition, t)) for t in targets]
    lines.append(f"| *no mask, channel only* | {condition} | "
                 + " | ".join("–" if r is None else f"{_percent(r['channel_top1'])} / {_percent(r['channel_top5'])}"
                              for r in cells) + " | |")
  return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str | os.PathLike, metric: str = "top1") -> None:
  """A grouped bar chart of ``metric`` (protection success rate, %) per method and target."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  targets = list(dict.fromkeys(r["target"] for r in rows))
  row_names = [label if condition_of(r) == "none" else f"{label} [{condition_of(r)}]"
               for label, r in zip(row_labels(rows), rows)]
  labels = list(dict.fromkeys(row_names))
  cell = {(label, r["target"]): r[metric] for label, r in zip(row_names, rows)}
  width = 0.8 / max(len(targets), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
  x = np.arange(len(labels))
  for i, t in enumerate(targets):
    ax.bar(x + i * width, [100 * cell.get((l, t), np.nan) for l in labels], width, label=t)
  ax.set_xticks(x + width * (len(targets) - 1) / 2, labels, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel(f"protection success rate, {metric} (%)")
  ax.set_ylim(0, 100)
  ax.legend(title="target", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def mask_grid(faces, masks, names, path: str | os.PathLike, epsilon: float = 8.0) -> None:
  """Fig. 3-style grid: per identity a clean face, its mask (scaled from [-ε, ε] to [0, 255]) and the masked face.

  Args:
    faces: ``(k, H, W, 3)`` clean chips (uint8 or float 0-255).
    masks: ``(k, H, W, 3)`` masks in 0-255 units.
    names: k labels.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  faces = np.asarray(faces, np.float32)
  masks = np.asarray(masks, np.float32)
  k = len(names)
  fig, axes = plt.subplots(k, 3, figsize=(6, 2 * k), squeeze=False)
  for i in range(k):
    shown = [
        faces[i] / 255.0,
        np.clip(masks[i] / (2 * epsilon) + 0.5, 0, 1),
        np.clip(faces[i] + masks[i], 0, 255) / 255.0,
    ]
    for j, (img, title) in enumerate(zip(shown, ("clean", "mask", "masked"))):
      axes[i, j].imshow(img)
      axes[i, j].set_axis_off()
      if i == 0:
        axes[i, j].set_title(title, fontsize=9)
    axes[i, 0].text(-4, faces.shape[1] / 2, names[i].replace("_", " "), ha="right", va="center", fontsize=7)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
