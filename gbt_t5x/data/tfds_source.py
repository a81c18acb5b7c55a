"""A read-only `seqio.TfdsDataSource` that explains unprepared datasets and can filter splits.

What it is for: real tasks read C4 / WMT / GLUE through TFDS. Two faults of the plain source:
`tfds.load(download=True)` starts a download (C4 needs a Beam pipeline over Common Crawl), and a
missing dataset surfaces as a bare `AssertionError` deep inside TFDS. `PreparedTfdsDataSource`
never downloads (`read_only=True`) and turns a missing dataset into a one-line ValueError naming
the `tfds build` command and the data dir it looked in (set it with T5X's `--tfds_data_dir`,
i.e. `seqio.set_tfds_data_dir_override`, or the source's `tfds_data_dir`). Optional per-split
filters (e.g. a `guide_split.filter_guide`) carve guide slices out of a split.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

DatasetFilter = Callable[[tf.data.Dataset], tf.data.Dataset]


def build_command(tfds_name: str) -> str:
  """The `tfds build` command that prepares `tfds_name` ("c4/en:3.1.0" -> "tfds build c4
  --config en --version 3.1.0")."""
  name, _, version = tfds_name.partition(":")
  builder, _, config = name.partition("/")
  cmd = f"tfds build {builder}"
  if config:
    cmd += f" --config {config}"
  if version:
    cmd += f" --version {version}"
  return cmd


class PreparedTfdsDataSource(seqio.TfdsDataSource):
  """`seqio.TfdsDataSource` over an already prepared TFDS dataset (never downloads).

  Args:
    tfds_name: "name/config:version", e.g. "c4/en:3.1.0".
    splits: canonical split -> TFDS split (or slice), e.g. {"validation": "validation[:1%]"}.
    tfds_data_dir: where the prepared data live (None: seqio's override, else TFDS's default).
    split_filters: canonical split -> function applied to the loaded `tf.data.Dataset` of raw
      TFDS examples (e.g. keeping a hash-split guide slice).
  """

  def __init__(self, tfds_name: str, splits: Mapping[str, str], *,
               tfds_data_dir: Optional[str] = None,
               split_filters: Optional[Mapping[str, DatasetFilter]] = None):
    split_filters = dict(split_filters or {})
    unknown = sorted(set(split_filters) - set(splits))
    if unknown:
      raise ValueError(f"split_filters names splits {unknown} that are not in {sorted(splits)}")
    super().__init__(tfds_name, tfds_data_dir=tfds_data_dir, splits=dict(splits),
                     read_only=True)
    self._tfds_name = tfds_name
    self._split_filters = split_filters

  def _not_prepared(self, err: Exception) -> ValueError:
    data_dir = self.tfds_dataset.data_dir or tfds.core.constants.DATA_DIR
    return ValueError(
        f"TFDS dataset {self._tfds_name} is not prepared in {data_dir} ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}); run `{build_command(self._tfds_name)}"
        f" --data_dir DIR` and pass --tfds_data_dir=DIR")

  def get_dataset(self, split: Optional[str] = None, shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    """The raw TFDS examples of `split` (after its filter); ValueError if not prepared."""
    split = split or "train"
    if split not in self.splits:
      raise ValueError(f"{self._tfds_name} source has no split {split!r}; expected one of "
                       f"{sorted(self.splits)}")
    try:
      ds = super().get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
      raise self._not_prepared(e) from e
    except ValueError as e:
      if "not found" in str(e) or "cannot be loaded at version" in str(e):
        raise self._not_prepared(e) from e
      raise
    if split in self._split_filters:
      ds = self._split_filters[split](ds)
    return ds

  def list_shards(self, split: str) -> list[str]:
    """The TFDS files of `split`; [] when TFDS has no split metadata (the dataset is not
    prepared, or it is mocked by `tfds.testing.mock_data`).

    `seqio.Task.get_dataset` asks for the shards before reading, to decide whether to shard
    files or examples; [] makes it read the whole split and shard its examples, so an unprepared
    dataset reaches `get_dataset` and its one-line "run `tfds build ...`" error (instead of
    TFDS's KeyError "`splits` is empty"), and mocked data load as in a test of a plain source.
    """
    try:
      return list(super().list_shards(split))
    except KeyError:
      return []

  def num_input_examples(self, split: str) -> Optional[int]:
    """Examples in `split` before preprocessing; None when unknown (filtered split, or no split
    metadata: not prepared, or mocked by `tfds.testing.mock_data`)."""
    if split in self._split_filters:
      return None
    try:
      return super().num_input_examples(split)
    except (KeyError, AssertionError, ValueError, FileNotFoundError):
      return None
