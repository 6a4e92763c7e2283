"""Size and CPU speed of every registered face model.

  .venv/bin/python bench/bench_models.py [--batch 10] [--repeats 3] [--models dlib_resnet,ir50]

For each name in ``opomjax.models.registry.available_models()``: parameter count, embedding size, native input
size, and the wall time of one jitted forward pass and of one forward + backward pass (the gradient of the
summed embeddings with respect to the input images, as the mask optimisers need it) for a batch at the
model's native size. Architectures without registered weights run with random ones (speed does not depend on
the values); models whose module or registered weight file is not present are listed with the reason. Times
are medians over ``repeats`` runs after one compile-and-warm-up run.
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

from opomjax.models import layers  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position


def step_parser(doc: str, models: str, steps: int = 4, repeats: int = 2) -> argparse.ArgumentParser:
  """The flags of the per-step benchmarks: ``--models`` (comma-separated, default ``models``), ``--n`` images of
  one identity, ``--steps`` per timed run, ``--repeats`` timed runs (median); described by ``doc``'s first line."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--models", default=models)
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=steps)
  parser.add_argument("--repeats", type=int, default=repeats)
  return parser


def median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def alternating_seconds(fns: dict, rounds: int, on_round=None) -> dict:
  """Seconds of each already-warm callable in ``fns`` over ``rounds`` rounds, run alternately (the order reversed
  every other round) so that the machine's load falls on all alike: ``{name: [seconds per round]}``.
  ``on_round(r, times)`` is called after each round (e.g. to print it)."""
  times = {name: [] for name in fns}
  order = list(fns)
  for r in range(rounds):
    for name in order if r % 2 == 0 else order[::-1]:
      start = time.perf_counter()
      jax.block_until_ready(fns[name]())
      times[name].append(time.perf_counter() - start)
    if on_round is not None:
      on_round(r, times)
  return times


def bench_model(name: str, batch: int, repeats: int) -> dict:
  model = registry.load_model(name, allow_random_weights=True)
  h, w = model.input_frame.size
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)), jnp.float32)
  # Parameters are arguments, not closed-over constants, so XLA does not constant-fold the network.
  forward = jax.jit(lambda p, x: model.net_fn(p, x)[0])
  backward = jax.jit(jax.grad(lambda p, x: jnp.sum(model.net_fn(p, x)[0]), argnums=1))
  return {
      "name": name,
      "params": layers.count_parameters(model.params),
      "d": model.embedding_size,
      "size": f"{h}x{w}",
      "forward_s": median_seconds(lambda: forward(model.params, images), repeats),
      "forward_backward_s": median_seconds(lambda: backward(model.params, images), repeats),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--models", default=",".join(registry.available_models()))
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, median of {args.repeats}")
  print(f"{'model':22s} {'params':>12s} {'d':>4s} {'input':>8s} {'fwd s':>8s} {'fwd+bwd s':>10s}")
  for name in args.models.split(","):
    try:
      r = bench_model(name, args.batch, args.repeats)
    except ModuleNotFoundError as e:
      print(f"{name:22s} skipped: module not present ({e.name})")
      continue
    except (FileNotFoundError, ValueError, NotImplementedError) as e:
      print(f"{name:22s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
      continue
    print(f"{r['name']:22s} {r['params']:12,d} {r['d']:4d} {r['size']:>8s} {r['forward_s']:8.3f} "
          f"{r['forward_backward_s']:10.3f}", flush=True)


if __name__ == "__main__":
  main()
