"""What an ascent step costs inside the mask loop, against the model's own forward + backward.

  .venv/bin/python bench/bench_step_loop.py [--models dlib_resnet,sface,faceres] [--n 10] [--steps 8]

For each model, on ``n`` random canonical 128x128 images of one identity (FI-UAP, 16-step settings):

* ``fwd+bwd``: the jitted gradient of the summed embeddings with respect to the images (the floor of a step);
* ``step``: one jitted :func:`opomjax.core.ascent.ascent_step`, clean features included (no loop);
* ``while``: ``steps`` steps in one compiled ``lax.scan`` (a ``while`` loop), per step;
* ``generate``: :func:`opomjax.generate_masks` per step (compile excluded: a warm-up run first), which runs
  unrolled one-step pieces from Python, one piece queued behind the running one;
* ``waiting``: the same with every piece waited for before the next is dispatched (how
  :func:`opomjax.core.ascent.run_in_pieces` ran before it queued one).

Times are medians over ``--repeats`` runs after a compile-and-warm-up run, all measured in one run of this
script, so their ratios hold on a shared machine too. Models without registered weights run with random ones.
"""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import opomjax  # pylint: disable=wrong-import-position
from opomjax.core import ascent  # pylint: disable=wrong-import-position
from opomjax.models import registry  # pylint: disable=wrong-import-position
from bench.bench_models import median_seconds, step_parser  # pylint: disable=wrong-import-position


def run_each_piece_waited_for(runner_for, params, images, clean, init, keys, steps, length, report):
  """:func:`opomjax.core.ascent.run_in_pieces` without the queued piece: every piece is waited for first."""
  delta, rule_state = init
  traces, done = [], 0
  while done < steps:
    piece = min(length, steps - done)
    delta, rule_state, trace = runner_for(piece)((params, jnp.int32(done)), (images, clean, delta, rule_state, keys))
    jax.block_until_ready(delta)
    traces.append(trace)
    done += piece
    if report is not None:
      report(done, steps)
  return delta, jnp.concatenate(traces, axis=1)


def waiting_for_every_piece(generate):
  """``generate`` run with :func:`run_each_piece_waited_for` in place of the library's loop."""
  def run():
    queued = ascent.run_in_pieces
    ascent.run_in_pieces = run_each_piece_waited_for
    try:
      return generate()
    finally:
      ascent.run_in_pieces = queued
  return run


def bench(name: str, n: int, steps: int, repeats: int) -> dict:
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (n, 128, 128, 3)), jnp.float32)
  delta0 = jnp.zeros((128, 128, 3), jnp.float32)
  cfg = ascent.AscentConfig(method="fi-uap", steps=steps)

  def steps_in_scan(params, images, delta, length):
    net = ascent.make_network(model.apply, None, params, dfanet=False)
    clean = jax.lax.stop_gradient(net.embed(images, None))
    step = functools.partial(ascent.ascent_step, cfg, net, images, clean, jax.random.key(0))
    state, _ = jax.lax.scan(step, ascent.initial_state(cfg, delta),
                            jnp.arange(length, dtype=jnp.int32))
    return state.delta

  def one_step(params, images, delta):
    net = ascent.make_network(model.apply, None, params, dfanet=False)
    clean = jax.lax.stop_gradient(net.embed(images, None))
    state = ascent.initial_state(cfg, delta)
    return ascent.ascent_step(cfg, net, images, clean, jax.random.key(0), state, jnp.int32(0))[0].delta

  grad = jax.jit(jax.grad(lambda x, p: jnp.sum(model.apply(p, x))))
  one = jax.jit(one_step)
  loop = jax.jit(functools.partial(steps_in_scan, length=steps))
  generate = lambda: opomjax.generate_masks(model.apply, images[None], params=model.params, method="fi-uap",
                                            key=jax.random.key(0), steps=steps)
  return {
      "model": name,
      "fwd+bwd": median_seconds(lambda: grad(images, model.params), repeats),
      "step": median_seconds(lambda: one(model.params, images, delta0), repeats),
      "while": median_seconds(lambda: loop(model.params, images, delta0), max(1, repeats // 2)) / steps,
      "generate": median_seconds(generate, max(1, repeats // 2)) / steps,
      "waiting": median_seconds(waiting_for_every_piece(generate), max(1, repeats // 2)) / steps,
  }


def main(argv=None) -> None:
  parser = step_parser(__doc__, "dlib_resnet,sface,faceres", steps=8, repeats=3)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, n={args.n}, steps={args.steps}")
  print("model | fwd+bwd s | step s | while-loop s/step | generate_masks s/step | the same, each piece waited for "
        "| while / step | generate / fwd+bwd | waiting / fwd+bwd")
  for name in args.models.split(","):
    r = bench(name, args.n, args.steps, args.repeats)
    print(f"{r['model']} | {r['fwd+bwd']:.3f} | {r['step']:.3f} | {r['while']:.3f} | {r['generate']:.3f} | "
          f"{r['waiting']:.3f} | {r['while'] / r['step']:.2f} | {r['generate'] / r['fwd+bwd']:.2f} | "
          f"{r['waiting'] / r['fwd+bwd']:.2f}", flush=True)


if __name__ == "__main__":
  main()
