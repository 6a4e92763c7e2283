"""Names -> models. ``load_model`` gives differentiable surrogates, ``load_target`` black-box targets.

Each entry maps a name to ``"module:builder"``; the builder takes ``weights=None`` (a path, or None for the
registered default / random initialisation) plus keyword options and returns a :class:`FaceModel`.
The modules are imported only when their model is asked for.
"""

from __future__ import annotations

import importlib
import os

from opomjax.models import base

#: name -> "module:builder"; the module owning an architecture adds its names here.
MODEL_BUILDERS: dict[str, str] = {
    "dlib_resnet": "opomjax.models.dlib_resnet:build_dlib_resnet",
    "sface": "opomjax.models.onnx_jax:build_sface",
    "ir50": "opomjax.models.iresnet:build_ir50",
    "ir100": "opomjax.models.iresnet:build_ir100",
    "ir152": "opomjax.models.iresnet:build_ir152",
    "ir_se50": "opomjax.models.iresnet:build_ir_se50",
    "iresnet50": "opomjax.models.iresnet:build_iresnet50",
    "iresnet100": "opomjax.models.iresnet:build_iresnet100",
    "mobilefacenet": "opomjax.models.mobilefacenet:build_mobilefacenet",
    "inception_resnet_v1": "opomjax.models.inception_resnet_v1:build_inception_resnet_v1",
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


def load_model(name: str, weights: str | os.PathLike | None = None, **options) -> base.FaceModel:
  """A differentiable face model by registry name (or an ONNX file path as white-box surrogate)."""
  if name not in MODEL_BUILDERS:
    if str(name).endswith(".onnx"):
      return _resolve("opomjax.models.onnx_jax:load_onnx_model")(name, **options)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
  return _resolve(MODEL_BUILDERS[name])(weights=weights, **options)


def load_target(name_or_path: str | os.PathLike, **options):
  """A model to evaluate against: a black-box target name, an ONNX path, or any surrogate name."""
  name = str(name_or_path)
  if name in TARGET_BUILDERS:
    return _resolve(TARGET_BUILDERS[name])(**options)
  if name.endswith(".onnx"):
    return _resolve("opomjax.models.onnx_target:load_onnx_target")(name, **options)
  return load_model(name, **options)
