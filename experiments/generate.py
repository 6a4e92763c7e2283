r"""Generates one mask per identity for each method of a config.

  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib --workdir=runs/convex

Rerun with the same flags to resume; with other settings it refuses (use a new --workdir).

On a machine without the prepared data set (a GPU machine, say): write the config's training chips where the data
set is, make the masks there from them, and evaluate with ``experiments.run`` and the same config back here, which
finds the masks and does not make them again (opomjax.pipeline.chips):

  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib_full --export_chips=chips.npz
  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib_full --chips=chips.npz \
      --workdir=runs/convex
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import launcher
from opomjax.pipeline import chips as chips_lib
from opomjax.pipeline import runner

_CONFIG = config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).parent / "configs" / "default.py"),
                                          "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Masks go to WORKDIR/<method>-<surrogate>[-mdfa]/masks/.")
_EXPORT_CHIPS = flags.DEFINE_string("export_chips", "", "Only write the config's training chips to this file.")
_CHIPS = flags.DEFINE_string("chips", "", "Make the masks from this training chips file instead of the data set.")


@launcher.one_line_errors
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  config = _CONFIG.value
  if _EXPORT_CHIPS.value and _CHIPS.value:
    raise ValueError("--export_chips and --chips exclude each other")
  if _EXPORT_CHIPS.value:
    protocol = runner.load_protocol(config.dataset)
    path = chips_lib.save_training_chips(protocol, _EXPORT_CHIPS.value, config.dataset.name)
    logging.info("training chips of %d identities in %s", len(protocol.names), path)
    return
  protocol = None
  if _CHIPS.value:
    protocol = chips_lib.load_training_chips(_CHIPS.value, config.dataset.num_identities or None, config.dataset.name)
  workdirs = runner.generate_all(config, _WORKDIR.value, protocol=protocol)
  logging.info("masks in %s", {m: str(w) for m, w in workdirs.items()})


if __name__ == "__main__":
  app.run(main)
