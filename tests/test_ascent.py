"""The signed-gradient ascent on a tiny random-weight Flax CNN: budget, clipping, rise, determinism, variants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opomjax.core import ascent
from opomjax.core import objectives

K, N, SIZE, DIM = 2, 3, 32, 16
EPS, ALPHA, STEPS = 8.0, 2.0, 4


class TinyFaceNet(nn.Module):
  """Two strided convolutions and a dense head: ``(b, 32, 32, 3)`` in [0, 255] -> unit ``(b, 16)``."""

  dim: int = DIM
  dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x, key=None):
    x = x / 127.5 - 1.0
    a1 = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    a1 = nn.Dropout(self.dropout_rate, deterministic=key is None)(a1, rng=key)
    a2 = nn.relu(nn.Conv(16, (3, 3), strides=2)(a1))
    emb = nn.Dense(self.dim)(a2.reshape(a2.shape[0], -1))
    return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True), [a1, a2]


def tiny_model(seed: int = 0, size: int = SIZE):
  """``(apply(params, images, key=None) -> (emb, acts), params)`` of a randomly initialised TinyFaceNet."""
  net = TinyFaceNet()
  params = net.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  return net.apply, params


def tiny_images(seed: int = 1, k: int = K, n: int = N, size: int = SIZE):
  """Smooth random "faces": low-frequency patterns over the full [0, 255] range (some pixels saturate)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (k, n, size // 8, size // 8, 3))
  return jnp.asarray(coarse.repeat(8, axis=2).repeat(8, axis=3), jnp.float32)


APPLY, PARAMS = tiny_model()
IMAGES = tiny_images()


def embed(images, key=None):
  return APPLY(PARAMS, images, key)[0]


def activations(images, key=None):
  return APPLY(PARAMS, images, key)[1]


def apply_embed(params, images, key=None):
  return APPLY(params, images, key)[0]


def independent_objective(method, masked, clean_images):
  """J for one identity, from the objective functions (not from the ascent's own plumbing)."""
  if method == "gd-uap":
    return objectives.gd_uap(activations(masked))
  adv, clean = embed(masked), embed(clean_images)
  return {
      "fi-uap": objectives.fi_uap,
      "fi-uap+": objectives.fi_uap_plus,
      "fi-uap-all": objectives.fi_uap,
      "opom-affine": objectives.opom_affine_hull,
      "opom-center": objectives.opom_class_center,
      "opom-convex": objectives.opom_convex_hull,
  }[method](adv, clean)


@functools.cache
def run(method, **options):
  kw = dict(epsilon=EPS, step_size=ALPHA, steps=STEPS, key=jax.random.key(7), return_trace=True)
  if method == "gd-uap":
    kw["activations_fn"] = activations
  if method == "opom-convex":
    kw["warmup_center_steps"] = 1
  kw.update(options)
  return ascent.generate_masks(embed, IMAGES, method=method, **kw)


def initial_masks(groups=K):
  """The random start generate_masks draws from key 7 for ``groups`` identities (first half of the split)."""
  init_key, _ = jax.random.split(jax.random.key(7))
  return jax.random.uniform(init_key, (groups, SIZE, SIZE, 3), jnp.float32, -EPS, EPS)


@pytest.mark.parametrize("method", ascent.METHODS)
def test_mask_in_budget_and_objective_rises(method):
  masks, trace = run(method)
  assert masks.shape == (K, SIZE, SIZE, 3) and masks.dtype == jnp.float32
  assert trace.shape == (K, STEPS)
  assert float(jnp.max(jnp.abs(masks))) <= EPS
  pooled = IMAGES.reshape(1, K * N, SIZE, SIZE, 3) if method == "fi-uap-all" else IMAGES
  groups = pooled.shape[0]

  @jax.jit
  @jax.vmap
  def objective_of_mask(images, mask):
    return independent_objective(method, jnp.clip(images + mask, 0, 255), images)

  before = objective_of_mask(pooled, initial_masks(groups))
  after = objective_of_mask(pooled, masks[:groups])
  assert np.all(np.asarray(after) > np.asarray(before)), (before, after)
  if method != "opom-convex":  # (the trace of opom-convex starts with a class-centre warm-up step)
    # The trace records J of the *clipped* masked images with the initial masks.
    np.testing.assert_allclose(trace[:groups, 0], before, rtol=1e-4)


def test_initial_mask_is_drawn_uniformly_from_key():
  init = initial_masks()
  assert float(jnp.max(jnp.abs(init))) <= EPS and float(jnp.std(init)) > EPS / 2.5  # U(-8, 8): std 4.6
  one_step = ascent.generate_masks(embed, IMAGES, method="fi-uap", key=jax.random.key(7), epsilon=EPS,
                                   step_size=ALPHA, steps=1)
  assert float(jnp.max(jnp.abs(one_step - init))) <= ALPHA  # one step away from the drawn start


def test_one_step_matches_a_direct_implementation_of_alg1():
  init = jnp.asarray(np.random.default_rng(3).uniform(-EPS, EPS, (K, SIZE, SIZE, 3)), jnp.float32)
  masks, trace = ascent.generate_masks(embed, IMAGES, method="fi-uap", init=init, epsilon=EPS, step_size=ALPHA,
                                       steps=1, return_trace=True)
  for i in range(K):
    x = np.asarray(IMAGES[i])
    clean = np.asarray(embed(IMAGES[i]))
    masked = np.clip(x + np.asarray(init[i]), 0, 255)

    def loss(m):
      return jnp.mean(jnp.square(embed(m) - clean))

    value, grad = jax.value_and_grad(loss)(jnp.asarray(masked))
    g = np.asarray(grad).mean(axis=0)
    expected = np.clip(np.asarray(init[i]) + ALPHA * np.sign(g), -EPS, EPS)
    decided = np.abs(g) > 1e-6 * np.abs(g).max()  # where the sign is not at the mercy of round-off
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(masks[i])[decided], expected[decided])
    np.testing.assert_allclose(trace[i, 0], value, rtol=1e-4)
    unclipped = loss(jnp.asarray(x + np.asarray(init[i])))
    assert abs(float(unclipped) - float(value)) > 1e-4 * abs(float(value))  # clipping did matter here


