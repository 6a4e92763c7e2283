"""CPU speed of the TensorFlow.js surrogates (faceres, mobileface) and of the depthwise-convolution formulations.

  .venv/bin/python bench/bench_tfjs.py [--batch 10] [--repeats 3] [--models faceres,mobileface] [--depthwise]

Models: the wall time of one jitted forward pass and of one forward + backward pass (the gradient of the
summed embeddings with respect to the input images, as the mask optimisers need it) for a batch at the
model's native size, with the interpreter's depthwise formulation and, with ``--depthwise``, with XLA's
grouped convolution as well.

Depthwise layers (``--depthwise``): one 3x3 depthwise convolution at the shapes of faceres' MobileNet stages,
forward and forward + backward (gradient with respect to the input), as ``lax.conv_general_dilated`` with
``feature_group_count`` (NHWC, and NCHW through transposes) and as a sum of shifted, strided slices, with JAX's
own backward pass and with the interpreter's hand-written one (a transposed depthwise correlation); the largest
difference from the NHWC grouped convolution is printed too. Times are medians over ``repeats``
runs after one compile-and-warm-up run.
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

from opomjax.models import depthwise  # pylint: disable=wrong-import-position
from opomjax.models.tfjs import operators  # pylint: disable=wrong-import-position
from opomjax.models.tfjs import surrogate  # pylint: disable=wrong-import-position

#: (batch, size, channels, stride) of faceres' depthwise layers (MobileNet v1 at 224x224), one per stage.
DEPTHWISE_SHAPES = ((112, 32, 1), (112, 64, 2), (56, 128, 1), (28, 256, 1), (14, 512, 1), (7, 1024, 1))


def median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def grouped_nchw(x, w, strides, pads, dilations):
  kh, kw, c, _ = w.shape
  y = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1)).reshape(c, 1, kh, kw),
                                   tuple(strides), pads, rhs_dilation=tuple(dilations), feature_group_count=c)
  return jnp.transpose(y, (0, 2, 3, 1))


def slices_autodiff(x, w, strides, pads, dilations):
  """The shifted-slice sum with JAX's own backward pass (no custom VJP)."""
  kh, kw, c, _ = w.shape
  padded = jnp.pad(x, [(0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)])
  return depthwise._taps(padded, w.reshape(kh, kw, c), strides, dilations, "NHWC")  # pylint: disable=protected-access


FORMULATIONS = {
    "grouped_nhwc": operators.depthwise_conv_grouped,
    "grouped_nchw": grouped_nchw,
    "slices_autodiff": slices_autodiff,
    "slices_vjp": operators.depthwise_conv,
}


def bench_depthwise(batch: int, repeats: int) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for size, channels, stride in DEPTHWISE_SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, channels, 1)), jnp.float32)
    pads = [(1, 1), (1, 1)] if stride == 1 else [(0, 1), (0, 1)]  # TensorFlow SAME
    args = ((stride, stride), pads, (1, 1))
    reference = operators.depthwise_conv_grouped(x, w, *args)
    for name, fn in FORMULATIONS.items():
      forward = jax.jit(lambda x, w, fn=fn: fn(x, w, *args))
      backward = jax.jit(jax.grad(lambda x, w, fn=fn: jnp.sum(jnp.square(fn(x, w, *args)))))
      rows.append({
          "layer": f"{batch}x{size}x{size}x{channels} s{stride}",
          "formulation": name,
          "forward_s": median_seconds(lambda: forward(x, w), repeats),
          "forward_backward_s": median_seconds(lambda: backward(x, w), repeats),
          "max_abs_diff": float(jnp.max(jnp.abs(forward(x, w) - reference))),
      })
      print(f"  {rows[-1]['layer']:22s} {name:15s} forward {rows[-1]['forward_s'] * 1e3:9.1f} ms   "
            f"forward+backward {rows[-1]['forward_backward_s'] * 1e3:9.1f} ms   max |diff| "
            f"{rows[-1]['max_abs_diff']:.1e}", flush=True)
  return rows


def bench_model(name: str, batch: int, repeats: int, formulation: str) -> dict:
  operators.DEPTHWISE_FORMULATION = formulation
  try:
    model = {"faceres": surrogate.build_faceres, "mobileface": surrogate.build_mobileface}[name]()
    h, w = model.input_frame.size
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)), jnp.float32)
    forward = jax.jit(lambda p, x: model.net_fn(p, x)[0])
    backward = jax.jit(jax.grad(lambda p, x: jnp.sum(model.net_fn(p, x)[0]), argnums=1))
    return {
        "name": name,
        "depthwise": formulation,
        "size": f"{h}x{w}",
        "d": model.embedding_size,
        "forward_s": median_seconds(lambda: forward(model.params, images), repeats),
        "forward_backward_s": median_seconds(lambda: backward(model.params, images), repeats),
    }
  finally:
    operators.DEPTHWISE_FORMULATION = "slices"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--models", default="faceres,mobileface")
  parser.add_argument("--depthwise", action="store_true", help="compare the depthwise formulations too")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}")
  if args.depthwise:
    print("depthwise 3x3 layers:")
    bench_depthwise(args.batch, args.repeats)
  formulations = ("slices", "grouped") if args.depthwise else ("slices",)
  print("models:")
  for name in [m for m in args.models.split(",") if m]:
    for formulation in formulations:
      try:
        row = bench_model(name, args.batch, args.repeats, formulation)
      except (FileNotFoundError, ValueError) as e:
        print(f"  {name:11s} skipped: {e}")
        break
      print(f"  {row['name']:11s} {row['size']:8s} d={row['d']:5d} depthwise={formulation:8s} forward "
            f"{row['forward_s']:7.3f} s   forward+backward {row['forward_backward_s']:7.3f} s", flush=True)


if __name__ == "__main__":
  main()
