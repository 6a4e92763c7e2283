r"""Speed of the 1:N identification kernel against a per-search loop written like the official script.

The official evaluation builds, for every identity and ordered pair of its test images i != j, a gallery of the
clean image j plus all distractors, computes its similarities to masked image i, argsorts them and looks for the
genuine mate in the first 1, 5 and 10 places. That loop is mirrored here in numpy; the kernel is
``opomjax.core.evaluation``. Both run on the same random features (identity structure, so both hits and misses
occur), and the per-identity hit counts of the timed searches are checked to agree.

Run (about a minute on 2 CPU cores):

  .venv/bin/python -m bench.bench_identification
  .venv/bin/python -m bench.bench_identification --ids=100 --loop_ids=100   # the whole loop, no extrapolation
"""

import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

from opomjax.core import evaluation

_IDS = flags.DEFINE_integer("ids", 100, "identities K in the timed comparison")
_IMAGES = flags.DEFINE_integer("images", 10, "test images per identity M")
_DISTRACTORS = flags.DEFINE_integer("distractors", 13233, "distractors D (13,233 = all of LFW)")
_DIM = flags.DEFINE_integer("dim", 512, "feature dimension d")
_LOOP_IDS = flags.DEFINE_integer(
    "loop_ids", 10, "identities the per-search loop is timed on; its time is extrapolated linearly to --ids"
)
_LARGE_IDS = flags.DEFINE_integer("large_ids", 500, "identities for the full-size kernel timing")
_CHUNK = flags.DEFINE_integer("chunk_size", None, "probes per chunk (default: about 64 MiB of similarities)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed kernel runs after compilation (best is reported)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the random features")

KS = (1, 5, 10)


def make_features(rng, num_ids, num_images, num_distractors, dim):
  """Unit features: each identity a random centre plus noise; masked = clean plus more noise."""
  centres = rng.standard_normal((num_ids, 1, dim), dtype=np.float32)
  clean = centres + 1.5 * rng.standard_normal((num_ids, num_images, dim), dtype=np.float32)
  masked = clean + 2.0 * rng.standard_normal(clean.shape, dtype=np.float32)
  distractors = rng.standard_normal((num_distractors, dim), dtype=np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  return unit(masked), unit(clean), unit(distractors)


def official_loop_hits(masked, clean, distractors, ks):
  """Per-identity hit counts, one gallery and one argsort per search, as in the official script."""
  num_ids, num_images, dim = masked.shape
  probes = masked.reshape(-1, dim)
  mates = clean.reshape(-1, dim)
  hits = np.zeros((num_ids, len(ks)), np.int64)
  for identity in range(num_ids):
    for i in range(num_images):
      for j in range(num_images):
        if i == j:
          continue
        gallery = np.concatenate([distractors, mates[identity * num_images + j][None]])
        order = np.argsort(-(gallery @ probes[identity * num_images + i]), kind="stable")
        for n, k in enumerate(ks):
          hits[identity, n] += int(len(distractors) in order[:k])
  return hits


def time_kernel(masked, clean, distractors, chunk_size, repeats):
  """(seconds to compile and run once, best seconds of ``repeats`` runs, hits, compiled memory analysis)."""
  args = (masked, clean, distractors)
  start = time.perf_counter()
  hits = np.asarray(evaluation.identification_hits(*args, KS, chunk_size))
  first = time.perf_counter() - start
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(evaluation.identification_hits(*args, KS, chunk_size))
    best = min(best, time.perf_counter() - start)
  compiled = evaluation.identification_hits.lower(*args, KS, chunk_size).compile()
  return first, best, hits, compiled.memory_analysis()


def report_memory(memory, num_probes, chunk_size, num_distractors):
  mib = 2.0**20
  num_chunks = -(-num_probes // chunk_size)
  per_chunk = -(-num_probes // num_chunks)
  similarities = per_chunk * num_distractors * 4 / mib
  print(
      f"  {num_chunks} chunks; similarities held per chunk: {per_chunk} probes x {num_distractors}"
      f" = {similarities:.1f} MiB"
  )
  if memory is not None:
    total = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    print(
        f"  XLA buffers: arguments {memory.argument_size_in_bytes / mib:.1f} MiB, temporaries "
        f"{memory.temp_size_in_bytes / mib:.1f} MiB, outputs {memory.output_size_in_bytes / mib:.3f} MiB"
        f" -> peak bound {total / mib:.1f} MiB"
    )


def main(argv):
  del argv
  num_images, num_distractors, dim = _IMAGES.value, _DISTRACTORS.value, _DIM.value
  chunk_size = _CHUNK.value or max(1, evaluation.DEFAULT_CHUNK_BYTES // (4 * num_distractors))
  rng = np.random.default_rng(_SEED.value)
  print(f"device: {jax.devices()[0]}, features d={dim}, D={num_distractors} distractors, M={num_images}")

  num_ids = _IDS.value
  masked, clean, distractors = make_features(rng, num_ids, num_images, num_distractors, dim)
  searches = num_ids * num_images * (num_images - 1)
  print(f"\n{num_ids} identities x {num_images} images x {num_distractors} distractors ({searches} searches)")
  first, best, hits, memory = time_kernel(masked, clean, distractors, chunk_size, _REPEATS.value)
  print(f"  kernel: {best:.3f} s (best of {_REPEATS.value}; first call with compilation {first:.3f} s)")

  loop_ids = min(_LOOP_IDS.value, num_ids)
  start = time.perf_counter()
  loop_hits = official_loop_hits(masked[:loop_ids], clean[:loop_ids], distractors, KS)
  loop_seconds = time.perf_counter() - start
  if not np.array_equal(loop_hits, hits[:loop_ids]):
    differing = int((loop_hits != hits[:loop_ids]).any(axis=1).sum())
    print(f"  WARNING: hit counts differ from the loop for {differing} of {loop_ids} identities")
  else:
    print(f"  hit counts of the kernel equal the loop's on the {loop_ids} identities the loop ran")
  loop_total = loop_seconds * num_ids / loop_ids
  if loop_ids < num_ids:
    print(
        f"  official-style loop: {loop_seconds:.2f} s for {loop_ids} identities, "
        f"extrapolated linearly to {num_ids} identities: {loop_total:.1f} s"
    )
  else:
    print(f"  official-style loop: {loop_total:.2f} s")
  print(f"  speed-up (loop / kernel): {loop_total / best:.0f}x")
  psr = 1.0 - hits.sum(0) / searches
  print("  protection success rate: " + ", ".join(f"top-{k} {p:.4f}" for k, p in zip(KS, psr)))
  report_memory(memory, masked.shape[0] * num_images, chunk_size, num_distractors)

  large_ids = _LARGE_IDS.value
  masked, clean, distractors = make_features(rng, large_ids, num_images, num_distractors, dim)
  print(f"\n{large_ids} identities x {num_images} images x {num_distractors} distractors (kernel only)")
  first, best, hits, memory = time_kernel(masked, clean, distractors, chunk_size, _REPEATS.value)
  print(f"  kernel: {best:.3f} s (best of {_REPEATS.value}; first call with compilation {first:.3f} s)")
  report_memory(memory, masked.shape[0] * num_images, chunk_size, num_distractors)
  print(f"  process peak resident memory so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
  app.run(main)
