"""What DFANet's randomness costs in an ascent step: Threefry keep masks against the keyed hash.

  .venv/bin/python bench/bench_randomness.py [--models sface,dlib_resnet] [--n 10] [--steps 4] [--repeats 2]

For each model, on ``n`` random canonical 128x128 images of one identity, OPOM-ConvexHull with momentum
(the ``_mdfa`` settings: momentum 1.0, DFANet dropout 0.1), per step of :func:`opomjax.generate_masks`
(compile excluded):

* ``plain``: momentum without DFANet (the floor the dropout adds to);
* ``threefry``: DFANet with keep masks from ``jax.random.bernoulli`` (Threefry; what the project drew before);
* ``hash``: DFANet with the keyed hash of :mod:`opomjax.models.dropout` (the default generator);
* ``once``: the hash, with the clean features taken once without dropout (``dfanet_clean_once=True``, the
  default of :func:`opomjax.generate_masks` and the launchers).

``threefry`` and ``hash`` recompute the clean features under dropout at every step (``dfanet_clean_once=False``:
a second forward pass, as the official code and the ``_mdfa`` configs do), so their floor is above ``plain`` by
about one forward pass whatever the generator; ``once`` drops that pass.

Everything is measured in one run of this script, so the ratios hold on a shared machine too.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import opomjax  # pylint: disable=wrong-import-position
from opomjax.core import ascent  # pylint: disable=wrong-import-position
from opomjax.models import dropout  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position
from bench.bench_models import median_seconds, step_parser  # pylint: disable=wrong-import-position


def per_step(model, images, steps: int, repeats: int, *, dfanet: bool, generator: str,
             clean_once: bool = False) -> float:
  """Seconds per step of ``generate_masks`` (momentum, ``dfanet``) with keep masks from ``generator``."""
  dropout.GENERATOR = generator  # read when a step is traced: drop the steps compiled with the other one
  ascent._cached_runner.cache_clear()  # pylint: disable=protected-access
  jax.clear_caches()
  run = lambda: opomjax.generate_masks(model.apply, images, params=model.params, method="opom-convex",
                                       key=jax.random.key(0), steps=steps, momentum=1.0, dfanet=dfanet,
                                       dfanet_clean_once=clean_once)
  try:
    return median_seconds(run, repeats) / steps
  finally:
    dropout.GENERATOR = "fmix32-hash"


def bench(name: str, n: int, steps: int, repeats: int) -> dict:
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, n, 128, 128, 3)), jnp.float32)
  return {
      "model": name,
      "plain": per_step(model, images, steps, repeats, dfanet=False, generator="fmix32-hash"),
      "threefry": per_step(model, images, steps, repeats, dfanet=True, generator="threefry"),
      "hash": per_step(model, images, steps, repeats, dfanet=True, generator="fmix32-hash"),
      "once": per_step(model, images, steps, repeats, dfanet=True, generator="fmix32-hash", clean_once=True),
  }


def main(argv=None) -> None:
  parser = step_parser(__doc__, "sface,dlib_resnet")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, n={args.n}, steps={args.steps}, "
        f"OPOM-ConvexHull, momentum 1.0, DFANet 0.1")
  print("model | no DFANet s/step | DFANet threefry s/step | DFANet hash s/step | DFANet hash, clean once s/step | "
        "overhead threefry | overhead hash | overhead clean once | threefry / hash")
  for name in args.models.split(","):
    r = bench(name, args.n, args.steps, args.repeats)
    print(f"{r['model']} | {r['plain']:.3f} | {r['threefry']:.3f} | {r['hash']:.3f} | {r['once']:.3f} | "
          f"{r['threefry'] / r['plain'] - 1:+.0%} | {r['hash'] / r['plain'] - 1:+.0%} | "
          f"{r['once'] / r['plain'] - 1:+.0%} | "
          f"{r['threefry'] / r['hash']:.2f}", flush=True)


if __name__ == "__main__":
  main()
