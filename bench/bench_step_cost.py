"""What the compiled ascent step computes, against the model's own forward + backward: XLA's cost analysis.

  .venv/bin/python bench/bench_step_cost.py [--models dlib_resnet,sface,faceres,mobileface,ir50] [--n 10]

For each model, on ``n`` random canonical 128x128 images of one identity: the floating-point operations and
the bytes the compiled program touches (``Compiled.cost_analysis()``), for

* ``fwd+bwd``: the gradient of the summed unit embeddings with respect to the images (resampling into the
  model's frame included), the floor of a step;
* ``step``: one :func:`opomjax.core.ascent.ascent_step` (FI-UAP) with the clean features given. (The OPOM hulls
  add an iterative QP, a loop whose iterations the cost analysis does not count; ``bench/bench_step_overhead.py``
  times it: 0.4 % of a dlib step.)

These counts do not depend on the machine's load, so they tell compute apart from per-call overhead: where a
step has the floor's counts but takes longer (``bench/bench_step_loop.py``), the difference is not arithmetic.
Models without registered weights run with random ones (the counts do not depend on the weights).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from opomjax.core import ascent  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position


def counts(fn, *args) -> tuple[float, float]:
  """(GFLOP, GB accessed) of ``fn`` compiled for ``args``."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) / 1e9, float(cost.get("bytes accessed", 0.0)) / 1e9


def bench(name: str, n: int) -> dict:
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (n, 128, 128, 3)), jnp.float32)
  delta = jnp.zeros((128, 128, 3), jnp.float32)
  clean = model.apply(model.params, images)
  out = {"model": name, "fwd+bwd": counts(lambda p, x: jax.grad(lambda y: jnp.sum(model.apply(p, y)))(x),
                                          model.params, images)}
  cfg = ascent.AscentConfig(method="fi-uap", steps=1)

  def one_step(params, images, clean, delta):
    net = ascent.make_network(model.apply, None, params, dfanet=False)
    state = ascent.initial_state(cfg, delta)
    return ascent.ascent_step(cfg, net, images, clean, jax.random.key(0), state, jnp.int32(0))[0].delta

  out["step"] = counts(one_step, model.params, images, clean, delta)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib_resnet,sface,faceres,mobileface,ir50")
  parser.add_argument("--n", type=int, default=10)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, n={args.n}")
  print("model | fwd+bwd GFLOP / GB | step GFLOP / GB | step / fwd+bwd: FLOP, bytes")
  for name in args.models.split(","):
    r = bench(name, args.n)
    (f0, b0), (f1, b1) = r["fwd+bwd"], r["step"]
    print(f"{name} | {f0:.3f} / {b0:.3f} | {f1:.3f} / {b1:.3f} | {f1 / f0:.4f}, {b1 / b0:.4f}", flush=True)


if __name__ == "__main__":
  main()
