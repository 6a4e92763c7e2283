"""The mask of a person: their face in each photo, one mask from all of them, the mask added to each photo.

1. :func:`locate_faces` finds the person's face in every photo (:func:`choose_faces`: with several faces in a
   photo, the one most similar to the faces of the person's other photos, by default) and cuts a chip in the
   canonical frame out of it. A photo without a usable face is set aside and handed back unchanged.
2. :func:`protect_photos` computes one universal mask for the person from all the chips
   (:func:`opomjax.generate_masks`), on one surrogate model or on an ensemble of them
   (:mod:`opomjax.core.ensemble`), as the mask will look after it has been warped into each photo and cut out
   again (:mod:`opomjax.faces.roundtrip`).
3. :func:`opomjax.faces.apply_mask_to_photo` warps the mask back into each photo, inside the face's footprint
   only, in the photo's own layout (greyscale, alpha, 16 bits kept); every pixel outside it keeps its value.

:func:`apply_saved_mask` does step 3 (after step 1) with a mask computed before, on new photos.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import warnings
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import opomjax
from opomjax import faces as faces_lib
from opomjax.core import ascent
from opomjax.core import ensemble
from opomjax.core import transfer
from opomjax.faces import roundtrip as roundtrip_lib
from opomjax.frame import CANONICAL
from opomjax.models import base
from opomjax.models import dropout as dropout_lib
from opomjax.models import registry
from opomjax.protect import defaults

log = logging.getLogger(__name__)

#: Ascent steps of the default preset (:mod:`opomjax.protect.defaults`; the paper's are 16).
DEFAULT_STEPS = defaults.STEPS
DEFAULT_SURROGATES = defaults.SURROGATES

#: How the person's face is chosen in a photo with several (see :func:`choose_faces`).
FACE_RULES = ("similar", "largest", "central", "best")

#: Largest ``epsilon`` (0-255 units) accepted without ``allow_large_epsilon=True``.
MAX_EPSILON = float(getattr(ascent, "MAX_EPSILON", 32.0))

Surrogate = Union[str, base.FaceModel]


@dataclasses.dataclass(frozen=True)
class FaceChoice:
  """The face taken as the person's in one photo, and why.

  Attributes:
    face: the aligned face.
    index: its position among the photo's usable faces counted from the left (0-based).
    count: how many usable faces the photo has.
    rule: ``"only"`` (one face), ``"given"`` (asked for by index), or the rule of :data:`FACE_RULES` that chose it.
    is_largest: whether it is the photo's largest usable face.
    similarity: mean cosine similarity of the face to the faces chosen in the person's other photos (only for
      ``rule="similar"`` with several faces), and ``largest_similarity`` the same for the largest face.
  """

  face: faces_lib.AlignedFace
  index: int
  count: int
  rule: str
  is_largest: bool
  similarity: float | None = None
  largest_similarity: float | None = None

  def describe(self) -> str:
    """One line for a photo where the choice mattered (several faces), e.g. for the command line."""
    what = f"{self.count} faces; took face {self.index + 1} of {self.count} counted from the left"
    why = {"similar": "the one most similar to the person's other photos", "given": "as asked",
           "largest": "the largest", "central": "the one nearest the centre", "best": "the detector's best"}
    text = f"{what} ({why.get(self.rule, self.rule)}"
    if self.similarity is not None:
      text += f", cosine {self.similarity:.2f}"
      if not self.is_largest and self.largest_similarity is not None:
        text += f"; the largest face: {self.largest_similarity:.2f}"
    text += ")"
    if not self.is_largest:
      text += ", not the largest face"
    return text

  def to_dict(self) -> dict:
    return dict(faces=self.count, chosen=self.index + 1, rule=self.rule, largest=self.is_largest,
                similarity=self.similarity, largest_similarity=self.largest_similarity)


@dataclasses.dataclass(frozen=True)
class ProtectionResult:
  """What :func:`protect_photos` and :func:`apply_saved_mask` return.

  Attributes:
    photos: the protected photos in input order, each in its own layout (:attr:`opomjax.faces.Photo.pixels`:
      greyscale, alpha and 16 bits kept); a photo without a usable face comes back unchanged.
    mask: ``(H, W, 3)`` float32, the person's mask in the canonical frame, ``|mask| <= epsilon``.
    faces: per photo, the :class:`~opomjax.faces.AlignedFace` the mask was applied to, or None.
    skipped: index -> reason (``"no_face"`` or ``"too_small"``) of every photo left unchanged.
    trace: ``(steps,)`` the objective before each ascent step (it should grow); empty for a saved mask.
    metadata: the settings (method, epsilon, steps, surrogates, seed, ...), as stored with the mask.
    choices: per photo, the :class:`FaceChoice` (None where skipped).
    originals: the photos as read (:class:`opomjax.faces.Photo`), in input order.
  """

  photos: list[np.ndarray]
  mask: np.ndarray
  faces: list[faces_lib.AlignedFace | None]
  skipped: dict[int, str]
  trace: np.ndarray
  metadata: dict[str, Any]
  choices: list[FaceChoice | None] = dataclasses.field(default_factory=list)
  originals: list[faces_lib.Photo] = dataclasses.field(default_factory=list)

  @property
  def protected(self) -> list[int]:
    """Indices of the photos that carry the mask."""
    return [i for i, f in enumerate(self.faces) if f is not None]


# ---------------------------------------------------------------------------------------------------------------
# Models


def check_model_name(name: str, *, what: str = "surrogate", targets: bool = False) -> None:
  """ValueError unless ``name`` is a registered model (or target) name or the path of an existing ``.onnx`` file."""
  name = os.fspath(name)
  known = set(registry.available_models()) | (set(getattr(registry, "TARGET_BUILDERS", ())) if targets else set())
  if name in known:
    return
  if name.endswith(".onnx"):
    if not os.path.isfile(name):
      raise ValueError(f"{what} {name!r}: no such ONNX file")
    return
  raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(known))} (or the path of an .onnx file)")


def load_surrogates(surrogates: Sequence[Surrogate], dropout: float = 0.0, *,
                    allow_random_weights: bool = False) -> tuple[base.FaceModel, ...]:
  """Loads the surrogate models (registry names or :class:`~opomjax.models.base.FaceModel`), DFANet rate set.

  A registered architecture without real weights is refused unless ``allow_random_weights`` (see
  :func:`opomjax.load_model`).
  """
  if isinstance(surrogates, (str, os.PathLike, base.FaceModel)):
    surrogates = (surrogates,)
  if not surrogates:
    raise ValueError("surrogates is empty; name at least one model, e.g. ('dlib_resnet',)")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  models = []
  for s in surrogates:
    if isinstance(s, (str, os.PathLike)):
      check_model_name(s)
      s = opomjax.load_model(os.fspath(s), allow_random_weights=allow_random_weights)
    elif not isinstance(s, base.FaceModel):
      raise ValueError(f"surrogates must be model names or FaceModel instances, got {type(s).__name__}")
    models.append(dataclasses.replace(s, dropout_rate=float(dropout)) if s.dropout_rate != dropout else s)
  return tuple(models)


@functools.lru_cache(maxsize=8)
def _roundtrip_apply(model: base.FaceModel):
  """``model.apply`` behind the photo round trip (:func:`opomjax.faces.roundtrip.roundtrip_apply`; cached)."""
  return roundtrip_lib.roundtrip_apply(model.apply)


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: base.FaceModel):
  return jax.jit(model.apply)


def embed_chips(target, chips: np.ndarray, batch_size: int = 32) -> np.ndarray:
  """Unit embeddings ``(b, d)`` float64 of canonical chips ``(b, H, W, 3)`` by a model or a black-box target."""
  out = []
  for s in range(0, len(chips), batch_size):
    x = np.asarray(chips[s:s + batch_size], np.float32)
    if isinstance(target, base.FaceModel):
      out.append(np.asarray(_jitted_apply(target)(target.params, jnp.asarray(x))))
    else:
      out.append(np.asarray(target.embed(x)))
  return np.concatenate(out).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Photos and faces


def read_photos(photos) -> list[faces_lib.Photo]:
  """Every photo read (:func:`opomjax.faces.read_photo`); a ValueError naming the first unreadable one."""
  if isinstance(photos, (str, os.PathLike, np.ndarray, faces_lib.Photo)) and not (
      isinstance(photos, np.ndarray) and photos.ndim == 4):
    raise ValueError("photos must be a sequence of photos (paths or arrays), not a single photo")
  photos = list(photos)
  if not photos:
    raise ValueError("photos is empty; give at least one photo of the person")
  loaded = []
  for i, p in enumerate(photos):
    try:
      loaded.append(faces_lib.read_photo(p))
    except ValueError as e:
      raise ValueError(f"photos[{i}]: {e}") from e
  return loaded


def _left_to_right(found: Sequence[faces_lib.AlignedFace]) -> list[faces_lib.AlignedFace]:
  return sorted(found, key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))


def find_candidates(photos: Sequence, *, detector=None, min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE,
                    show_progress: bool = False, desc: str = "finding faces"
                    ) -> tuple[list[list[faces_lib.AlignedFace]], dict[int, str]]:
  """Every usable face of every photo, aligned to the canonical frame, ordered from the left.

  Returns:
    ``(candidates, skipped)``: per photo a list of :class:`~opomjax.faces.AlignedFace` (empty where none),
    and index -> reason (``"no_face"``, ``"too_small"``) for the empty ones.
  """
  found, skipped = [], {}
  for i, photo in enumerate(tqdm(photos, desc=desc, unit="photo", disable=not show_progress)):
    rgb = photo.rgb if isinstance(photo, faces_lib.Photo) else photo
    try:
      found.append(_left_to_right(faces_lib.align_photo(rgb, detector=detector, min_face_size=min_face_size,
                                                        select="all")))
    except faces_lib.NoFaceError as e:
      found.append([])
      skipped[i] = e.reason
  return found, skipped


def _rule_index(faces: Sequence[faces_lib.AlignedFace], rule: str, shape) -> int:
  if rule == "best":
    return int(np.argmax([f.score for f in faces]))
  if rule == "central":
    centre = (np.array([shape[1], shape[0]], np.float64) - 1) / 2
    return int(np.argmin([np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre) for f in faces]))
  areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
  return int(np.argmax(areas))


def choose_faces(candidates: Sequence[Sequence[faces_lib.AlignedFace]], rule: str = "similar", *,
                 embed: Callable[[np.ndarray], np.ndarray] | None = None,
                 given: Mapping[int, int] | None = None, shapes: Sequence[tuple[int, ...]] | None = None,
                 max_rounds: int = 10) -> list[FaceChoice | None]:
  """The person's face in each photo, from its usable faces (ordered from the left).

  ``rule="similar"``: the face most similar to the person's *other* photos. Photos with one face take it;
  every photo with several starts from its largest face, then, in rounds until nothing changes, takes the
  face whose mean cosine similarity (``embed``) to the faces currently chosen in the other photos is highest.
  With a single photo there is nothing to compare with and the largest face is taken. ``"largest"``,
  ``"central"`` (box centre nearest the photo's centre) and ``"best"`` (detector score) decide per photo.

  Args:
    candidates: per photo its usable faces, ordered from the left (:func:`find_candidates`).
    rule: one of :data:`FACE_RULES`.
    embed: chips ``(b, H, W, 3)`` -> unit embeddings ``(b, d)``; needed for ``"similar"``, called only when
      some photo has several faces.
    given: photo index -> face index counted from the left (0-based), overriding the rule for those photos.
    shapes: per photo its shape (for ``"central"``).
    max_rounds: bound on the rounds of ``"similar"``.

  Returns:
    Per photo a :class:`FaceChoice`, or None where it has no face.

  Raises:
    ValueError: an unknown rule, or a given index beyond a photo's faces.
  """
  if rule not in FACE_RULES:
    raise ValueError(f"face rule must be one of {', '.join(FACE_RULES)}; got {rule!r}")
  given = dict(given or {})
  n = len(candidates)
  for i, k in given.items():
    if not 0 <= i < n:
      raise ValueError(f"a face was asked for in photo {i}, but there are {n} photos")
    if candidates[i] and not 0 <= k < len(candidates[i]):
      raise ValueError(f"photo {i} has {len(candidates[i])} usable face(s); face {k + 1} (from the left) was asked for")
  largest = [(_rule_index(c, "largest", None) if c else -1) for c in candidates]
  chosen, rules = [], []
  for i, c in enumerate(candidates):
    if not c:
      chosen.append(-1)
      rules.append("")
    elif i in given:
      chosen.append(given[i])
      rules.append("given")
    elif len(c) == 1:
      chosen.append(0)
      rules.append("only")
    else:
      shape = shapes[i] if shapes is not None else (0, 0)
      chosen.append(_rule_index(c, "largest" if rule == "similar" else rule, shape))
      rules.append(rule)
  similarity: dict[int, tuple[float, float]] = {}
  open_photos = [i for i in range(n) if rules[i] == "similar"]
  if open_photos and sum(bool(c) for c in candidates) > 1:
    if embed is None:
      raise ValueError("face rule 'similar' needs an embed function to compare faces")
    emb = [np.asarray(embed(np.stack([f.chip for f in c])), np.float64) if c else None for c in candidates]
    for _ in range(max_rounds):
      changed = False
      for i in open_photos:
        others = np.stack([emb[j][chosen[j]] for j in range(n) if j != i and chosen[j] >= 0])
        scores = (emb[i] @ others.T).mean(axis=1)
        best = int(np.argmax(scores))
        similarity[i] = (float(scores[best]), float(scores[largest[i]]))
        if best != chosen[i]:
          chosen[i], changed = best, True
      if not changed:
        break
  out: list[FaceChoice | None] = []
  for i, c in enumerate(candidates):
    if not c:
      out.append(None)
      continue
    sims = similarity.get(i, (None, None))
    out.append(FaceChoice(face=c[chosen[i]], index=chosen[i], count=len(c), rule=rules[i],
                          is_largest=chosen[i] == largest[i], similarity=sims[0], largest_similarity=sims[1]))
  return out


def locate_faces(photos: Sequence[faces_lib.Photo], *, detector=None,
                 min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "similar",
                 face_index: Mapping[int, int] | None = None, embed: Callable[[np.ndarray], np.ndarray] | None = None,
                 show_progress: bool = False) -> tuple[list[FaceChoice | None], dict[int, str]]:
  """The person's face in each photo (:func:`find_candidates`, then :func:`choose_faces`), with warnings.

  A ``UserWarning`` lists the photos without a usable face, and one the photos where the face taken is not
  the largest.
  """
  candidates, skipped = find_candidates(photos, detector=detector, min_face_size=min_face_size,
                                        show_progress=show_progress)
  choices = choose_faces(candidates, select, embed=embed, given=face_index, shapes=[p.shape for p in photos])
  if skipped and len(skipped) < len(photos):
    warnings.warn(f"{len(skipped)} of {len(photos)} photos have no usable face and are returned unchanged: "
                  f"{dict(sorted(skipped.items()))}", UserWarning, stacklevel=3)
  not_largest = {i: c.describe() for i, c in enumerate(choices) if c is not None and not c.is_largest}
  if not_largest:
    warnings.warn(f"in {len(not_largest)} photo(s) the face taken is not the largest: {not_largest}", UserWarning,
                  stacklevel=3)
  return choices, skipped


def find_faces(photos: Sequence, *, detector=None, min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE,
               select: str = "largest", embed: Callable[[np.ndarray], np.ndarray] | None = None,
               show_progress: bool = False, desc: str = "finding faces"
               ) -> tuple[list[faces_lib.AlignedFace | None], dict[int, str]]:
  """One face per photo (``select``: see :func:`choose_faces`) aligned to the canonical frame.

  Returns:
    ``(faces, skipped)``: per photo an :class:`~opomjax.faces.AlignedFace` or None, and index -> reason
    (``"no_face"``, ``"too_small"``) for the Nones.
  """
  if select == "all":
    raise ValueError("select='all' is not supported here: the mask is for one person, one face per photo")
  photos = [faces_lib.read_photo(p) for p in photos]
  candidates, skipped = find_candidates(photos, detector=detector, min_face_size=min_face_size,
                                        show_progress=show_progress, desc=desc)
  choices = choose_faces(candidates, select, embed=embed, shapes=[p.shape for p in photos])
  return [None if c is None else c.face for c in choices], skipped


# ---------------------------------------------------------------------------------------------------------------
# The mask


def _as_key(key) -> tuple[jax.Array, Any]:
  """(PRNG key, seed for the metadata) from an int seed, a key, or None (seed 0)."""
  if key is None:
    key = 0
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key)), int(key)
  return key, "key"


def _number(value, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  value = float(value)
  if low is not None and (value < low or (low_open and value == low)):
    raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
  if high is not None and (value > high or (high_open and value == high)):
    raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}")
  return value


def check_epsilon(epsilon, *, allow_large_epsilon: bool = False, name: str = "epsilon") -> float:
  """``epsilon`` as a float; ValueError unless in (0, :data:`MAX_EPSILON`] (or larger when allowed)."""
  epsilon = _number(epsilon, name, low=0.0, low_open=True)
  if epsilon > MAX_EPSILON and not allow_large_epsilon:
    raise ValueError(f"{name}={epsilon:g} exceeds {MAX_EPSILON:g} (pixel units of [0, 255]; the paper uses 8) and "
                     "would visibly destroy the faces; allow it explicitly (allow_large_epsilon=True, "
                     "--allow_large_epsilon) if that is meant")
  return epsilon


def check_options(*, method: str = "opom-convex", epsilon: float = 8.0, steps: int = DEFAULT_STEPS,
                  step_size: float = 1.0, momentum: float | None = None, dropout: float = 0.0,
                  feather: float = 0.0, min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE,
                  select: str = "similar", surrogate_weights: Sequence[float] | None = None,
                  surrogate_count: int | None = None, allow_large_epsilon: bool = False, eot: Sequence[str] = (),
                  eot_samples: int = 4, ti_width: int = 1, di_probability: float = 0.0,
                  start_scale: float = 1.0, fill_budget: bool = False) -> None:
  """ValueError naming the first bad option of :func:`protect_photos`; pure Python, nothing is computed."""
  if method not in ascent.METHODS:
    raise ValueError(f"method must be one of {', '.join(ascent.METHODS)}; got {method!r}")
  check_epsilon(epsilon, allow_large_epsilon=allow_large_epsilon)
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")
  _number(step_size, "step_size", low=0.0, low_open=True)
  if momentum is not None:
    _number(momentum, "momentum", low=0.0)
  _number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
  _number(feather, "feather", low=0.0)
  _number(min_face_size, "min_face_size", low=0.0)
  if select not in FACE_RULES:
    raise ValueError(f"select (the face rule) must be one of {', '.join(FACE_RULES)}; got {select!r}")
  if surrogate_weights is not None:
    count = len(surrogate_weights) if surrogate_count is None else surrogate_count
    ensemble.check_weights(surrogate_weights, count)
  if eot:
    transfer.check_channels(eot)
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, (int, np.integer)) or eot_samples < 1:
      raise ValueError(f"eot_samples must be a positive integer, got {eot_samples!r}")
  if isinstance(ti_width, bool):
    raise ValueError(f"ti_width must be a positive odd integer (1: no smoothing), got {ti_width!r}")
  ascent.validate_transfer_options(ascent.AscentConfig(
      ti_width=ti_width, di_probability=_number(di_probability, "di_probability", low=0.0, high=1.0),
      start_scale=_number(start_scale, "start_scale", low=0.0, high=1.0), fill_budget=fill_budget))


def _chooser(model) -> Callable[[np.ndarray], np.ndarray]:
  """Chips -> unit embeddings by ``model`` (its DFANet dropout is off without a key)."""
  return lambda chips: embed_chips(model, chips)


def protect_photos(photos, *, surrogates: Sequence[Surrogate] = DEFAULT_SURROGATES, method: str = "opom-convex",
                   epsilon: float = 8.0, steps: int = DEFAULT_STEPS, step_size: float = 1.0,
                   momentum: float | None = None, dropout: float = 0.0, key=None, detector=None,
                   min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "similar",
                   face_index: Mapping[int, int] | None = None, feather: float = 0.0, roundtrip: bool = True,
                   surrogate_weights: Sequence[float] | None = None, allow_large_epsilon: bool = False,
                   allow_random_weights: bool = False, eot: Sequence[str] = (), eot_samples: int = 4,
                   ti_width: int = defaults.TI_WIDTH, di_probability: float = defaults.DI_PROBABILITY,
                   start_scale: float = defaults.START_SCALE, fill_budget: bool = defaults.FILL_BUDGET,
                   show_progress: bool = True) -> ProtectionResult:
  """Computes one privacy mask for a person from their photos and adds it to each of them.

  Args:
    photos: the person's photos: paths, files, arrays or :class:`opomjax.faces.Photo` (anything
      :func:`opomjax.faces.read_photo` takes). The more (and more varied) photos, the better the mask
      generalises to new ones.
    surrogates: the models the mask is computed on: registry names (``"dlib_resnet"``, ``"sface"``, ...) or
      :class:`~opomjax.models.base.FaceModel` instances (default: :data:`opomjax.protect.defaults.SURROGATES`,
      dlib's ResNet, SFace, faceres and mobileface). Several make an ensemble: each keeps its own
      features and objective, and every step follows the weighted sum of their gradients, each normalised
      to the same scale (:func:`opomjax.core.ensemble.combine_member_gradients`); an ensemble usually
      transfers better to unseen systems, and costs the sum of its members' steps.
    surrogate_weights: one weight per surrogate; None: equal.
    method: a method of :func:`opomjax.generate_masks` (default OPOM-ConvexHull).
    epsilon: the largest change of any pixel value, in [0, 255] units (paper: 8; at most
      :data:`MAX_EPSILON` unless ``allow_large_epsilon``).
    steps: ascent steps (default :data:`opomjax.protect.defaults.STEPS`, 50; paper: 16).
    step_size: change of each mask pixel per step (paper: 1).
    momentum: momentum decay (Eq. 14), or None.
    dropout: DFANet dropout rate (Eq. 15), the same for every surrogate; 0 turns DFANet off.
    key: an int seed or a PRNG key (default: seed 0); the same key gives the same mask.
    detector: face detector for :func:`opomjax.faces.detect_faces` (default: the shared YuNet).
    min_face_size: faces with a shorter box side (pixels) are not protected (flagged ``"too_small"``).
    select: which face of a photo with several is the person's (:func:`choose_faces`): ``"similar"`` (the one
      most like the person's other photos, by the first surrogate), ``"largest"``, ``"central"`` or ``"best"``.
    face_index: photo index -> the face to take, counted from the left (0-based), overriding ``select``.
    feather: width in photo pixels over which the mask fades out at the face region's border.
    roundtrip: optimise the mask as it will reach a recognition system: warped into each photo and cut out
      again (:mod:`opomjax.faces.roundtrip`), instead of as added to the aligned chips.
    allow_large_epsilon: accept ``epsilon`` above :data:`MAX_EPSILON`.
    allow_random_weights: accept surrogate names of architectures without real weights (random networks).
    eot: make the mask survive saving, re-encoding, resizing and smoothing: channels of
      :data:`opomjax.core.transfer.EOT_CHANNELS` (e.g. ``("none", "jpeg", "resize", "blur")``) the gradient is
      averaged over at every step; empty (default): off. Costs ``eot_samples`` times the ascent.
    eot_samples: random channel draws per step under ``eot``.
    ti_width: translation-invariant smoothing of each step's gradient (TI), the odd width of its Gaussian
      kernel (default 7); 1: off (:func:`opomjax.core.update_rules.translation_invariant`).
    di_probability: input diversity (DI): the probability that a step sees the masked faces randomly shrunk
      and shifted (default 0.5); 0: off (:func:`opomjax.core.transfer.input_diversity`).
    start_scale: the mask's random start ``U(-s epsilon, s epsilon)`` as the fraction ``s`` (default 0: the
      steps start from a zero mask; 1: the paper's start).
    fill_budget: after the last step, move every value of the mask to ``±epsilon`` in its own direction
      (:func:`opomjax.core.transfer.fill_budget`; default on).
    show_progress: progress bars and log lines.

  Returns:
    A :class:`ProtectionResult`. Photos without a usable face come back unchanged, listed in ``skipped``,
    with a ``UserWarning`` (another one lists the photos where the face taken is not the largest).

  Raises:
    ValueError: for bad arguments or an unreadable photo (the message names it).
    opomjax.faces.NoFaceError: when no photo has a usable face.
  """
  check_options(method=method, epsilon=epsilon, steps=steps, step_size=step_size, momentum=momentum,
                dropout=dropout, feather=feather, min_face_size=min_face_size, select=select,
                surrogate_weights=surrogate_weights, allow_large_epsilon=allow_large_epsilon,
                surrogate_count=len(surrogates) if not isinstance(surrogates, (str, base.FaceModel)) else 1,
                eot=tuple(eot), eot_samples=eot_samples, ti_width=ti_width, di_probability=di_probability,
                start_scale=start_scale, fill_budget=fill_budget)
  loaded = read_photos(photos)
  models = load_surrogates(surrogates, dropout, allow_random_weights=allow_random_weights)
  prng, seed = _as_key(key)
  if surrogate_weights is not None:
    surrogate_weights = tuple(float(w) for w in surrogate_weights)
    ensemble.check_weights(surrogate_weights, len(models))

  choices, skipped = locate_faces(loaded, detector=detector, min_face_size=min_face_size, select=select,
                                  face_index=face_index, embed=_chooser(models[0]), show_progress=show_progress)
  if len(skipped) == len(loaded):
    raise faces_lib.NoFaceError(f"none of the {len(loaded)} photos has a usable face (reasons: "
                                f"{sorted(set(skipped.values()))}); nothing to protect", reason="no_face")
  found = [None if c is None else c.face for c in choices]
  present = [i for i, f in enumerate(found) if f is not None]
  # bilinear sampling can overshoot [0, 255] by float rounding; the ascent wants the images inside it
  chips = np.clip(np.stack([found[i].chip for i in present]), 0.0, 255.0)[None]
  names = [m.name for m in models]
  if dropout > 0:
    dropout_lib.check_dropout_tolerance(models, jnp.asarray(chips[0], jnp.float32), float(dropout))
  if show_progress:
    log.info("computing the mask: %s, %d steps on %s from %d faces", method, steps, "+".join(names),
             chips.shape[1])
  start = time.time()
  model_params = tuple(m.params for m in models)
  if roundtrip:
    weights = roundtrip_lib.pad_weights([
        roundtrip_lib.roundtrip_weights(found[i].transform, loaded[i].shape, feather=feather,
                                        pixel_weights=loaded[i].alpha) for i in present])
    grey = np.array([loaded[i].is_grey for i in present])
    seen = (jnp.asarray(chips[0]), jnp.asarray(weights), jnp.asarray(grey))
    embed = tuple(_roundtrip_apply(m) for m in models)
    params = tuple((p,) + seen for p in model_params)
  else:
    embed, params = tuple(m.apply for m in models), model_params
  # One surrogate, or an ensemble in which each keeps its own objective (opomjax.core.ensemble).
  mask, trace = opomjax.generate_masks(
      embed, jnp.asarray(chips, jnp.float32), params=params, method=method, key=prng, epsilon=epsilon,
      step_size=step_size, steps=steps, momentum=momentum, dfanet=dropout > 0, return_trace=True,
      allow_large_epsilon=allow_large_epsilon, eot=tuple(eot), eot_samples=eot_samples,
      surrogate_weights=surrogate_weights, ti_width=int(ti_width), di_probability=float(di_probability),
      start_scale=float(start_scale), fill_budget=bool(fill_budget), progress=bool(show_progress))
  mask, trace = np.asarray(mask[0], np.float32), np.asarray(trace[0])
  if show_progress:
    log.info("mask computed in %.1f s", time.time() - start)

  metadata = dict(frame=CANONICAL.name, epsilon=float(epsilon), method=method, surrogate="+".join(names),
                  steps=int(steps), seed=seed, step_size=float(step_size), momentum=float(momentum or 0.0),
                  dropout=float(dropout), roundtrip=bool(roundtrip), feather=float(feather),
                  surrogate_weights=None if surrogate_weights is None else list(surrogate_weights),
                  faces=len(loaded) - len(skipped), eot=",".join(eot), eot_samples=int(eot_samples) if eot else 0,
                  ti_width=int(ti_width), di_probability=float(di_probability), start_scale=float(start_scale),
                  fill_budget=bool(fill_budget),
                  dfanet_clean_once=dropout > 0)  # generate_masks's default: DFANet's clean features taken once
  return ProtectionResult(photos=_apply(loaded, found, mask, metadata), mask=mask, faces=found, skipped=skipped,
                          trace=trace, metadata=metadata, choices=choices, originals=loaded)


def insertion_for(metadata: Mapping[str, Any]) -> str:
  """How a mask with this metadata goes into a photo (:func:`opomjax.faces.apply_mask_to_photo`'s ``insertion``):
  ``"sampled"`` for a mask optimised through the photo round trip (``roundtrip`` true: it was optimised as the
  sampled insertion delivers it), :data:`opomjax.faces.MASK_INSERTION` otherwise."""
  return "sampled" if metadata.get("roundtrip") else faces_lib.MASK_INSERTION


def _apply(photos: Sequence[faces_lib.Photo], found: Sequence[faces_lib.AlignedFace | None], mask: np.ndarray,
           metadata: Mapping[str, Any]) -> list[np.ndarray]:
  feather, insertion = float(metadata["feather"]), insertion_for(metadata)
  return [photo.pixels if face is None else
          faces_lib.apply_mask_to_photo(photo.pixels, mask, face.transform, frame=CANONICAL, feather=feather,
                                        insertion=insertion)
          for photo, face in zip(photos, found)]


def check_saved_mask(mask: np.ndarray, metadata: Mapping[str, Any], *, allow_large_epsilon: bool = False,
                     name: str = "mask") -> float:
  """ValueError naming ``name`` unless a saved mask fits this tool: canonical frame, shape, finite, within ε.

  Returns:
    The mask's epsilon.
  """
  frame = metadata.get("frame")
  if frame != CANONICAL.name:
    raise ValueError(f"{name} was made for frame {frame!r}, not the canonical frame {CANONICAL.name!r}")
  if np.shape(mask) != tuple(CANONICAL.size) + (3,):
    raise ValueError(f"{name} has shape {np.shape(mask)}, not {tuple(CANONICAL.size) + (3,)} of frame {frame!r}")
  if not np.all(np.isfinite(mask)):
    raise ValueError(f"{name} contains NaN or Inf values")
  try:
    epsilon = check_epsilon(metadata.get("epsilon"), allow_large_epsilon=allow_large_epsilon,
                            name=f"the epsilon of {name}")
  except ValueError as e:
    raise ValueError(f"{e}") from None
  largest = float(np.abs(mask).max())
  if largest > epsilon * (1 + 1e-5) + 1e-6:
    raise ValueError(f"{name} changes pixels by up to {largest:g}, more than its epsilon={epsilon:g}")
  return epsilon


def apply_saved_mask(photos, mask: np.ndarray, metadata: Mapping[str, Any] | None = None, *, detector=None,
                     min_face_size: float = faces_lib.DEFAULT_MIN_FACE_SIZE, select: str = "similar",
                     face_index: Mapping[int, int] | None = None, feather: float | None = None, chooser=None,
                     allow_large_epsilon: bool = False, show_progress: bool = False) -> ProtectionResult:
  """Adds a mask computed before (one mask per person) to new photos of the person, without recomputing it.

  Args:
    photos: the photos (anything :func:`opomjax.faces.read_photo` takes).
    mask: ``(H, W, 3)`` canonical-frame mask, e.g. from :func:`opomjax.files.load_mask`.
    metadata: its metadata (checked by :func:`check_saved_mask`; default: canonical frame, epsilon from the mask).
    detector, min_face_size, select, face_index: as in :func:`protect_photos`.
    feather: as in :func:`protect_photos`; default: the mask's own (``metadata["feather"]``, else 0).
    chooser: a model (or target) to compare faces with for ``select="similar"``; default: the mask's first
      surrogate, loaded only when a photo has several faces.
    allow_large_epsilon: accept a mask whose epsilon exceeds :data:`MAX_EPSILON`.
    show_progress: progress bars.

  Returns:
    A :class:`ProtectionResult` with an empty ``trace``.
  """
  mask = np.asarray(mask, np.float32)
  metadata = dict(metadata) if metadata is not None else dict(frame=CANONICAL.name,
                                                              epsilon=float(np.abs(mask).max()) or 1.0)
  check_saved_mask(mask, metadata, allow_large_epsilon=allow_large_epsilon)
  feather = float(metadata.get("feather", 0.0) if feather is None else feather)
  check_options(feather=feather, min_face_size=min_face_size, select=select, epsilon=metadata["epsilon"],
                allow_large_epsilon=allow_large_epsilon)
  loaded = read_photos(photos)

  @functools.cache
  def model():
    if chooser is not None:
      return chooser
    first = str(metadata.get("surrogate", "dlib_resnet")).split("+")[0]
    return opomjax.load_model(first)

  choices, skipped = locate_faces(loaded, detector=detector, min_face_size=min_face_size, select=select,
                                  face_index=face_index, embed=lambda chips: embed_chips(model(), chips),
                                  show_progress=show_progress)
  found = [None if c is None else c.face for c in choices]
  metadata.update(feather=feather, faces=len(loaded) - len(skipped))
  return ProtectionResult(photos=_apply(loaded, found, mask, metadata), mask=mask, faces=found, skipped=skipped,
                          trace=np.zeros((0,), np.float32), metadata=metadata, choices=choices, originals=loaded)
