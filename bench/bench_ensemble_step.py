"""What an ascent step on an ensemble of surrogates costs against the sum of its members' own steps.

  .venv/bin/python bench/bench_ensemble_step.py [--models dlib_resnet,sface,faceres] [--n 10] [--steps 5]
      [--method opom-convex] [--eot none,jpeg,resize,blur --eot_samples 2]

On ``n`` random canonical 128x128 images of one identity, per step of :func:`opomjax.generate_masks` (the
median of the per-step times reported through ``progress``, the first step, which compiles, left out): each
model alone, then the ensemble of all of them (per-member objectives and normalised gradients,
:func:`opomjax.core.ensemble.combine_member_gradients`). Prints the ratio of the ensemble step to the sum of
the members' steps, all measured in one run. Models without registered weights run with random ones. With
``--eot`` every step also averages over random channels (input diversity of the transfer techniques).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import opomjax  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position


def seconds_per_step(embed, params, images, steps: int, **options) -> float:
  """Median seconds of the steps after the first of one ``generate_masks`` run."""
  stamps = [time.perf_counter()]
  opomjax.generate_masks(embed, images, params=params, key=jax.random.key(0), steps=steps,
                         progress=lambda done, total: stamps.append(time.perf_counter()), **options)
  return float(np.median(np.diff(stamps)[1:]))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib_resnet,sface,faceres")
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--method", default="opom-convex")
  parser.add_argument("--eot", default="")
  parser.add_argument("--eot_samples", type=int, default=2)
  args = parser.parse_args(argv)
  if args.steps < 2:
    parser.error("--steps must be at least 2 (the first step compiles and is not counted)")
  models = [registry.load_model(name, allow_random_weights=True) for name in args.models.split(",")]
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, args.n, 128, 128, 3)), jnp.float32)
  options = dict(method=args.method, eot=args.eot, eot_samples=args.eot_samples)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, n={args.n}, {args.method}, "
        f"eot={args.eot or 'off'}, median of {args.steps - 1} steps")
  alone = []
  for model in models:
    alone.append(seconds_per_step(model.apply, model.params, images, args.steps, **options))
    print(f"{model.name:12s} alone: {alone[-1]:.3f} s per step", flush=True)
  both = seconds_per_step(tuple(m.apply for m in models), tuple(m.params for m in models), images, args.steps,
                          **options)
  print(f"ensemble of {len(models)}: {both:.3f} s per step; sum of the members {sum(alone):.3f} s; "
        f"ratio {both / sum(alone):.2f}")


if __name__ == "__main__":
  main()
