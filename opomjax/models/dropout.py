"""DFANet dropout (Eq. 15) with keep masks drawn from a cheap counter-based hash.

A DFANet step drops units of every convolution output, so it needs one random number per activation: for
SFace about 7 M per image and step. ``jax.random.bernoulli`` draws them with Threefry-2x32 (20 rounds of
add-rotate-xor per pair of words), which on XLA:CPU costs more than the convolution it follows. Dropout masks
need no cryptographic strength, only bits that are uniform, uncorrelated between units and reproducible per
key, so the masks here come from a keyed integer hash of each unit's index:

.. math:: b_i = h(h(i \\oplus s_0) + s_1), \\qquad h = \\text{fmix32 (MurmurHash3's finaliser)}

where :math:`(s_0, s_1)` are the key's data (for the default Threefry key, its two words; the keys
themselves are still split and folded by ``jax.random``). ``h`` is a bijection of 32-bit integers with full
avalanche, so :math:`b_i` is a keyed permutation of the indices: every key gives a fixed mask (deterministic),
different keys give unrelated masks. A unit is kept when :math:`b_i \\ge \\lfloor p \\, 2^{32} \\rceil`,
i.e. with probability :math:`1 - p` to within :math:`2^{-32}`. Cost: five integer operations per hash, at the
memory bound of the elementwise product (``bench/bench_randomness.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

#: The keep-mask generator in use (a key of :data:`KEEP_MASK_GENERATORS`), recorded with masks made under
#: DFANet: a resumed run refuses masks another generator made.
GENERATOR = "fmix32-hash"


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of ``uint32`` in which every input bit flips every output
  bit with probability about 1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two ``uint32`` words of a PRNG key (a typed key or a raw ``uint32`` key array)."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  data = jnp.ravel(jnp.asarray(data, jnp.uint32))
  return data[0], data[-1]


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """32 random bits per element of ``shape`` (``uint32``), the keyed hash of the element's flat index."""
  size = 1
  for n in shape:
    size *= int(n)
  if size >= 2 ** 32:
    raise ValueError(f"hash_bits draws at most 2**32 - 1 values per key, not {size} (shape {shape})")
  s0, s1 = _key_words(key)
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return _fmix32(_fmix32(index ^ s0) + s1)


def _hash_keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  threshold = min(int(round(rate * 2 ** 32)), 2 ** 32 - 1)
  return hash_bits(key, shape) >= jnp.uint32(threshold)


def _threefry_keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.bernoulli(key, 1.0 - rate, shape)


#: The ways to draw a keep mask: the keyed hash, and ``jax.random.bernoulli`` (Threefry, what Flax's
#: ``nn.Dropout`` does; kept for ``bench/bench_randomness.py``'s comparison).
KEEP_MASK_GENERATORS = {"fmix32-hash": _hash_keep_mask, "threefry": _threefry_keep_mask}


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Boolean mask of ``shape``: each entry True (kept) with probability ``1 - rate`` (to within 2**-32),
  drawn by the generator :data:`GENERATOR` names."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
  return KEEP_MASK_GENERATORS[GENERATOR](key, rate, shape)


def dfanet_dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """DFANet dropout on a feature map (Eq. 15): units kept with probability ``1 - rate``, rescaled.

  .. math:: \\tilde{x} = \\frac{m \\odot x}{1 - p}, \\quad m_i \\sim \\mathrm{Bernoulli}(1 - p)
  """
  if rate == 0.0:
    return x
  return jnp.where(keep_mask(key, rate, x.shape), x / (1.0 - rate), jnp.zeros((), x.dtype))


#: The least mean cosine between a surrogate's features with and without DFANet dropout that is accepted. With
#: less, the features a DFANet step ascends on are mostly the dropout's noise: on Privacy-LFW chips faceres and
#: mobileface keep a cosine of ~0.3 at rate 0.1 and ~0.7 at 0.02, SFace ~0.3 at 0.1 and 0.90 at 0.02, dlib's
#: ResNet 0.91 at 0.1; an ensemble of dlib and faceres at rate 0.1 made masks that protected 27.9 % of dlib's
#: searches (96.7 % without dropout; 20 Privacy-LFW identities, 16 steps).
MIN_FEATURE_COSINE = 0.8


def feature_cosine_under_dropout(model, images: jax.Array, rate: float, key: jax.Array, draws: int = 2) -> float:
  """Mean cosine between ``model``'s unit embeddings of ``images`` with DFANet dropout at ``rate`` (``draws``
  keys split from ``key``) and without it.

  ``model`` is a :class:`~opomjax.models.base.FaceModel` (its own ``dropout_rate`` is replaced by ``rate``).
  """
  model = dataclasses.replace(model, dropout_rate=float(rate))
  clean = model.apply(model.params, images)
  cosines = [jnp.mean(jnp.sum(model.apply(model.params, images, k) * clean, axis=-1))
             for k in jax.random.split(key, draws)]
  return float(jnp.mean(jnp.stack(cosines)))


def check_dropout_tolerance(models, images: jax.Array, rate: float, *, key: jax.Array | None = None,
                            minimum: float = MIN_FEATURE_COSINE) -> None:
  """ValueError naming the first of ``models`` whose features DFANet dropout at ``rate`` destroys on ``images``
  (mean cosine to its features without dropout below ``minimum``; :func:`feature_cosine_under_dropout`).

  One forward pass without and two with dropout per model, before any ascent step.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  for model in models:
    cosine = feature_cosine_under_dropout(model, images, rate, key)
    if cosine < minimum:
      raise ValueError(
          f"DFANet dropout {rate:g} destroys {model.name}'s features (mean cosine {cosine:.2f} to its features "
          f"without dropout on these images, at least {minimum:g} needed): lower the rate or leave {model.name} "
          "out of the surrogates")
