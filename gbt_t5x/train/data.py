"""Datasets for training: T5X's `DatasetConfig`, SeqIO loading per process, and batch iterators.

A `DatasetConfig` names a SeqIO task or mixture, its split and feature lengths, and the *global*
batch size. Each JAX process reads its own shard (`seqio.ShardInfo`) and the per-process batches
are assembled into global `jax.Array`s sharded over the mesh's `data` axis.

The pipeline is deterministic for a seed, so exact resume skips the batches already consumed
(`skip_batches`) instead of checkpointing tf.data iterator state. Must not import gin or
`gbt_t5x.models`.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import numbers
import re
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from gbt_t5x.data import data_ids

DATA_IDS_FEATURE = "data_ids"
ID_OFFSET = 1  # data ids are stored plus one in the pipeline (see the converter below)


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """T5X's dataset configuration (gin-scoped as `train/`, `train_eval/`, `guide/`, ...).

  Attributes:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 114} (tokens).
    split: dataset split, e.g. 'train' or 'validation'.
    batch_size: the *global* batch size (examples per step across all processes).
    shuffle: shuffle examples (train: yes; eval: no).
    seed: shuffle seed (None = nondeterministic; exact resume needs a seed).
    use_cached: read seqio's cached version of the task.
    pack: pack several examples per row (adds segment ids / positions).
    module: an extra module to import that registers the task (T5X's MIXTURE_OR_TASK_MODULE).
    data_id_feature: name of an integer per-example feature of the task (e.g. 'noise_bucket')
      to copy onto every target token as `decoder_data_ids` (for guided data weights).
    num_epochs: None repeats forever (training); 1 for a single pass (evaluation).
    mixture_weights: with mixture-task ids, one multiplier per leaf task of the mixture's own
      rates (tasks are then sampled with probability ∝ rate × weight; online sampling rates of
      guided mixture weights set it per `SamplingSegment`); None: the mixture's rates.
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: int | None = None
  use_cached: bool = False
  pack: bool = False
  module: str | None = None
  data_id_feature: str | None = None
  num_epochs: int | None = None
  mixture_weights: tuple[float, ...] | None = None


class EncDecWithDataIdsFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that also carries a per-token `decoder_data_ids` feature.

  The task's per-example id is first copied onto every target token as `data_ids` (see
  `add_data_ids`); this converter pads/packs it with the targets, so it works with packing, where
  seqio's passthrough features are not allowed. In the pipeline the ids are stored plus one
  (`ID_OFFSET`): SeqIO's packing takes zeros for padding and drops them, which would drop the
  ids of id-0 examples and shift the next example's ids onto their tokens. The converter
  subtracts the offset again (padding: 0, with zero loss weight).
  """
  TASK_FEATURES = {
      **seqio.EncDecFeatureConverter.TASK_FEATURES,
      DATA_IDS_FEATURE: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      **seqio.EncDecFeatureConverter.MODEL_FEATURES,
      "decoder_data_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    converted["decoder_data_ids"] = tf.maximum(features[DATA_IDS_FEATURE] - ID_OFFSET, 0)
    return converted

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths["decoder_data_ids"] = task_feature_lengths["targets"]
    return lengths


def task_of(cfg: "DatasetConfig") -> seqio.Task | seqio.Mixture:
  """`cfg`'s task or mixture, after importing `cfg.module` (T5X's MIXTURE_OR_TASK_MODULE)."""
  if cfg.module:
    importlib.import_module(cfg.module)
  return get_mixture_or_task(cfg.mixture_or_task_name)


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  """Looks up a registered task or mixture; an unknown name lists the close matches."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; registered: {', '.join(sorted(known)[:20])}" if known else
        "; no tasks are registered (is MIXTURE_OR_TASK_MODULE imported?)")
    raise ValueError(f"unknown SeqIO task or mixture {name!r}{hint}") from None


def validate_feature_lengths(cfg: DatasetConfig) -> None:
  """Raises ValueError for missing or non-positive feature lengths or batch size."""
  validate_batch_size(cfg)
  for key in ("inputs", "targets"):
    length = cfg.task_feature_lengths.get(key)
    if length is None:
      raise ValueError(f"{cfg.mixture_or_task_name}: task_feature_lengths lacks {key!r}")
    if int(length) <= 0:
      raise ValueError(f"{cfg.mixture_or_task_name}: sequence length {key}={length} must be > 0")


def validate_batch_size(cfg: DatasetConfig) -> None:
  """Raises a one-line ValueError for a batch size that is not a positive int (examples)."""
  if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, numbers.Integral) or (
      cfg.batch_size <= 0):
    raise ValueError(f"{cfg.mixture_or_task_name}: batch_size (BATCH_SIZE) must be an int > 0, "
                     f"got {cfg.batch_size!r}")


