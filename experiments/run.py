r"""The main job: generate masks, evaluate them, write the report. With no flags: the default config
(OPOM-ConvexHull and FI-UAP on the first 10 Privacy-LFW identities, dlib surrogate, dlib + SFace targets).

  python -m experiments.run
  python -m experiments.run --config=experiments/configs/opom_convex.py:sface_full --workdir=runs/privacy_lfw

Bad flags or config fields, and masks in --workdir made with other settings, are refused before any work with
one ``error: ...`` line (docs/experiments.md).
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import launcher
from opomjax.pipeline import reports, runner

_CONFIG = config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).parent / "configs" / "default.py"),
                                          "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where masks, features and results are written.")


@launcher.one_line_errors
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  rows = runner.run_all(_CONFIG.value, _WORKDIR.value)
  if rows:
    print(reports.markdown_table(rows))


if __name__ == "__main__":
  app.run(main)