def test_same_key_or_init_gives_identical_masks():
  first, _ = run("opom-convex")
  again = ascent.generate_masks(embed, IMAGES, method="opom-convex", key=jax.random.key(7), epsilon=EPS,
                                step_size=ALPHA, steps=STEPS, warmup_center_steps=1)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  from_init = ascent.generate_masks(embed, IMAGES, method="opom-convex", init=initial_masks(), epsilon=EPS,
                                    step_size=ALPHA, steps=STEPS, warmup_center_steps=1)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(from_init))
  other = ascent.generate_masks(embed, IMAGES, method="opom-convex", key=jax.random.key(8), epsilon=EPS,
                                step_size=ALPHA, steps=STEPS, warmup_center_steps=1)
  assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_fi_uap_all_is_one_mask_for_the_pooled_identities():
  masks, _ = run("fi-uap-all")
  assert all(np.array_equal(np.asarray(masks[0]), np.asarray(m)) for m in masks[1:])
  pooled = ascent.generate_masks(embed, IMAGES.reshape(1, K * N, SIZE, SIZE, 3), method="fi-uap",
                                 key=jax.random.key(7), epsilon=EPS, step_size=ALPHA, steps=STEPS)
  np.testing.assert_array_equal(np.asarray(masks[0]), np.asarray(pooled[0]))


def test_warm_start_uses_class_centre_steps():
  centre, centre_trace = run("opom-center")
  convex, convex_trace = run("opom-convex")  # warmup_center_steps=1
  np.testing.assert_array_equal(np.asarray(convex_trace[:, 0]), np.asarray(centre_trace[:, 0]))
  assert not np.array_equal(np.asarray(convex_trace[:, 1:]), np.asarray(centre_trace[:, 1:]))
  all_centre = ascent.generate_masks(embed, IMAGES, method="opom-convex", key=jax.random.key(7), epsilon=EPS,
                                     step_size=ALPHA, steps=STEPS, warmup_center_steps=STEPS)
  np.testing.assert_array_equal(np.asarray(all_centre), np.asarray(centre))


def test_momentum_and_dfanet_paths():
  """DFANet-M (official --DFANet 1): momentum plus dropout keys, with params passed apart from the function."""

  common = dict(method="opom-center", epsilon=EPS, step_size=ALPHA, steps=STEPS, momentum=1.0, dfanet=True,
                dfanet_clean_once=False, params=PARAMS)
  masks = ascent.generate_masks(apply_embed, IMAGES, key=jax.random.key(7), **common)
  again = ascent.generate_masks(apply_embed, IMAGES, key=jax.random.key(7), **common)
  other = ascent.generate_masks(apply_embed, IMAGES, init=initial_masks(), key=jax.random.key(9), **common)
  assert float(jnp.max(jnp.abs(masks))) <= EPS and float(jnp.max(jnp.abs(other))) <= EPS
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(again))
  # Same start, different dropout keys: different masks (the dropout is live).
  assert not np.array_equal(np.asarray(masks), np.asarray(other))
  plain, _ = run("opom-center")
  assert not np.array_equal(np.asarray(masks), np.asarray(plain))


