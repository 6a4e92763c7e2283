"""ONNX face-embedding models as black-box targets, run by onnxruntime (no gradients).

A target has the same ``embed`` call shape as a surrogate (:class:`~opomjax.models.base.BlackBoxTarget`):
canonical-frame RGB images in [0, 255] -> unit embeddings. The ONNX file is never modified; fixes happen on
the in-memory copy:

* graph inputs that are really weights (some converters list initialisers as inputs, which onnxruntime then
  demands as feeds) are dropped by :func:`opomjax.models.onnx.reading.read_onnx`, the reader the JAX
  interpreter and the face detector use;
* a batch dimension fixed to 1 is renamed to a free one so that a whole batch runs at once; when the graph
  hard-codes batch 1 further in (a ``Reshape`` to ``[1, -1]``), the images run one at a time instead.

Example::

    from opomjax.models import onnx_target
    target = onnx_target.build_sface_target()           # the registered file, sha256-checked
    emb = target.embed(canonical_images)                # (b, 128) numpy, unit norm
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import checkpoints
from opomjax.models.onnx import reading


def _free_batch_dim(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
  """A copy whose input and outputs have a named (free) batch dimension instead of a fixed 1."""
  model_copy = onnx.ModelProto()
  model_copy.CopyFrom(model)
  graph = model_copy.graph
  for value in [v for v in graph.input if v.name == input_name] + list(graph.output):
    dims = value.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
      dims[0].dim_param = "batch"
  del graph.value_info[:]  # stale intermediate shapes with batch 1 would contradict the new input
  return model_copy


class OnnxEmbedder:
  """Callable ``images (b, h, w, 3) RGB [0, 255] float32 -> raw embeddings (b, d)`` through onnxruntime.

  Args:
    model: the (cleaned) ONNX model.
    spec: how images become the graph input.
    input_name: the image input.
    output_name: the embedding output.
    batch_size: images per onnxruntime call.
    providers: onnxruntime execution providers (default: CPU).
    num_threads: onnxruntime intra-op threads (default: onnxruntime's choice).
  """

  def __init__(self, model: onnx.ModelProto, spec: reading.InputSpec, *, input_name: str,
               output_name: str, batch_size: int = 64, providers: Sequence[str] | None = None,
               num_threads: int | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.spec = spec
    self.input_name = input_name
    self.output_name = output_name
    self.batch_size = batch_size
    self._options = ort.SessionOptions()
    self._options.log_severity_level = 4  # failures surface as exceptions
    if num_threads:
      self._options.intra_op_num_threads = int(num_threads)
    self._providers = list(providers or ["CPUExecutionProvider"])
    dims = reading.tensor_dims(next(v for v in model.graph.input if v.name == input_name))
    self.fixed_batch = bool(dims) and dims[0] == 1
    self._model = model
    self._session = self._make_session(_free_batch_dim(model, input_name) if self.fixed_batch else model)
    self._one_at_a_time = False

  def _make_session(self, model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), self._options, providers=self._providers)

  def _run(self, x: np.ndarray) -> np.ndarray:
    return self._session.run([self.output_name], {self.input_name: x})[0]

  def _run_batch(self, x: np.ndarray) -> np.ndarray:
    if self._one_at_a_time or x.shape[0] == 1:
      return np.concatenate([self._run(x[i:i + 1]) for i in range(x.shape[0])])
    try:
      return self._run(x)
    except Exception as e:  # pylint: disable=broad-except
      if not self.fixed_batch:
        raise
      logging.info("ONNX graph hard-codes batch 1 (%s); running images one at a time", str(e)[:200])
      self._one_at_a_time = True
      self._session = self._make_session(self._model)
      return self._run_batch(x)

  def __call__(self, images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape (b, h, w, 3), got {images.shape}")
    x = self.spec.apply(images, np)
    outs = [self._run_batch(np.ascontiguousarray(x[i:i + self.batch_size]))
            for i in range(0, x.shape[0], self.batch_size)]
    out = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
    return out.reshape(out.shape[0], -1).astype(np.float32)


def load_onnx_target(
    path: str | os.PathLike,
    *,
    input_frame: frame_lib.Frame = frame_lib.ARCFACE_112,
    channel_order: str = "RGB",
    pixel_scale: float = 1.0,
    pixel_offset: float | Sequence[float] = 0.0,
    layout: str | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    batch_size: int = 64,
    providers: Sequence[str] | None = None,
    num_threads: int | None = None,
    name: str | None = None,
) -> base.BlackBoxTarget:
  """An ONNX face-embedding model as a black-box target.

  Args:
    path: the ``.onnx`` file (read, never written).
    input_frame: the alignment the model expects; canonical images are resampled into it.
    channel_order: "RGB" or "BGR", what the graph expects.
    pixel_scale: the graph input is ``(x - pixel_offset) * pixel_scale`` for RGB ``x`` in [0, 255].
    pixel_offset: see ``pixel_scale``.
    layout: "NCHW" or "NHWC" (inferred from the declared input shape when None).
    input_name: the image input (default: the first real graph input).
    output_name: the embedding output (default: the first graph output).
    batch_size: images per onnxruntime call.
    providers: onnxruntime execution providers (default: ["CPUExecutionProvider"]).
    num_threads: onnxruntime intra-op threads.
    name: the target's name (default: the file stem).

  Returns:
    A :class:`~opomjax.models.base.BlackBoxTarget`.
  """
  model = reading.read_onnx(path)
  spec = reading.input_spec(model, layout, channel_order, pixel_scale, pixel_offset, input_name)
  in_name = reading.find_value(model.graph.input, input_name, "input").name
  out_name = reading.find_value(model.graph.output, output_name, "output").name
  embedder = OnnxEmbedder(model, spec, input_name=in_name, output_name=out_name, batch_size=batch_size,
                          providers=providers, num_threads=num_threads)
  h, w = input_frame.size
  probe = embedder(np.full((1, h, w, 3), 127.5, np.float32))
  return base.BlackBoxTarget(
      name=name or pathlib.Path(path).stem,
      embed_fn=embedder,
      input_frame=input_frame,
      embedding_size=int(probe.shape[-1]),
  )


def build_sface_target(weights: str | os.PathLike | None = None, **options) -> base.BlackBoxTarget:
  """SFace (OpenCV Zoo int8 file) through onnxruntime: RGB [0, 255], 112x112 ArcFace frame, 128-D.

  Args:
    weights: the ONNX file, used as given (default: the registered ``sface`` file, found by
      :func:`opomjax.models.checkpoints.resolve_file` and refused when its sha256 differs).
    **options: passed to :func:`load_onnx_target`.
  """
  path = pathlib.Path(weights) if weights is not None else checkpoints.resolve_file("sface")
  options.setdefault("name", "sface_onnx")
  return load_onnx_target(path, **options)
