"""Seconds per identity of a mask step against the group size (identities vmapped together), on this machine.

  .venv/bin/python bench/bench_group_size.py [--model dlib_resnet] [--sizes 1,2,4,8,16] [--n 10] [--steps 2]
      [--method opom-convex] [--repeats 2]

For each group size ``k``: :func:`opomjax.generate_masks` on ``k`` identities of ``n`` random canonical 128x128
images, ``steps`` steps (compile excluded: a warm-up call first), median over ``repeats`` calls, divided by
``k * steps``. The launchers' ``config.group_size`` (default 8) is this ``k``; a larger group amortises the fixed
cost of each call and piece, a smaller one keeps fewer activations alive. The group sizes run in one process one
after the other, so their ratios hold on a shared machine only roughly; run it alone.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import opomjax  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position
from bench.bench_models import median_seconds  # pylint: disable=wrong-import-position


def seconds_per_identity_step(model, k: int, n: int, steps: int, method: str, repeats: int) -> float:
  images = jnp.asarray(np.random.default_rng(k).uniform(0, 255, (k, n, 128, 128, 3)), jnp.float32)
  run = lambda: opomjax.generate_masks(model.apply, images, params=model.params, method=method,
                                       key=jax.random.key(0), steps=steps, warmup_center_steps=0)
  return median_seconds(run, repeats) / (k * steps)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="dlib_resnet", help="registry name of the surrogate")
  parser.add_argument("--sizes", default="1,2,4,8,16")
  parser.add_argument("--n", type=int, default=10, help="images per identity (paper: 10)")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--method", default="opom-convex")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  model = registry.load_model(args.model, allow_random_weights=True)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, model {args.model}, {args.method}, n={args.n}, "
        f"steps={args.steps}, median of {args.repeats}")
  print("group size | s per identity-step | relative to group 1")
  first = None
  for k in (int(s) for s in args.sizes.split(",")):
    seconds = seconds_per_identity_step(model, k, args.n, args.steps, args.method, args.repeats)
    first = first or seconds
    print(f"{k} | {seconds:.3f} | {seconds / first:.2f}", flush=True)


if __name__ == "__main__":
  main()
