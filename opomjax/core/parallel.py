"""Identities spread over the local devices: one per-device function, three thin ways to run it.

A per-device function ``fn(shared, batched)`` maps a pytree ``batched`` whose leaves all have a leading
identity axis ``k`` to outputs with the same leading axis; ``shared`` (model parameters, say) is the same on
every device. :func:`map_identities` runs it

* ``parallel=None``: under ``jax.jit`` on the default device;
* ``parallel="pmap"``: ``jax.pmap`` over the devices, identities reshaped to ``(devices, k / devices, ...)``;
* ``parallel="shard_map"``: ``jax.jit(jax.shard_map(...))`` on a one-axis mesh, identities sharded along it.

``k`` is padded to a multiple of the device count with copies of the last identity and the outputs are sliced
back, so every device runs the same program on the same number of identities. Identities never interact and
every random key is drawn per identity before the split, so the sharded result equals the single-device one
bit for bit (the tests check this on 8 simulated CPU devices). On accelerators whose kernels are autotuned per
shape, a different number of identities per device may select a different convolution algorithm; equality is
then to round-off, not bitwise.

``check_vma=False`` is passed to ``shard_map``: jaxopt's ``BoxOSQP`` (the hull QP) contains ``lax.cond``
branches whose outputs differ in their varying-manual-axes type, which the checker rejects.

Example:
  >>> import jax.numpy as jnp
  >>> fn = lambda shared, x: x * shared
  >>> map_identities(fn, jnp.float32(2.0), jnp.arange(3.0), parallel="pmap").tolist()
  [0.0, 2.0, 4.0]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

PARALLEL_MODES = (None, "pmap", "shard_map")

#: The mesh axis along which identities are sharded.
IDENTITY_AXIS = "identities"

PerDeviceFn = Callable[[Any, Any], Any]


def leading_size(batched: Any) -> int:
  """The common leading (identity) axis size of every leaf of ``batched``."""
  sizes = {leaf.shape[0] for leaf in jax.tree.leaves(batched)}
  if len(sizes) != 1:
    raise ValueError(f"batched leaves must share one leading identity axis, got sizes {sorted(sizes)}")
  return sizes.pop()


def pad_identities(batched: Any, multiple: int) -> Any:
  """Pad the leading axis of every leaf to a multiple of ``multiple`` with copies of the last entry."""
  k = leading_size(batched)
  pad = -k % multiple
  if pad == 0:
    return batched
  return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0), batched)


def take_identities(outputs: Any, k: int) -> Any:
  """The first ``k`` entries along the leading axis of every leaf (undoes :func:`pad_identities`)."""
  return jax.tree.map(lambda x: x[:k], outputs)


def _split_devices(batched: Any, n_devices: int) -> Any:
  return jax.tree.map(lambda x: x.reshape((n_devices, x.shape[0] // n_devices) + x.shape[1:]), batched)


def _merge_devices(outputs: Any) -> Any:
  return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), outputs)


def single_device(fn: PerDeviceFn) -> Callable[[Any, Any], Any]:
  """``fn`` under ``jax.jit`` on the default device."""
  return jax.jit(fn)


def pmapped(fn: PerDeviceFn, devices: Sequence[jax.Device]) -> Callable[[Any, Any], Any]:
  """``fn`` over ``devices`` with ``jax.pmap``; takes and returns identity-major (un-split) pytrees."""
  mapped = jax.pmap(fn, in_axes=(None, 0), devices=list(devices))
  n = len(devices)

  def run(shared, batched):
    # Outputs as plain arrays (a pmap result keeps its per-device layout, which pad_identities cannot take back
    # when the next call of a run in pieces feeds them in again).
    return jax.tree_util.tree_map(lambda x: jnp.asarray(jax.device_get(x)),
                                  _merge_devices(mapped(shared, _split_devices(batched, n))))

  return run


def identity_mesh(devices: Sequence[jax.Device]) -> jax.sharding.Mesh:
  """A one-axis mesh over ``devices`` with ``Auto`` axis type (so jit reshards inputs itself)."""
  return jax.make_mesh((len(devices),), (IDENTITY_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=list(devices))


def shard_mapped(fn: PerDeviceFn, devices: Sequence[jax.Device]) -> Callable[[Any, Any], Any]:
  """``fn`` over ``devices`` with ``jax.jit(jax.shard_map(...))``, identities sharded along the mesh."""
  mesh = identity_mesh(devices)
  identity_spec = PartitionSpec(IDENTITY_AXIS)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(PartitionSpec(), identity_spec), out_specs=identity_spec,
                         check_vma=False)
  return jax.jit(mapped)


def distribute(fn: PerDeviceFn, parallel: str | None = None,
               devices: Sequence[jax.Device] | None = None) -> Callable[[Any, Any], Any]:
  """``fn(shared, batched)`` made to run as ``parallel`` says, padding and slicing the identity axis.

  Args:
    fn: the per-device function.
    parallel: None, ``"pmap"`` or ``"shard_map"``.
    devices: the devices to spread over (default: every local device).

  Returns:
    A function with the signature of ``fn`` and the same result.
  """
  if parallel not in PARALLEL_MODES:
    raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
  if parallel is None:
    return single_device(fn)
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty")
  run = (pmapped if parallel == "pmap" else shard_mapped)(fn, devices)

  def padded_run(shared, batched):
    k = leading_size(batched)
    return take_identities(run(shared, pad_identities(batched, len(devices))), k)

  return padded_run


def map_identities(fn: PerDeviceFn, shared: Any, batched: Any, *, parallel: str | None = None,
                   devices: Sequence[jax.Device] | None = None) -> Any:
  """Run ``fn(shared, batched)`` once, on one device or spread over ``devices`` (see module docstring)."""
  return distribute(fn, parallel, devices)(shared, batched)


__all__ = ["PARALLEL_MODES", "IDENTITY_AXIS", "distribute", "map_identities", "pad_identities",
           "take_identities", "pmapped", "shard_mapped", "single_device", "identity_mesh"]
