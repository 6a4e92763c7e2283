r"""Clean baselines: how well each model identifies unprotected Privacy-LFW test photos (the 1:N rule).

    python -m experiments.baselines --models=dlib_resnet,sface --out=/tmp/baselines.json

Prints and writes ``{model: {"top1": ..., "top5": ..., "top10": ...}}`` (accuracies in [0, 1]); accuracy is one
minus the protection success rate of unmasked photos. ``--random_mask_epsilon=8`` also adds one uniform random
mask in [-8, 8] per person to the probes and reports ``random_mask_top*`` (a mask that protects nothing should
change the accuracy by a fraction of a point).
Cost on 2 shared CPU cores: detection and alignment of LFW the first time (about 8 minutes), then 10,830
embeddings per model (620 test photos and 10,210 distractors; 620 more with a random mask), 6-45 minutes per
model depending on the model and the load.
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags
import jax
import numpy as np

import opomjax
from opomjax import data
from opomjax.models import registry
from opomjax.pipeline import features

FLAGS = flags.FLAGS
_KS = (1, 5, 10)


def define_flags() -> None:
  """The launcher's flags, defined only when it runs (so that importing this module defines none)."""
  flags.DEFINE_list("models", ["dlib_resnet", "sface"], "Registry names (surrogates or targets).")
  flags.DEFINE_string("out", None, "Where to write the JSON results (optional).")
  flags.DEFINE_string("protocol", "privacy_lfw", f"One of {', '.join(data.PROTOCOLS)}.")
  flags.DEFINE_string("lfw_dir", None, "LFW folder or archive (default: $OPOMJAX_LFW_DIR).")
  flags.DEFINE_string("data_dir", None, "Prepared datasets (default: $OPOMJAX_DATA_DIR).")
  flags.DEFINE_integer("num_identities", None, "First N probe identities (default: all).")
  flags.DEFINE_integer("batch_size", 64, "Embedding batch size.")
  flags.DEFINE_float("random_mask_epsilon", 0.0, "Uniform random mask bound (0: none).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the random masks.")


def embed_fn(name: str):
  """A batch embedding function for a registry name: jitted for surrogates, as is for black-box targets."""
  if name in registry.TARGET_BUILDERS or name.endswith(".onnx"):
    return registry.load_target(name).embed
  model = registry.load_model(name)
  apply = jax.jit(model.apply)
  return lambda images: apply(model.params, images)


def random_masks(key, k: int, shape, epsilon: float) -> np.ndarray:
  """One uniform mask in [-epsilon, epsilon] per identity, ``(k, H, W, 3)`` float32."""
  return np.asarray(jax.random.uniform(key, (k,) + tuple(shape), minval=-epsilon, maxval=epsilon))


def accuracies(probes, clean, gallery, k: int, m: int, prefix: str = "") -> dict[str, float]:
  ks = tuple(t for t in _KS if t <= len(gallery) + 1)  # a rank beyond the gallery's size means nothing
  rates = opomjax.protection_success_rate(probes.reshape(k, m, -1), clean.reshape(k, m, -1), gallery, ks=ks)
  return {f"{prefix}top{t}": 1.0 - float(rates[t]) for t in ks}


def baseline(embed, protocol: data.Protocol, *, batch_size: int, masks=None, desc: str = "") -> dict[str, float]:
  """Top-k identification accuracy of ``protocol``'s clean test photos; with ``masks`` (one per person) also
  that of the masked photos, under ``random_mask_top*``."""
  k, m = protocol.test.shape[:2]
  test = protocol.test.reshape((k * m,) + protocol.test.shape[2:])
  embed_all = lambda images, what, **kw: features.embed_in_batches(embed, images, batch_size=batch_size,
                                                                   desc=f"{desc} {what}", **kw)
  clean = embed_all(test, "test")
  gallery = embed_all(protocol.distractors, "distractors")
  result = accuracies(clean, clean, gallery, k, m)
  if masks is not None:
    masked = embed_all(test, "masked test", masks=np.repeat(masks, m, axis=0))
    result.update(accuracies(masked, clean, gallery, k, m, prefix="random_mask_"))
  return result


def main(argv):
  del argv
  protocol = data.load_protocol(FLAGS.protocol, lfw_dir=FLAGS.lfw_dir, data_dir=FLAGS.data_dir,
                                num_identities=FLAGS.num_identities)
  print(protocol)
  masks = None
  if FLAGS.random_mask_epsilon > 0:
    masks = random_masks(jax.random.key(FLAGS.seed), len(protocol.names), protocol.test.shape[2:],
                         FLAGS.random_mask_epsilon)
  results = {}
  for name in FLAGS.models:
    results[name] = baseline(embed_fn(name), protocol, batch_size=FLAGS.batch_size, masks=masks, desc=name)
    print(name, " ".join(f"{key}={value:.4f}" for key, value in results[name].items()), flush=True)
  print(json.dumps(results, indent=2))
  if FLAGS.out:
    pathlib.Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(FLAGS.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
