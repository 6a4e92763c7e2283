r"""Diverse masks per person (paper Sec. 4.3.4, Eq. 19, Table 6): M masks per identity, M-O and M-M evaluation.

    python -m experiments.diverse_masks --workdir=runs/diverse                       # M = 1, 5, 10; 10 identities
    python -m experiments.diverse_masks --workdir=runs/diverse --num_masks=1,5 --method=opom-center \
        --diversity_weight=1 --num_identities=20 --targets=dlib_resnet,sface_onnx

For every ``M`` in ``--num_masks`` the ``M`` masks of each of the first ``--num_identities`` Privacy-LFW
identities are made jointly from its training photos (:func:`opomjax.core.diverse.generate_diverse_masks`:
each mask its own OPOM objective on its masked features, plus ``--diversity_weight`` times the diversity of
Eq. 19 between the masks), then evaluated on its test photos, saved as 8-bit photos (condition ``none``), against
every target in ``--targets`` (default: dlib ResNet, the white-box surrogate, and SFace through onnxruntime,
black-box):

* M-O: the gallery holds the clean test photos; the probe is a photo protected by mask ``p``. Mean ± std over
  the ``M`` masks.
* M-M: the gallery holds the test photos protected by mask ``q``; the probe a photo protected by another mask
  ``p != q`` of the same person. Mean ± std over the ``M (M - 1)`` ordered pairs (none for ``M = 1``).

Writes ``<workdir>/masks-m<M>/<identity>.npz`` (the ``M`` masks of one identity, saved as soon as its group is
done: a killed run resumes where it stopped when the same command is run again; masks made with other settings
are refused), ``<workdir>/diverse_results.json`` (per-mask and per-pair rates too) and
``<workdir>/diverse_results.md``. Clean features of the targets are cached in ``<workdir>/features`` (or
``--feature_cache``). Bad flags end in one ``error: ...`` line before any work.

Cost on the 2-core CPU machine, shared and loaded (dlib surrogate, OPOM-ConvexHull, 16 steps, 10 training
photos; a step embeds ``M * 10`` photos per identity): the default command (10 identities, M = 1, 5, 10)
measured 38 min, of which 384 s, 720 s and 1,012 s of generation for M = 1, 5, 10 (compilation included) and
~3 min of evaluation with the distractor features already cached (otherwise ~7 min more).
"""

from __future__ import annotations

import logging as py_logging
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections

from experiments import launcher
import opomjax
from opomjax.core import diverse
from opomjax.pipeline import diverse as diverse_pipeline
from opomjax.pipeline import features as features_lib
from opomjax.pipeline import runner
from opomjax.pipeline import validate

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The launcher's flags, defined only when it runs (so that importing this module defines none)."""
  flags.DEFINE_string("workdir", "runs/diverse", "Where masks, features and results are written.")
  flags.DEFINE_list("num_masks", ["1", "5", "10"], "Numbers of masks per identity (M), one run each.")
  flags.DEFINE_float("diversity_weight", 1.0, "Weight lambda of the diversity term of Eq. 19 (0: none).")
  flags.DEFINE_string("method", "opom-convex", "Objective of each mask: opom-convex, opom-center, opom-affine, "
                      "fi-uap or fi-uap+.")
  flags.DEFINE_string("surrogate", "dlib_resnet", "Surrogate the masks are computed on (registry name).")
  flags.DEFINE_list("targets", ["dlib_resnet", "sface_onnx"], "Recognisers the masks are evaluated against.")
  flags.DEFINE_string("protocol", "privacy_lfw", "privacy_lfw, another opomjax.data protocol, or synthetic.")
  flags.DEFINE_integer("num_identities", 10, "First N identities of the protocol (0: all).")
  flags.DEFINE_string("lfw_dir", None, "LFW folder or archive (default: $OPOMJAX_LFW_DIR).")
  flags.DEFINE_string("data_dir", None, "Prepared datasets (default: $OPOMJAX_DATA_DIR).")
  flags.DEFINE_float("epsilon", 8.0, "L-inf budget in pixel units of [0, 255].")
  flags.DEFINE_float("step_size", 1.0, "Change of each pixel per step.")
  flags.DEFINE_integer("steps", 16, "Signed-gradient steps.")
  flags.DEFINE_float("momentum", 0.0, "Decay of the momentum of Eq. 14 (0: plain signed gradient).")
  flags.DEFINE_integer("warmup_center_steps", 5, "opom-convex: class-centre steps before the hull.")
  flags.DEFINE_integer("seed", 0, "Seed of the random starts.")
  flags.DEFINE_integer("group_size", 0, "Identities vmapped together (0: max(1, 8 // M)).")
  flags.DEFINE_integer("eval_batch_size", 64, "Embedding batch size of the evaluation.")
  flags.DEFINE_string("feature_cache", None, "Clean-feature cache (default: <workdir>/features).")
  flags.DEFINE_bool("allow_random_weights", False, "Accept models without real weights (tests only).")


