"""What input diversity (DI) adds to an ascent step: the DI step against the plain one, and DI's own resize.

  .venv/bin/python bench/bench_input_diversity.py [--models dlib_resnet,sface] [--n 10] [--steps 4] [--repeats 2]

For each model (random weights: the cost does not depend on them), on ``n`` random canonical 128x128 images of one
identity, OPOM-ConvexHull, seconds per step of :func:`opomjax.generate_masks` (compile excluded):

* ``plain``: no transfer technique;
* ``di``: DI with probability 0.5 (:func:`opomjax.core.transfer.input_diversity`; the resize is computed at every
  step and the draw selects it, so the cost does not depend on the probability);
* ``ti+di``: TI of width 7 and DI 0.5, the protect tool's ``transfer`` preset on one model;
* ``resize``: DI's resize of the batch alone, forward + backward, jitted: the arithmetic DI adds.

DI's randomness is four uniform numbers per draw (whether to apply it, the scale, two offsets), drawn from the
step's key: nothing next to the network. Everything is measured in one run of this script, so the ratios hold on
a shared machine too.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import opomjax  # pylint: disable=wrong-import-position
from opomjax.core import transfer  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position
from bench.bench_models import median_seconds, step_parser  # pylint: disable=wrong-import-position

SETTINGS = {"plain": {}, "di": dict(di_probability=0.5), "ti+di": dict(ti_width=7, di_probability=0.5)}


def per_step(model, images, steps: int, repeats: int, **options) -> float:
  """Seconds per step of ``generate_masks`` (OPOM-ConvexHull) with the transfer ``options``."""
  run = lambda: opomjax.generate_masks(model.apply, images, params=model.params, method="opom-convex",
                                       key=jax.random.key(0), steps=steps, **options)
  return median_seconds(run, repeats) / steps


def resize_seconds(images, repeats: int) -> float:
  """DI's resize (always applied) of ``images``, forward + backward, jitted."""
  grad = jax.jit(jax.grad(lambda x: jnp.sum(transfer.input_diversity(jax.random.key(1), x, 1.0) ** 2)))
  return median_seconds(lambda: grad(images), repeats)


def bench(name: str, n: int, steps: int, repeats: int) -> dict:
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, n, 128, 128, 3)), jnp.float32)
  out = {setting: per_step(model, images, steps, repeats, **options) for setting, options in SETTINGS.items()}
  out["resize"] = resize_seconds(images, max(repeats, 5))
  return dict(out, model=name)


def main(argv=None) -> None:
  parser = step_parser(__doc__, "dlib_resnet,sface")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, n={args.n}, steps={args.steps}, OPOM-ConvexHull")
  print("model | plain s/step | DI s/step | TI+DI s/step | DI's resize s | DI / plain | TI+DI / plain | "
        "resize / plain")
  for name in args.models.split(","):
    r = bench(name, args.n, args.steps, args.repeats)
    print(f"{r['model']} | {r['plain']:.3f} | {r['di']:.3f} | {r['ti+di']:.3f} | {r['resize']:.4f} | "
          f"{r['di'] / r['plain']:.2f} | {r['ti+di'] / r['plain']:.2f} | {r['resize'] / r['plain']:.3f}", flush=True)


if __name__ == "__main__":
  main()
