r"""Protects a person's photos with one OPOM mask: the ``opomjax protect`` command, runnable from a checkout.

  python -m experiments.protect --photos=my_photos/ --out=protected/
  python -m experiments.protect --photos='my_photos/*.jpg' --out=protected/ --surrogates=dlib_resnet,sface
  python -m experiments.protect --photos=new_photos/ --out=protected_new/ --mask=protected/mask.npz

The flags, outputs and exit statuses are those of :mod:`opomjax.protect.cli` (``--help`` lists them). 10 photos
with the default dlib surrogate: about 35 s of CPU time (1-2 minutes wall time on a busy 2-core machine); with
the dlib+sface ensemble several times longer.
"""

import sys

from opomjax.protect import cli


def run() -> None:
  """Console-script entry point: exits with the status of :func:`opomjax.protect.cli.main`."""
  sys.exit(cli.main(sys.argv[1:]))


if __name__ == "__main__":
  run()
