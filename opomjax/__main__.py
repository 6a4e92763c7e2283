"""``python -m opomjax COMMAND ...``: the ``opomjax`` command (see :mod:`opomjax.cli`)."""

import sys

from opomjax import cli

if __name__ == "__main__":
  sys.exit(cli.main())
