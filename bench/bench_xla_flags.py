"""XLA:CPU flags against the default: seconds per ascent step, and whether the masks stay the same.

  .venv/bin/python bench/bench_xla_flags.py [--models dlib_resnet,sface] [--n 10] [--steps 4] [--repeats 2]
                                            [--flags "--xla_cpu_multi_thread_eigen=false;--xla_cpu_use_xnnpack=true"]

``XLA_FLAGS`` is read once, when jax starts, so every flag set runs in a fresh Python process: each loads the
model (random weights where none are registered), makes masks for one identity of ``n`` random canonical
128x128 images with :func:`opomjax.generate_masks` (OPOM-ConvexHull, one warm-up run that compiles, then the
median of ``repeats`` runs of ``steps`` steps) and saves them. This process prints, per model and flag set,
the seconds per step, the ratio to the default (no flags, run first, and once more last: the spread between
the two is the noise of this measurement) and the largest difference of the masks from the default's (0: bit
for bit). A flag set that this jaxlib refuses is reported as failed with its first
line of error. The runs follow each other, so the ratios hold on a shared machine as long as the load stays
the same.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Flag sets tried by default: the Eigen thread pool off, the XNNPACK and oneDNN kernels, XLA's scheduler for
#: concurrency, and 512-bit vectors (this machine has AVX-512).
DEFAULT_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "--xla_cpu_use_xnnpack=true", "--xla_cpu_use_onednn=true",
                 "--xla_cpu_enable_concurrency_optimized_scheduler=true", "--xla_cpu_prefer_vector_width=512")

CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
import opomjax
from opomjax.models import registry
from bench.bench_models import median_seconds
model = registry.load_model({model!r}, allow_random_weights=True)
images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, {n}, 128, 128, 3)), jnp.float32)
run = lambda: opomjax.generate_masks(model.apply, images, params=model.params, method="opom-convex",
                                     key=jax.random.key(0), steps={steps})
seconds = median_seconds(run, {repeats}) / {steps}
np.save({out!r}, np.asarray(run()))
print(json.dumps({{"seconds_per_step": seconds}}))
"""


def run_child(model: str, flags: str, args, out: str) -> dict:
  """One fresh process under ``XLA_FLAGS=flags``: ``{"seconds_per_step": s}`` or ``{"error": first line}``."""
  env = dict(os.environ, XLA_FLAGS=flags)
  code = CHILD.format(root=str(ROOT), model=model, n=args.n, steps=args.steps, repeats=args.repeats, out=out)
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    lines = [l for l in (done.stderr or done.stdout).splitlines() if l.strip()]
    return {"error": lines[-1][:160] if lines else f"exit status {done.returncode}"}
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib_resnet,sface")
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--flags", default=";".join(DEFAULT_FLAGS), help="flag sets separated by ';'")
  args = parser.parse_args(argv)
  flag_sets = [""] + [f.strip() for f in args.flags.split(";") if f.strip()] + [""]
  print(f"n={args.n}, steps={args.steps}, repeats={args.repeats}, OPOM-ConvexHull, one identity; "
        f"XLA_FLAGS outside: {os.environ.get('XLA_FLAGS', '')!r}")
  print("model | XLA_FLAGS | s/step | / default | max |mask - default mask|")
  with tempfile.TemporaryDirectory() as tmp:
    for model in args.models.split(","):
      base = None
      for i, flags in enumerate(flag_sets):
        out = os.path.join(tmp, f"{model}_{i}.npy")
        r = run_child(model, flags, args, out)
        label = flags or ("(default)" if i == 0 else "(default, again)")
        if "error" in r:
          print(f"{model} | {label} | failed: {r['error']}", flush=True)
          continue
        masks = np.load(out)
        if base is None and i == 0:
          base = (r["seconds_per_step"], masks)
        if base is None:
          print(f"{model} | {label} | {r['seconds_per_step']:.3f} | (no default run) |", flush=True)
          continue
        diff = float(np.max(np.abs(masks - base[1])))
        print(f"{model} | {label} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / base[0]:.2f} | "
              f"{diff:.3g}", flush=True)


if __name__ == "__main__":
  main()
