"""What the hull QP adds to an ascent step: one OPOM step divided by one FI-UAP step, same model and batch.

  .venv/bin/python bench/bench_step_overhead.py [--model dlib_resnet] [--k 2] [--n 10] [--repeats 5]
      [--solver osqp] [--methods opom-convex,opom-affine,opom-center]

One step (:func:`opomjax.core.ascent.ascent_step`, vmapped over ``k`` identities of ``n`` canonical 128x128
images, jitted, parameters passed as arguments) costs the surrogate's forward + backward on ``k * n`` images
plus, for OPOM, the hull coefficients of ``n`` masked features against ``n`` clean ones per identity. The
physical floor of the ratio is 1.0: the QP should cost almost nothing next to the backbone. The runs of the
methods are interleaved (the machine may be shared) and each time is the median over ``repeats`` runs after a
compile-and-warm-up run; the QP alone (``hull_coefficients`` on ``(k, n, d)`` features) is timed the same way.
``--model`` is a registry name (``dlib_resnet`` with its real weights, ``ir50`` with random weights, ...).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from opomjax import frame as frame_lib  # pylint: disable=wrong-import-position
from opomjax.core import ascent  # pylint: disable=wrong-import-position
from opomjax.core import hulls  # pylint: disable=wrong-import-position
from opomjax.core import objectives  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position

BASELINE = "fi-uap"


def step_function(model, method: str, solver: str):
  """Jitted ``(params, images, clean, delta) -> (delta, J)``: one step for every identity."""
  cfg = ascent.AscentConfig(method=method, warmup_center_steps=0, solver=solver)

  @jax.jit
  def step(params, images, clean, delta):
    net = ascent.make_network(model.apply, None, params, dfanet=False)

    def one_identity(images, clean, delta):
      state = ascent.initial_state(cfg, delta)
      new_state, value = ascent.ascent_step(cfg, net, images, clean, jax.random.key(0), state, jnp.int32(0))
      return new_state.delta, value

    return jax.vmap(one_identity)(images, clean, delta)

  return step


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="dlib_resnet", help="registry name of the surrogate")
  parser.add_argument("--k", type=int, default=2, help="identities per step")
  parser.add_argument("--n", type=int, default=10, help="images per identity (paper: 10)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--solver", default="osqp", choices=hulls.SOLVERS)
  parser.add_argument("--methods", default="opom-convex,opom-affine,opom-center",
                      help=f"methods compared with {BASELINE}")
  args = parser.parse_args(argv)

  model = registry.load_model(args.model, allow_random_weights=True)
  h, w = frame_lib.CANONICAL.size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 255, (args.k, args.n, h, w, 3)), jnp.float32)
  delta = jnp.asarray(rng.uniform(-8, 8, (args.k, h, w, 3)), jnp.float32)
  clean = jax.jit(jax.vmap(functools.partial(model.apply, model.params)))(images)
  methods = [BASELINE] + [m for m in args.methods.split(",") if m]
  steps = {m: step_function(model, m, args.solver) for m in methods}
  masked_features = jax.jit(jax.vmap(functools.partial(model.apply, model.params)))(
      jnp.clip(images + delta[:, None], 0, 255))
  qp = jax.jit(functools.partial(hulls.hull_coefficients, lower=0.0, upper=1.0, solver=args.solver))
  runs = dict(steps, qp=None)

  def call(name):
    if name == "qp":
      return qp(objectives.normalize(clean), objectives.normalize(masked_features))
    return runs[name](model.params, images, clean, delta)

  for name in runs:  # compile and warm up
    jax.block_until_ready(call(name))
  times = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name in runs:
      times[name].append(timed(lambda: call(name)))
  median = {name: float(np.median(t)) for name, t in times.items()}

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), model "
        f"{args.model} (d={model.embedding_size}), k={args.k} identities x n={args.n} images, "
        f"{h}x{w} canonical, solver {args.solver}, median of {args.repeats}")
  print(f"{'step':14s} {'seconds':>9s} {'/ ' + BASELINE:>10s}")
  for name in methods:
    print(f"{name:14s} {median[name]:9.4f} {median[name] / median[BASELINE]:10.3f}")
  print(f"{'QP alone':14s} {median['qp']:9.4f} {median['qp'] / median[BASELINE]:10.3f}  "
        f"(hull_coefficients, convex hull, {args.k} x {args.n} queries)")


if __name__ == "__main__":
  main()