def _per_process_batch_size(cfg: DatasetConfig) -> int:
  validate_batch_size(cfg)
  count = jax.process_count()
  if cfg.batch_size % count:
    raise ValueError(f"global batch_size {cfg.batch_size} of {cfg.mixture_or_task_name} is not "
                     f"divisible by the {count} processes")
  return cfg.batch_size // count


def add_data_ids(ds: tf.data.Dataset, feature: str, task_name: str) -> tf.data.Dataset:
  """Copies the per-example integer `feature` onto each target token as `data_ids` [targets_len]."""
  if feature not in ds.element_spec:
    raise ValueError(f"task {task_name} has no feature {feature!r} for data weights; it has "
                     f"{sorted(ds.element_spec)}")

  def add(ex):
    ex = dict(ex)
    ex[DATA_IDS_FEATURE] = tf.fill(tf.shape(ex["targets"]),
                                   tf.cast(ex[feature], tf.int32) + ID_OFFSET)
    return ex

  return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def mixture_with_task_ids(cfg: DatasetConfig, shard_info: seqio.ShardInfo) -> tf.data.Dataset:
  """`cfg`'s mixture sampled as `seqio.Mixture.get_dataset` samples it, each example carrying its
  leaf task's id (`data_ids.mixture_leaf_tasks` order) on every target token as `data_ids`.

  Why not `seqio.Mixture.get_dataset`: its examples do not say which task they came from. This
  builds the same stream from SeqIO's own pieces (`Mixture.get_task_dataset` per leaf task, the
  leaf rates `Mixture.get_rate`, `tf.data.Dataset.sample_from_datasets` with SeqIO's seed rule),
  so that dropping `data_ids` gives SeqIO's stream example for example (tested).

  Raises:
    ValueError: one line, when the train task is not a mixture, a rate is not positive, or a
      leaf task lacks `cfg.split` (SeqIO would skip it, shifting every id after it).
  """
  tasks = data_ids.mixture_leaf_tasks(cfg.mixture_or_task_name, cfg.module)
  mixture = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  keys = set(mixture.output_features)
  datasets = []
  for index, leaf in enumerate(tasks):
    if cfg.split not in leaf.splits:
      raise ValueError(f"mixture {mixture.name}: task {leaf.name} has no split {cfg.split!r} "
                       f"(it has {list(leaf.splits)})")
    ds = mixture.get_task_dataset(leaf, keys, dict(cfg.task_feature_lengths), cfg.split,
                                  cfg.use_cached, cfg.shuffle, cfg.seed, shard_info,
                                  cfg.num_epochs)
    datasets.append(ds.map(
        lambda ex, i=index: {**ex,
                             DATA_IDS_FEATURE: tf.fill(tf.shape(ex["targets"]), i + ID_OFFSET)},
        num_parallel_calls=tf.data.AUTOTUNE))
  rates = [mixture.get_rate(leaf) for leaf in tasks]
  if cfg.mixture_weights is not None:
    weights = [float(w) for w in cfg.mixture_weights]
    if len(weights) != len(rates) or not all(math.isfinite(w) and w > 0 for w in weights):
      raise ValueError(f"mixture {mixture.name}: mixture_weights must be {len(rates)} positive "
                       f"numbers (one per leaf task), got {weights}")
    rates = [r * w for r, w in zip(rates, weights)]
  seed = cfg.seed if cfg.seed is not None else (None if cfg.shuffle else 42)  # SeqIO's rule
  return tf.data.Dataset.sample_from_datasets(datasets, rates, seed,
                                              stop_on_empty_dataset=True)


def check_mixture_members(cfg: DatasetConfig) -> None:
  """With mixture-task ids: a one-line ValueError naming the first leaf task of the mixture
  whose `cfg.split` yields no examples (the mixed stream would end without saying which)."""
  if cfg.data_id_feature != data_ids.MIXTURE_TASK:
    return
  mixture = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  for leaf in data_ids.mixture_leaf_tasks(cfg.mixture_or_task_name, cfg.module):
    ds = leaf.get_dataset(sequence_length=dict(cfg.task_feature_lengths), split=cfg.split,
                          shuffle=False, num_epochs=1)
    if not any(True for _ in ds.take(1)):
      raise ValueError(f"mixture {mixture.name}: task {leaf.name} split {cfg.split!r} yields no "
                       "examples")


