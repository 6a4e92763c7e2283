"""Max pooling's hand-written backward pass (opomjax.models.pooling) against JAX's select-and-scatter, in one run.

  .venv/bin/python bench/bench_max_pool.py [--models dlib_resnet] [--n 10] [--steps 16] [--rounds 30]

For each model, on ``n`` random canonical 128x128 images of one identity:

* the jitted forward + backward (gradient of the summed embeddings with respect to the images), once with the
  library's max pooling and once with ``jax.lax.reduce_window``'s own gradient (XLA:CPU's select-and-scatter
  expansion) in its place, both compiled in this process and timed alternately ``--rounds`` times (the order
  swapped every round), so that the machine's load falls on both alike; the medians, minima and their ratios;
* the masks of :func:`opomjax.generate_masks` (OPOM-ConvexHull, ``steps`` steps) with each variant, each in a
  fresh process (its jit caches cannot mix them): the largest difference (the gradients may differ in the last
  bit where an input is the maximum of two overlapping windows), and each process's seconds per step (one run
  each: on a shared machine these vary by a fifth from process to process, so compare the first ratio).

Models without registered weights run with random ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("library", "select-and-scatter")


def _use_select_and_scatter() -> None:
  from opomjax.models import pooling  # pylint: disable=import-outside-toplevel
  pooling._valid_max_pool = pooling._valid_max  # pylint: disable=protected-access


def interleaved_gradients(name: str, n: int, rounds: int) -> dict:
  """Both variants' jitted forward + backward compiled in this process, timed alternately."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from opomjax.models import pooling, registry  # pylint: disable=import-outside-toplevel
  from bench.bench_models import alternating_seconds  # pylint: disable=import-outside-toplevel

  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (n, 128, 128, 3)), jnp.float32)
  library_pool = pooling._valid_max_pool  # pylint: disable=protected-access
  grads, fns = {}, {}
  for v in VARIANTS:  # each traced and compiled under its own pooling, then kept
    if v == "select-and-scatter":
      _use_select_and_scatter()
    fns[v] = jax.jit(jax.grad(lambda x, p: jnp.sum(model.apply(p, x))))
    grads[v] = np.asarray(fns[v](images, model.params))
  pooling._valid_max_pool = library_pool  # pylint: disable=protected-access
  times = alternating_seconds({v: functools.partial(fns[v], images, model.params) for v in VARIANTS}, rounds)
  return {"times": times, "grad_difference": float(np.max(np.abs(grads[VARIANTS[0]] - grads[VARIANTS[1]])))}


def masks_in_process(name: str, n: int, steps: int, variant: str, mask_path: str) -> float:
  """One process, one variant: the generate_masks mask saved, seconds per step returned (compile excluded)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import opomjax  # pylint: disable=import-outside-toplevel
  from opomjax.models import registry  # pylint: disable=import-outside-toplevel

  if variant == "select-and-scatter":
    _use_select_and_scatter()
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, n, 128, 128, 3)), jnp.float32)
  generate = lambda: jax.block_until_ready(opomjax.generate_masks(
      model.apply, images, params=model.params, method="opom-convex", key=jax.random.key(0), steps=steps))
  np.save(mask_path, np.asarray(generate()))
  start = time.perf_counter()
  generate()
  return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib_resnet")
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one variant's masks in this process
  parser.add_argument("--mask_path", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.variant:
    print(json.dumps(masks_in_process(args.models, args.n, args.steps, args.variant, args.mask_path)))
    return

  import numpy as np  # pylint: disable=import-outside-toplevel
  from opomjax.models import registry  # pylint: disable=import-outside-toplevel
  unknown = [m for m in args.models.split(",") if m not in registry.available_models()]
  if unknown:
    parser.error(f"unknown models {unknown}; available: {', '.join(registry.available_models())}")
  print(f"n={args.n}, forward + backward timed alternately {args.rounds} times per variant in one process; "
        f"masks of {args.steps} steps, each variant in a fresh process")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      r = interleaved_gradients(name, args.n, args.rounds)
      med = {v: statistics.median(r["times"][v]) for v in VARIANTS}
      low = {v: min(r["times"][v]) for v in VARIANTS}
      print(f"{name} | forward + backward, median (min) s: library {med[VARIANTS[0]]:.4f} ({low[VARIANTS[0]]:.4f}), "
            f"select-and-scatter {med[VARIANTS[1]]:.4f} ({low[VARIANTS[1]]:.4f}); ratio "
            f"{med[VARIANTS[1]] / med[VARIANTS[0]]:.3f}x ({low[VARIANTS[1]] / low[VARIANTS[0]]:.3f}x); gradients differ "
            f"by at most {r['grad_difference']:.2g}", flush=True)
      per_step = {}
      for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--models", name, "--n", str(args.n), "--steps",
                              str(args.steps), "--variant", v, "--mask_path", f"{tmp}/{v}.npy"],
                             check=False, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
          sys.exit(f"error: {name} ({v}) failed:\n{out.stderr.strip()[-2000:]}")
        per_step[v] = json.loads(out.stdout.strip().splitlines()[-1])
      masks = [np.load(f"{tmp}/{v}.npy") for v in VARIANTS]
      print(f"{name} | masks: largest difference {np.max(np.abs(masks[0] - masks[1])):g}, "
            f"{np.mean(masks[0] != masks[1]):.2%} of values differ; generate_masks s/step, one process each: "
            f"library {per_step[VARIANTS[0]]:.3f}, select-and-scatter {per_step[VARIANTS[1]]:.3f}", flush=True)


if __name__ == "__main__":
  main()
