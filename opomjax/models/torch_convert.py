"""PyTorch state dicts -> Flax variables, and the glue that turns a ported Flax module into a FaceModel.

The ported networks (:mod:`~opomjax.models.iresnet`, :mod:`~opomjax.models.mobilefacenet`,
:mod:`~opomjax.models.inception_resnet_v1`) name their Flax submodules after the PyTorch module paths of the
project they come from, so the conversion is one generic rule: the Flax module at path
``("body.3", "res_layer.1")`` takes the tensors ``body.3.res_layer.1.*``. The kind of layer is read off the Flax
variables:

=====================  =====================================  ===========================================
Flax leaves            PyTorch keys                           conversion
=====================  =====================================  ===========================================
``kernel`` (4-D)       ``weight`` (O, I/groups, kh, kw)       transposed to (kh, kw, I/groups, O)
``kernel`` (2-D)       ``weight`` (O, I)                      transposed; NCHW flattening permuted to NHWC
``bias``               ``bias``                               as is
``scale``, ``bias``,   ``weight``, ``bias``, ``running_mean``,  as is (``num_batches_tracked`` is dropped)
``mean``, ``var``      ``running_var``
``alpha``              ``weight`` (PReLU, one per channel)    as is
=====================  =====================================  ===========================================

Loading never unpickles arbitrary objects: ``.safetensors`` files are read with the ``safetensors`` numpy API
(no PyTorch needed), other files with ``torch.load(..., weights_only=True)``.

Example::

    from opomjax.models import iresnet, torch_convert
    sd = torch_convert.load_state_dict("Backbone_IR_50.pth")      # {key: np.ndarray}
    model = iresnet.build_ir50("Backbone_IR_50.pth")                # same, wrapped as a FaceModel
    torch_convert.convert_to_safetensors("Backbone_IR_50.pth", "ir50.safetensors")  # torch-free from now on
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from opomjax import frame as frame_lib
from opomjax.models import base
from opomjax.models import layers

StateDict = dict[str, np.ndarray]

#: Wrappers some training scripts put around the state dict or its keys.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
_KEY_PREFIXES = ("module.",)


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "reading a PyTorch checkpoint needs the 'torch' package (pip install torch); "
        "or convert it once to .safetensors, which loads without torch"
    ) from e
  return torch


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """Finds the flat ``{name: tensor}`` mapping inside a loaded checkpoint."""
  if isinstance(obj, Mapping):
    for k in _CONTAINER_KEYS:
      if k in obj and isinstance(obj[k], Mapping):
        return _unwrap(obj[k], path)
    return obj
  raise ValueError(f"weights file {path!r} does not hold a state dict (got {type(obj).__name__})")


def _strip_prefixes(sd: StateDict) -> StateDict:
  for prefix in _KEY_PREFIXES:
    if sd and all(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items()}
  return sd


def load_state_dict(path: str | os.PathLike) -> StateDict:
  """Reads a PyTorch state dict as numpy float arrays, safely.

  Args:
    path: a ``.safetensors`` file (read without PyTorch), or a ``.pt``/``.pth``/``.bin`` file saved with
      ``torch.save(model.state_dict(), ...)`` (read with ``weights_only=True``: no arbitrary unpickling).
      A checkpoint dict holding the weights under ``state_dict``/``model`` and a ``module.`` prefix from
      ``DataParallel`` are unwrapped.

  Returns:
    ``{key: np.ndarray}``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path!r}")
  if path.endswith(".safetensors"):
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    except ImportError as e:  # pragma: no cover
      raise ImportError("reading .safetensors needs the 'safetensors' package (pip install safetensors)") from e
    raw = st_numpy.load_file(path)
  else:
    torch = _torch()
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for unsafe or foreign files
      raise ValueError(
          f"could not read {path!r} as a plain PyTorch state dict with weights_only=True: {e}"
      ) from e
    raw = {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()  # bf16/f16 -> f32
           for k, v in _unwrap(obj, path).items() if isinstance(v, torch.Tensor)}
  return _strip_prefixes({k: np.asarray(v) for k, v in raw.items()})


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Rewrites a PyTorch checkpoint as ``.safetensors`` so that later loads need no PyTorch."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top

  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in load_state_dict(src).items()}, os.fspath(dst))


# ---------------------------------------------------------------------------------------------------------
# Generic conversion.


def _module_leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict]:
  """``{module_path: {leaf_name: leaf}}`` for a nested variable dict."""
  out: dict[tuple[str, ...], dict] = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      for path, leaves in _module_leaves(value, prefix + (name,)).items():
        out.setdefault(path, {}).update(leaves)
    else:
      out.setdefault(prefix, {})[name] = value
  return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _torch_layout(flax_leaf: str, flax_shape: tuple[int, ...], is_bn: bool) -> tuple[str, tuple[int, ...]]:
  """The PyTorch leaf name and shape that hold a Flax leaf."""
  if flax_leaf == "kernel":
    if len(flax_shape) == 4:
      kh, kw, i, o = flax_shape
      return "weight", (o, i, kh, kw)
    return "weight", tuple(reversed(flax_shape))
  names = {"scale": "weight", "mean": "running_mean", "var": "running_var", "alpha": "weight", "bias": "bias"}
  if flax_leaf not in names or (flax_leaf == "scale" and not is_bn):
    raise ValueError(f"no PyTorch counterpart known for Flax leaf {flax_leaf!r}")
  return names[flax_leaf], tuple(flax_shape)


