"""An ONNX graph as a pure JAX function: constant folding at load, then a walk over the remaining nodes.

How the graph becomes a pure function:

* Every node whose inputs are all constants (initialisers, ``Constant`` nodes, the weight
  ``DequantizeLinear`` -> ``Reshape`` chains of a block-quantised file) is evaluated once, in numpy, at load.
  Quantised weights are exact after dequantising (``(q - zero_point) * scale`` in float32, as onnxruntime
  does), so nothing is lost by doing it once.
* The resulting floating-point tensors are the parameters: a flat ``{tensor name: float32 array}`` dict,
  separate from the graph, so the network function is pure and ``jax.grad`` / ``jax.jit`` / ``jax.vmap``
  work on it. Integer tensors (shapes, axes, indices) stay static numpy constants.
* At trace time ``Shape`` returns the static numpy shape, so the usual exporter arithmetic
  (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``) is computed in numpy, not traced.

Example::

    from opomjax.models.onnx import graph as graph_lib, reading
    graph, params = graph_lib.convert(reading.read_onnx("model.onnx"))
    y, _ = jax.jit(lambda p, x: graph_lib.run_graph(graph, p, x))(params, x)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
import onnx
from onnx import numpy_helper

from opomjax.models.onnx import operators
from opomjax.models.onnx import reading


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """The static part of an ONNX graph after constant folding.

  Attributes:
    nodes: the nodes left to run, in topological order.
    input_name: the image input.
    output_name: the embedding output.
    constants: static (non-differentiable) tensors: shapes, axes, indices.
    opset: the default-domain opset version.
  """

  nodes: tuple[reading.Node, ...]
  input_name: str
  output_name: str
  constants: dict[str, np.ndarray]
  opset: int

  def node_names(self, op_types: Sequence[str]) -> list[str]:
    return [n.name for n in self.nodes if n.op_type in op_types]


def convert(
    model: onnx.ModelProto, *, input_name: str | None = None, output_name: str | None = None
) -> tuple[Graph, dict[str, np.ndarray]]:
  """Splits an ONNX model into a static :class:`Graph` and float32 parameters (constants folded).

  Args:
    model: the model (see :func:`~opomjax.models.onnx.reading.read_onnx`).
    input_name: the image input (default: the first graph input that is not an initialiser).
    output_name: the embedding output (default: the first graph output).

  Returns:
    ``(graph, params)``; ``params`` maps tensor names to float32 numpy arrays.
  """
  model = reading.read_onnx(model)
  g = model.graph
  opset = reading.opset_version(model)
  x_name = reading.find_value(g.input, input_name, "input").name
  y_name = reading.find_value(g.output, output_name, "output").name
  values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
  values[""] = None  # an omitted optional input
  runtime: list[reading.Node] = []
  dynamic = {x_name}
  for i, proto in enumerate(g.node):
    node = reading.node_from_proto(proto, i)
    if node.op_type not in operators.OPS:
      raise operators.unsupported_error(node)
    if any(name in dynamic for name in node.inputs):
      runtime.append(node)
      dynamic.update(node.outputs)
      continue
    outs = operators.run_node(node, [values[name] for name in node.inputs], opset, operators.Context())
    values.update(zip(node.outputs, outs))
  # What the remaining nodes read from the folded values: float tensors are parameters, others constants.
  static_slots = {(n.name, j) for n in runtime for j in operators.STATIC_SLOTS.get(n.op_type, ())}
  read_as_param = {name for n in runtime for j, name in enumerate(n.inputs)
                   if name and name not in dynamic and (n.name, j) not in static_slots}
  params, constants = {}, {}
  for n in runtime:
    for name in n.inputs:
      if not name or name in dynamic:
        continue
      value = np.asarray(values[name])
      if name in read_as_param and np.issubdtype(value.dtype, np.floating):
        params[name] = value.astype(np.float32)
      else:
        constants[name] = value
  if y_name not in dynamic:
    raise ValueError(f"output {y_name!r} does not depend on input {x_name!r}")
  return Graph(tuple(runtime), x_name, y_name, constants, opset), params


def run_graph(
    graph: Graph,
    params: dict[str, Any],
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    dropout_rate: float = 0.0,
    record: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the graph on the input tensor ``x`` (already in the graph's layout and scaling).

  Args:
    graph: from :func:`convert`.
    params: float parameters (a pytree with the names of :func:`convert`'s ``params``).
    x: the graph input.
    key: with ``dropout_rate > 0``, DFANet dropout on every Conv output (a fresh mask per Conv node).
    dropout_rate: drop probability.
    record: node names whose (first) output to return as well.

  Returns:
    ``(output, {node name: node output})``.
  """
  env: dict[str, Any] = dict(graph.constants)
  env.update(params)
  env[graph.input_name] = x
  env[""] = None
  ctx = operators.Context(key if dropout_rate > 0 else None, float(dropout_rate))
  recorded = {}
  wanted = set(record)
  for node in graph.nodes:
    try:
      outs = operators.run_node(node, [env[name] for name in node.inputs], graph.opset, ctx)
    except (TypeError, ValueError) as e:  # name the node in errors of shape or type
      raise type(e)(f"in ONNX node {node.name!r} ({node.op_type}): {e}") from e
    env.update(zip(node.outputs, outs))
    if node.name in wanted:
      recorded[node.name] = outs[0]
  return env[graph.output_name], recorded
