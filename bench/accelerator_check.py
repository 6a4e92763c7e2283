"""The checks that matter on a GPU or TPU, and the numbers a pod user plans with (run by accelerator_check.sh).

  python3 bench/accelerator_check.py [--sizes 8,32,128] [--steps 16] [--ids 500]

Checks (each prints PASS or FAIL with its measured value; the exit status is 1 if any failed):

1. hull solves at ``precision=HIGHEST`` on the device against the same solves on the host CPU (620 convex-hull
   problems, n = 10, d = 512, both solvers): coefficients within 1e-4, distances within 1e-5;
2. masks of one key twice on one device, and on one device against ``pmap`` and ``shard_map`` over every local device (the tiny random CNN of the
   tests, OPOM-ConvexHull with momentum and DFANet, 5 identities): bit for bit;
3. the 1:N kernel on the device against the host CPU (100 identities x 10 x 13,233 distractors): equal rates.

Timings: 16-step OPOM-ConvexHull seconds per identity for IR-50 (random weights) and SFace (its ONNX file, if
found) at each group size of ``--sizes`` (10 images per identity, compile excluded and reported apart), and the
1:N kernel for ``--ids`` identities x 10 x 13,233 distractors.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from opomjax.core import ascent
from opomjax.core import evaluation
from opomjax.core import hulls

FAILED: list[str] = []
PARTS = ("hull", "sharded", "identification", "timings")


def check(name: str, ok: bool, detail: str) -> None:
  print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
  if not ok:
    FAILED.append(name)


def guarded(fn):
  """Runs one part; an exception is a failed check with its last line, and the next part still runs."""
  def run(*args):
    try:
      fn(*args)
    except Exception as err:  # pylint: disable=broad-except
      traceback.print_exc()
      check(fn.__name__, False, f"raised {type(err).__name__}: {err}")
  return run


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@guarded
def hull_accuracy(device, cpu):
  rng = np.random.default_rng(0)
  F = _unit(rng.normal(size=(62, 10, 512))).astype(np.float32)
  Y = _unit(F.mean(axis=1, keepdims=True) + 0.05 * rng.normal(size=(62, 10, 512))).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    for solver in hulls.SOLVERS:
      if solver not in ("osqp", "fista"):
        continue
      solve = jax.jit(lambda f, y, s=solver: hulls.hull_coefficients(f, y, solver=s))
      on_device = np.asarray(solve(jax.device_put(F, device), jax.device_put(Y, device)))
      on_host = np.asarray(solve(jax.device_put(F, cpu), jax.device_put(Y, cpu)))
      dist = lambda a: np.linalg.norm(np.einsum("kmn,knd->kmd", a, F) - Y, axis=-1)
      coef, gap = np.abs(on_device - on_host).max(), np.abs(dist(on_device) - dist(on_host)).max()
      check(f"hull solve ({solver}, 620 problems, HIGHEST)", coef < 1e-4 and gap < 1e-5,
            f"max coefficient difference {coef:.2e}, max distance difference {gap:.2e} against the host CPU")


@guarded
def sharded_masks():
  from test_ascent import tiny_images, tiny_model  # pylint: disable=import-outside-toplevel
  apply, params = tiny_model(size=16)
  images = tiny_images(k=5, n=3, size=16)
  embed = lambda p, x, key=None: apply(p, x, key)[0]
  common = dict(method="opom-convex", key=jax.random.key(3), steps=3, warmup_center_steps=1, momentum=0.9,
                dfanet=True, params=params)
  single = np.asarray(ascent.generate_masks(embed, images, **common))
  again = np.asarray(ascent.generate_masks(embed, images, **common))
  check("masks, the same key twice on one device", np.array_equal(single, again),
        f"max difference {np.abs(single - again).max():.2e}")
  for mode in ("pmap", "shard_map"):
    sharded = np.asarray(ascent.generate_masks(embed, images, parallel=mode, **common))
    check(f"masks, one device = {mode} over {jax.local_device_count()} device(s)", np.array_equal(single, sharded),
          f"max difference {np.abs(single - sharded).max():.2e}")


def _gallery(rng, ids, images=10, distractors=13233, dim=512):
  centres = _unit(rng.normal(size=(ids, 1, dim)))
  clean = _unit(centres + 1.8 * rng.normal(size=(ids, images, dim)) / np.sqrt(dim)).astype(np.float32)
  probes = _unit(centres + 1.8 * rng.normal(size=(ids, images, dim)) / np.sqrt(dim)).astype(np.float32)
  return probes, clean, _unit(rng.normal(size=(distractors, dim))).astype(np.float32)


@guarded
def identification(device, cpu, large_ids):
  probes, clean, distractors = _gallery(np.random.default_rng(1), 100)
  put = lambda d: [jax.device_put(a, d) for a in (probes, clean, distractors)]
  on_device = evaluation.identification_rate(*put(device))
  on_host = evaluation.identification_rate(*put(cpu))
  check("1:N kernel, 100 x 10 x 13,233", on_device == on_host, f"device {on_device}, host {on_host}")
  big = [jax.device_put(a, device) for a in _gallery(np.random.default_rng(2), large_ids)]
  evaluation.identification_rate(*big)  # compile
  start = time.perf_counter()
  evaluation.identification_rate(*big)
  print(f"TIME 1:N kernel, {large_ids} x 10 x 13,233 distractors: {time.perf_counter() - start:.3f} s", flush=True)


@guarded
def mask_timings(name, sizes, steps):
  from opomjax.models import registry  # pylint: disable=import-outside-toplevel
  try:
    model = registry.load_model(name, allow_random_weights=True)
  except (FileNotFoundError, ValueError) as err:
    print(f"SKIP {name}: {err}", flush=True)
    return
  for k in sizes:
    images = jnp.asarray(np.random.default_rng(k).uniform(0, 255, (k, 10, 128, 128, 3)), jnp.float32)
    run = lambda: jax.block_until_ready(opomjax_generate(model, images, steps))
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    took = time.perf_counter() - start
    print(f"TIME {name}, {steps}-step OPOM-ConvexHull, group of {k}: {took / k:.3f} s per identity "
          f"({took:.1f} s per group; first call with compile {first:.1f} s)", flush=True)


def opomjax_generate(model, images, steps):
  return ascent.generate_masks(model.apply, images, params=model.params, method="opom-convex",
                               key=jax.random.key(0), steps=steps)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="8,32,128")
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--ids", type=int, default=500)
  parser.add_argument("--parts", default=",".join(PARTS),
                      help=f"comma-separated subset of {','.join(PARTS)} (e.g. to rerun one under other XLA_FLAGS)")
  args = parser.parse_args(argv)
  parts = args.parts.split(",")
  if set(parts) - set(PARTS):
    parser.error(f"--parts: unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {','.join(PARTS)}")
  device, cpu = jax.devices()[0], jax.devices("cpu")[0]
  print(f"jax {jax.__version__}: {jax.local_device_count()} local {device.platform} device(s), "
        f"{getattr(device, 'device_kind', '')}", flush=True)
  if device.platform == "cpu":
    print("note: jax sees only the CPU; the checks compare the CPU with itself", flush=True)
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  if "hull" in parts:
    hull_accuracy(device, cpu)
  if "sharded" in parts:
    sharded_masks()
  if "identification" in parts:
    identification(device, cpu, args.ids)
  if "timings" in parts:
    sizes = [int(s) for s in args.sizes.split(",")]
    for name in ("ir50", "sface"):
      mask_timings(name, sizes, args.steps)
  print("all checks passed" if not FAILED else f"FAILED: {', '.join(FAILED)}", flush=True)
  return 1 if FAILED else 0


if __name__ == "__main__":
  raise SystemExit(main())
