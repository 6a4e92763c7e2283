"""Identities over devices: padding, and pmap / shard_map equal to one device bit for bit (8 fake CPU devices)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import parallel

TESTS = pathlib.Path(__file__).resolve().parent


def test_pad_repeats_last_identity_and_take_undoes_it():
  batch = {"x": jnp.arange(5.0), "keys": jax.random.split(jax.random.key(0), 5), "m": jnp.ones((5, 2, 3))}
  padded = parallel.pad_identities(batch, 4)
  assert padded["x"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]
  assert padded["m"].shape == (8, 2, 3)
  assert np.array_equal(jax.random.key_data(padded["keys"][7]), jax.random.key_data(batch["keys"][4]))
  back = parallel.take_identities(padded, 5)
  assert back["x"].tolist() == batch["x"].tolist() and back["m"].shape == (5, 2, 3)
  assert np.array_equal(jax.random.key_data(back["keys"]), jax.random.key_data(batch["keys"]))
  assert parallel.pad_identities(batch, 5) is batch


def test_mismatched_leading_axes_and_bad_mode_raise():
  with pytest.raises(ValueError, match="leading"):
    parallel.pad_identities((jnp.ones(3), jnp.ones(4)), 2)
  with pytest.raises(ValueError, match="parallel"):
    parallel.distribute(lambda s, b: b, "threads")


@pytest.mark.parametrize("mode", parallel.PARALLEL_MODES)
def test_modes_agree_with_direct_call_on_local_devices(mode):
  def fn(shared, batch):
    x, y = batch
    return jnp.tanh(x @ shared) + y[:, None]

  shared = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
  batch = (jnp.asarray(np.random.default_rng(1).standard_normal((7, 4)), jnp.float32), jnp.arange(7.0))
  out = parallel.map_identities(fn, shared, batch, parallel=mode)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(fn)(shared, batch)))


SHARDED_EQUALS_SINGLE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_ascent import tiny_model, tiny_images
    from opomjax.core import ascent

    apply, params = tiny_model(size=16)
    images = tiny_images(k=5, n=3, size=16)  # 5 identities on 8 devices: padded to 8, sliced back to 5

    def embed(x, key=None):
      return apply(params, x, key)[0]

    # Hull QP, class-centre warm start, momentum and DFANet dropout keys all in one run.
    common = dict(method="opom-convex", key=jax.random.key(3), steps=3, warmup_center_steps=1, momentum=0.9,
                  dfanet=True)
    single = np.asarray(ascent.generate_masks(embed, images, **common))
    report = {"devices": jax.device_count(), "shape": list(single.shape)}
    for mode in ("pmap", "shard_map"):
      sharded = np.asarray(ascent.generate_masks(embed, images, parallel=mode, **common))
      report[mode] = bool(np.array_equal(single, sharded))
      report[mode + "_max_diff"] = float(np.max(np.abs(single - sharded)))
    # An ensemble of two surrogates (per-member hulls, clean features and dropout keys), same settings.
    apply_b, params_b = tiny_model(seed=1, size=16)
    pair = (lambda p, x, key=None: apply(p, x, key)[0], lambda p, x, key=None: apply_b(p, x, key)[0])
    both = dict(common, params=(params, params_b), surrogate_weights=(2.0, 1.0))
    single = np.asarray(ascent.generate_masks(pair, images, **both))
    for mode in ("pmap", "shard_map"):
      report["ensemble_" + mode] = bool(np.array_equal(single, np.asarray(
          ascent.generate_masks(pair, images, parallel=mode, **both))))
    print("REPORT " + json.dumps(report))
""")


def test_sharded_equals_single_device_on_eight_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, "-c", SHARDED_EQUALS_SINGLE, str(TESTS)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")][-1]
  report = json.loads(line[len("REPORT "):])
  assert report["devices"] == 8
  assert report["shape"] == [5, 16, 16, 3]
  assert report["pmap"], report
  assert report["shard_map"], report
  assert report["ensemble_pmap"] and report["ensemble_shard_map"], report


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_masks_in_pieces_over_devices_equal_one_device_in_one_piece(mode):
  """The step counter of a run in pieces is shared by every device; masks equal the single-device run."""
  sys.path.insert(0, str(TESTS))
  from test_ascent import tiny_model, tiny_images  # pylint: disable=import-outside-toplevel
  from opomjax.core import ascent  # pylint: disable=import-outside-toplevel

  apply, params = tiny_model(size=16)
  images = tiny_images(k=3, n=2, size=16)

  def embed(p, x):
    return apply(p, x)[0]

  common = dict(method="fi-uap", key=jax.random.key(5), steps=3, momentum=1.0, params=params)
  whole = ascent.generate_masks(embed, images, **common)
  seen = []
  pieces = ascent.generate_masks(embed, images, parallel=mode, steps_per_call=2,
                                 progress=lambda done, total: seen.append(done), **common)
  assert seen == [2, 3]
  np.testing.assert_array_equal(np.asarray(pieces), np.asarray(whole))
