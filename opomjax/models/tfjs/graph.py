"""A TensorFlow.js graph as a pure JAX function: pruning and constant folding at load, then a walk.

How the graph becomes a pure function:

* Only the nodes the chosen output (and any recorded node) depends on are kept, in topological order; an
  unsupported op among them is an error at load (:class:`~opomjax.models.tfjs.operators.UnsupportedOpError`).
* ``Const`` values are the decoded weights of the same name. Every node whose inputs are all constant is
  evaluated once at load (e.g. the ``Cast`` of a clipping bound).
* The floating-point constants the remaining nodes read are the parameters: a flat ``{node name: float32
  array}`` dict, separate from the graph, so ``jax.grad`` / ``jax.jit`` / ``jax.vmap`` work on the network
  function. Integer tensors and the inputs read as shapes, paddings or axes stay static numpy constants.

Example::

    from opomjax.models.tfjs import graph as graph_lib, reading
    graph, params = graph_lib.convert(reading.read_tfjs("model.json"), output_name="global_pooling/Mean")
    y, _ = jax.jit(lambda p, x: graph_lib.run_graph(graph, p, x))(params, x)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from opomjax.models.tfjs import operators
from opomjax.models.tfjs import reading


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """The static part of a TensorFlow.js graph after pruning and constant folding.

  Attributes:
    nodes: the nodes left to run, in topological order.
    input_name: the image placeholder.
    output_name: the output node.
    input_shape: the placeholder's declared shape (-1 for free dimensions).
    constants: static (non-differentiable) tensors: shapes, paddings, axes, integer constants.
  """

  nodes: tuple[reading.Node, ...]
  input_name: str
  output_name: str
  input_shape: tuple[int, ...]
  constants: dict[str, np.ndarray]

  def node_names(self, ops: Sequence[str]) -> list[str]:
    return [n.name for n in self.nodes if n.op in ops]


def _strip(name: str) -> str:
  parsed = reading.parse_input(name)
  return parsed[0] if parsed else name


def default_output(model: reading.TfjsModel) -> str:
  """The first output the json's signature declares, else the only node nothing reads."""
  outputs = model.signature.get("outputs") or {}
  for key, spec in outputs.items():
    return _strip(spec.get("name", key))
  read = {name for n in model.nodes for name, _ in n.inputs}
  sinks = [n.name for n in model.nodes if n.name not in read and n.op not in ("Const", "NoOp")]
  if len(sinks) != 1:
    raise ValueError(f"{model.path}: cannot tell the output node (candidates: {sinks}); pass output_name")
  return sinks[0]


def default_input(model: reading.TfjsModel) -> str:
  placeholders = model.placeholders()
  if not placeholders:
    raise ValueError(f"{model.path}: the graph has no Placeholder input")
  return placeholders[0].name


def topological_nodes(by_name: dict[str, reading.Node], targets: Sequence[str]) -> list[reading.Node]:
  """The nodes ``targets`` depend on (themselves included), inputs before their readers."""
  order: list[reading.Node] = []
  state: dict[str, int] = {}  # 1: on the stack, 2: done
  for target in targets:
    stack = [(target, False)]
    while stack:
      name, expanded = stack.pop()
      if expanded:
        state[name] = 2
        order.append(by_name[name])
        continue
      if state.get(name) == 2:
        continue
      if name not in by_name:
        raise ValueError(f"node {name!r} is read but not defined in the graph")
      if state.get(name) == 1:
        raise ValueError(f"the graph has a cycle through node {name!r}")
      state[name] = 1
      stack.append((name, True))
      for dep, _ in reversed(by_name[name].inputs):
        if state.get(dep) != 2:
          stack.append((dep, False))
  return order


def const_value(model: reading.TfjsModel, node: reading.Node) -> np.ndarray:
  if node.name in model.weights:
    return model.weights[node.name]
  inline = reading.inline_tensor(node.attrs.get("value", {})) if isinstance(node.attrs.get("value"), dict) else None
  if inline is None:
    raise reading.TfjsFormatError(f"{model.path}: Const node {node.name!r} has no value (no weight of that name "
                                  f"in the manifest)")
  return inline


