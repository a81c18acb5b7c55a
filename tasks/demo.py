"""SeqIO registrations of the built-in demo translation tasks (`demo_nmt`, `demo_nmt_guide`).

What it is for: the closed-world stand-in for a WMT pair. The corpus and its SentencePiece model
come from `gbt_t5x.data.demo_world` and live in `default_data_dir()` (`$GBT_T5X_DEMO_DIR`, else
`~/.cache/gbt_t5x/demo`); `$GBT_T5X_DEMO_CONFIG` (JSON) overrides the world's size / seed /
noise rate, e.g. for tiny test worlds, and is inherited by child processes.

* `demo_nmt`: splits `train` (noisy), `validation` (= dev.tsv), `test`.
* `demo_nmt_guide`: the clean guide slice; split `train` and `validation` (the same file).

Both yield `inputs` ("translate Demo to English: <source>") and `targets` tokenized with the
demo vocabulary (100 extra ids, EOS appended after trimming), the pretokenized strings, and the
int32 scalars `noise_bucket` (0 clean, 1 misaligned, 2 truncated, 3 copy; the names
`demo_world.NOISE_BUCKET_NAMES` are registered with `gbt_t5x.data.data_ids` for the data-weight
summaries) and `example_id` (0.. within the split) that pass through to the feature converter.
Decodes are scored (`METRIC_FNS`) with corpus BLEU (sacrebleu, detokenized strings, 0-100) and,
as fractions 0-1, exact match, word F1 and token accuracy.

Laziness (importing this module must stay cheap): the data source is a `seqio.FunctionDataSource`
whose function calls `ensure_demo_world` before reading, and the vocabulary is `DemoVocabulary`,
a `seqio.SentencePieceVocabulary` subclass that resolves its model path through
`ensure_demo_world` on first use. A subclass rather than a fixed path because the task objects
are built at import time, before tests or users pick the data dir; it re-resolves when the data
dir or config in the environment changes, so one process can use several worlds (each in its own
folder: seqio caches loaded models by path).

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import functools
import json
import pathlib
from typing import Optional

import seqio
import tensorflow as tf

from gbt_t5x.data import data_ids
from gbt_t5x.data import demo_world
from gbt_t5x.data import metrics

TASK_PREFIX = demo_world.TASK_PREFIX
EXTRA_IDS = 100
_SPLIT_FILES = {
    "demo_nmt": {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
    "demo_nmt_guide": {"train": "guide.tsv", "validation": "guide.tsv"},
}


def ensure_world() -> pathlib.Path:
  """Makes sure the world for the current environment exists; returns its folder."""
  return demo_world.ensure_demo_world(demo_world.default_data_dir(),
                                      **demo_world.config_from_env())


class DemoVocabulary(seqio.SentencePieceVocabulary):
  """The demo SentencePiece vocabulary (pad 0, eos 1, unk 2, `extra_ids` sentinels on top).

  The model path is resolved lazily from the environment (see the module docstring)."""

  def __init__(self, extra_ids: int = EXTRA_IDS):
    super().__init__("", extra_ids=extra_ids)
    self._world_key: Optional[tuple[str, str]] = None

  def _resolve(self) -> None:
    config = demo_world.config_from_env()
    key = (str(demo_world.default_data_dir()), json.dumps(config, sort_keys=True))
    if key != self._world_key:
      data_dir = demo_world.ensure_demo_world(key[0], **config)
      self._sentencepiece_model_file = str(data_dir / "spm.model")
      self._model = None
      self._world_key = key

  def _model_context(self):
    self._resolve()
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file


VOCABULARY = DemoVocabulary(EXTRA_IDS)
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True, required=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}


def _make_dataset_fn(files: dict[str, str]):
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    """Lines (without the header) of the split's TSV; a full line shuffle when asked."""
    if split not in files:
      raise ValueError(f"unknown demo split {split!r}; expected one of {sorted(files)}")
    path = ensure_world() / files[split]
    ds = tf.data.TextLineDataset(str(path)).skip(1)
    if shuffle_files:
      ds = ds.shuffle(1 << 17, seed=seed)
    return ds
  return dataset_fn


@seqio.map_over_dataset
def parse_demo_tsv(line: tf.Tensor) -> dict[str, tf.Tensor]:
  """One TSV line -> {"source", "target": tf.string, "noise_bucket", "example_id": tf.int32}."""
  source, target, bucket, example_id = tf.io.decode_csv(
      line, record_defaults=["", "", tf.constant(0, tf.int32), tf.constant(0, tf.int32)],
      field_delim="\t", use_quote_delim=False)
  return {"source": source, "target": target, "noise_bucket": bucket, "example_id": example_id}


@seqio.map_over_dataset
def add_task_prefix(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Prepends the T5-style prefix "translate Demo to English: " to `inputs`."""
  return {**ex, "inputs": tf.strings.join([TASK_PREFIX, ex["inputs"]])}


# The demo's seqio metric fns (`gbt_t5x.data.metrics`): corpus BLEU (0-100), and as fractions
# exact match, SQuAD-style word F1 and token accuracy (a predict-with-aux fn reading the target and
# decoded ids, see `metrics.token_accuracy`).
bleu = metrics.bleu
METRIC_FNS = (bleu, metrics.exact_match, metrics.word_f1, metrics.token_accuracy)


def _preprocessors() -> list:
  """read TSV -> rekey -> prefix -> tokenize -> append EOS after trimming."""
  return [
      parse_demo_tsv,
      functools.partial(seqio.preprocessors.rekey, key_map={
          "inputs": "source", "targets": "target", "noise_bucket": "noise_bucket",
          "example_id": "example_id"}),
      add_task_prefix,
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
  ]


def _register(name: str) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # Re-import (e.g. importlib.reload) replaces the task.
  files = _SPLIT_FILES[name]
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_make_dataset_fn(files), splits=tuple(files)),
      preprocessors=_preprocessors(),
      output_features=OUTPUT_FEATURES,
      metric_fns=list(METRIC_FNS))
  # The noise bucket's values by name, for the data-weight summaries (guided/data_weights.gin).
  data_ids.register_names(name, "noise_bucket", demo_world.NOISE_BUCKET_NAMES)


for _name in _SPLIT_FILES:
  _register(_name)