def test_dfanet_takes_the_clean_features_once_without_dropout_unless_told_otherwise():
  """``dfanet_clean_once`` (the default): the hull's points are the dropout-free features, computed once (one
  ``key=None`` forward of the clean images, traced once), while the masked images still see fresh dropout every
  step; ``dfanet_clean_once=False`` recomputes them under dropout every step, as the official code."""
  calls = []

  def spy(params, images, key=None):
    calls.append("clean" if key is None else "dropout")
    return apply_embed(params, images, key)

  common = dict(method="opom-center", epsilon=EPS, step_size=ALPHA, steps=STEPS, momentum=1.0, dfanet=True,
                params=PARAMS, key=jax.random.key(7))
  once = ascent.generate_masks(spy, IMAGES, **common)
  assert calls.count("clean") == 1 and calls.count("dropout") >= 1
  calls.clear()
  per_step = ascent.generate_masks(spy, IMAGES, dfanet_clean_once=False, **common)
  assert "clean" not in calls and calls.count("dropout") >= 2  # the official way: clean features under dropout
  np.testing.assert_array_equal(np.asarray(once), np.asarray(
      ascent.generate_masks(apply_embed, IMAGES, dfanet_clean_once=True, **common)))  # same key, same mask
  assert not np.array_equal(np.asarray(once), np.asarray(per_step))
  assert float(jnp.max(jnp.abs(once))) <= EPS
  # Without dropout in the network both readings are the plain momentum ascent, bit for bit.
  apply_no_dropout = functools.partial(TinyFaceNet(dropout_rate=0.0).apply)
  no_dropout = lambda params, images, key=None: apply_no_dropout(params, images, key)[0]
  plain = ascent.generate_masks(no_dropout, IMAGES, **dict(common, dfanet=False))
  for clean_once in (True, False):
    np.testing.assert_array_equal(np.asarray(ascent.generate_masks(
        no_dropout, IMAGES, dfanet_clean_once=clean_once, **common)), np.asarray(plain))


def test_momentum_zero_is_plain_signed_gradient():
  plain, _ = run("opom-center")
  with_zero, _ = run("opom-center", momentum=0.0)
  np.testing.assert_array_equal(np.asarray(with_zero), np.asarray(plain))
  with_momentum, _ = run("opom-center", momentum=0.9)
  assert float(jnp.max(jnp.abs(with_momentum))) <= EPS


def with_value(array, index, value):
  """A numpy copy of ``array`` with ``value`` at ``index`` (keeps numpy input numpy, makes jax input jax)."""
  copy = np.array(array)
  copy[index] = value
  return copy if isinstance(array, np.ndarray) else jnp.asarray(copy)


