"""Names -> models. ``load_model`` gives differentiable surrogates, ``load_target`` black-box targets.

Each entry maps a name to ``"module:builder"``; the builder takes ``weights=None`` (a path, or None for the
registered default / random initialisation) plus keyword options and returns a :class:`FaceModel`.
The modules are imported only when their model is asked for.

Architectures whose weights only a user can supply (``ir50``, ``mobilefacenet``, ...: their registry entry
lists only ``user`` sources) would start from random parameters without a weight file; :func:`load_model`
refuses that unless asked for explicitly (``allow_random_weights=True``), so that a random network is never
mistaken for a face model.
"""

from __future__ import annotations

import importlib
import os

from opomjax.models import base
from opomjax.models import checkpoints

#: name -> "module:builder"; the module owning an architecture adds its names here.
MODEL_BUILDERS: dict[str, str] = {
    "dlib_resnet": "opomjax.models.dlib_resnet:build_dlib_resnet",
    "sface": "opomjax.models.onnx:build_sface",
    "ir50": "opomjax.models.iresnet:build_ir50",
    "ir100": "opomjax.models.iresnet:build_ir100",
    "ir152": "opomjax.models.iresnet:build_ir152",
    "ir_se50": "opomjax.models.iresnet:build_ir_se50",
    "iresnet50": "opomjax.models.iresnet:build_iresnet50",
    "iresnet100": "opomjax.models.iresnet:build_iresnet100",
    "mobilefacenet": "opomjax.models.mobilefacenet:build_mobilefacenet",
    "inception_resnet_v1": "opomjax.models.inception_resnet_v1:build_inception_resnet_v1",
    "faceres": "opomjax.models.tfjs:build_faceres",
    "mobileface": "opomjax.models.tfjs:build_mobileface",
}

#: name -> "module:builder" for black-box targets (no gradients).
TARGET_BUILDERS: dict[str, str] = {
    "sface_onnx": "opomjax.models.onnx_target:build_sface_target",
}


def _resolve(spec: str):
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)


def available_models() -> list[str]:
  return sorted(MODEL_BUILDERS)


def has_registered_weights(name: str) -> bool:
  """Whether registered model ``name`` has weights of its own (a package or shared file), not only user ones."""
  entry = checkpoints.get_entry(name)
  return any(source["kind"] != "user" for source in entry.sources)


def _check_real_weights(name: str, weights, allow_random_weights: bool, options: dict) -> None:
  """Refuses a random initialisation of ``name`` that was not asked for (see :func:`load_model`)."""
  random_init = bool(options.get("random_init", False))
  if random_init and weights is not None:
    raise ValueError(f"load_model({name!r}): pass either weights or random_init=True, not both")
  if weights is not None or allow_random_weights or random_init or has_registered_weights(name):
    return
  raise ValueError(
      f"model {name!r} has no real weights; pass weights=PATH (opomjax checkpoints prepare {name} --source PATH) "
      f"or allow_random_weights=True for tests/benchmarks")


def load_model(name: str, weights: str | os.PathLike | None = None, *, allow_random_weights: bool = False,
               **options) -> base.FaceModel:
  """A differentiable face model by registry name (or an ONNX or TensorFlow.js graph-model path as surrogate).

  Args:
    name: a registry name (:func:`available_models`), the path of an ``.onnx`` file or of a TF.js ``model.json``.
    weights: a weight file (or, for the ported architectures, a loaded state dict); None for the registered
      weights.
    allow_random_weights: let an architecture without registered weights start from random parameters when
      ``weights`` is None (tests, benchmarks). ``random_init=True`` (where a builder has it) asks for random
      parameters explicitly too.
    **options: builder options (``dropout_rate``, ``seed``, ``precision``, ...).

  Raises:
    ValueError: an unknown name, or an architecture without registered weights given no ``weights`` and
      no explicit permission to use random ones.
  """
  if name not in MODEL_BUILDERS:
    if str(name).endswith(".onnx"):
      return _resolve("opomjax.models.onnx:load_onnx_model")(name, **options)
    if str(name).endswith(".json"):  # a TensorFlow.js graph model
      return _resolve("opomjax.models.tfjs:load_tfjs_model")(name, **options)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
  _check_real_weights(name, weights, allow_random_weights, options)
  if not has_registered_weights(name):
    options.pop("random_init", None)  # these builders initialise randomly whenever weights is None
  return _resolve(MODEL_BUILDERS[name])(weights=weights, **options)


def load_target(name_or_path: str | os.PathLike, *, allow_random_weights: bool = False, **options):
  """A model to evaluate against: a black-box target name, an ONNX path, or any surrogate name.

  ``allow_random_weights`` applies to surrogate names (see :func:`load_model`).
  """
  name = str(name_or_path)
  if name in TARGET_BUILDERS:
    return _resolve(TARGET_BUILDERS[name])(**options)
  if name.endswith(".onnx"):
    return _resolve("opomjax.models.onnx_target:load_onnx_target")(name, **options)
  return load_model(name, allow_random_weights=allow_random_weights, **options)
