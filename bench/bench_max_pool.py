"""Max pooling's hand-written backward pass (opomjax.models.pooling) against JAX's select-and-scatter, in one run.

  .venv/bin/python bench/bench_max_pool.py [--models dlib_resnet] [--n 10] [--steps 16] [--rounds 2]

For each model, on ``n`` random canonical 128x128 images of one identity: the jitted forward + backward
(gradient of the summed embeddings with respect to the images) and :func:`opomjax.generate_masks` per step
(OPOM-ConvexHull, ``steps`` steps, compile excluded), once with the library's max pooling and once with
``jax.lax.reduce_window``'s own gradient (XLA:CPU's select-and-scatter expansion) in its place. Each variant runs
in a fresh process (jit caches cannot mix them), alternating ``--rounds`` times; the script prints each time,
the medians and their ratio, and the largest difference between the two variants' masks (the gradients may
differ in the last bit where an input is the maximum of two overlapping windows). Models without registered
weights run with random ones.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(name: str, n: int, steps: int, variant: str, mask_path: str) -> dict:
  """One process, one variant: seconds for the forward + backward and per generate_masks step."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import opomjax  # pylint: disable=import-outside-toplevel
  from opomjax.models import pooling, registry  # pylint: disable=import-outside-toplevel
  from bench.bench_models import median_seconds  # pylint: disable=import-outside-toplevel

  if variant == "select-and-scatter":
    pooling._valid_max_pool = pooling._valid_max  # pylint: disable=protected-access
  model = registry.load_model(name, allow_random_weights=True)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (n, 128, 128, 3)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x, p: jnp.sum(model.apply(p, x))))
  generate = lambda: opomjax.generate_masks(model.apply, images[None], params=model.params, method="opom-convex",
                                            key=jax.random.key(0), steps=steps)
  mask = np.asarray(generate())
  np.save(mask_path, mask)
  return {"fwd+bwd": median_seconds(lambda: grad(images, model.params), 5),
          "step": median_seconds(generate, 2) / steps}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib_resnet")
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one measurement in this process
  parser.add_argument("--mask_path", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.variant:
    print(json.dumps(measure(args.models, args.n, args.steps, args.variant, args.mask_path)))
    return

  import numpy as np  # pylint: disable=import-outside-toplevel
  variants = ("library", "select-and-scatter")
  print(f"n={args.n}, steps={args.steps}, {args.rounds} alternating rounds, each variant in a fresh process")
  print("model | variant | fwd+bwd s (each round) | generate_masks s/step (each round)")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      times = {v: [] for v in variants}
      for _ in range(args.rounds):
        for v in variants:
          out = subprocess.run([sys.executable, __file__, "--models", name, "--n", str(args.n), "--steps",
                                str(args.steps), "--variant", v, "--mask_path", f"{tmp}/{v}.npy"],
                               check=True, capture_output=True, text=True, cwd=ROOT)
          times[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
      med = {v: {k: statistics.median(t[k] for t in times[v]) for k in ("fwd+bwd", "step")} for v in variants}
      each = lambda v, k: ", ".join(f"{t[k]:.3f}" for t in times[v])
      for v in variants:
        print(f"{name} | {v} | {med[v]['fwd+bwd']:.3f} ({each(v, 'fwd+bwd')}) | {med[v]['step']:.3f} ({each(v, 'step')})")
      masks = [np.load(f"{tmp}/{v}.npy") for v in variants]
      print(f"{name} | select-and-scatter / library: fwd+bwd {med[variants[1]]['fwd+bwd'] / med[variants[0]]['fwd+bwd']:.2f}x, "
            f"step {med[variants[1]]['step'] / med[variants[0]]['step']:.2f}x; masks: largest difference "
            f"{np.max(np.abs(masks[0] - masks[1])):g}, {np.mean(masks[0] != masks[1]):.2%} of values differ",
            flush=True)


if __name__ == "__main__":
  main()