@pytest.mark.parametrize("change,match", [
    (dict(images=IMAGES[0]), "images"),
    (dict(images=IMAGES.astype(jnp.int32)), "images"),
    (dict(images=IMAGES / 255.0 - 0.5), r"\[0, 255\]"),
    (dict(method="opom"), "method"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(step_size=-1.0), "step_size"),
    (dict(steps=0), "steps"),
    (dict(init=jnp.zeros((K, SIZE, SIZE))), "init"),
    (dict(key=None), "key"),
    (dict(method="gd-uap"), "activations_fn"),
    (dict(momentum=-0.5), "momentum"),
    (dict(warmup_center_steps=-1), "warmup_center_steps"),
    (dict(method="opom-convex", lower=0.5, upper=1.0), "lower"),
    (dict(parallel="threads"), "parallel"),
    (dict(solver="cvxpy"), "solver"),
    (dict(embed_fn="ir50"), "embed_fn"),
    (dict(images=with_value(IMAGES, (1, 2, 5, 5, 0), np.nan)),
     r"images contain 1 NaN or Inf value\(s\), in identity 1 "),
    (dict(images=with_value(np.asarray(IMAGES), (0, 0, 0, 0, 0), np.inf)), r"images .* identity 0 \(1 value\)"),
    (dict(epsilon=300.0), "epsilon=300 exceeds 32.*allow_large_epsilon=True"),
    (dict(epsilon=np.nan), "epsilon"),
    (dict(epsilon="8"), "epsilon"),
    (dict(step_size=np.inf), "step_size"),
    (dict(steps=2.0), "steps"),
    (dict(steps=True), "steps"),
    (dict(momentum=np.nan), "momentum"),
    (dict(dfanet="yes"), "dfanet"),
    (dict(dfanet=True, dfanet_clean_once="yes"), "dfanet_clean_once must be True or False"),
    (dict(method="opom-convex", lower=0.6, upper=0.4), "lower must not exceed upper"),
    (dict(method="opom-convex", lower=np.nan), "lower"),
    (dict(init=with_value(jnp.zeros((K, SIZE, SIZE, 3)), (1, 0, 0, 0), np.nan)), "init contains NaN"),
    (dict(params={"scale": jnp.array([1.0, np.nan])}, embed_fn=lambda params, x: x.mean((1, 2))),
     r"params contains NaN or Inf at \['scale'\]"),
    (dict(devices=[], parallel="pmap"), "devices"),
    (dict(allow_large_epsilon="yes"), "allow_large_epsilon"),
])
def test_bad_arguments_raise_value_error_naming_them(change, match, monkeypatch):
  """Every bad argument is refused before the surrogate is traced or anything is compiled."""
  calls = []

  def refuse(*args, **kwargs):
    raise AssertionError(f"compiled or traced before validation: {args!r:.100}")

  monkeypatch.setattr(ascent, "_runner", refuse)
  monkeypatch.setattr(jax, "jit", refuse)
  monkeypatch.setattr(jax, "pmap", refuse)
  kw = dict(embed_fn=embed, images=IMAGES, method="fi-uap", key=jax.random.key(0))
  kw.update(change)
  embed_fn = kw.pop("embed_fn")
  if callable(embed_fn):
    embed_fn = functools.partial(lambda fn, *args: calls.append(1) or fn(*args), embed_fn)
  with pytest.raises(ValueError, match=match):
    ascent.generate_masks(embed_fn, kw.pop("images"), **kw)
  assert not calls


def test_one_nan_pixel_is_refused_not_turned_into_a_nan_mask():
  images = np.asarray(IMAGES).copy()
  images[1, 0, 3, 4, 2] = np.nan
  for given in (images, jnp.asarray(images)):  # numpy (checked on the host) and a device array
    with pytest.raises(ValueError, match=r"^images contain 1 NaN or Inf value\(s\), in identity 1 \(1 value\)"):
      ascent.generate_masks(embed, given, method="fi-uap", key=jax.random.key(0), steps=1)


def test_large_epsilon_needs_allow_large_epsilon():
  common = dict(method="fi-uap", key=jax.random.key(0), epsilon=300.0, step_size=50.0, steps=2)
  with pytest.raises(ValueError, match="allow_large_epsilon"):
    ascent.generate_masks(embed, IMAGES, **common)
  masks = ascent.generate_masks(embed, IMAGES, allow_large_epsilon=True, **common)
  assert float(jnp.max(jnp.abs(masks))) <= 300.0
  assert float(jnp.max(jnp.abs(masks))) > ascent.MAX_EPSILON  # the budget asked for is the budget used
  at_bound = ascent.generate_masks(embed, IMAGES, method="fi-uap", key=jax.random.key(0),
                                   epsilon=ascent.MAX_EPSILON, steps=1)  # the bound itself is allowed
  assert float(jnp.max(jnp.abs(at_bound))) <= ascent.MAX_EPSILON


MOMENTUM_DFANET = dict(momentum=1.0, dfanet=True, params=PARAMS, embed_fn=apply_embed)


def run_variant(method, variant):
  """``run`` plain (``variant=None``) or with momentum + DFANet dropout (the Table 4/5 setting)."""
  if variant is None:
    return run(method)[0]
  options = dict(variant)
  embed_fn = options.pop("embed_fn")
  return ascent.generate_masks(embed_fn, IMAGES, method=method, epsilon=EPS, step_size=ALPHA, steps=STEPS,
                               key=jax.random.key(7), **options)