def convert(
    model: reading.TfjsModel,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    keep: Sequence[str] = (),
) -> tuple[Graph, dict[str, np.ndarray]]:
  """Splits a graph model into a static :class:`Graph` and float32 parameters (constants folded).

  Args:
    model: from :func:`~opomjax.models.tfjs.reading.read_tfjs`.
    input_name: the image placeholder (default: the first ``Placeholder``).
    output_name: the output node (default: the signature's first output, else the graph's only sink).
    keep: further node names that must stay computable (e.g. activations to record).

  Returns:
    ``(graph, params)``; ``params`` maps node names to float32 numpy arrays.

  Raises:
    UnsupportedOpError: a node the output depends on has an op the interpreter does not implement.
    ValueError: unknown input / output names, or an output that does not depend on the input.
  """
  by_name = {n.name: n for n in model.nodes}
  x_name = _strip(input_name) if input_name else default_input(model)
  y_name = _strip(output_name) if output_name else default_output(model)
  for what, name in (("input_name", x_name), ("output_name", y_name)):
    if name not in by_name:
      raise ValueError(f"{what} {name!r} is not a node of {model.path}")
  if by_name[x_name].op != "Placeholder":
    raise ValueError(f"input_name {x_name!r} is a {by_name[x_name].op} node, not a Placeholder")
  needed = topological_nodes(by_name, [y_name, *keep])
  for node in needed:
    if node.op not in operators.OPS and node.op not in operators.GRAPH_OPS:
      raise operators.unsupported_error(node)
    for dep, index in node.inputs:
      if index != 0:
        raise operators.UnsupportedOpError(
            f"node {node.name!r} ({node.op}) reads output {index} of node {dep!r}; only first outputs are supported")
  values: dict[str, Any] = {}
  dynamic = {x_name}
  runtime: list[reading.Node] = []
  for node in needed:
    if node.op == "Placeholder":
      if node.name != x_name:
        raise ValueError(f"the output depends on a second input {node.name!r}; only one image input is supported")
      continue
    if node.op == "Const":
      values[node.name] = const_value(model, node)
      continue
    if node.op == "NoOp":
      continue
    if any(dep in dynamic for dep, _ in node.inputs):
      runtime.append(node)
      dynamic.add(node.name)
      continue
    out = operators.run_node(node, [values[dep] for dep, _ in node.inputs], operators.Context())
    values[node.name] = np.asarray(out)
  if y_name not in dynamic:
    raise ValueError(f"output {y_name!r} does not depend on input {x_name!r}")
  params, constants = {}, {}
  for node in runtime:
    static = operators.static_slots(node)
    for j, (dep, _) in enumerate(node.inputs):
      if dep in dynamic:
        continue
      value = np.asarray(values[dep])
      if j not in static and np.issubdtype(value.dtype, np.floating):
        params[dep] = value.astype(np.float32)
      else:
        constants[dep] = value
  shape = tuple(by_name[x_name].attrs.get("shape", ()))
  return Graph(tuple(runtime), x_name, y_name, shape, constants), params


def run_graph(
    graph: Graph,
    params: dict[str, Any],
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    dropout_rate: float = 0.0,
    record: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the graph on the input tensor ``x`` (already in the graph's input convention).

  Args:
    graph: from :func:`convert`.
    params: float parameters (a pytree with the names of :func:`convert`'s ``params``).
    x: the placeholder's value, NHWC.
    key: with ``dropout_rate > 0``, DFANet dropout on every convolution output (a fresh mask per node).
    dropout_rate: drop probability.
    record: node names whose outputs to return as well.

  Returns:
    ``(output, {node name: node output})``.
  """
  env: dict[str, Any] = dict(graph.constants)
  env.update(params)
  env[graph.input_name] = x
  ctx = operators.Context(key if dropout_rate > 0 else None, float(dropout_rate))
  for node in graph.nodes:
    try:
      env[node.name] = operators.run_node(node, [env[dep] for dep, _ in node.inputs], ctx)
    except (TypeError, ValueError) as e:  # name the node in errors of shape or type
      raise type(e)(f"in TensorFlow.js node {node.name!r} ({node.op}): {e}") from e
  return env[graph.output_name], {name: env[name] for name in record}
