"""Reads of unchanged data kept across the runs of one experiment process (`trust_unchanged_data`).

What it is for: an experiment script trains and scores a dozen runs in one process on a demo world
written once before the first run. Through `gbt_t5x.train.data.set_read_cache`, while the data is
trusted, each dataset configuration's first batch is checked once (`first_batch_or_error`, at the
start of every run) and each evaluation split is read once (`single_pass_batches`, the scoring),
instead of rebuilding (tracing) the same tf.data pipelines for every run. Reads under another
data version are kept apart.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from gbt_t5x.train import data as data_lib

Batch = dict[str, np.ndarray]


def _read_only(batch: Mapping[str, np.ndarray]) -> Batch:
  """`batch` with its arrays made read-only, so that a replayed batch cannot be changed."""
  for value in batch.values():
    value.setflags(write=False)
  return dict(batch)


class TrustedReads:
  """A `data_lib.ReadCache` keyed by (data version, every field of the configuration, this
  process's shard). `version` names the data as it is now (None: nothing is cached)."""

  def __init__(self):
    self.version: str | None = None
    # key -> its first batch, checked.
    self._first_batches: dict[tuple[Any, ...], Batch] = {}
    # key -> (its numpy iterator, the batches read from it so far).
    self._single_pass_reads: dict[tuple[Any, ...], tuple[Iterator[Batch], list[Batch]]] = {}

  def clear(self) -> None:
    self._first_batches.clear()
    self._single_pass_reads.clear()

  def _key(self, cfg: data_lib.DatasetConfig) -> tuple[Any, ...] | None:
    if self.version is None:
      return None
    fields = dataclasses.asdict(cfg)
    fields["task_feature_lengths"] = tuple(sorted(cfg.task_feature_lengths.items()))
    return (self.version, tuple(sorted(fields.items())), jax.process_index(),
            jax.process_count())

  def first_batch(self, cfg: data_lib.DatasetConfig, read: Callable[[], Batch]) -> Batch:
    key = self._key(cfg)
    if key is None:
      return read()
    if key not in self._first_batches:
      self._first_batches[key] = _read_only(read())
    return self._first_batches[key]

  def single_pass(self, cfg: data_lib.DatasetConfig, read: Callable[[], Iterator[Batch]]
                  ) -> Iterator[Batch]:
    """Replays the batches read so far, then reads on (however far an earlier read got)."""
    key = self._key(cfg)
    if key is None:
      yield from read()
      return
    if key not in self._single_pass_reads:
      self._single_pass_reads[key] = (read(), [])
    iterator, done = self._single_pass_reads[key]
    for i in itertools.count():
      if i == len(done):
        try:
          done.append(_read_only(next(iterator)))
        except StopIteration:
          return
      yield done[i]


_READS = TrustedReads()


def trust_unchanged_data(version: str | None) -> None:
  """Declares that the data behind the registered tasks stays as it is, identified by `version`
  (e.g. the demo world's folder and settings), until the next call; None ends the trust (and
  drops what was kept)."""
  _READS.version = version
  if version is None:
    _READS.clear()
    data_lib.set_read_cache(None)
  else:
    data_lib.set_read_cache(_READS)