@pytest.mark.parametrize("variant", [None, MOMENTUM_DFANET], ids=["plain", "momentum_dfanet"])
def test_fi_uap_plus_and_class_centre_take_the_same_signed_steps(variant):
  """For unit features ``||a - c||^2 = 1 - 2 a.c + ||c||^2``: moving ``a`` away from the centre ``c`` of the
  clean features is lowering its mean cosine to them (FI-UAP+). Every image's gradient differs only by the same
  positive factor, so the signed-gradient ascents coincide (measured on Privacy-LFW: equal to 0.1 point). The
  factor survives the L1-normalised momentum of Eq. 14 and, with the same dropout keys, DFANet."""
  plus = run_variant("fi-uap+", variant)
  centre = run_variant("opom-center", variant)
  different = run_variant("fi-uap", variant)
  agree = float(jnp.mean(plus == centre))
  assert agree > 0.99, agree  # float rounding may flip the sign of a near-zero gradient component
  assert float(jnp.mean(plus == different)) < agree


# Eq. 14 (momentum) against a loop written from the paper, on a differentiable toy surrogate.

EQ14_K, EQ14_N, EQ14_SIZE, EQ14_DIM = 2, 3, 8, 6
EQ14_EPS, EQ14_ALPHA, EQ14_STEPS = 8.0, 3.0, 8


def toy_surrogate(seed=0):
  """A fixed random map with ``tanh`` nonlinearities and L2 normalisation: ``(b, 8, 8, 3)`` -> unit ``(b, 6)``."""
  rng = np.random.default_rng(seed)
  weights = jnp.asarray(rng.normal(size=(EQ14_SIZE * EQ14_SIZE * 3, EQ14_DIM)) * 4 / np.sqrt(EQ14_SIZE ** 2 * 3),
                        jnp.float32)
  bias = jnp.asarray(rng.normal(size=(EQ14_DIM,)), jnp.float32)

  def embed_toy(images):
    z = jnp.tanh(jnp.tanh(images.reshape(images.shape[0], -1) / 127.5 - 1.0) @ weights + bias)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

  return embed_toy


EMBED_TOY = toy_surrogate()


def toy_images_and_init(seed=1):
  """Random pixels with saturated rows (255 on top, 0 at the bottom), so that the clip to [0, 255] matters."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (EQ14_K, EQ14_N, EQ14_SIZE, EQ14_SIZE, 3))
  images[:, :, :2], images[:, :, -2:] = 255.0, 0.0
  init = rng.uniform(-EQ14_EPS, EQ14_EPS, (EQ14_K, EQ14_SIZE, EQ14_SIZE, 3))
  return images.astype(np.float32), init.astype(np.float32)


def class_centre_objective(masked, centre):
  """Eq. 11 written out: the squared distance of every masked image's feature to the clean class centre."""
  return jnp.sum(jnp.square(EMBED_TOY(masked) - centre))


_CLASS_CENTRE_GRADIENT = jax.jit(jax.grad(class_centre_objective))


def eq14_loop(images, init, mu, normaliser="l1"):
  """The masks of Alg. 1 with the momentum of Eq. 14, one identity and one step at a time, in numpy.

  For identity images ``x_1..x_n``, mask ``delta_t`` and accumulator ``g_t`` (``g_0 = 0``), every step is

      x^_i       = clip(x_i + delta_t, 0, 255)
      grad       = (1/n) sum_i dJ/dx^_i (x^_1, .., x^_n)       (gradient at the clipped images, Alg. 1)
      g_{t+1}    = mu * g_t + grad / ||grad||_1                  (Eq. 14)
      delta_{t+1} = clip(delta_t + alpha * sign(g_{t+1}), -eps, eps)

  ``normaliser``: ``"l1"`` is ``||grad||_1`` (the paper); ``"l1_mean"`` its mean over the H * W * 3 entries
  (the official code's ``mean(|grad|)``); ``"none"`` accumulates raw gradients (a wrong implementation, for the
  test of the test). The accumulator is float64; the mask stays float32, the dtype of the library's masks.
  """
  masks = []
  for x, delta in zip(images, init):
    centre = jnp.mean(EMBED_TOY(jnp.asarray(x)), axis=0)
    g = np.zeros_like(delta)
    for _ in range(EQ14_STEPS):
      masked = np.clip(x + delta, 0.0, 255.0).astype(np.float32)
      grad = np.asarray(_CLASS_CENTRE_GRADIENT(jnp.asarray(masked), centre), np.float64).mean(axis=0)
      scale = {"l1": np.abs(grad).sum(), "l1_mean": np.abs(grad).mean(), "none": 1.0}[normaliser]
      g = mu * g + grad / scale
      delta = np.clip(delta + np.float32(EQ14_ALPHA) * np.sign(g).astype(np.float32), -EQ14_EPS, EQ14_EPS)
    masks.append(delta)
  return np.stack(masks)


