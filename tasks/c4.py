"""SeqIO registrations of T5's C4 span-corruption pretraining tasks and their guide task.

* `c4_span_corruption`: TFDS `c4/en:3.1.0` (the version TFDS 4.9.x builds); splits `train` and
  `validation` (validation minus the guide slice).
* `c4_span_corruption_guide`: the guide (tuning) slice, `GUIDE_PERCENT` (1 %) of `c4/en`
  validation chosen by `gbt_t5x.data.guide_split` on the document text; splits `train` and
  `validation` (the same slice). Held out of training (train split) and of the main task's
  validation.
* `c4_v220_span_corruption`: T5's name; the same definition on `c4/en:2.2.0`, the version T5's
  task reads (TFDS 4.9.x still lists 2.2.0), with T5's plain train / validation splits.

Preprocessing as T5: rekey `text` -> `targets` (`inputs` empty), tokenize, cache placeholder,
`span_corruption` (random chunk, concatenation, split to `random_spans_helper`'s length, noise
density 0.15, mean span 3, sentinels from `vocab_size - 1` down), EOS appended after trimming.
Sequence lengths: inputs 512 / targets 114 (`DEFAULT_SEQUENCE_LENGTH`). No metrics.

Vocabulary: importing registers the tasks above with T5's SentencePiece vocabulary
(`T5_VOCABULARY_PATH`, 32000 pieces + 100 extra ids, read lazily on first use);
`register_c4_tasks(vocabulary, suffix=...)` registers the same family for another vocabulary
(tests use the demo world's). Data must be prepared: `tfds build c4 --config en --data_dir DIR`,
then `--tfds_data_dir=DIR`; an unprepared dataset raises a ValueError saying so. Importing reads
no data.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import functools
from typing import Optional

import seqio
import tensorflow as tf

from gbt_t5x.data import guide_split
from gbt_t5x.data import span_corruption
from gbt_t5x.data import tfds_source
from gbt_t5x.data import vocabularies

from gbt_t5x.data.vocabularies import T5_VOCABULARY_PATH  # noqa: E402  (re-exported)
EXTRA_IDS = 100
C4_TFDS_NAME = "c4/en:3.1.0"
C4_V220_TFDS_NAME = "c4/en:2.2.0"
GUIDE_PERCENT = 1.0
GUIDE_SALT = "c4_span_corruption_guide"
DEFAULT_SEQUENCE_LENGTH = {"inputs": 512, "targets": 114}
TASK_NAMES = ("c4_span_corruption", "c4_span_corruption_guide", "c4_v220_span_corruption")


def default_vocabulary() -> seqio.Vocabulary:
  """T5's SentencePiece vocabulary (32000 pieces + 100 extra ids; read lazily)."""
  return vocabularies.sentencepiece_vocabulary(T5_VOCABULARY_PATH, extra_ids=EXTRA_IDS)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """T5's pretraining features: optional `inputs` and `targets`, both with EOS."""
  return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def span_corruption_preprocessors() -> list:
  """rekey text -> targets, tokenize, cache placeholder, span corruption, EOS after trim."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      span_corruption.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]


def _text_key(ex: dict[str, tf.Tensor]) -> tf.Tensor:
  return ex["text"]


def _guide_filter(keep_guide: bool, percent: float):
  return functools.partial(guide_split.filter_guide, key_fn=_text_key, percent=percent,
                           keep_guide=keep_guide, salt=GUIDE_SALT)


def _add(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # Re-registration (reload, other vocabulary) replaces it.
  seqio.TaskRegistry.add(name, source=source, preprocessors=span_corruption_preprocessors(),
                         output_features=output_features(vocabulary), metric_fns=[])


def register_c4_tasks(vocabulary: Optional[seqio.Vocabulary] = None, *, suffix: str = "",
                      tfds_data_dir: Optional[str] = None,
                      guide_percent: float = GUIDE_PERCENT) -> list[str]:
  """Registers `TASK_NAMES` (each + `suffix`) for `vocabulary` (None: T5's); returns the names.

  `tfds_data_dir` fixes where the prepared C4 lives (None: seqio's override, then TFDS's
  default); `guide_percent` is the share (in %) of C4 validation documents held out as guide."""
  vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
  main, guide, v220 = (n + suffix for n in TASK_NAMES)
  _add(main, tfds_source.PreparedTfdsDataSource(
      C4_TFDS_NAME, {"train": "train", "validation": "validation"}, tfds_data_dir=tfds_data_dir,
      split_filters={"validation": _guide_filter(False, guide_percent)}), vocabulary)
  _add(guide, tfds_source.PreparedTfdsDataSource(
      C4_TFDS_NAME, {"train": "validation", "validation": "validation"},
      tfds_data_dir=tfds_data_dir,
      split_filters={s: _guide_filter(True, guide_percent) for s in ("train", "validation")}),
       vocabulary)
  _add(v220, tfds_source.PreparedTfdsDataSource(
      C4_V220_TFDS_NAME, {"train": "train", "validation": "validation"},
      tfds_data_dir=tfds_data_dir), vocabulary)
  return [main, guide, v220]


register_c4_tasks()