def get_dataset(cfg: DatasetConfig, shard_id: int | None = None,
                num_shards: int | None = None) -> tf.data.Dataset:
  """This process's batched, feature-converted `tf.data.Dataset` for `cfg`.

  Returns batches of `cfg.batch_size / process_count` examples with the model features of the
  encoder-decoder converter, each `[batch, length]` int32.
  """
  validate_feature_lengths(cfg)
  task = task_of(cfg)
  shard_info = seqio.ShardInfo(index=jax.process_index() if shard_id is None else shard_id,
                               num_shards=jax.process_count() if num_shards is None else num_shards)
  lengths = dict(cfg.task_feature_lengths)
  if cfg.data_id_feature == data_ids.MIXTURE_TASK:
    ds = mixture_with_task_ids(cfg, shard_info)
  else:
    ds = task.get_dataset(sequence_length=lengths, split=cfg.split, use_cached=cfg.use_cached,
                          shuffle=cfg.shuffle, seed=cfg.seed, shard_info=shard_info,
                          num_epochs=cfg.num_epochs)
  if cfg.data_id_feature:
    if cfg.data_id_feature != data_ids.MIXTURE_TASK:
      ds = add_data_ids(ds, cfg.data_id_feature, cfg.mixture_or_task_name)
    lengths[DATA_IDS_FEATURE] = lengths["targets"]
    converter = EncDecWithDataIdsFeatureConverter(pack=cfg.pack)
  else:
    converter = seqio.EncDecFeatureConverter(pack=cfg.pack)
  ds = converter(ds, lengths)
  drop_remainder = cfg.num_epochs is None
  ds = ds.batch(_per_process_batch_size(cfg), drop_remainder=drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE)


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: Any) -> dict[str, jax.Array]:
  """Assembles this process's numpy batch into global arrays sharded over the `data` axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a short final batch with all-zero rows (zero loss weight) up to `batch_size` rows."""
  rows = len(next(iter(batch.values())))
  if rows == batch_size:
    return dict(batch)
  return {k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class SamplingSegment:
  """A stretch of the train stream with fixed mixture sampling weights (online sampling rates).

  Each refresh of the weights starts a new segment: the mixture pipeline is rebuilt with the new
  weights and a seed of its own (`seed_of`), so the stream is a function of the run's seed and
  the weights' history alone. A checkpoint keeps the current segment (`as_json`), so a resumed
  run rebuilds it and skips the batches already read from it.

  Attributes:
    index: segment number (0 for the first).
    start_position: batches the iterator had handed out when the segment began.
    weights: one multiplier per leaf task of the mixture's rates.
  """
  index: int
  start_position: int
  weights: tuple[float, ...]

  def seed_of(self, seed: int | None) -> int | None:
    """The segment's pipeline seed (None stays None: nondeterministic)."""
    return None if seed is None else (int(seed) * 1_000_003 + self.index) % (2**31 - 1)

  def config(self, cfg: DatasetConfig) -> DatasetConfig:
    return dataclasses.replace(cfg, mixture_weights=self.weights, seed=self.seed_of(cfg.seed))

  def as_json(self) -> dict[str, Any]:
    return {"index": self.index, "start_position": self.start_position,
            "weights": list(self.weights)}

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> "SamplingSegment":
    return cls(int(value["index"]), int(value["start_position"]),
               tuple(float(w) for w in value["weights"]))


class BatchIterator:
  """Infinite (or single-pass) iterator of global batches with a consumed-batch counter.

  `position` counts batches handed out since the start of the pipeline, so a restored run can
  rebuild the same iterator and `skip` to it for an exact resume. With online mixture sampling
  rates the stream is cut into `SamplingSegment`s (`start_segment`); `segment` is then the one
  being read.
  """

  def __init__(self, cfg: DatasetConfig, sharding: Any, start_position: int = 0,
               check_fn: Callable[[Mapping[str, np.ndarray]], None] | None = None,
               segment: SamplingSegment | None = None):
    self.cfg = cfg
    self._check_fn = check_fn
    self._sharding = sharding
    self._local_batch_size = _per_process_batch_size(cfg)
    self.position = start_position
    self.segment = segment
    self._open(start_position - (segment.start_position if segment else 0))

  def _open(self, skip: int) -> None:
    cfg = self.segment.config(self.cfg) if self.segment else self.cfg
    ds = get_dataset(cfg)
    if skip:
      ds = ds.skip(skip)
    self._it = ds.as_numpy_iterator()

  def start_segment(self, weights: Sequence[float]) -> None:
    """From the next batch on, samples the mixture's tasks ∝ rate × `weights` (a new segment).

    Raises:
      ValueError: one line, when the config carries no mixture-task ids.
    """
    if self.cfg.data_id_feature != data_ids.MIXTURE_TASK:
      raise ValueError("online mixture sampling rates need a mixture as the train task with "
                       "mixture-task ids (include gin/guided/mixture_weights.gin)")
    index = 0 if self.segment is None else self.segment.index + 1
    self.segment = SamplingSegment(index, self.position, tuple(float(w) for w in weights))
    self._open(0)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    try:
      local = next(self._it)
    except StopIteration:
      if self.cfg.num_epochs is None:  # A repeated pipeline only ends when it is empty.
        raise ValueError(_no_examples_message(self.cfg)) from None
      raise
    except tf.errors.OpError as e:  # Malformed input data (e.g. a TSV line with missing fields).
      raise ValueError(_bad_data_message(self.cfg, e, self.position)) from None
    local = pad_batch(local, self._local_batch_size)
    if self._check_fn is not None:
      self._check_fn(local)
    self.position += 1
    return global_batch(local, self._sharding)


def _no_examples_message(cfg: DatasetConfig) -> str:
  return (f"task {cfg.mixture_or_task_name} split {cfg.split!r} yields no examples "
          f"(batch_size {cfg.batch_size}, process {jax.process_index()} of "
          f"{jax.process_count()})")


def _bad_data_message(cfg: DatasetConfig, e: BaseException, position: int) -> str:
  # TF op errors start with `{{function_node ...}}` and a chain of "...: ..." contexts; the
  # cause (e.g. "Expect 4 fields but have 2 in record 0") is the last part of the first line.
  lines = [l for l in str(getattr(e, "message", e)).splitlines() if l.strip()] or [repr(e)]
  detail = re.sub(r"\{\{.*?\}\}", "", lines[0]).strip().rsplit(": ", 1)[-1].strip()
  if len(detail) > 200:
    detail = detail[:197] + "..."
  return (f"task {cfg.mixture_or_task_name} split {cfg.split!r}: malformed input data near "
          f"batch {position}: {type(e).__name__}: {detail}")


class ReadCache(Protocol):
  """A cache of dataset reads, for an in-process driver of many runs on data it knows unchanged
  (`set_read_cache`; e.g. the experiment harness's `data_cache`). Each method returns what
  `read` returns, or a copy kept from an earlier call for the same configuration."""

  def first_batch(self, cfg: DatasetConfig,
                  read: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first local batch of `cfg` (`read()` reads and checks it)."""

  def single_pass(self, cfg: DatasetConfig, read: Callable[[], Iterator[dict[str, np.ndarray]]]
                  ) -> Iterator[dict[str, np.ndarray]]:
    """The local batches of the single-pass `cfg`, in order (`read()` starts a new read)."""


_read_cache: ReadCache | None = None


def set_read_cache(cache: ReadCache | None) -> None:
  """Routes `first_batch_or_error` and `single_pass_batches` through `cache` (None: read the
  data every time, the default). Only for data that does not change while the cache is set."""
  global _read_cache
  _read_cache = cache


def first_batch_or_error(cfg: DatasetConfig) -> dict[str, np.ndarray]:
  """Reads one local batch, raising a one-line ValueError when the split (or, with mixture-task
  ids, one of the mixture's tasks) yields no examples or its first batch cannot be parsed (e.g. a
  truncated TSV line). Through the read cache, if one is set (`set_read_cache`)."""
  if _read_cache is not None:
    return _read_cache.first_batch(cfg, lambda: _read_first_batch(cfg))
  return _read_first_batch(cfg)


def _read_first_batch(cfg: DatasetConfig) -> dict[str, np.ndarray]:
  check_mixture_members(cfg)
  ds = get_dataset(dataclasses.replace(cfg, num_epochs=1))
  try:
    for batch in ds.take(1).as_numpy_iterator():
      return batch
  except tf.errors.OpError as e:
    raise ValueError(_bad_data_message(cfg, e, 0)) from None
  raise ValueError(_no_examples_message(cfg))


def single_pass_batches(cfg: DatasetConfig) -> Iterator[dict[str, np.ndarray]]:
  """This process's local numpy batches of an unshuffled single-pass `cfg` (evaluation), in
  order. Through the read cache, if one is set (`set_read_cache`)."""
  if cfg.shuffle or cfg.num_epochs != 1:
    raise ValueError(f"single_pass_batches needs shuffle=False and num_epochs=1, got shuffle="
                     f"{cfg.shuffle} num_epochs={cfg.num_epochs}")
  if _read_cache is not None:
    yield from _read_cache.single_pass(cfg, lambda: get_dataset(cfg).as_numpy_iterator())
    return
  yield from get_dataset(cfg).as_numpy_iterator()
