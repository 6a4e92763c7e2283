"""ONNX files as JAX functions: reading the format, the graph, its operators and the surrogate adapter.

* :mod:`~opomjax.models.onnx.reading`: loading a file, its real inputs, nodes, weight dequantisation and input
  conventions (shared with the onnxruntime targets and the YuNet detector);
* :mod:`~opomjax.models.onnx.graph`: constant folding at load and the graph walk as a pure JAX function;
* :mod:`~opomjax.models.onnx.operators`: the operator implementations;
* :mod:`~opomjax.models.onnx.surrogate`: any ONNX embedding file as a differentiable
  :class:`~opomjax.models.base.FaceModel` (:func:`load_onnx_model`, :func:`build_sface`).

The public names below are imported lazily, so that reading a file does not import the interpreter.

Example::

    from opomjax.models.onnx import build_sface
    model = build_sface()                   # the registered SFace file, sha256-checked
"""

import importlib

_EXPORTS = {
    "InputSpec": "reading",
    "Node": "reading",
    "dequantize_linear": "reading",
    "find_value": "reading",
    "fold_weight_dequantization": "reading",
    "infer_layout": "reading",
    "input_spec": "reading",
    "read_onnx": "reading",
    "tensor_dims": "reading",
    "Graph": "graph",
    "convert": "graph",
    "run_graph": "graph",
    "SUPPORTED_OPS": "operators",
    "UnsupportedOpError": "operators",
    "depthwise_conv": "operators",
    "dfanet_dropout": "operators",
    "build_sface": "surrogate",
    "default_activation_nodes": "surrogate",
    "load_onnx_model": "surrogate",
    "make_net_fn": "surrogate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
