r"""Generates one mask per identity for each method of a config.

  python -m experiments.generate --config=experiments/configs/opom_convex.py:dlib --workdir=runs/convex

Rerun with the same flags to resume; with other settings it refuses (use a new --workdir).
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import launcher
from opomjax.pipeline import runner

_CONFIG = config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).parent / "configs" / "default.py"),
                                          "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Masks go to WORKDIR/<method>-<surrogate>[-mdfa]/masks/.")


@launcher.one_line_errors
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  workdirs = runner.generate_all(_CONFIG.value, _WORKDIR.value)
  logging.info("masks in %s", {m: str(w) for m, w in workdirs.items()})


if __name__ == "__main__":
  app.run(main)
