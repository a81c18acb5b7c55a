"""Deterministic hash split of a dataset into a guide (held-out tuning) slice and its complement.

What it is for: guide tasks are held-out slices of a training split (the reference's recipe:
about 1 % of train). Membership must depend only on the example's content (a string key), never
on order, sharding, seeds or the process, so that the guide slice and the training remainder are
disjoint and stable across runs and machines.

The hash (`guide_bucket`), on the bytes `B = utf8(salt) + key`, `n = len(B)`, all arithmetic in
uint64 with wrap-around:

    mix(z)  = splitmix64 finalizer: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
                                    z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
    term_i  = mix(256 * i + B[i] + 0x9E3779B97F4A7C15)        for i in 0..n-1
    hash    = mix(sum_i term_i + n)
    bucket  = hash mod 10000

and an example is in the guide slice iff `bucket < round(percent * 100)` (so `percent` is in
percent, resolution 0.01 %). Every byte enters at its own position, so the hash is order
sensitive; it is written with vectorised TF ops so a long C4 document costs one pass over its
bytes, and it can be recomputed with numpy from this docstring (the tests do).

Must not import: jax, flax, seqio, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

NUM_BUCKETS = 10000
DEFAULT_SALT = "gbt_t5x_guide"
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _u64(x: int) -> tf.Tensor:
  return tf.constant(x, tf.uint64)


def _mix(z: tf.Tensor) -> tf.Tensor:
  """splitmix64's finalizer on a uint64 tensor of any shape (elementwise, wrap-around)."""
  shr = tf.bitwise.right_shift
  z = tf.bitwise.bitwise_xor(z, shr(z, _u64(30))) * _u64(_M1)
  z = tf.bitwise.bitwise_xor(z, shr(z, _u64(27))) * _u64(_M2)
  return tf.bitwise.bitwise_xor(z, shr(z, _u64(31)))


def check_task_guide_percent(percent: float, name: str = "guide percent") -> None:
  """ValueError unless `percent` is a number in the open range (0, 100): a task's guide slice
  must leave both the guide and the rest non-empty. `name` is how the message calls it."""
  if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not (
      0.0 < float(percent) < 100.0):
    raise ValueError(f"{name} must be a number in (0, 100), got {percent!r}")


def _check_percent(percent: float) -> None:
  if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not (
      0.0 <= float(percent) <= 100.0):
    raise ValueError(f"guide percent must be a number in [0, 100], got {percent!r}")


def guide_bucket(key: tf.Tensor, salt: str = DEFAULT_SALT) -> tf.Tensor:
  """The bucket in [0, 10000) of a scalar string `key` (see the module docstring); int64 scalar."""
  key = tf.convert_to_tensor(key)
  if key.dtype != tf.string or (key.shape.rank is not None and key.shape.rank != 0):
    raise ValueError(f"guide split key must be a scalar tf.string, got {key.dtype.name} "
                     f"with shape {key.shape}")
  data = tf.io.decode_raw(tf.strings.join([tf.constant(salt, tf.string), key]), tf.uint8)
  data = tf.cast(data, tf.uint64)
  n = tf.shape(data, out_type=tf.int64)[0]
  positions = tf.range(n, dtype=tf.int64)
  terms = _mix(tf.cast(positions, tf.uint64) * _u64(256) + data + _u64(_GOLDEN))
  h = _mix(tf.reduce_sum(terms) + tf.cast(n, tf.uint64))
  return tf.cast(h % _u64(NUM_BUCKETS), tf.int64)


def in_guide_split(key: tf.Tensor, percent: float = 1.0, salt: str = DEFAULT_SALT) -> tf.Tensor:
  """Whether the example with scalar string `key` belongs to the `percent` % guide slice.

  Returns a tf.bool scalar; deterministic in (key, salt, percent). Slices are nested: an example
  in the p % slice is in every larger one."""
  _check_percent(percent)
  threshold = int(round(float(percent) * NUM_BUCKETS / 100.0))
  return guide_bucket(key, salt) < threshold


def filter_guide(ds: tf.data.Dataset,
                 key_fn: Callable[[Any], tf.Tensor],
                 percent: float = 1.0,
                 keep_guide: bool = True,
                 salt: str = DEFAULT_SALT) -> tf.data.Dataset:
  """The guide slice of `ds` (`keep_guide=True`) or its complement (`keep_guide=False`).

  `key_fn(example) -> scalar tf.string` picks the content that decides membership (e.g. the
  text, or source + target of a pair). The two calls with the same arguments partition `ds`."""
  _check_percent(percent)
  if not isinstance(keep_guide, bool):
    raise ValueError(f"keep_guide must be a bool, got {keep_guide!r}")

  def predicate(ex):
    member = in_guide_split(key_fn(ex), percent, salt)
    return member if keep_guide else tf.logical_not(member)

  return ds.filter(predicate)


def guide_filter(key_fn: Callable[[Any], tf.Tensor], percent: float = 1.0,
                 keep_guide: bool = True, salt: str = DEFAULT_SALT
                 ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """`ds -> filter_guide(ds, key_fn, percent, keep_guide, salt)`, checked now: the per-split
  filter a `tfds_source.PreparedTfdsDataSource` applies to carve out (or drop) a guide slice."""
  _check_percent(percent)
  if not isinstance(keep_guide, bool):
    raise ValueError(f"keep_guide must be a bool, got {keep_guide!r}")
  return lambda ds: filter_guide(ds, key_fn, percent, keep_guide, salt)