def check_flags() -> tuple[list[int], str]:
  """Every flag checked before anything is loaded; returns the values of M and the workdir."""
  try:
    counts = [int(m) for m in FLAGS.num_masks]
  except ValueError:
    raise ValueError(f"--num_masks must be positive integers, got {','.join(FLAGS.num_masks)}") from None
  if not counts or min(counts) < 1:
    raise ValueError(f"--num_masks must be positive integers, got {','.join(FLAGS.num_masks) or 'nothing'}")
  if FLAGS.method not in diverse.METHODS:
    raise ValueError(f"--method must be one of {', '.join(diverse.METHODS)}, got {FLAGS.method!r}")
  validate.check_number(FLAGS.diversity_weight, "--diversity_weight", minimum=0.0)
  validate.check_epsilon(FLAGS.epsilon, "--epsilon", override="a smaller --epsilon")
  validate.check_number(FLAGS.step_size, "--step_size", positive=True)
  validate.check_number(FLAGS.momentum, "--momentum", minimum=0.0)
  validate.check_integer(FLAGS.steps, "--steps")
  validate.check_integer(FLAGS.warmup_center_steps, "--warmup_center_steps", minimum=0)
  validate.check_integer(FLAGS.num_identities, "--num_identities", minimum=0)
  validate.check_integer(FLAGS.seed, "--seed", minimum=0)
  validate.check_integer(FLAGS.group_size, "--group_size", minimum=0)
  validate.check_integer(FLAGS.eval_batch_size, "--eval_batch_size")
  allow = FLAGS.allow_random_weights
  validate.check_model_name(FLAGS.surrogate, "--surrogate", allow_random_weights=allow)
  if not FLAGS.targets:
    raise ValueError("--targets is empty; name at least one recogniser")
  for name in FLAGS.targets:
    validate.check_model_name(name, "--targets", allow_random_weights=allow, target=True)
  if FLAGS.protocol not in validate.known_datasets():
    raise ValueError(f"--protocol: unknown protocol {FLAGS.protocol!r}; choose from "
                     f"{', '.join(validate.known_datasets())}")
  if FLAGS.lfw_dir and not pathlib.Path(FLAGS.lfw_dir).exists():
    raise FileNotFoundError(f"--lfw_dir: {FLAGS.lfw_dir} does not exist")
  validate.check_writable(FLAGS.workdir, "--workdir")
  return sorted(set(counts)), FLAGS.workdir


@launcher.one_line_errors
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  counts, workdir = check_flags()
  py_logging.getLogger("opomjax").setLevel(py_logging.INFO)
  model = opomjax.load_model(FLAGS.surrogate, allow_random_weights=FLAGS.allow_random_weights)
  dataset = ml_collections.ConfigDict(dict(name=FLAGS.protocol, num_identities=FLAGS.num_identities,
                                           lfw_dir=FLAGS.lfw_dir or "", data_dir=FLAGS.data_dir or ""))
  protocol = runner.load_protocol(dataset)
  k, n = protocol.train.shape[:2]
  settings = dict(method=FLAGS.method, surrogate=FLAGS.surrogate,
                  surrogate_fingerprint=runner.surrogate_fingerprint(model), diversity_weight=FLAGS.diversity_weight,
                  epsilon=FLAGS.epsilon, step_size=FLAGS.step_size, steps=FLAGS.steps, momentum=FLAGS.momentum,
                  warmup_center_steps=FLAGS.warmup_center_steps, seed=FLAGS.seed, protocol=FLAGS.protocol,
                  frame=str(protocol.frame_name))
  options = dict(method=FLAGS.method, diversity_weight=FLAGS.diversity_weight, epsilon=FLAGS.epsilon,
                 step_size=FLAGS.step_size, steps=FLAGS.steps, momentum=FLAGS.momentum or None,
                 warmup_center_steps=FLAGS.warmup_center_steps)
  print(f"{k} identities, {n} training photos each; M = {', '.join(map(str, counts))}", flush=True)
  masks, seconds = {}, {}
  for m in counts:
    group_size = FLAGS.group_size or max(1, 8 // m)
    summary = diverse_pipeline.generate(model.apply, model.params, protocol, workdir, num_masks=m,
                                        settings={**settings, "num_masks": m}, group_size=group_size,
                                        seed=FLAGS.seed, **options)
    logging.info("generation: %s", summary)
    masks[m] = diverse_pipeline.load_masks(workdir, m, protocol.names, {**settings, "num_masks": m})
    seconds[m] = summary["seconds"]

  cache = features_lib.FeatureCache(FLAGS.feature_cache or pathlib.Path(workdir) / "features")
  ks = tuple(t for t in diverse_pipeline.KS if t <= len(protocol.distractors) + 1)
  test = protocol.test
  flat_test = test.reshape((-1,) + test.shape[2:])
  rows = []
  for name in FLAGS.targets:
    target = opomjax.load_target(name, allow_random_weights=FLAGS.allow_random_weights)
    embed = runner.target_embed(target)
    key = runner.target_cache_key(name, target)
    embed_cached = lambda images, what: cache.get_or_compute(key, images, lambda x: (
        features_lib.embed_in_batches(embed, x, batch_size=FLAGS.eval_batch_size, desc=f"{name} {what}")))
    clean = embed_cached(flat_test, "clean test").reshape(test.shape[:2] + (-1,))
    distractors = embed_cached(protocol.distractors, "distractors")
    for m in counts:
      protected = diverse_pipeline.protected_features(embed, test, masks[m], batch_size=FLAGS.eval_batch_size,
                                                      desc=f"{name} M={m}")
      row = {"target": name, **diverse_pipeline.evaluate_masks(protected, clean, distractors, ks),
             "seconds": seconds[m], "seconds_per_identity": seconds[m] / k}
      rows.append(row)
      print(f"{name} M={m}: M-O top-1 {row['mo_top1']:.3f} ± {row['mo_top1_std']:.3f}"
            + ("" if row["mm_top1"] is None else f", M-M top-1 {row['mm_top1']:.3f} ± {row['mm_top1_std']:.3f}"),
            flush=True)
  meta = {**settings, "num_identities": k, "num_masks": counts, "targets": list(FLAGS.targets),
          "condition": "none", "jax_backend": jax.default_backend()}
  json_path, md_path = diverse_pipeline.write_results(rows, workdir, meta)
  print(diverse_pipeline.markdown_table(rows))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
