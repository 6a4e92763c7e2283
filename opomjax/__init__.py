"""opomjax: One Person One Mask privacy masks in JAX.

The public names are imported lazily so that ``import opomjax`` stays cheap. The command line is
``opomjax COMMAND`` (:mod:`opomjax.cli`); model files are resolved by :mod:`opomjax.models.checkpoints`.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "hull_coefficients": "opomjax.core.hulls",
    "hull_distance": "opomjax.core.hulls",
    "generate_masks": "opomjax.core.ascent",
    "protection_success_rate": "opomjax.core.evaluation",
    "verification_summary": "opomjax.core.evaluation",
    "load_model": "opomjax.models.registry",
    "load_target": "opomjax.models.registry",
    "FaceModel": "opomjax.models.base",
    "CANONICAL": "opomjax.frame",
}

#: Subpackages reachable as attributes (``opomjax.models.checkpoints`` is the model-file resolver).
_SUBPACKAGES = ("core", "models", "faces", "data", "frame", "files", "pipeline", "protect")


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _SUBPACKAGES:
    return importlib.import_module(f"opomjax.{name}")
  raise AttributeError(f"module 'opomjax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
