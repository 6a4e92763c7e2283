"""Reads dlib's DNN serialization (``.dat`` network files) in pure Python, without dlib.

dlib writes a network recursively: every ``add_layer`` writes its version, then its whole sub-network, then its
own layer details, so the file holds the version words of all wrappers from the output layer down to the
input first, then the input layer, then the layer details from the input layer back up to the output.
``add_tag_layer`` / ``add_skip_layer`` write only a version (1) and their sub-network; their tag ids are not
stored, so :func:`read_network` returns the stack of layer kinds and the caller matches it against the
architecture it expects.

Primitive encodings (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h):

* integers: one control byte (low nibble = number of little-endian value bytes, bit 7 = negative), then the
  bytes;
* floats and doubles: the integer pair (mantissa, exponent), value = mantissa * 2**exponent, with exponents
  32000 / 32001 / 32002 meaning +inf / -inf / NaN;
* strings: length (integer) then the bytes; booleans: the character ``'1'`` or ``'0'``;
* tensors: version, then (num_samples, k, nr, nc), then the values, as raw little-endian float32 (version 2)
  or as dlib floats (version 1); ``alias_tensor``: version 1 then its four dimensions.

Example:
  >>> from opomjax.models import checkpoints
  >>> net = read_network(checkpoints.resolve_file("dlib_resnet"))  # doctest: +SKIP
  >>> [layer.kind for layer in net.layers][:4]  # doctest: +SKIP
  ['con', 'affine', 'relu', 'max_pool']
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

_INF, _NINF, _NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
  """The bytes are not a dlib network of a kind this reader understands."""


@dataclasses.dataclass
class DlibLayer:
  """One layer of a dlib network.

  Attributes:
    kind: ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``, ``tag_or_skip``.
    attrs: the layer's hyper-parameters (filter size, strides, paddings, ...).
    arrays: its parameters as numpy float32 arrays (``weight``/``bias`` or ``gamma``/``beta``).
  """

  kind: str
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DlibNetwork:
  """A parsed network: loss and input details, and the layers from the input up to the output."""

  loss: dict[str, Any]
  input: dict[str, Any]
  layers: list[DlibLayer]

  def num_parameters(self) -> int:
    return sum(int(a.size) for layer in self.layers for a in layer.arrays.values())


class _Reader:
  """Sequential decoder of dlib's primitive encodings."""

  def __init__(self, data: bytes):
    self.data = data
    self.pos = 0

  def _take(self, n: int) -> bytes:
    if self.pos + n > len(self.data):
      raise DlibFormatError(f"unexpected end of data at byte {self.pos} (wanted {n} more)")
    chunk = self.data[self.pos:self.pos + n]
    self.pos += n
    return chunk

  def peek_byte(self) -> int:
    if self.pos >= len(self.data):
      raise DlibFormatError(f"unexpected end of data at byte {self.pos}")
    return self.data[self.pos]

  def int(self) -> int:
    control = self._take(1)[0]
    size = control & 0x0F
    if control & 0x70 or size > 8:
      raise DlibFormatError(f"bad integer control byte {control:#04x} at byte {self.pos - 1}")
    value = int.from_bytes(self._take(size), "little") if size else 0
    return -value if control & 0x80 else value

  def float(self) -> float:
    mantissa = self.int()
    exponent = self.int()
    if exponent == _INF:
      return float("inf")
    if exponent == _NINF:
      return float("-inf")
    if exponent == _NAN:
      return float("nan")
    return float(np.ldexp(np.float64(mantissa), exponent))

  def string(self) -> str:
    return self._take(self.int()).decode("latin-1")

  def bool(self) -> bool:
    ch = self._take(1)
    if ch not in (b"0", b"1"):
      raise DlibFormatError(f"bad boolean {ch!r} at byte {self.pos - 1}")
    return ch == b"1"

  def tensor(self) -> np.ndarray:
    version = self.int()
    shape = tuple(self.int() for _ in range(4))
    count = int(np.prod(shape))
    if version == 2:
      values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
    elif version == 1:
      values = np.array([self.float() for _ in range(count)], np.float32)
    else:
      raise DlibFormatError(f"unknown tensor version {version} at byte {self.pos}")
    return values.reshape(shape)

  def alias_tensor(self) -> tuple[int, ...]:
    version = self.int()
    if version != 1:
      raise DlibFormatError(f"unknown alias_tensor version {version} at byte {self.pos}")
    return tuple(self.int() for _ in range(4))


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
  flat = params.reshape(-1)
  sizes = [int(np.prod(s)) for s in shapes]
  if sum(sizes) != flat.size:
    raise DlibFormatError(f"parameter tensor of size {flat.size} does not split into {shapes}")
  out, start = [], 0
  for shape, size in zip(shapes, sizes):
    out.append(flat[start:start + size].reshape(shape).copy())
    start += size
  return out


