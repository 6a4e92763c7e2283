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

#: Columns of every results row (rates are fractions in [0, 1]).
RESULT_KEYS = (
    "method", "surrogate", "target", "top1", "top5", "top10",
    "clean_top1", "clean_top5", "cos_before", "cos_after", "seconds",
)


def validate_rows(rows: list[dict]) -> None:
  for i, row in enumerate(rows):
    missing = [k for k in RESULT_KEYS if k not in row]
    if missing:
      raise ValueError(f"results row {i} lacks {missing}")


def write_results(rows: list[dict], workdir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Writes ``results.json``, ``results.csv`` and ``results.md`` (atomically) and returns their paths."""
  validate_rows(rows)
  workdir = pathlib.Path(workdir)
  paths = {k: workdir / f"results.{k}" for k in ("json", "csv", "md")}
  masks_lib.atomic_write_bytes(paths["json"], json.dumps(rows, indent=2).encode())
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(RESULT_KEYS), extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  masks_lib.atomic_write_bytes(paths["csv"], buf.getvalue().encode())
  masks_lib.atomic_write_bytes(paths["md"], markdown_table(rows).encode())
  return paths


def read_results(workdir: str | os.PathLike) -> list[dict]:
  path = pathlib.Path(workdir) / "results.json"
  return json.loads(path.read_text()) if path.is_file() else []


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
  """``old`` with the rows of ``new`` replacing those of the same (method, surrogate, target)."""
  key = lambda r: (r["method"], r["surrogate"], r["target"])
  merged = {key(r): r for r in old}
  merged.update({key(r): r for r in new})
  return list(merged.values())


def row_label(row: dict) -> str:
  return f"{row['method']} ({row['surrogate']})"


def is_white_box(surrogate: str, target: str) -> bool:
  """Whether ``target`` is the surrogate itself: ``dlib_resnet+mdfa`` attacks ``dlib_resnet``, ``sface`` (the
  JAX translation) attacks ``sface_onnx`` (the original)."""
  model = surrogate.split("+")[0]
  return model == target or model == target.removesuffix("_onnx")


def markdown_table(rows: list[dict]) -> str:
  """Paper-style table: one row per (method, surrogate), one column per target, "Top-1 / Top-5" in percent.

  The surrogate's own column is white-box; the others are black-box. Last column: wall time of the method.
  """
  targets = list(dict.fromkeys(r["target"] for r in rows))
  labels = list(dict.fromkeys(row_label(r) for r in rows))
  cell = {(row_label(r), r["target"]): r for r in rows}
  head = "| Method (surrogate) | " + " | ".join(f"{t} Top-1 / Top-5" for t in targets) + " | seconds |"
  lines = [head, "|" + "---|" * (len(targets) + 2)]
  for label in labels:
    cells, seconds = [], None
    for t in targets:
      r = cell.get((label, t))
      if r is None:
        cells.append("–")
        continue
      box = "wb" if is_white_box(r["surrogate"], t) else "bb"
      cells.append(f"{100 * r['top1']:.1f} / {100 * r['top5']:.1f} ({box})")
      seconds = r["seconds"]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  clean = {r["target"]: r for r in rows}
  lines.append(
      "| *clean accuracy* | "
      + " | ".join(f"{100 * clean[t]['clean_top1']:.1f} / {100 * clean[t]['clean_top5']:.1f}" for t in targets)
      + " | |"
  )
  return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str | os.PathLike, metric: str = "top1") -> None:
  """A grouped bar chart of ``metric`` (protection success rate, %) per method and target."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  targets = list(dict.fromkeys(r["target"] for r in rows))
  labels = list(dict.fromkeys(row_label(r) for r in rows))
  cell = {(row_label(r), r["target"]): r[metric] for r in rows}
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
