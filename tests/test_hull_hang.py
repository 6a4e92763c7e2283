"""Large batched hull solves finish: each run in a fresh process, under a time limit, on the CPU.

jaxlib 0.10's CPU LAPACK kernels split a large batch over XLA's intra-op thread pool and block a pool thread
until the pieces are done; with as many such calls at once as the pool has threads, every thread waited for
work no thread was left to run, and a batched hull solve over ~5,000 problems hung forever in
``block_until_ready`` in most runs (nondeterministically). The box-constrained solvers now use no LAPACK
kernel (``tests/test_hulls.py::test_box_solvers_call_no_lapack_kernel`` checks the compiled program); these
tests run the original reproduction and a mask run of OPOM-ConvexHull on a large identity group several times,
each in a new interpreter, because whether the old code hung changed from process to process.

Each run takes about 15-35 s on two CPU cores (mostly compilation); a hang is reported as a failure after
``TIME_LIMIT_S``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 300  # a run takes well under a minute; the hang it guards against lasts forever

# The reproduction of the hang, as reported: 500 identities x 10 queries x 10 hull points, d = 512.
HULL_SCRIPT = """
import sys
import numpy as np, jax, opomjax as oj
rng = np.random.default_rng(0)
k, n, m, d = 500, 10, 10, 512
F = rng.normal(size=(k, 1, d)) + 0.8 * rng.normal(size=(k, n, d)); F /= np.linalg.norm(F, axis=-1, keepdims=True)
Y = F[:, rng.permutation(n)] + 0.3 * rng.normal(size=(k, m, d)); Y /= np.linalg.norm(Y, axis=-1, keepdims=True)
A = jax.block_until_ready(oj.hull_coefficients(F.astype(np.float32), Y.astype(np.float32), 0.0, 1.0,
                                               solver=sys.argv[1]))
assert A.shape == (k, m, n) and bool(np.all(np.isfinite(A))), "bad coefficients"
print("done")
"""

# OPOM-ConvexHull masks for 500 identities x 10 photos with a tiny linear surrogate: each step solves the same
# 5,000 hull problems in one batch, inside the jitted scan of generate_masks.
MASKS_SCRIPT = """
import sys
import numpy as np, jax, opomjax as oj
parallel = None if sys.argv[1] == "none" else sys.argv[1]
k, n, d = 500, 10, 32
rng = np.random.default_rng(0)
images = rng.uniform(0.0, 255.0, size=(k, n, 4, 4, 3)).astype(np.float32)
projection = rng.normal(size=(4 * 4 * 3, d)).astype(np.float32)
embed = lambda x: x.reshape(x.shape[0], -1) @ projection / 255.0
masks = oj.generate_masks(embed, images, method="opom-convex", key=jax.random.key(0), steps=2,
                          warmup_center_steps=0, parallel=parallel)
masks = np.asarray(jax.block_until_ready(masks))
assert masks.shape == (k, 4, 4, 3) and bool(np.all(np.abs(masks) <= 8.0)), "bad masks"
print("done")
"""


def run_fresh_process(script: str, *args: str, host_devices: int | None = None) -> None:
  """Runs ``script`` in a new CPU-only interpreter; fails the test if it hangs, errs or does not finish."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if host_devices is not None:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}".strip()
  try:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        cwd=REPO,
        env=env,
    )
  except subprocess.TimeoutExpired:
    pytest.fail(f"no result after {TIME_LIMIT_S} s: the batched hull solve hung ({' '.join(args)})")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("done"), result.stdout[-3000:]


@pytest.mark.parametrize("run", range(3))
def test_reported_reproduction_finishes_every_time(run):
  del run  # each run is a fresh process; the old hang struck some processes and spared others
  run_fresh_process(HULL_SCRIPT, "osqp")


@pytest.mark.parametrize("run", range(2))
def test_reproduction_with_fista_finishes_every_time(run):
  del run
  run_fresh_process(HULL_SCRIPT, "fista")


@pytest.mark.parametrize("run", range(2))
def test_convex_hull_masks_for_a_large_identity_group_finish(run):
  del run
  run_fresh_process(MASKS_SCRIPT, "none")


@pytest.mark.parametrize("parallel", ["shard_map", "pmap"])
def test_convex_hull_masks_sharded_over_two_host_devices_finish(parallel):
  run_fresh_process(MASKS_SCRIPT, parallel, host_devices=2)