def _read_con(r: _Reader, version: str) -> DlibLayer:
  if version != "con_4":
    raise DlibFormatError(f"unsupported convolution version {version!r}")
  params = r.tensor()
  attrs = {k: r.int() for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
  filters, biases = r.alias_tensor(), r.alias_tensor()
  for _ in range(4):  # learning-rate and weight-decay multipliers (training only)
    r.float()
  weight, bias = _split(params, filters, (biases[1],))
  return DlibLayer("con", attrs, {"weight": weight, "bias": bias})


def _read_affine(r: _Reader, version: str) -> DlibLayer:
  if version != "affine_":
    raise DlibFormatError(f"unsupported affine version {version!r}")
  params = r.tensor()
  gamma, beta = r.alias_tensor(), r.alias_tensor()
  mode = r.int()  # 0 = per channel (CONV_MODE), 1 = per element (FC_MODE)
  g, b = _split(params, gamma, beta)
  return DlibLayer("affine", {"mode": mode}, {"gamma": g.reshape(-1), "beta": b.reshape(-1)})


def _read_pool(kind: str):
  def read(r: _Reader, version: str) -> DlibLayer:
    if version != f"{kind}_2":
      raise DlibFormatError(f"unsupported {kind} version {version!r}")
    attrs = {k: r.int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
    return DlibLayer(kind, attrs)
  return read


def _read_fc(r: _Reader, version: str) -> DlibLayer:
  if version != "fc_2":
    raise DlibFormatError(f"unsupported fc version {version!r}")
  num_outputs, num_inputs = r.int(), r.int()
  params = r.tensor()
  weights, biases = r.alias_tensor(), r.alias_tensor()
  has_bias = r.int() == 0  # enum fc_bias_mode {FC_HAS_BIAS = 0, FC_NO_BIAS = 1}
  for _ in range(4):  # learning-rate and weight-decay multipliers (training only)
    r.float()
  shapes = [weights[:2]] + ([(biases[1],)] if has_bias else [])
  arrays = dict(zip(("weight", "bias"), _split(params, *shapes)))  # weight: (num_inputs, num_outputs)
  return DlibLayer("fc", {"num_outputs": num_outputs, "num_inputs": num_inputs, "has_bias": has_bias}, arrays)


def _read_plain(kind: str):
  def read(r: _Reader, version: str) -> DlibLayer:
    del r, version
    return DlibLayer(kind)
  return read


_LAYER_READERS = {
    "con_": _read_con,
    "affine_": _read_affine,
    "max_pool_": _read_pool("max_pool"),
    "avg_pool_": _read_pool("avg_pool"),
    "fc_": _read_fc,
    "relu_": _read_plain("relu"),
    "add_prev_": _read_plain("add_prev"),
}


def _read_layer_details(r: _Reader) -> DlibLayer:
  version = r.string()
  for prefix, reader in _LAYER_READERS.items():
    if version.startswith(prefix):
      return reader(r, version)
  raise DlibFormatError(f"unsupported dlib layer {version!r} at byte {r.pos}")


def _read_input(r: _Reader) -> dict[str, Any]:
  version = r.string()
  if version != "input_rgb_image_sized":
    raise DlibFormatError(f"unsupported dlib input layer {version!r}")
  mean = tuple(r.float() for _ in range(3))
  return {"kind": version, "mean_rgb": mean, "nr": r.int(), "nc": r.int()}


def _read_loss(r: _Reader) -> dict[str, Any]:
  version = r.int()
  if version != 1:
    raise DlibFormatError(f"unknown add_loss_layer version {version}")
  name = r.string()
  if name != "loss_metric_2":
    raise DlibFormatError(f"unsupported dlib loss layer {name!r}")
  return {"kind": name, "margin": r.float(), "distance_threshold": r.float()}


def parse_network(data: bytes) -> DlibNetwork:
  """Parses the bytes of a dlib ``loss_metric`` network over an ``input_rgb_image_sized`` input.

  Args:
    data: the whole file's bytes.

  Returns:
    The loss and input details and the layers ordered from the input to the output.

  Raises:
    DlibFormatError: for bytes that are not such a network or contain layer types not handled here.
  """
  r = _Reader(data)
  loss = _read_loss(r)
  # Version words of the wrappers, outermost first, until the input layer's name (a string) starts. A
  # string length is never a wrapper version (1, 2 or 3), which tells them apart.
  wrappers = []
  while True:
    start = r.pos
    value = r.int()
    if value > 3:
      r.pos = start
      break
    wrappers.append(value)
  if not wrappers:
    raise DlibFormatError("no layers found")
  input_details = _read_input(r)
  layers = []
  for depth, version in enumerate(reversed(wrappers)):
    if depth > 0 and version == 1:
      layers.append(DlibLayer("tag_or_skip"))
      continue
    layer = _read_layer_details(r)
    r.bool()  # this_layer_setup_called
    r.bool()  # gradient_input_is_stale
    r.bool()  # get_output_and_gradient_input_disabled
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if depth == 0:  # the layer sitting on the input layer
      r.tensor()  # grad_final
      if version >= 3:
        r.int()  # sample expansion factor
    elif version == 2:
      r.tensor()  # params_grad
    layers.append(layer)
  if r.pos != len(data):
    raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the network")
  return DlibNetwork(loss, input_details, layers)


def read_network(path: str | os.PathLike) -> DlibNetwork:
  """Parses a dlib network file (see :func:`parse_network`)."""
  return parse_network(pathlib.Path(path).read_bytes())
