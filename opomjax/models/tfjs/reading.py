"""Reading a TensorFlow.js graph model: ``model.json`` (graph + weights manifest) and its weight shards.

The format (``tensorflowjs_converter --output_format=tfjs_graph_model``):

* ``model.json`` holds ``modelTopology`` (a TensorFlow ``GraphDef`` as JSON: ``node`` entries with ``name``,
  ``op``, ``input`` and ``attr``), optionally a ``signature`` and a ``weightsManifest``: a list of groups, each
  with ``paths`` (binary shards, relative to the json) and ``weights`` (``name``, ``shape``, ``dtype`` and an
  optional ``quantization``).
* The shards of all groups, concatenated in manifest order, hold the weights one after the other. Every
  ``Const`` node's value is the weight of the same name.
* Quantised weights store ``quantization.dtype`` values: ``float16`` (decoded exactly to float32), or
  ``uint8`` / ``uint16`` codes ``q`` with affine metadata, value ``q * scale + min`` (computed in double
  precision and rounded to float32, as TensorFlow.js does; rounded to the nearest integer for int32 weights).

Example::

    from opomjax.models.tfjs import reading
    model = reading.read_tfjs("faceres.json")
    model.weights["feats/kernel"].shape        # (1024, 256) float32
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np

#: Bytes per stored value of each plain dtype.
DTYPE_SIZES = {"float32": 4, "int32": 4, "bool": 1, "uint8": 1, "uint16": 2, "float16": 2}

#: TensorFlow ``DataType`` enum names -> numpy dtypes (for inline ``Const`` tensors and attributes).
TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_BOOL": np.bool_,
             "DT_HALF": np.float16, "DT_DOUBLE": np.float64, "DT_UINT8": np.uint8}


class TfjsFormatError(ValueError):
  """A ``model.json`` or weight shard that is not a valid TensorFlow.js graph model."""


@dataclasses.dataclass(frozen=True)
class Node:
  """One ``GraphDef`` node.

  Attributes:
    name: the node name (its first output is ``name``, further ones ``name:1``, ...).
    op: the TensorFlow op type.
    inputs: data inputs as ``(node name, output index)``; control inputs (``^name``) are dropped.
    attrs: decoded attributes (strings as ``str``, lists as tuples, ints as ``int``).
  """

  name: str
  op: str
  inputs: tuple[tuple[str, int], ...]
  attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class TfjsModel:
  """A parsed graph model.

  Attributes:
    path: the ``model.json`` file.
    nodes: every node, in file order.
    weights: ``{name: numpy array}`` decoded from the shards (float32, int32 or bool).
    signature: the json's ``signature`` (inputs / outputs with their declared shapes), or ``{}``.
    metadata: ``format``, ``generatedBy``, ``convertedBy`` from the json.
  """

  path: pathlib.Path
  nodes: tuple[Node, ...]
  weights: dict[str, np.ndarray]
  signature: dict[str, Any]
  metadata: dict[str, Any]

  def node(self, name: str) -> Node:
    for n in self.nodes:
      if n.name == name:
        return n
    raise KeyError(name)

  def placeholders(self) -> list[Node]:
    return [n for n in self.nodes if n.op == "Placeholder"]


def parse_input(name: str) -> tuple[str, int] | None:
  """``"a/b:1"`` -> ``("a/b", 1)``, ``"a/b"`` -> ``("a/b", 0)``, a control input ``"^a"`` -> None."""
  if name.startswith("^"):
    return None
  base, sep, index = name.rpartition(":")
  if sep and index.isdigit():
    return base, int(index)
  return name, 0


def decode_attr(value: dict[str, Any]) -> Any:
  """One ``AttrValue`` in its protobuf-JSON form -> a Python value."""
  if "list" in value:
    lst = value["list"]
    for field in ("i", "f", "s", "b", "type"):
      if field in lst:
        return tuple(decode_attr({field: v}) for v in lst[field])
    return ()
  if "s" in value:
    return base64.b64decode(value["s"]).decode("utf-8", errors="replace")
  if "i" in value:
    return int(value["i"])
  if "f" in value:
    return float(value["f"])
  if "b" in value:
    return bool(value["b"])
  if "type" in value:
    return value["type"]
  if "shape" in value:
    return tuple(int(d.get("size", -1)) for d in value["shape"].get("dim", []))
  if "tensor" in value:
    return value["tensor"]
  return value


def node_from_json(entry: dict[str, Any]) -> Node:
  inputs = tuple(p for p in (parse_input(s) for s in entry.get("input", [])) if p is not None)
  attrs = {k: decode_attr(v) for k, v in entry.get("attr", {}).items()}
  return Node(entry["name"], entry["op"], inputs, attrs)


def inline_tensor(tensor: dict[str, Any]) -> np.ndarray | None:
  """A ``Const`` value stored in the json itself (``floatVal`` / ``intVal`` / ``tensorContent``), if any."""
  dtype = TF_DTYPES.get(tensor.get("dtype", "DT_FLOAT"))
  shape = tuple(int(d.get("size", 1)) for d in tensor.get("tensorShape", {}).get("dim", []))
  if dtype is None:
    return None
  if "tensorContent" in tensor:
    return np.frombuffer(base64.b64decode(tensor["tensorContent"]), dtype).reshape(shape).copy()
  for field in ("floatVal", "intVal", "int64Val", "boolVal", "halfVal", "doubleVal"):
    if field in tensor:
      vals = np.asarray([float(v) if dtype != np.bool_ else bool(v) for v in tensor[field]], dtype)
      size = int(np.prod(shape)) if shape else 1
      return np.broadcast_to(vals if vals.size == size else vals[-1:], (size,)).reshape(shape).copy()
  return None


def float16_to_float32(codes: np.ndarray) -> np.ndarray:
  """IEEE half-precision codes ``uint16`` -> float32 (exact)."""
  return np.asarray(codes, "<u2").view(np.float16).astype(np.float32)


def decode_weight(spec: dict[str, Any], data: bytes) -> tuple[np.ndarray, int]:
  """Decodes one manifest entry from the start of ``data``; returns ``(array, bytes consumed)``.

  Raises:
    TfjsFormatError: an unknown dtype / quantisation, missing metadata, or too few bytes.
  """
  name, dtype = spec["name"], spec.get("dtype", "float32")
  shape = tuple(int(s) for s in spec.get("shape", []))
  size = int(np.prod(shape)) if shape else 1
  quant = spec.get("quantization")
  stored = quant.get("dtype") if quant else dtype
  if stored not in DTYPE_SIZES:
    kind = "quantization dtype" if quant else "dtype"
    raise TfjsFormatError(f"weight {name!r}: unsupported {kind} {stored!r}; supported: "
                          f"{', '.join(['float32', 'int32', 'bool'] if not quant else ['uint8', 'uint16', 'float16'])}")
  nbytes = size * DTYPE_SIZES[stored]
  if len(data) < nbytes:
    raise TfjsFormatError(f"weight {name!r} needs {nbytes} bytes but the shards end after {len(data)}")
  raw = np.frombuffer(data[:nbytes], {"float32": "<f4", "int32": "<i4", "bool": "u1", "uint8": "u1",
                                      "uint16": "<u2", "float16": "<u2"}[stored])
  if not quant:
    if dtype not in ("float32", "int32", "bool"):
      raise TfjsFormatError(f"weight {name!r}: unsupported dtype {dtype!r}; supported: float32, int32, bool")
    values = raw.astype(np.bool_) if dtype == "bool" else raw.copy()
  elif stored == "float16":
    if dtype != "float32":
      raise TfjsFormatError(f"weight {name!r}: float16 quantisation needs dtype float32, got {dtype!r}")
    values = float16_to_float32(raw)
  elif stored in ("uint8", "uint16"):
    if "scale" not in quant or "min" not in quant:
      raise TfjsFormatError(f"weight {name!r}: {stored} quantisation needs 'min' and 'scale' metadata")
    affine = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
    if dtype == "float32":
      values = affine.astype(np.float32)
    elif dtype == "int32":
      values = np.floor(affine + 0.5).astype(np.int32)  # JavaScript Math.round
    else:
      raise TfjsFormatError(f"weight {name!r}: {stored} quantisation needs dtype float32 or int32, got {dtype!r}")
  else:
    raise TfjsFormatError(f"weight {name!r}: quantization dtype {stored!r} is not a quantised type; "
                          f"supported: uint8, uint16, float16")
  return values.reshape(shape), nbytes


def decode_weights(manifest: list[dict[str, Any]], data: bytes) -> dict[str, np.ndarray]:
  """All weights of a manifest from the concatenated shard bytes (every group's shards, in order)."""
  weights: dict[str, np.ndarray] = {}
  offset = 0
  for group in manifest:
    for spec in group.get("weights", []):
      weights[spec["name"]], used = decode_weight(spec, data[offset:])
      offset += used
  if offset != len(data):
    raise TfjsFormatError(f"the weight shards hold {len(data)} bytes but the manifest describes {offset}")
  return weights


def sha256_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def shard_paths(path: str | os.PathLike, manifest: list[dict[str, Any]]) -> list[pathlib.Path]:
  """The shard files a manifest names, relative to the ``model.json``'s folder."""
  folder = pathlib.Path(path).parent
  return [folder / p for group in manifest for p in group.get("paths", [])]


def read_tfjs(path: str | os.PathLike, *, shard_sha256: dict[str, str] | None = None) -> TfjsModel:
  """Reads a ``model.json`` and its weight shards.

  Args:
    path: the ``model.json`` (any file name).
    shard_sha256: optional ``{shard file name: sha256}``; a shard whose digest differs is refused.

  Raises:
    FileNotFoundError: the json or a shard it names is missing.
    TfjsFormatError: not a TensorFlow.js graph model, or weights that do not decode.
    opomjax.models.checkpoints.ChecksumError: a shard whose sha256 is not the expected one.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"TensorFlow.js model.json not found: {path}")
  try:
    doc = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise TfjsFormatError(f"{path} is not a TensorFlow.js model.json: {e}") from e
  topology = doc.get("modelTopology") if isinstance(doc, dict) else None
  if not isinstance(topology, dict) or "node" not in topology:
    fmt = doc.get("format") if isinstance(doc, dict) else None
    raise TfjsFormatError(f"{path} is not a TensorFlow.js graph model (format {fmt!r}; a 'modelTopology' with "
                          f"'node' entries is needed; layers models are not supported)")
  manifest = doc.get("weightsManifest", [])
  data = bytearray()
  for shard in shard_paths(path, manifest):
    if not shard.is_file():
      raise FileNotFoundError(f"weight shard {shard.name!r} named in {path} not found: {shard}")
    if shard_sha256 and shard.name in shard_sha256:
      digest = sha256_file(shard)
      if digest != shard_sha256[shard.name]:
        from opomjax.models import checkpoints  # pylint: disable=import-outside-toplevel

        raise checkpoints.ChecksumError(
            f"refusing {shard}: sha256 {digest} differs from the expected {shard_sha256[shard.name]}; the file "
            f"is corrupted, truncated or not the registered model")
    data += shard.read_bytes()
  weights = decode_weights(manifest, bytes(data))
  nodes = tuple(node_from_json(entry) for entry in topology["node"])
  metadata = {k: doc[k] for k in ("format", "generatedBy", "convertedBy") if k in doc}
  return TfjsModel(path, nodes, weights, doc.get("signature") or {}, metadata)
