r"""Clean baselines: how well each model identifies unprotected Privacy-LFW test photos (the 1:N rule).

    python -m experiments.baselines --models=dlib_resnet,sface --out=/tmp/baselines.json

Prints and writes ``{model: {"top1": ..., "top5": ..., "top10": ...}}`` (accuracies in [0, 1]); accuracy is one
minus the protection success rate of unmasked photos. ``--random_mask_epsilon=8`` also adds one uniform random
mask in [-8, 8] per person to the probes and reports ``random_mask_top*`` (a mask that protects nothing should
change the accuracy by a fraction of a point). Masked probes are embedded as saved 8-bit photos;
``--conditions=none,jpeg75`` also reports ``jpeg75_top*`` (the clean probes re-encoded as JPEG 75) and
``jpeg75_random_mask_top*``.
Cost on 2 shared CPU cores: detection and alignment of LFW the first time (about 8 minutes), then 10,830
embeddings per model (620 test photos and 10,210 distractors; 620 more with a random mask), 6-45 minutes per
model depending on the model and the load.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax

from experiments import launcher
from opomjax import data
from opomjax.files import atomic_write_bytes
from opomjax.pipeline.baselines import baseline, check_arguments, embed_fn, random_masks

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The launcher's flags, defined only when it runs (so that importing this module defines none)."""
  flags.DEFINE_list("models", ["dlib_resnet", "sface"], "Registry names (surrogates or targets) or .onnx files.")
  flags.DEFINE_string("out", None, "Where to write the JSON results (optional).")
  flags.DEFINE_string("protocol", "privacy_lfw", f"One of {', '.join(data.PROTOCOLS)}.")
  flags.DEFINE_string("lfw_dir", None, "LFW folder or archive (default: $OPOMJAX_LFW_DIR).")
  flags.DEFINE_string("data_dir", None, "Prepared datasets (default: $OPOMJAX_DATA_DIR).")
  flags.DEFINE_bool("download", False, "Download LFW when it is not found.")
  flags.DEFINE_integer("num_identities", None, "First N probe identities (default: all).")
  flags.DEFINE_integer("batch_size", 64, "Embedding batch size.")
  flags.DEFINE_float("random_mask_epsilon", 0.0, "Uniform random mask bound (0: none; at most 32).")
  flags.DEFINE_bool("allow_large_epsilon", False, "Accept --random_mask_epsilon above 32.")
  flags.DEFINE_bool("allow_random_weights", False, "Accept models without real weights (tests only).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the random masks.")
  flags.DEFINE_list("conditions", ["none"], "Channels the probes go through (opomjax.faces.channel): none (saved "
                    "8-bit photo), jpeg90, jpeg75, jpeg50, resize0.5, blur, float.")


@launcher.one_line_errors
def main(argv):
  del argv
  check_arguments(FLAGS.models, protocol=FLAGS.protocol, num_identities=FLAGS.num_identities,
                  batch_size=FLAGS.batch_size, random_mask_epsilon=FLAGS.random_mask_epsilon,
                  allow_large_epsilon=FLAGS.allow_large_epsilon, allow_random_weights=FLAGS.allow_random_weights,
                  seed=FLAGS.seed, out=FLAGS.out, lfw_dir=FLAGS.lfw_dir, conditions=FLAGS.conditions)
  embeds = {name: embed_fn(name, allow_random_weights=FLAGS.allow_random_weights) for name in FLAGS.models}
  protocol = data.load_protocol(FLAGS.protocol, lfw_dir=FLAGS.lfw_dir, data_dir=FLAGS.data_dir,
                                num_identities=FLAGS.num_identities, download=FLAGS.download)
  print(protocol)
  masks = None
  if FLAGS.random_mask_epsilon > 0:
    masks = random_masks(jax.random.key(FLAGS.seed), len(protocol.names), protocol.test.shape[2:],
                         FLAGS.random_mask_epsilon)
  results = {}
  for name, embed in embeds.items():
    results[name] = baseline(embed, protocol, batch_size=FLAGS.batch_size, masks=masks,
                             conditions=FLAGS.conditions, desc=name)
    print(name, " ".join(f"{key}={value:.4f}" for key, value in results[name].items()), flush=True)
  print(json.dumps(results, indent=2))
  if FLAGS.out:
    atomic_write_bytes(FLAGS.out, (json.dumps(results, indent=2) + "\n").encode())


if __name__ == "__main__":
  define_flags()
  app.run(main)
