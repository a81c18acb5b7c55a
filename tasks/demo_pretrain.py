"""SeqIO registrations of the demo world's span-corruption pretraining tasks.

What it is for: the closed-world stand-in for `c4_span_corruption`, so pretrain -> finetune runs
on CPU. The text is the demo world's monolingual corpus `mono.txt` (source-language sentences,
see `gbt_t5x.data.demo_world`), tokenized with the demo vocabulary (`gbt_t5x_tasks.demo`'s
`VOCABULARY`, 100 extra ids used as sentinels); the world is generated lazily on first use.

* `demo_span_corruption`: split `train` = mono sentences outside the guide slice; `validation`
  = the sources of `dev.tsv` (clean sentences the generator keeps out of mono).
* `demo_span_corruption_guide`: `GUIDE_PERCENT` (2 %) of mono sentences chosen by
  `gbt_t5x.data.guide_split` on the sentence; splits `train` and `validation` (the same slice).

Preprocessing is the C4 task's (`gbt_t5x_tasks.c4.span_corruption_preprocessors`): rekey,
tokenize, span corruption (noise 0.15, mean span 3), EOS after trim. Default lengths are CPU
sized: `DEFAULT_SEQUENCE_LENGTH` = inputs 64 / targets 14 (`random_spans_helper(64)` -> 70 ids
per segment).

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Optional

import seqio
import tensorflow as tf

from gbt_t5x.data import guide_split
from gbt_t5x.data import span_corruption
from gbt_t5x_tasks import c4
from gbt_t5x_tasks import demo

GUIDE_PERCENT = 2.0
GUIDE_SALT = "demo_span_corruption_guide"
INPUTS_LENGTH = 64
DEFAULT_SEQUENCE_LENGTH = {
    "inputs": INPUTS_LENGTH,
    "targets": span_corruption.random_spans_helper(INPUTS_LENGTH)[1],
}
TASK_NAMES = ("demo_span_corruption", "demo_span_corruption_guide")


def _mono_lines(shuffle_files: bool, seed: Optional[int]) -> tf.data.Dataset:
  ds = tf.data.TextLineDataset(str(demo.ensure_world() / "mono.txt"))
  ds = ds.filter(lambda line: tf.strings.length(line) > 0)
  if shuffle_files:
    ds = ds.shuffle(1 << 17, seed=seed)
  return ds


def _dev_sources(shuffle_files: bool, seed: Optional[int]) -> tf.data.Dataset:
  ds = tf.data.TextLineDataset(str(demo.ensure_world() / "dev.tsv")).skip(1)
  ds = ds.map(lambda line: tf.strings.split(line, "\t")[0])
  if shuffle_files:
    ds = ds.shuffle(1 << 17, seed=seed)
  return ds


def _in_guide(keep_guide: bool, percent: float):
  def keep(line: tf.Tensor) -> tf.Tensor:
    member = guide_split.in_guide_split(line, percent, GUIDE_SALT)
    return member if keep_guide else tf.logical_not(member)
  return keep


def _make_dataset_fn(splits: dict[str, tuple[str, Optional[bool]]], percent: float):
  """`splits`: split -> ("mono" | "dev", keep_guide or None for no guide filter)."""

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None
                 ) -> tf.data.Dataset:
    """{"text": tf.string} examples, one per sentence."""
    if split not in splits:
      raise ValueError(f"unknown demo pretraining split {split!r}; expected one of "
                       f"{sorted(splits)}")
    corpus, keep_guide = splits[split]
    ds = (_mono_lines if corpus == "mono" else _dev_sources)(shuffle_files, seed)
    if keep_guide is not None:
      ds = ds.filter(_in_guide(keep_guide, percent))
    return ds.map(lambda line: {"text": line})

  return dataset_fn


def register_demo_pretrain_tasks(vocabulary: Optional[seqio.Vocabulary] = None, *,
                                 suffix: str = "",
                                 guide_percent: float = GUIDE_PERCENT) -> list[str]:
  """Registers `TASK_NAMES` (each + `suffix`) for `vocabulary` (None: the demo vocabulary)."""
  vocabulary = vocabulary if vocabulary is not None else demo.VOCABULARY
  layouts = {
      TASK_NAMES[0]: {"train": ("mono", False), "validation": ("dev", None)},
      TASK_NAMES[1]: {"train": ("mono", True), "validation": ("mono", True)},
  }
  names = []
  for base, splits in layouts.items():
    name = base + suffix
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)  # Re-registration replaces it.
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_make_dataset_fn(splits, guide_percent),
                                        splits=tuple(splits)),
        preprocessors=c4.span_corruption_preprocessors(),
        output_features=c4.output_features(vocabulary),
        metric_fns=[])
    names.append(name)
  return names


register_demo_pretrain_tasks()
