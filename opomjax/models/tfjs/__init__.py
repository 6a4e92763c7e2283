"""TensorFlow.js graph models as JAX functions: reading the format, the graph, its operators and the surrogate.

* :mod:`~opomjax.models.tfjs.reading`: ``model.json`` + weight shards (float32, float16 and the uint8 / uint16
  affine-quantised dtypes), nodes and their attributes;
* :mod:`~opomjax.models.tfjs.graph`: pruning and constant folding at load, the graph walk as a pure JAX
  function;
* :mod:`~opomjax.models.tfjs.operators`: the TensorFlow op implementations (NHWC);
* :mod:`~opomjax.models.tfjs.surrogate`: any TensorFlow.js graph face model as a differentiable
  :class:`~opomjax.models.base.FaceModel` (:func:`load_tfjs_model`, :func:`build_faceres`,
  :func:`build_mobileface`).

The public names below are imported lazily, so that reading a file does not import the interpreter.

Example::

    from opomjax.models.tfjs import build_faceres, load_tfjs_model
    model = build_faceres()                       # the registered files, sha256-checked
    other = load_tfjs_model("face/model.json", output_name="embedding")
"""

import importlib

_EXPORTS = {
    "Node": "reading",
    "TfjsFormatError": "reading",
    "TfjsModel": "reading",
    "decode_weight": "reading",
    "decode_weights": "reading",
    "read_tfjs": "reading",
    "Graph": "graph",
    "convert": "graph",
    "run_graph": "graph",
    "SUPPORTED_OPS": "operators",
    "UnsupportedOpError": "operators",
    "depthwise_conv": "operators",
    "dfanet_dropout": "operators",
    "CANONICAL_224": "surrogate",
    "IMAGENET_MEANS_BGR": "surrogate",
    "build_faceres": "surrogate",
    "build_mobileface": "surrogate",
    "default_activation_nodes": "surrogate",
    "load_tfjs_model": "surrogate",
    "make_net_fn": "surrogate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