@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
def test_momentum_equals_a_hand_written_loop_of_eq14(mu):
  """The scanned, vmapped, jitted ascent takes the same signed steps as the loop, bit for bit.

  The class-centre objective of the loop is the library's up to the positive factor ``1 / (n d)``, which the
  L1 normalisation of Eq. 14 removes; the loop accumulates ``g`` in float64 from float32 gradients.
  """
  images, init = toy_images_and_init()
  masks = ascent.generate_masks(EMBED_TOY, images, method="opom-center", init=init, epsilon=EQ14_EPS,
                                step_size=EQ14_ALPHA, steps=EQ14_STEPS, momentum=mu)
  expected = eq14_loop(images, init, mu)
  assert expected.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(masks), expected)


def test_eq14_loop_tells_momentum_and_normalisation_apart():
  """The toy case is sensitive: momentum changes the masks, and so does leaving out the normalisation; the
  official mean-absolute normaliser is the L1 norm times a constant, so it takes exactly the same steps."""
  images, init = toy_images_and_init()
  plain = eq14_loop(images, init, 0.0)
  for mu in (0.5, 1.0):
    with_momentum = eq14_loop(images, init, mu)
    assert np.mean(with_momentum != plain) > 0.05, mu
    assert np.any(eq14_loop(images, init, mu, normaliser="none") != with_momentum), mu
    np.testing.assert_array_equal(eq14_loop(images, init, mu, normaliser="l1_mean"), with_momentum)
  at_bound = np.abs(plain) == EQ14_EPS
  assert 0.1 < at_bound.mean() < 0.95  # the L-inf clip is active but not everywhere


@pytest.mark.parametrize("clean_once", [True, False], ids=["dfanet_clean_once", "dfanet_clean_per_step"])
def test_run_in_pieces_reports_progress_and_gives_the_same_masks(clean_once):
  """Pieces (by default 4 pieces of 1 step here) carry masks, momentum, step indices and dropout keys over: masks
  and traces equal the run in one piece of all steps bit for bit, across the hull's warm start too.
  (A shorter last piece is covered in test_parallel.py.)"""
  common = dict(method="opom-convex", key=jax.random.key(7), epsilon=EPS, step_size=ALPHA, steps=STEPS,
                warmup_center_steps=1, momentum=0.5, dfanet=True, dfanet_clean_once=clean_once, params=PARAMS,
                return_trace=True)
  whole, whole_trace = ascent.generate_masks(apply_embed, IMAGES, steps_per_call=STEPS, **common)
  seen = []
  pieces, pieces_trace = ascent.generate_masks(apply_embed, IMAGES, progress=lambda done, total: seen.append(
      (done, total)), **common)
  assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
  np.testing.assert_array_equal(np.asarray(pieces), np.asarray(whole))
  np.testing.assert_array_equal(np.asarray(pieces_trace), np.asarray(whole_trace))


def test_an_interrupt_in_progress_stops_the_pieces():
  """With one piece queued behind the running one, a KeyboardInterrupt raised while the first finished piece is
  reported leaves the run there: no later piece is reported and the error reaches the caller."""
  seen = []

  def report(done, total):
    seen.append((done, total))
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    ascent.generate_masks(embed, IMAGES, method="fi-uap", key=jax.random.key(7), epsilon=EPS, step_size=ALPHA,
                          steps=STEPS, progress=report)
  assert seen == [(1, STEPS)]


@pytest.mark.parametrize("change,match", [
    (dict(progress="yes"), "progress"),
    (dict(steps_per_call=0), "steps_per_call"),
    (dict(steps_per_call=1.5), "steps_per_call"),
])
def test_bad_progress_arguments_raise(change, match):
  with pytest.raises(ValueError, match=match):
    ascent.generate_masks(embed, IMAGES, method="fi-uap", key=jax.random.key(0), **change)


def test_progress_true_shows_a_bar_of_steps(capsys):
  masks = ascent.generate_masks(embed, IMAGES, method="fi-uap", key=jax.random.key(7), epsilon=EPS,
                                step_size=ALPHA, steps=STEPS, progress=True, steps_per_call=2)
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(run("fi-uap")[0]))
  err = capsys.readouterr().err
  assert "mask steps" in err and f"{STEPS}/{STEPS}" in err, err
