r"""Evaluates saved masks against a list of target models and writes the result tables.

  python -m experiments.evaluate --config=experiments/configs/opom_convex.py:dlib --workdir=runs/convex

The config must be the one the masks were made with: masks of other settings are refused.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import launcher
from opomjax.pipeline import runner

_CONFIG = config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).parent / "configs" / "default.py"),
                                          "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where the masks are and the results go.")


@launcher.one_line_errors
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  rows = runner.evaluate_all(_CONFIG.value, runner.method_workdirs(_CONFIG.value, _WORKDIR.value), _WORKDIR.value)
  logging.info("%d result rows written to %s", len(rows), _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