def _to_flax(array: np.ndarray, flax_leaf: str, flax_shape, chw: tuple[int, int, int] | None) -> np.ndarray:
  if flax_leaf != "kernel":
    return array
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if chw is not None:  # Linear after an NCHW flatten: reorder its inputs to NHWC flattening.
    c, h, w = chw
    return array.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(flax_shape)
  return array.T


def _format_errors(missing, mis_shaped, unexpected, limit: int = 25) -> str:
  def block(title, items):
    items = list(items)
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items[:limit]) + more

  parts = []
  if missing:
    parts.append(block("missing keys", missing))
  if mis_shaped:
    parts.append(block("mis-shaped keys", [f"{k}: got {g}, expected {e}" for k, g, e in mis_shaped]))
  if unexpected:
    parts.append(block("unexpected keys", unexpected))
  return "\n".join(parts)


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    flatten_chw: Mapping[str, tuple[int, int, int]] | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, Any]:
  """Fills Flax variables from a PyTorch state dict, by the naming rule in the module docstring.

  Args:
    state_dict: ``{torch_key: array}``.
    target: the Flax variables to fill (``{"params": ..., "batch_stats": ...}``); only shapes are read, so
      ``jax.eval_shape(module.init, ...)`` will do.
    flatten_chw: ``{torch_module_path: (C, H, W)}`` for Linear layers applied to an NCHW-flattened map.
    ignore: glob patterns of PyTorch keys that may be present and are dropped (e.g. a classifier head).

  Returns:
    Variables with the structure of ``target``, as float32 jax arrays.

  Raises:
    ValueError: listing every missing, mis-shaped and unexpected key.
  """
  flatten_chw = dict(flatten_chw or {})
  ignore = tuple(ignore) + ("*.num_batches_tracked",)
  leaves: dict[tuple[str, ...], dict] = {}
  for collection, tree in target.items():
    for path, module_leaves in _module_leaves(tree).items():
      for leaf, value in module_leaves.items():
        leaves.setdefault(path, {})[(collection, leaf)] = tuple(value.shape)

  out: dict[str, Any] = {}
  consumed, missing, mis_shaped = set(), [], []
  for path, module_leaves in leaves.items():
    prefix = ".".join(path)
    is_bn = ("batch_stats", "mean") in module_leaves
    for (collection, leaf), flax_shape in module_leaves.items():
      torch_leaf, torch_shape = _torch_layout(leaf, flax_shape, is_bn)
      key = f"{prefix}.{torch_leaf}"
      if key not in state_dict:
        missing.append(key)
        continue
      consumed.add(key)
      array = np.asarray(state_dict[key], np.float32)
      if tuple(array.shape) != torch_shape:
        mis_shaped.append((key, tuple(array.shape), torch_shape))
        continue
      _set(out.setdefault(collection, {}), path + (leaf,),
           jnp.asarray(_to_flax(array, leaf, flax_shape, flatten_chw.get(prefix))))
  unexpected = sorted(
      k for k in state_dict if k not in consumed and not any(fnmatch.fnmatchcase(k, p) for p in ignore))
  if missing or mis_shaped or unexpected:
    raise ValueError("state dict does not match the network:\n"
                     + _format_errors(sorted(set(missing)), mis_shaped, unexpected))
  return out


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters (the ``params`` collection), as PyTorch's ``parameters()`` counts."""
  return layers.count_parameters(variables["params"])


# ---------------------------------------------------------------------------------------------------------
# Flax module -> FaceModel.


def network_function(module: nn.Module) -> base.NetFn:
  """The library's call shape around a ported module whose ``__call__(x, dropout_rate)`` returns a pair."""

  def net_fn(params, images, *, key=None, dropout_rate=0.0):
    rngs = None if key is None else {"dropout": key}
    return module.apply(params, images, dropout_rate=dropout_rate, rngs=rngs)

  return net_fn


def make_face_model(
    name: str,
    module: nn.Module,
    *,
    input_frame: frame_lib.Frame,
    embedding_size: int,
    weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    key: jax.Array | None = None,
    seed: int = 0,
    dropout_rate: float = 0.1,
    flatten_chw: Mapping[str, tuple[int, int, int]] | None = None,
    ignore: Iterable[str] = (),
) -> base.FaceModel:
  """Initialises (``weights=None``) or loads (a path or a state dict) a ported module as a FaceModel.

  Args:
    name: registry name.
    module: the Flax module.
    input_frame: the geometry the network expects.
    embedding_size: ``d``.
    weights: a PyTorch state dict file (see :func:`load_state_dict`), an already loaded ``{key: array}``,
      or None for random initialisation from ``key`` (default ``jax.random.key(seed)``).
    key: PRNG key for random initialisation.
    seed: used when ``key`` is None.
    dropout_rate: the DFANet rate the FaceModel uses when given a key.
    flatten_chw, ignore: see :func:`torch_to_flax`.
  """
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  h, w = input_frame.size
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  if weights is None:
    init_key = jax.random.key(seed) if key is None else key
    variables = jax.jit(module.init)(init_key, dummy)
  else:
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)
    state_dict = weights if isinstance(weights, Mapping) else load_state_dict(weights)
    variables = torch_to_flax(state_dict, shapes, flatten_chw=flatten_chw, ignore=ignore)
  return base.FaceModel(
      name=name,
      net_fn=network_function(module),
      params=variables,
      input_frame=input_frame,
      embedding_size=embedding_size,
      dropout_rate=dropout_rate,
  )
