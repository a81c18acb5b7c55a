"""A T5X-style partitioner: a `jax.sharding.Mesh` with `data` and `model` axes plus logical-axis
rules.

Mirrors T5X's `PjitPartitioner(num_partitions, model_parallel_submesh, logical_axis_rules)` on
today's jax API (`jax.jit` with `in_shardings`/`out_shardings`). Unlike T5X, `num_partitions` is
honoured on CPU too, so a CPU run with `--xla_force_host_platform_device_count=8` exercises model
parallelism. Must not import gin, seqio or `gbt_t5x.models`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxisRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules() -> tuple[tuple[str, str | None], ...]:
  """T5X's standard rules: batch on `data`; vocab, mlp, heads, joined_kv on `model`; rest
  replicated."""
  return (
      ("batch", "data"),
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("embed", None),
      ("kv", None),
      ("length", None),
      ("relpos_buckets", None),
      ("abspos_buckets", None),
      ("layers", None),
      ("stack", None),
      ("mlp_activations", None),
  )


class PjitPartitioner:
  """Builds the device mesh and jits functions with shardings derived from logical axis names.

  Args:
    num_partitions: devices per model-parallel group (the `model` mesh axis size); the `data`
      axis gets `device_count // num_partitions`. None or 1 means pure data parallelism.
    model_parallel_submesh: T5X's alternative spelling, a tuple whose product is the model axis
      size (e.g. (1, 1, 1, 2)); mutually exclusive with `num_partitions`.
    logical_axis_rules: (logical name, mesh axis or None) pairs; defaults to the standard rules.
    devices: devices to use (default: all of `jax.devices()`).
  """

  def __init__(self,
               num_partitions: int | None = None,
               model_parallel_submesh: Sequence[int] | None = None,
               logical_axis_rules: LogicalAxisRules | None = None,
               devices: Sequence[Any] | None = None):
    devices = list(devices if devices is not None else jax.devices())
    if num_partitions is not None and model_parallel_submesh is not None:
      raise ValueError("give either num_partitions or model_parallel_submesh, not both")
    if model_parallel_submesh is not None:
      num_partitions = int(np.prod(model_parallel_submesh))
    num_partitions = num_partitions or 1
    if num_partitions < 1 or len(devices) % num_partitions:
      raise ValueError(f"num_partitions={num_partitions} does not divide the {len(devices)} "
                       "available devices")
    self.num_partitions = num_partitions
    mesh_devices = np.array(devices).reshape(len(devices) // num_partitions, num_partitions)
    self.mesh = Mesh(mesh_devices, ("data", "model"))
    self.logical_axis_rules = tuple(logical_axis_rules or standard_logical_axis_rules())

  @property
  def data_shards(self) -> int:
    """Size of the `data` mesh axis (how many ways each global batch is split)."""
    return self.mesh.shape["data"]

  @property
  def data_sharding(self) -> NamedSharding:
    """Sharding of batch arrays `[batch, ...]`: leading dim split over `data`."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @property
  def replicated(self) -> NamedSharding:
    """Fully replicated sharding (scalars, guided hyper-parameters, step counters)."""
    return NamedSharding(self.mesh, PartitionSpec())

  def shardings_from_logical(self, logical_specs: Any) -> Any:
    """Maps a pytree of logical `PartitionSpec`s (e.g. `nn.get_partition_spec(vars)`) to
    shardings."""
    return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.logical_axis_rules)

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical-rule context needed while tracing functions that use logical constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
      yield

  def partition(self, fn: Callable, in_shardings: Any, out_shardings: Any,
                static_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()):
    """Jits `fn` with the given shardings; tracing happens inside the mesh/rules context."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     static_argnums=static_argnums, donate_argnums=donate_argnums)

    def call(*args, **kwargs):
      with self.context():
        return jitted(*args, **kwargs)

    call.lower = lambda *a, **k: _lower_in(self, jitted, *a, **k)
    return call


def _lower_in(partitioner: PjitPartitioner, jitted, *args, **kwargs):
  with partitioner.context():
    return jitted.lower(*args, **kwargs)
