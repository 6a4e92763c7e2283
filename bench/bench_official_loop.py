"""This project's mask loop against the official code's loop pattern, on the same IR-50, in one run.

  .venv/bin/python bench/bench_official_loop.py [--n 10] [--steps 16] [--identities 1] [--rounds 3]

Needs the test extra (``torch==2.13.0``, ``cvxpy``). The official OPOM code (PyTorch) runs Alg. 1 for one
identity as below, re-written here from the paper's Algorithm 1 as that code runs it (OPOM-ConvexHull, five
class-centre steps first, 16 steps, ε = 8, step 1):

* every step embeds the clean images and the masked images with the network in autograd (the clean features
  are recomputed each step and the backward pass runs through them; the weights keep PyTorch's default
  ``requires_grad=True``, so their gradients are computed too — ``--frozen_weights`` turns that off, the
  cheapest reading of the official code);
* the hull coefficients of each masked image are a fresh cvxpy problem per sample per step
  (``min ||F^T a - y||^2, a >= 0, sum a = 1``);
* the loss is the squared distance of the masked features to their hull points, the mask moves by the sign
  of the mean gradient.

Against it: :func:`opomjax.generate_masks` on the JAX port of the same IR-50 (random weights, so the speeds
compare and the values do not matter), one identity and ``--identities`` identities batched, after a
compile-and-warm-up call (a run compiles once for all its groups). Threads: PyTorch uses every core, as XLA does.

The two loops are timed alternately ``--rounds`` times in this one process (the order swapped every round), so
that the machine's load falls on both alike: on a 2-core machine the same call of either loop varies by up to half
from one call to the next (IR-50's 16 steps took 37 s and 55 s in consecutive calls of one process). The script
prints every round, the medians and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))


def official_loop(model, images, steps: int, epsilon: float = 8.0, step_size: float = 1.0, warmup: int = 5):
  """Alg. 1 as the official code runs it (see the module docstring); ``images`` ``(n, 3, 112, 112)``."""
  import cvxpy as cp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  x = torch.as_tensor(images)
  n = x.shape[0]
  delta = (torch.rand((1,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(0)) * 2 - 1) * epsilon
  for t in range(steps):
    adv = torch.clamp(x + delta, 0, 255).requires_grad_(True)
    clean = F.normalize(model(x), dim=1)
    feats = F.normalize(model(adv), dim=1)
    if t < warmup:
      target = clean.mean(dim=0, keepdim=True).expand_as(feats)
    else:
      basis = clean.detach().numpy().astype(np.float64)
      points = []
      for y in feats.detach().numpy().astype(np.float64):
        a = cp.Variable(n)
        cp.Problem(cp.Minimize(cp.sum_squares(basis.T @ a - y)), [a >= 0, cp.sum(a) == 1]).solve()
        points.append(basis.T @ a.value)
      target = torch.as_tensor(np.stack(points), dtype=feats.dtype)
    loss = ((feats - target) ** 2).sum()
    loss.backward()
    grad = adv.grad.mean(dim=0, keepdim=True)
    delta = torch.clamp(delta + step_size * torch.sign(grad), -epsilon, epsilon)
  return delta


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=10)
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--identities", type=int, default=1, help="identities batched in the JAX run")
  parser.add_argument("--frozen_weights", action="store_true", help="no weight gradients in the PyTorch loop")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two loops")
  args = parser.parse_args(argv)
  if min(args.n, args.steps, args.identities, args.rounds) < 1:
    parser.error("--n, --steps, --identities and --rounds must be >= 1")

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import opomjax  # pylint: disable=import-outside-toplevel
  from opomjax.models import registry  # pylint: disable=import-outside-toplevel
  import torch_reference as tr  # pylint: disable=import-outside-toplevel
  from bench.bench_models import alternating_seconds  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count() or 1)
  rng = np.random.default_rng(0)
  reference = tr.EvolveBackbone(50, "ir").eval()
  reference.requires_grad_(not args.frozen_weights)
  faces = rng.uniform(0, 255, (args.n, 3, 112, 112)).astype(np.float32)
  model = registry.load_model("ir50", allow_random_weights=True)
  images = jnp.asarray(rng.uniform(0, 255, (args.identities, args.n, 128, 128, 3)), jnp.float32)

  def official():
    official_loop(reference, faces, args.steps)

  def ours():
    jax.block_until_ready(opomjax.generate_masks(model.apply, images, params=model.params, method="opom-convex",
                                                 key=jax.random.key(0), steps=args.steps))

  official_loop(reference, faces[:2], 1)  # warm-up (allocator, thread pool)
  start = time.perf_counter()
  ours()
  print(f"opomjax first call, compile included: {time.perf_counter() - start:.1f} s", flush=True)
  identities = f"{args.identities} identit{'y' if args.identities == 1 else 'ies'}"
  times = alternating_seconds({"official": official, "opomjax": ours}, args.rounds, on_round=lambda r, t: print(
      f"round {r + 1}: official {t['official'][-1]:.1f} s, opomjax {t['opomjax'][-1]:.1f} s for {identities}",
      flush=True))
  official_s = statistics.median(times["official"])
  ours_s = statistics.median(times["opomjax"]) / args.identities
  print(f"official loop pattern (PyTorch {torch.__version__}, cvxpy per sample per step, weight gradients "
        f"{'off' if args.frozen_weights else 'on'}): median {official_s:.1f} s per identity")
  print(f"opomjax (jax {jax.__version__}), {identities} batched: median {ours_s:.1f} s per identity")
  print(f"ratio official / opomjax (medians of {args.rounds} alternating rounds): {official_s / ours_s:.2f}x; "
        f"per round: {', '.join(f'{o / (m / args.identities):.2f}x' for o, m in zip(times['official'], times['opomjax']))}")


if __name__ == "__main__":
  main()
