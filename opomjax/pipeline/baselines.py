"""Clean baselines: how well each model identifies a protocol's unprotected test photos (the 1:N rule), and
optionally how much one uniform random mask per person changes that (a mask that protects nothing should
change it by a fraction of a point). The computation of ``experiments/baselines.py``."""

from __future__ import annotations

import os

import jax
import numpy as np

import opomjax
from opomjax.faces import channel
from opomjax.models import registry
from opomjax.pipeline import features
from opomjax.pipeline import validate

_KS = (1, 5, 10)


def check_arguments(models, *, protocol: str, num_identities: int | None, batch_size: int,
                    random_mask_epsilon: float, allow_large_epsilon: bool = False,
                    allow_random_weights: bool = False, seed: int = 0, out: str | os.PathLike | None = None,
                    lfw_dir: str | None = None, conditions=("none",)) -> None:
  """The launcher's flags, checked before anything is loaded (ValueError / FileNotFoundError naming the flag)."""
  if not list(models):
    raise ValueError("--models is empty; name at least one model")
  for name in models:
    validate.check_model_name(name, "--models", allow_random_weights=allow_random_weights, target=True)
  if protocol not in validate.known_datasets()[1:]:
    raise ValueError(f"--protocol: unknown protocol {protocol!r}; choose from "
                     f"{', '.join(validate.known_datasets()[1:])}")
  if num_identities is not None:
    validate.check_integer(num_identities, "--num_identities")
  validate.check_integer(batch_size, "--batch_size")
  validate.check_epsilon(random_mask_epsilon, "--random_mask_epsilon", allow_large=allow_large_epsilon,
                         override="--allow_large_epsilon", zero_ok=True)
  validate.check_integer(seed, "--seed", minimum=0)
  try:
    channel.parse_conditions(conditions)
  except ValueError as e:
    raise ValueError(f"--{e}") from None
  if lfw_dir and not os.path.exists(lfw_dir):
    raise FileNotFoundError(f"--lfw_dir: {lfw_dir} does not exist")
  if out:
    validate.check_writable(os.path.dirname(os.path.abspath(out)), "--out (its folder)")


def embed_fn(name: str, *, allow_random_weights: bool = False):
  """A batch embedding function for a registry name: jitted for surrogates, as is for black-box targets."""
  if name in registry.TARGET_BUILDERS or name.endswith(".onnx"):
    return registry.load_target(name).embed
  model = registry.load_model(name, allow_random_weights=allow_random_weights)
  apply = jax.jit(model.apply)
  return lambda images: apply(model.params, images)


def random_masks(key, k: int, shape, epsilon: float) -> np.ndarray:
  """One uniform mask in [-epsilon, epsilon] per identity, ``(k, H, W, 3)`` float32."""
  epsilon = validate.check_epsilon(epsilon, "epsilon", allow_large=True)
  return np.asarray(jax.random.uniform(key, (k,) + tuple(shape), minval=-epsilon, maxval=epsilon))


def accuracies(probes, clean, gallery, k: int, m: int, prefix: str = "") -> dict[str, float]:
  ks = tuple(t for t in _KS if t <= len(gallery) + 1)  # a rank beyond the gallery's size means nothing
  rates = opomjax.protection_success_rate(probes.reshape(k, m, -1), clean.reshape(k, m, -1), gallery, ks=ks)
  return {f"{prefix}top{t}": 1.0 - float(rates[t]) for t in ks}


def baseline(embed, protocol, *, batch_size: int, masks=None, conditions=("none",),
             desc: str = "") -> dict[str, float]:
  """Top-k identification accuracy of ``protocol``'s clean test photos; with ``masks`` (one per person) also
  that of the masked photos, under ``random_mask_top*``.

  Masked photos are embedded as saved 8-bit photos (condition ``none``, :mod:`opomjax.faces.channel`). Every
  other name in ``conditions`` adds ``<condition>_top*`` (the unmasked photos through that channel) and, with
  ``masks``, ``<condition>_random_mask_top*``; the gallery stays clean.
  """
  k, m = protocol.test.shape[:2]
  test = protocol.test.reshape((k * m,) + protocol.test.shape[2:])
  embed_all = lambda images, what, **kw: features.embed_in_batches(embed, images, batch_size=batch_size,
                                                                   desc=f"{desc} {what}", **kw)
  clean = embed_all(test, "test")
  gallery = embed_all(protocol.distractors, "distractors")
  result = accuracies(clean, clean, gallery, k, m)
  repeated = None if masks is None else np.repeat(masks, m, axis=0)
  for condition in channel.parse_conditions(conditions):
    prefix = "" if condition == "none" else f"{condition}_"
    if condition != "none":
      through = embed_all(test, f"test, {condition}", condition=condition)
      result.update(accuracies(through, clean, gallery, k, m, prefix=prefix))
    if repeated is not None:
      masked = embed_all(test, f"masked test, {condition}", masks=repeated, condition=condition)
      result.update(accuracies(masked, clean, gallery, k, m, prefix=prefix + "random_mask_"))
  return result
