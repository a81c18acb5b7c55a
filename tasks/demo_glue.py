"""SeqIO registrations of the demo downstream classification tasks (the demo's GLUE).

What it is for: finetune and score a model pretrained on the demo world on CPU, the same way as
GLUE. Data: `gbt_t5x.data.demo_downstream` (generated on first use next to the demo world,
in `$GBT_T5X_DEMO_DIR`; world size / seed from `$GBT_T5X_DEMO_CONFIG`, downstream sizes from
`$GBT_T5X_DEMO_DOWNSTREAM_CONFIG`). Vocabulary: the demo one (`gbt_t5x_tasks.demo.VOCABULARY`).

* `demo_cola`: "demo cola sentence: <s>" -> "unacceptable"/"acceptable"; Matthews corr (CoLA).
* `demo_mrpc`: "demo mrpc first: <s1> second: <s2>" -> "not equivalent"/"equivalent"; F1 and
  accuracy (MRPC).
* `demo_sst2`: "demo sst sentence: <s>" -> "negative"/"positive"; accuracy (SST-2).

Prefixes and labels avoid "_" and digits, which the demo SentencePiece model cannot encode.
Formatting, postprocessors and metrics are GLUE's (`gbt_t5x.data.glue.text_to_text`,
`string_label_to_class_id`, `gbt_t5x.data.metrics`). Splits `train` (without its guide slice),
`validation`, `test` (labelled). `<task>_guide` (splits `train` and `validation`, the same data)
is the `GUIDE_PERCENT` slice of the train TSV chosen by `gbt_t5x.data.guide_split` on the first
text column. Mixtures `demo_glue_proportional` (the train sets are equally large, so equal
rates) and `demo_glue_proportional_guide`. Examples carry `inputs`, `targets` (EOS appended after
trimming), their `_pretokenized` strings and int32 `idx`.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Callable, Optional

import seqio
import tensorflow as tf

from gbt_t5x.data import demo_downstream as dd
from gbt_t5x.data import demo_world
from gbt_t5x.data import glue as fmt
from gbt_t5x.data import guide_split
from gbt_t5x.data import metrics
from gbt_t5x_tasks import demo

GUIDE_PERCENT = 5.0
# Feature lengths that hold every demo_* example untruncated: MRPC inputs are two sentences (up
# to ~113 tokens), and the label words are spelled in up to 12 pieces of the demo vocabulary
# ("not equivalent"), + EOS.
DEFAULT_SEQUENCE_LENGTH = {"inputs": 120, "targets": 16}
GUIDE_SUFFIX = "_guide"
MIXTURE = "demo_glue_proportional"
BENCHMARKS = {"cola": "demo cola", "mrpc": "demo mrpc", "sst2": "demo sst"}
METRICS = {"cola": (metrics.matthews_corrcoef,), "mrpc": (metrics.f1_and_accuracy,),
           "sst2": (metrics.accuracy,)}


def task_name(task: str, suffix: str = "") -> str:
  """"demo_<task><suffix>", e.g. demo_cola."""
  return f"demo_{task}{suffix}"


def ensure_downstream() -> pathlib.Path:
  """Makes sure the world and downstream data for the environment exist; returns the folder."""
  return dd.ensure_demo_downstream(demo_world.default_data_dir(), dd.config_from_env(),
                                   **demo_world.config_from_env())


def _parse_fn(task: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
  columns = dd.tsv_header(task)

  def parse(line: tf.Tensor) -> dict[str, tf.Tensor]:
    defaults = ["" if c not in ("label", "idx") else tf.constant(0, tf.int32) for c in columns]
    fields = tf.io.decode_csv(line, record_defaults=defaults, field_delim="\t",
                              use_quote_delim=False)
    return {c: f for c, f in zip(columns, fields) if c != "info"}

  return parse


def _make_dataset_fn(task: str, guide: dict[str, Optional[bool]], percent: float):
  """`guide`: split -> True (guide slice of train), False (train without it), None (as is)."""
  key_column = dd.TEXT_COLUMNS[task][0]

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None
                 ) -> tf.data.Dataset:
    """Parsed rows of the split: text columns (tf.string), `label` and `idx` (int32)."""
    if split not in guide:
      raise ValueError(f"unknown {task_name(task)} split {split!r}; expected one of "
                       f"{sorted(guide)}")
    file_split = "train" if guide[split] is not None else split
    path = ensure_downstream() / dd.tsv_name(task, file_split)
    ds = tf.data.TextLineDataset(str(path)).skip(1).map(_parse_fn(task))
    if guide[split] is not None:
      ds = guide_split.filter_guide(ds, lambda ex: ex[key_column], percent,
                                    keep_guide=guide[split], salt=task_name(task, GUIDE_SUFFIX))
    if shuffle_files:
      ds = ds.shuffle(1 << 16, seed=seed)
    return ds

  return dataset_fn


def _add_task(name: str, task: str, guide: dict[str, Optional[bool]], percent: float,
              features: dict[str, seqio.Feature]) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # Re-registration replaces it.
  formatter = functools.partial(fmt.text_to_text, benchmark=BENCHMARKS[task],
                                feature_names=dd.TEXT_COLUMNS[task],
                                label_names=dd.LABEL_NAMES[task])
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_make_dataset_fn(task, guide, percent),
                                      splits=tuple(guide)),
      preprocessors=[seqio.map_over_dataset(formatter), seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features,
      postprocess_fn=fmt.string_label_to_class_id(dd.LABEL_NAMES[task]),
      metric_fns=list(METRICS[task]))


def register_demo_glue_tasks(vocabulary: Optional[seqio.Vocabulary] = None, *, suffix: str = "",
                             guide_percent: float = GUIDE_PERCENT) -> list[str]:
  """Registers demo_{cola,mrpc,sst2}, their `_guide` tasks and the two mixtures (names + suffix)
  with `vocabulary` (None: the demo vocabulary); returns the names, tasks first."""
  guide_split.check_task_guide_percent(guide_percent, "guide_percent")
  vocabulary = vocabulary if vocabulary is not None else demo.VOCABULARY
  features = {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
              "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  names, guides = [], []
  for task in dd.TASKS:
    name = task_name(task, suffix)
    _add_task(name, task, {"train": False, "validation": None, "test": None}, guide_percent,
              features)
    _add_task(name + GUIDE_SUFFIX, task, {"train": True, "validation": True}, guide_percent,
              features)
    names.append(name)
    guides.append(name + GUIDE_SUFFIX)
  mixtures = []
  for mixture, members in ((MIXTURE + suffix, names), (MIXTURE + suffix + GUIDE_SUFFIX, guides)):
    if mixture in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(m, 1.0) for m in members])
    mixtures.append(mixture)
  return [n for pair in zip(names, guides) for n in pair] + mixtures


TASK_NAMES = tuple(register_demo_glue_tasks())
