"""The 1:N identification protocol that measures privacy protection (paper Sec. 4.1.1).

Every identity has ``M`` test images, seen twice: masked (the photos the person publishes) and clean (the
photos a face-recognition system already holds of them). For every identity and every ordered pair of its
images ``i != j`` the masked image ``i`` is the probe, and the gallery is the clean image ``j`` (the genuine
mate) together with ``D`` distractor faces of other people. The gallery is ranked by cosine similarity to the
probe; the probe is *identified at rank k* when its genuine mate is among the ``k`` most similar gallery
entries. With ``K`` identities there are ``K * M * (M - 1)`` such searches and

.. math::

   \\mathrm{PSR}@k = 1 - \\frac{\\#\\{\\text{searches identified at rank } k\\}}{K M (M - 1)}.

The rank of the genuine mate is the number of distractors at least as similar as it is,

.. math::

   r_{kij} = \\#\\{\\, t : \\langle \\hat p_{ki}, \\hat g_t \\rangle \\ge \\langle \\hat p_{ki}, \\hat c_{kj} \\rangle \\,\\},
   \\qquad \\text{identified at rank } k \\iff r_{kij} < k,

so a distractor exactly as similar as the genuine mate is ranked ahead of it (``ties="distractor_first"``,
the default). The official evaluation script puts the genuine mate first in the gallery and leaves exact ties to
its sort; ``ties="genuine_first"`` reproduces a stable sort, which ranks the genuine mate ahead of equal
distractors. Ties only matter for features that coincide bit for bit.

All similarities of one probe to the distractors are shared by its ``M - 1`` searches, and only the ``k``
largest of them can decide a rank-``k`` result: ``r < k`` holds exactly when the genuine similarity exceeds the
``k``-th largest distractor similarity. The kernel therefore computes, chunk by chunk of probes, the
``max(ks)`` largest distractor similarities of every probe (one matrix product and one ``top_k``), and compares
all genuine similarities against them; memory is bounded by ``chunk_size * D`` similarities at a time.

Example:

  >>> import numpy as np
  >>> from opomjax.core import evaluation
  >>> rng = np.random.default_rng(0)
  >>> centres = rng.normal(size=(3, 1, 16))
  >>> clean = centres + 0.1 * rng.normal(size=(3, 4, 16))  # 3 people, 4 photos each
  >>> distractors = rng.normal(size=(50, 16))
  >>> evaluation.identification_rate(clean, clean, distractors, ks=(1, 5))  # unprotected
  {1: 1.0, 5: 1.0}
  >>> evaluation.protection_success_rate(-clean, clean, distractors, ks=(1, 5))  # features sent far away
  {1: 1.0, 5: 1.0}
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Exact ties between a distractor and the genuine mate: ranked ahead of it, or behind it.
TIES = ("distractor_first", "genuine_first")

#: Default budget for the probe-by-distractor similarities held at once (bytes, float32).
DEFAULT_CHUNK_BYTES = 64 * 2**20

_HIGHEST = jax.lax.Precision.HIGHEST


def unit_features(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Scales features ``(..., d)`` to unit L2 norm, so that dot products are cosine similarities."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def genuine_similarities(masked: jax.Array, clean: jax.Array) -> jax.Array:
  """Cosine similarity of each masked image to each clean image of the same identity.

  Args:
    masked: unit features ``(K, M, d)``.
    clean: unit features ``(K, M, d)``.

  Returns:
    ``(K, M, M)``: entry ``[k, i, j]`` is ``<masked[k, i], clean[k, j]>``.
  """
  return jnp.einsum("kid,kjd->kij", masked, clean, precision=_HIGHEST)


def largest_distractor_similarities(
    probes: jax.Array, distractors: jax.Array, k_max: int, chunk_size: int
) -> jax.Array:
  """The ``k_max`` largest cosine similarities of every probe to the distractors, in descending order.

  Probes are processed in equal chunks of at most ``chunk_size`` (``lax.map``; the last chunk is padded),
  so at most ``chunk_size * D`` similarities exist at once. Where ``k_max > D`` the missing entries are
  ``-inf`` (no distractor can outrank there).

  Args:
    probes: unit features ``(P, d)``.
    distractors: unit features ``(D, d)``.
    k_max: how many of the largest similarities to keep.
    chunk_size: most probes per chunk.

  Returns:
    ``(P, k_max)`` similarities, each row non-increasing.
  """
  num_probes, dim = probes.shape
  k_kept = min(k_max, distractors.shape[0])
  num_chunks = -(-num_probes // chunk_size)
  per_chunk = -(-num_probes // num_chunks)
  padded = jnp.pad(probes, ((0, num_chunks * per_chunk - num_probes), (0, 0)))

  def one_chunk(chunk):
    similarities = jnp.dot(chunk, distractors.T, precision=_HIGHEST)
    return jax.lax.top_k(similarities, k_kept)[0]

  largest = jax.lax.map(one_chunk, padded.reshape(num_chunks, per_chunk, dim))
  largest = largest.reshape(num_chunks * per_chunk, k_kept)[:num_probes]
  if k_kept < k_max:
    largest = jnp.pad(largest, ((0, 0), (0, k_max - k_kept)), constant_values=-jnp.inf)
  return largest


@functools.partial(jax.jit, static_argnames=("ks", "chunk_size", "ties"))
def identification_hits(
    probes: jax.Array,
    clean: jax.Array,
    distractors: jax.Array,
    ks: tuple[int, ...],
    chunk_size: int,
    ties: str = "distractor_first",
) -> jax.Array:
  """Counts, per identity, the searches whose genuine mate is found within the top ``k`` (pure, jitted).

  Args:
    probes: probe features ``(K, M, d)`` (masked images; clean ones for the unprotected baseline).
    clean: clean gallery features ``(K, M, d)``, same image order as ``probes``.
    distractors: distractor features ``(D, d)``.
    ks: ranks to evaluate, each in ``1 .. D + 1``.
    chunk_size: probes per chunk of the distractor search.
    ties: one of :data:`TIES`.

  Returns:
    int32 ``(K, len(ks))``: hits of identity ``k`` at rank ``ks[n]``, out of ``M * (M - 1)`` searches.
  """
  num_ids, num_images, dim = probes.shape
  probes = unit_features(probes)
  clean = unit_features(clean)
  distractors = unit_features(distractors)
  largest = largest_distractor_similarities(probes.reshape(-1, dim), distractors, max(ks), chunk_size)
  largest = largest.reshape(num_ids, num_images, -1)
  genuine = genuine_similarities(probes, clean)
  other_image = ~jnp.eye(num_images, dtype=bool)
  counts = []
  for k in ks:
    kth = largest[:, :, k - 1, None]
    found = genuine > kth if ties == "distractor_first" else genuine >= kth
    counts.append(jnp.sum(found & other_image, axis=(1, 2), dtype=jnp.int32))
  return jnp.stack(counts, axis=-1)


def _as_features(x, name: str, ndim: int) -> jax.Array:
  """``x`` as float32 with ``ndim`` axes, or a ValueError naming ``name``."""
  try:
    x = jnp.asarray(x, jnp.float32)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{name} must be a numeric array of features, got {type(x).__name__}: {err}") from None
  if x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} axes, got shape {x.shape}")
  if x.shape[-1] < 1:
    raise ValueError(f"{name} must have a feature axis of size d >= 1, got shape {x.shape}")
  return x


def check_finite(x: jax.Array, name: str) -> None:
  """ValueError naming ``name``, the count and the first position of its NaN/Inf entries, if any.

  One reduction on ``x``'s device; the positions are only looked for when something is wrong.
  """
  if bool(jnp.all(jnp.isfinite(x))):
    return
  bad = ~np.isfinite(np.asarray(x))
  first = tuple(int(i) for i in np.argwhere(bad)[0])
  raise ValueError(f"{name} contains non-finite values: {int(bad.sum())} NaN or Inf of {bad.size}, the first "
                   f"at index {first}; features of NaN images or of a diverged model cannot be evaluated")


def _check_inputs(probes, clean, distractors, ks, chunk_size, ties, probe_name):
  """Validates and converts the arguments of :func:`identification_rate` (``probes`` called ``probe_name``)."""
  probes = _as_features(probes, probe_name, 3)
  clean = _as_features(clean, "clean", 3)
  distractors = _as_features(distractors, "distractors", 2)
  if probes.shape != clean.shape:
    raise ValueError(f"{probe_name} {probes.shape} and clean {clean.shape} must have the same shape (K, M, d)")
  num_ids, num_images, dim = probes.shape
  if num_ids < 1:
    raise ValueError(f"{probe_name} must hold at least one identity")
  if num_images < 2:
    raise ValueError(f"{probe_name} needs M >= 2 test images per identity, got M={num_images}")
  if distractors.shape[0] < 1:
    raise ValueError("distractors must hold at least one feature")
  if distractors.shape[1] != dim:
    raise ValueError(f"distractors have d={distractors.shape[1]}, {probe_name} and clean have d={dim}")
  ks = tuple(ks)
  if not ks:
    raise ValueError("ks must name at least one rank")
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= distractors.shape[0] + 1:
      raise ValueError(f"ks must be integers in 1..D+1={distractors.shape[0] + 1}, got {k!r}")
  ks = tuple(int(k) for k in ks)
  if chunk_size is None:
    chunk_size = max(1, DEFAULT_CHUNK_BYTES // (4 * distractors.shape[0]))
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
  for name, x in ((probe_name, probes), ("clean", clean), ("distractors", distractors)):
    check_finite(x, name)
  return probes, clean, distractors, ks, int(chunk_size), ties


def _identification_rate(probes, clean, distractors, ks, chunk_size, ties, probe_name) -> dict[int, float]:
  probes, clean, distractors, ks, chunk_size, ties = _check_inputs(
      probes, clean, distractors, ks, chunk_size, ties, probe_name
  )
  num_ids, num_images, _ = probes.shape
  hits = np.asarray(identification_hits(probes, clean, distractors, ks, chunk_size, ties), np.int64).sum(0)
  searches = num_ids * num_images * (num_images - 1)
  return {k: float(h) / searches for k, h in zip(ks, hits)}


def identification_rate(
    probes,
    clean,
    distractors,
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int | None = None,
    ties: str = "distractor_first",
) -> dict[int, float]:
  """Rank-``k`` identification rate of the 1:N protocol (Sec. 4.1.1); ``probes = clean`` gives the baseline.

  Args:
    probes: probe features ``(K, M, d)``, numpy or jax, any norm (normalised inside).
    clean: clean gallery features ``(K, M, d)`` in the same image order.
    distractors: distractor features ``(D, d)``.
    ks: ranks, positive integers ``<= D + 1``.
    chunk_size: probes per chunk of the distractor search; ``None`` keeps about
      :data:`DEFAULT_CHUNK_BYTES` of similarities at a time.
    ties: where a distractor exactly as similar as the genuine mate ranks (:data:`TIES`).

  Returns:
    ``{k: fraction of the K * M * (M - 1) searches whose genuine mate is within the top k}``.

  Raises:
    ValueError: for shapes that do not match, ``M < 2``, bad ``ks``, ``chunk_size`` or ``ties``, or
      non-finite features.
  """
  return _identification_rate(probes, clean, distractors, ks, chunk_size, ties, "probes")


def protection_success_rate(
    masked,
    clean,
    distractors,
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int | None = None,
    ties: str = "distractor_first",
) -> dict[int, float]:
  """Protection success rate at rank ``k``: one minus the 1:N identification rate (Sec. 4.1.1).

  Args:
    masked: features of the masked test images ``(K, M, d)``, numpy or jax, any norm.
    clean: features of the same images without the mask ``(K, M, d)``.
    distractors: distractor features ``(D, d)`` (the paper: 13,233 LFW faces for Privacy-Celebrities).
    ks: ranks, positive integers ``<= D + 1``.
    chunk_size: probes per chunk of the distractor search (see :func:`identification_rate`).
    ties: where a distractor exactly as similar as the genuine mate ranks (:data:`TIES`).

  Returns:
    ``{k: 1 - identification rate at rank k}`` as Python floats.

  Raises:
    ValueError: see :func:`identification_rate`.

  Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> clean = rng.normal(size=(2, 3, 8))
    >>> protection_success_rate(clean, clean, rng.normal(size=(10, 8)), ks=(11,))  # k = D + 1: always found
    {11: 0.0}
  """
  rates = _identification_rate(masked, clean, distractors, ks, chunk_size, ties, "masked")
  return {k: 1.0 - rate for k, rate in rates.items()}


def _mean_std(values: jax.Array) -> tuple[float, float]:
  return float(jnp.mean(values)), float(jnp.std(values))


def verification_summary(masked, clean) -> dict[str, float]:
  """Cosine similarities between masked and clean features (the quantity of the paper's Fig. 4 and 8).

  Four populations, each summarised by its mean and (population) standard deviation:

  - ``same_image``: each masked image against the same image without the mask, ``<m_ki, c_ki>`` (how far the
    mask moves a photo in feature space).
  - ``other_image``: each masked image against the identity's other clean images, ``<m_ki, c_kj>`` for
    ``i != j`` -- exactly the genuine pairs that the 1:N protocol ranks.
  - ``template``: each masked image against the identity's clean template, the normalised mean of its ``M``
    clean features.
  - ``clean_other_image``: the unprotected reference, ``<c_ki, c_kj>`` for ``i != j``.

  Args:
    masked: features ``(K, M, d)`` of the masked images, numpy or jax, any norm (normalised inside).
    clean: features ``(K, M, d)`` of the same images without the mask.

  Returns:
    ``{population + "_mean": float, population + "_std": float}`` for the four populations.

  Raises:
    ValueError: if the shapes differ, are not ``(K, M, d)``, ``M < 2``, or a feature is NaN or Inf (the
      message names ``masked`` or ``clean``).

  Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 8))
    >>> round(verification_summary(x, x)["same_image_mean"], 6)
    1.0
  """
  masked = _as_features(masked, "masked", 3)
  clean = _as_features(clean, "clean", 3)
  if masked.shape != clean.shape:
    raise ValueError(f"masked {masked.shape} and clean {clean.shape} must have the same shape (K, M, d)")
  if masked.shape[0] < 1 or masked.shape[1] < 2:
    raise ValueError(f"masked needs K >= 1 identities and M >= 2 images each, got shape {masked.shape}")
  check_finite(masked, "masked")
  check_finite(clean, "clean")
  masked, clean = unit_features(masked), unit_features(clean)
  other_image = ~np.eye(masked.shape[1], dtype=bool)
  template = unit_features(jnp.mean(clean, axis=1))
  populations = {
      "same_image": jnp.sum(masked * clean, axis=-1),
      "other_image": genuine_similarities(masked, clean)[:, other_image],
      "template": jnp.einsum("kid,kd->ki", masked, template, precision=_HIGHEST),
      "clean_other_image": genuine_similarities(clean, clean)[:, other_image],
  }
  summary = {}
  for name, values in populations.items():
    summary[f"{name}_mean"], summary[f"{name}_std"] = _mean_std(values)
  return summary
