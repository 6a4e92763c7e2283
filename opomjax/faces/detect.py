"""Face detection with YuNet (``face_detection_yunet_2023mar_int8bq.onnx``) through onnxruntime.

YuNet is an anchor-free detector with three heads at strides 8, 16 and 32. For every grid cell ``(r, c)`` of
stride ``s`` it predicts a class probability ``cls``, an objectness ``obj``, a box ``(dx, dy, log w, log h)``
and five landmark offsets. The decoding follows OpenCV's ``FaceDetectorYN``
(``modules/objdetect/src/face_detect.cpp``)::

  score = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))
  centre = ((c, r) + (dx, dy)) * s,   size = exp((log w, log h)) * s
  landmark_k = ((c, r) + offset_k) * s

followed by greedy non-maximum suppression (IoU threshold 0.3). The network is fully convolutional: the
published graph declares a fixed 1x3x640x640 input, but it runs on any height and width that are multiples of 32.
As in OpenCV, the photo is fed at its own resolution, zero-padded on the bottom and right up to the next
multiple of 32 (a 250x250 LFW photo becomes 256x256, about 4x cheaper than 640x640). Photos whose longer side
exceeds ``max_side`` are first downscaled (Pillow, antialiased) and the detections are mapped back. The input
is BGR in [0, 255] without normalisation (OpenCV's ``blobFromImage`` defaults). The published weights are
block-quantised int8; onnxruntime rejects some of their ``DequantizeLinear`` nodes, so the weights are
dequantised in numpy once, when the session is built (exactly ``(q - zero_point) * scale``), by the ONNX reader
the JAX interpreter uses (:func:`opomjax.models.onnx.reading.read_onnx`). The file is the registered ``yunet``
model, found and sha256-checked by :func:`opomjax.models.checkpoints.resolve_file`, unless a path is given.

Landmark order, as seen by the viewer: left eye, right eye, nose tip, left mouth corner, right mouth corner,
matching :data:`opomjax.frame.ARCFACE_112_LANDMARKS`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
from PIL import Image

from opomjax.models import checkpoints
from opomjax.models.onnx import reading

_STRIDES = (8, 16, 32)
_DIVISOR = 32


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
  """One detected face, in pixel coordinates of the photo it was found in.

  Attributes:
    box: ``(4,)`` float ``(x0, y0, x1, y1)``.
    score: detector confidence in [0, 1].
    landmarks: ``(5, 2)`` float (x, y): left eye, right eye, nose tip, left mouth corner, right mouth corner,
      left and right as seen by the viewer.
  """

  box: np.ndarray
  score: float
  landmarks: np.ndarray

  @property
  def width(self) -> float:
    return float(self.box[2] - self.box[0])

  @property
  def height(self) -> float:
    return float(self.box[3] - self.box[1])

  @property
  def size(self) -> float:
    """The shorter side of the box in pixels: the size compared against minimum face sizes."""
    return min(self.width, self.height)

  @property
  def area(self) -> float:
    return self.width * self.height


def default_yunet_path() -> pathlib.Path:
  """The registered YuNet file (registry name ``yunet``), found and sha256-checked by the one resolver.

  Raises:
    FileNotFoundError: no copy found; the message says where it looked and how to point at one.
    opomjax.models.checkpoints.ChecksumError: the file found is not the registered one.
  """
  return checkpoints.resolve_file("yunet")


def _load_yunet_graph(path: pathlib.Path) -> bytes:
  """Loads YuNet, dequantises its weights and frees its input height/width; returns the serialised model."""
  model = reading.read_onnx(path, dequantize=True)
  graph = model.graph
  dims = graph.input[0].type.tensor_type.shape.dim
  for d, name in zip(dims[2:], ("height", "width")):
    d.dim_param = name
  for out in graph.output:
    for d in out.type.tensor_type.shape.dim:
      d.dim_param = "n"
  del graph.value_info[:]
  return model.SerializeToString()


def _padded(n: int) -> int:
  """``n`` rounded up to a multiple of YuNet's largest stride."""
  return -(-n // _DIVISOR) * _DIVISOR


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy non-maximum suppression; returns the kept indices, highest score first.

  Args:
    boxes: ``(n, 4)`` ``(x0, y0, x1, y1)``.
    scores: ``(n,)``.
    iou_threshold: a box is dropped when its IoU with an already kept box exceeds this.
  """
  boxes = np.asarray(boxes, np.float64)
  order = np.argsort(-np.asarray(scores), kind="stable")
  areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    lo = np.maximum(boxes[i, :2], boxes[rest, :2])
    hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
    order = rest[iou <= iou_threshold]
  return np.asarray(keep, dtype=np.int64)


def decode_yunet(outputs: dict[str, np.ndarray], height: int, width: int, score_threshold: float):
  """Decodes YuNet's raw head outputs for a ``height`` x ``width`` (padded) input.

  Returns:
    ``(boxes (n, 4) x0 y0 x1 y1, scores (n,), landmarks (n, 5, 2))`` for the cells scoring at least
    ``score_threshold``, before non-maximum suppression.
  """
  boxes, scores, landmarks = [], [], []
  for stride in _STRIDES:
    rows, cols = height // stride, width // stride
    cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0, 1)
    obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0, 1)
    score = np.sqrt(cls * obj)
    idx = np.nonzero(score >= score_threshold)[0]
    if rows * cols != cls.size:
      raise ValueError(f"stride {stride}: expected {rows * cols} cells for a {height}x{width} input, got {cls.size}")
    cell = np.stack([idx % cols, idx // cols], axis=-1).astype(np.float64)
    bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[idx].astype(np.float64)
    kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[idx].astype(np.float64)
    centre = (cell + bbox[:, :2]) * stride
    size = np.exp(bbox[:, 2:]) * stride
    boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=-1))
    scores.append(score[idx].astype(np.float64))
    landmarks.append((kps + cell[:, None, :]) * stride)
  return np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks)


class YuNetDetector:
  """YuNet face detector on onnxruntime (CPU by default).

  Args:
    path: the ONNX file, used as given; defaults to the registered file (:func:`default_yunet_path`,
      sha256-checked).
    num_threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose (one per physical core).
    nms_threshold: IoU above which overlapping detections are suppressed (OpenCV's default 0.3).
    max_side: photos whose longer side exceeds this are downscaled to it before detection (``None``: never).
    providers: onnxruntime execution providers.

  Example:
    >>> detector = YuNetDetector()  # doctest: +SKIP
    >>> faces = detector(load_photo("photo.jpg"))  # doctest: +SKIP
  """

  def __init__(self, path=None, *, num_threads: int | None = None, nms_threshold: float = 0.3,
               max_side: int | None = 640, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top

    if max_side is not None and max_side < _DIVISOR:
      raise ValueError(f"max_side must be at least {_DIVISOR} or None; got {max_side}")
    if not 0 <= nms_threshold <= 1:
      raise ValueError(f"nms_threshold must lie in [0, 1]; got {nms_threshold}")
    path = pathlib.Path(path) if path is not None else default_yunet_path()
    if not path.is_file():
      raise FileNotFoundError(f"YuNet model not found at {path}; pass the path of an existing .onnx file")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads is not None:
      options.intra_op_num_threads = int(num_threads)
      options.inter_op_num_threads = 1
    self.path = path
    self.nms_threshold = float(nms_threshold)
    self.max_side = max_side
    self.session = ort.InferenceSession(_load_yunet_graph(path), options, providers=list(providers))
    self._input_name = self.session.get_inputs()[0].name
    self._output_names = [o.name for o in self.session.get_outputs()]

  def raw_outputs(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the network on a uint8 RGB image (padded to multiples of 32); returns the 12 head outputs."""
    h, w = image.shape[:2]
    blob = np.zeros((1, 3, _padded(h), _padded(w)), np.float32)
    blob[0, :, :h, :w] = image[..., ::-1].transpose(2, 0, 1)  # RGB -> BGR, HWC -> CHW
    return dict(zip(self._output_names, self.session.run(self._output_names, {self._input_name: blob})))

  def __call__(self, image: np.ndarray, score_threshold: float = 0.6) -> list[Detection]:
    """Detects faces in a ``(h, w, 3)`` uint8 RGB image; returns them sorted by score, best first."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"image must be (h, w, 3) uint8 RGB (see load_photo); got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    scale_xy = np.ones(2)
    if self.max_side is not None and max(h, w) > self.max_side:
      scale = self.max_side / max(h, w)
      size = (max(1, round(w * scale)), max(1, round(h * scale)))
      image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
      scale_xy = np.array([w / size[0], h / size[1]])
    boxes, scores, landmarks = decode_yunet(self.raw_outputs(image), _padded(image.shape[0]),
                                            _padded(image.shape[1]), score_threshold)

    def to_photo(points):  # resized pixel j covers [j, j + 1) * scale of the photo
      return (points + 0.5) * scale_xy - 0.5

    return [Detection(box=to_photo(boxes[i].reshape(2, 2)).reshape(4), score=float(scores[i]),
                      landmarks=to_photo(landmarks[i])) for i in nms(boxes, scores, self.nms_threshold)]


@functools.lru_cache(maxsize=1)
def default_detector() -> YuNetDetector:
  """A process-wide :class:`YuNetDetector` at the default path, built on first use."""
  return YuNetDetector()


def detect_faces(image, *, detector=None, score_threshold: float = 0.6, min_size: float = 0.0,
                 sort_by: str = "score") -> list[Detection]:
  """Detects the faces in a photo.

  Args:
    image: anything :func:`opomjax.faces.load_photo` accepts (path, file, array).
    detector: a callable ``(rgb uint8 image, score_threshold) -> list[Detection]``; defaults to a shared
      :class:`YuNetDetector`.
    score_threshold: minimum detector score in [0, 1].
    min_size: drop faces whose box is shorter than this many pixels on its shorter side.
    sort_by: ``"score"`` (best first) or ``"size"`` (largest box area first).

  Returns:
    The detections, possibly empty.
  """
  from opomjax.faces.io import load_photo  # pylint: disable=g-import-not-at-top

  if not 0 <= score_threshold <= 1:
    raise ValueError(f"score_threshold must lie in [0, 1]; got {score_threshold}")
  if sort_by not in ("score", "size"):
    raise ValueError(f"sort_by must be 'score' or 'size'; got {sort_by!r}")
  detector = default_detector() if detector is None else detector
  faces = [f for f in detector(load_photo(image), score_threshold) if f.size >= min_size]
  key = (lambda f: -f.score) if sort_by == "score" else (lambda f: -f.area)
  return sorted(faces, key=key)
