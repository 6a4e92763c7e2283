"""Hull coefficients: batched JAX solvers against a per-sample cvxpy loop (the official implementation's way).

Run:  python bench/bench_hulls.py                         (62 identities x 10 images, d=512; about 1 min on 2 CPU cores)
      python bench/bench_hulls.py --dim 128 --hulls convex

For each hull (affine, convex, reduced convex), the same problems are solved (a) by ``hull_coefficients``,
jitted, batched over all identities and images, timed after a warm-up with ``block_until_ready`` (median of
``--repeats``), and (b) one fresh cvxpy problem per image, as the official code builds it each step. Prints
microseconds per problem, the speed-up of each JAX solver over cvxpy measured in this run, and the largest
difference of the squared distance from cvxpy's (whose default solver, OSQP, stops at its own
default tolerances; exactness against a 1e-12 Clarabel reference is checked in tests/test_hulls.py).
"""

import argparse
import functools
import pathlib
import sys
import time

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from opomjax.core import hulls  # pylint: disable=g-import-not-at-top,wrong-import-position

CVXPY_SOLVERS = set()  # the solvers cvxpy picked by default, reported at the end
HULLS = {"affine": (-np.inf, np.inf), "convex": (0.0, 1.0), "reduced": (0.0, 0.3)}


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def face_like_problems(identities: int, images: int, dim: int, seed: int = 0):
  """Per identity: unit features (mean direction + shared variation + noise, pairwise cosine ~0.5-0.9) and
  queries = the same features pushed off by a random perturbation, as the features of masked photos are."""
  rng = np.random.default_rng(seed)
  mean = unit(rng.normal(size=(identities, 1, dim)))
  variation = rng.normal(size=(identities, 4, dim)) / np.sqrt(dim)
  noise = rng.normal(size=(identities, images, dim)) / np.sqrt(dim)
  features = unit(mean + 0.3 * (rng.normal(size=(identities, images, 4)) @ variation + noise))
  queries = unit(features + 0.3 * rng.normal(size=features.shape) / np.sqrt(dim))
  return features.astype(np.float32), queries.astype(np.float32)


def cvxpy_coefficients(features: np.ndarray, query: np.ndarray, lower: float, upper: float) -> np.ndarray:
  """One fresh cvxpy problem for one query (default solver), as the official implementation builds it."""
  a = cp.Variable(features.shape[0])
  constraints = [cp.sum(a) == 1]
  if np.isfinite(lower):
    constraints += [lower <= a, a <= upper]
  problem = cp.Problem(cp.Minimize(cp.sum_squares(a @ features - query)), constraints)
  problem.solve()
  CVXPY_SOLVERS.add(problem.solver_stats.solver_name)
  return a.value


def time_jax(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def squared_distances(features, queries, coefficients):
  f, y, a = (np.asarray(x, np.float64) for x in (features, queries, coefficients))
  return np.sum((np.einsum("...mn,...nd->...md", a, f) - y) ** 2, axis=-1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--identities", type=int, default=62)
  parser.add_argument("--images", type=int, default=10, help="images per identity (n) = queries per identity")
  parser.add_argument("--dim", type=int, default=512, help="feature size d")
  parser.add_argument("--hulls", default="affine,convex,reduced", help=f"comma-separated subset of {list(HULLS)}")
  parser.add_argument("--repeats", type=int, default=5, help="timed JAX runs (median)")
  args = parser.parse_args()

  features, queries = face_like_problems(args.identities, args.images, args.dim)
  problems = args.identities * args.images
  print(
      f"{problems} problems ({args.identities} identities x {args.images} images, n={args.images}, d={args.dim}), "
      f"float32, jax {jax.__version__} on {jax.devices()[0].platform}, cvxpy {cp.__version__} "
      f"(default solver), one fresh cvxpy problem per query"
  )
  header = f"{'hull':<8} {'[L, U]':<12} {'method':<14} {'us/problem':>11} {'speed-up':>9} {'max |obj - cvxpy|':>18}"
  print(header)
  print("-" * len(header))
  for name in args.hulls.split(","):
    lower, upper = HULLS[name]
    start = time.perf_counter()
    reference = np.stack([
        np.stack([cvxpy_coefficients(f.astype(np.float64), y, lower, upper) for y in ys.astype(np.float64)])
        for f, ys in zip(features, queries)
    ])
    cvxpy_us = (time.perf_counter() - start) / problems * 1e6
    reference_objective = squared_distances(features, queries, reference)
    bounds = f"[{lower:g}, {upper:g}]"
    print(f"{name:<8} {bounds:<12} {'cvxpy loop':<14} {cvxpy_us:>11.1f} {1.0:>8.1f}x {0.0:>18.1e}")
    solvers = ("closed form",) if name == "affine" else hulls.SOLVERS
    for solver in solvers:
      fn = jax.jit(
          functools.partial(
              hulls.hull_coefficients, lower=lower, upper=upper, solver="fista" if solver == "closed form" else solver
          )
      )
      seconds = time_jax(fn, jnp.asarray(features), jnp.asarray(queries), repeats=args.repeats)
      coefficients = fn(jnp.asarray(features), jnp.asarray(queries))
      gap = np.max(np.abs(squared_distances(features, queries, coefficients) - reference_objective))
      us = seconds / problems * 1e6
      print(f"{name:<8} {bounds:<12} {'jax ' + solver:<14} {us:>11.1f} {cvxpy_us / us:>8.1f}x {gap:>18.1e}")
  print(f"cvxpy chose: {', '.join(sorted(CVXPY_SOLVERS))}")


if __name__ == "__main__":
  main()
