"""SeqIO registrations of GLUE (`glue_<name>_v002`) and SuperGLUE (`super_glue_<name>_v102`).

What it is for: T5's finetuning tasks read from TFDS (`glue/*:2.0.0`, `super_glue/*:1.0.2`) in
T5's text-to-text form (`gbt_t5x.data.glue`), scored by the official metric of each task
(`gbt_t5x.data.metrics`), plus a guide task per trainable task and the proportional mixtures.

* Tasks: GLUE cola, sst2, mrpc, qqp, stsb, mnli (splits train, validation_matched,
  validation_mismatched, test_matched, test_mismatched), mnli_matched and mnli_mismatched
  (validation, test: the two MNLI evaluations as their own tasks, as T5 does), qnli, rte, wnli,
  ax (test only, formatted as MNLI); SuperGLUE boolq, cb, copa, multirc, record, rte, wic,
  wsc (the `wsc.fixed` data in classification form: "wsc text: ... * span1 * ... # pronoun # ..."
  -> "True"/"False", scored by accuracy; T5's generative `wsc_simple` variant is not built),
  axb and axg (test only, formatted as RTE). Other splits are train / validation / test.
* The `train` split of every task with training data excludes its guide slice; `<task>_guide`
  (splits `train` and `validation`, the same data) is that slice: the examples whose
  `"<tfds name>:<idx>"` key hashes into `GUIDE_PERCENT` (1 %) of `gbt_t5x.data.guide_split`'s
  buckets. All answer options of a MultiRC question / a ReCoRD query fall on one side.
* Mixtures (T5's rates: the TFDS train sizes; eval-only tasks at rate 0 so that evaluating a
  mixture evaluates them): `glue_v002_proportional` (all GLUE tasks but WNLI, which T5 leaves
  out) and `super_glue_v102_proportional`, the issue's aliases `glue_v2_proportional`,
  `super_glue_v2_proportional`, and `<mixture>_guide` over the guide tasks.
* Every example has `inputs`, `targets` (tokens, EOS appended after trimming), their
  `_pretokenized` strings and int32 `idx` (MultiRC: `idx/paragraph`, `idx/question`,
  `idx/answer`; ReCoRD: `idx/passage`, `idx/query` and all reference `answers`).

Vocabulary: importing registers the tasks under T5's names with T5's SentencePiece vocabulary
(`T5_VOCABULARY_PATH`, read lazily on first use); `register_tasks(vocabulary, suffix)` registers
the same family with another vocabulary under names ending in `suffix` (tests use a byte
vocabulary). Importing reads no data.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from gbt_t5x.data import glue as fmt
from gbt_t5x.data import guide_split
from gbt_t5x.data import tfds_source
from gbt_t5x.data import metrics
from gbt_t5x.data import vocabularies

from gbt_t5x.data.vocabularies import T5_VOCABULARY_PATH  # noqa: E402  (re-exported)
GUIDE_PERCENT = 1.0
GUIDE_SUFFIX = "_guide"
GLUE_VERSION = "2.0.0"
SUPER_GLUE_VERSION = "1.0.2"
_TRAIN_EVAL_TEST = {"train": "train", "validation": "validation", "test": "test"}
_EVAL_TEST = {"validation": "validation", "test": "test"}
_TEST = {"test": "test"}
_MNLI_SPLITS = {s: s for s in ("train", "validation_matched", "validation_mismatched",
                               "test_matched", "test_mismatched")}


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
  """One GLUE / SuperGLUE task: where its data is, how it is formatted and scored.

  `formatter` maps one raw TFDS example to text-to-text (None: `dataset_fn` maps the dataset);
  `weight` is the mixing rate (TFDS train size; 0 = eval only)."""
  name: str
  tfds_name: str
  splits: Mapping[str, str]
  postprocess_fn: Callable[..., Any]
  metric_fns: Sequence[Callable[..., dict[str, float]]]
  weight: float
  formatter: Optional[Callable[[Mapping[str, Any]], dict[str, Any]]] = None
  dataset_fn: Optional[Callable[[tf.data.Dataset], tf.data.Dataset]] = None
  in_mixture: bool = True


def _classification(name: str, tfds_name: str, benchmark: str, feature_names: Sequence[str],
                    label_names: Sequence[str], metric_fns: Sequence[Callable[..., Any]],
                    weight: float, splits: Mapping[str, str] = _TRAIN_EVAL_TEST,
                    in_mixture: bool = True) -> BenchmarkTask:
  return BenchmarkTask(
      name=name, tfds_name=tfds_name, splits=splits,
      formatter=functools.partial(fmt.text_to_text, benchmark=benchmark,
                                  feature_names=tuple(feature_names),
                                  label_names=tuple(label_names)),
      postprocess_fn=fmt.string_label_to_class_id(label_names), metric_fns=tuple(metric_fns),
      weight=weight, in_mixture=in_mixture)


_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")
_G = f"glue/{{}}:{GLUE_VERSION}"
_SG = f"super_glue/{{}}:{SUPER_GLUE_VERSION}"
_ACC = (metrics.accuracy,)

GLUE_TASKS: tuple[BenchmarkTask, ...] = (
    _classification("cola", _G.format("cola"), "cola", ("sentence",),
                    ("unacceptable", "acceptable"), (metrics.matthews_corrcoef,), 8_551),
    _classification("sst2", _G.format("sst2"), "sst2", ("sentence",), ("negative", "positive"),
                    _ACC, 67_349),
    _classification("mrpc", _G.format("mrpc"), "mrpc", ("sentence1", "sentence2"),
                    ("not_equivalent", "equivalent"), (metrics.f1_and_accuracy,), 3_668),
    _classification("qqp", _G.format("qqp"), "qqp", ("question1", "question2"),
                    ("not_duplicate", "duplicate"), (metrics.f1_and_accuracy,), 363_846),
    BenchmarkTask("stsb", _G.format("stsb"), _TRAIN_EVAL_TEST, fmt.string_to_float,
                  (metrics.pearson_and_spearman,), 5_749, formatter=fmt.stsb_text_to_text),
    _classification("mnli", _G.format("mnli"), "mnli", ("hypothesis", "premise"), _MNLI_LABELS,
                    _ACC, 392_702, splits=_MNLI_SPLITS),
    _classification("mnli_matched", _G.format("mnli_matched"), "mnli", ("hypothesis", "premise"),
                    _MNLI_LABELS, _ACC, 0, splits=_EVAL_TEST),
    _classification("mnli_mismatched", _G.format("mnli_mismatched"), "mnli",
                    ("hypothesis", "premise"), _MNLI_LABELS, _ACC, 0, splits=_EVAL_TEST),
    _classification("qnli", _G.format("qnli"), "qnli", ("question", "sentence"), _NLI2, _ACC,
                    104_743),
    _classification("rte", _G.format("rte"), "rte", ("sentence1", "sentence2"), _NLI2, _ACC,
                    2_490),
    _classification("wnli", _G.format("wnli"), "wnli", ("sentence1", "sentence2"),
                    ("not_entailment", "entailment"), _ACC, 635, in_mixture=False),
    _classification("ax", _G.format("ax"), "mnli", ("hypothesis", "premise"), _MNLI_LABELS,
                    (metrics.matthews_corrcoef,), 0, splits=_TEST),
)

SUPER_GLUE_TASKS: tuple[BenchmarkTask, ...] = (
    _classification("boolq", _SG.format("boolq"), "boolq", ("passage", "question"), _BOOL, _ACC,
                    9_427),
    _classification("cb", _SG.format("cb"), "cb", ("hypothesis", "premise"),
                    ("entailment", "contradiction", "neutral"),
                    (metrics.mean_multiclass_f1(3), metrics.accuracy), 250),
    _classification("copa", _SG.format("copa"), "copa", ("choice1", "choice2", "premise",
                                                         "question"),
                    ("choice1", "choice2"), _ACC, 400),
    BenchmarkTask("multirc", _SG.format("multirc"), _TRAIN_EVAL_TEST, fmt.multirc_postprocess,
                  (metrics.multirc_f1a_and_exact_match,), 27_243,
                  formatter=fmt.multirc_text_to_text),
    BenchmarkTask("record", _SG.format("record"), _TRAIN_EVAL_TEST, fmt.record_postprocess,
                  (metrics.record_em_f1,), 138_854, dataset_fn=fmt.record_expand),
    _classification("rte", _SG.format("rte"), "rte", ("hypothesis", "premise"), _NLI2, _ACC,
                    2_490),
    _classification("wic", _SG.format("wic"), "wic", ("sentence1", "sentence2", "word"), _BOOL,
                    _ACC, 5_428),
    BenchmarkTask("wsc", _SG.format("wsc.fixed"), _TRAIN_EVAL_TEST,
                  fmt.string_label_to_class_id(_BOOL), _ACC, 554,
                  formatter=fmt.wsc_text_to_text),
    _classification("axb", _SG.format("axb"), "rte", ("sentence1", "sentence2"), _NLI2,
                    (metrics.matthews_corrcoef,), 0, splits=_TEST),
    _classification("axg", _SG.format("axg"), "rte", ("hypothesis", "premise"), _NLI2, _ACC, 0,
                    splits=_TEST),
)


def glue_task_name(name: str, suffix: str = "") -> str:
  """"glue_<name>_v002<suffix>", e.g. glue_cola_v002."""
  return f"glue_{name}_v002{suffix}"


def super_glue_task_name(name: str, suffix: str = "") -> str:
  """"super_glue_<name>_v102<suffix>", e.g. super_glue_boolq_v102."""
  return f"super_glue_{name}_v102{suffix}"


def _source(tfds_name: str, splits: Mapping[str, str], guide_splits: Mapping[str, bool],
            percent: float, tfds_data_dir: Optional[str]) -> seqio.DataSource:
  """A source over prepared TFDS data (never downloads; an unprepared dataset names its `tfds
  build`) whose `guide_splits` keep only (True) or drop (False) the guide slice, decided by
  `gbt_t5x.data.glue.guide_key` of the raw example."""
  key_fn = functools.partial(fmt.guide_key, dataset_name=tfds_name.split(":")[0])
  return tfds_source.PreparedTfdsDataSource(
      tfds_name, splits, tfds_data_dir=tfds_data_dir,
      split_filters={split: guide_split.guide_filter(key_fn, percent, keep)
                     for split, keep in guide_splits.items()})


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """`inputs` (required) and `targets`, both with `vocabulary` and EOS appended."""
  return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def _preprocessors(spec: BenchmarkTask) -> list:
  first = spec.dataset_fn if spec.dataset_fn is not None else seqio.map_over_dataset(
      spec.formatter)
  return [first, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]


def _add_task(name: str, source: seqio.DataSource, spec: BenchmarkTask,
              features: Mapping[str, seqio.Feature]) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # Re-registration (reload, new vocabulary) replaces it.
  seqio.TaskRegistry.add(name, source=source, preprocessors=_preprocessors(spec),
                         output_features=features, postprocess_fn=spec.postprocess_fn,
                         metric_fns=list(spec.metric_fns))


def _add_mixture(name: str, tasks: Sequence[tuple[str, float]]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks))


def _register_family(specs: Sequence[BenchmarkTask], task_name: Callable[[str, str], str],
                     mixture_names: Sequence[str], features: Mapping[str, seqio.Feature],
                     suffix: str, percent: float, tfds_data_dir: Optional[str]) -> list[str]:
  names, mixed, guides = [], [], []
  for spec in specs:
    name = task_name(spec.name, suffix)
    has_train = "train" in spec.splits
    guide_splits = {"train": False} if has_train else {}
    _add_task(name, _source(spec.tfds_name, spec.splits, guide_splits, percent, tfds_data_dir),
              spec, features)
    names.append(name)
    if spec.in_mixture:
      mixed.append((name, spec.weight))
    if has_train:
      guide_name = name + GUIDE_SUFFIX
      source = _source(spec.tfds_name, {"train": "train", "validation": "train"},
                       {"train": True, "validation": True}, percent, tfds_data_dir)
      _add_task(guide_name, source, spec, features)
      names.append(guide_name)
      if spec.in_mixture:
        guides.append((guide_name, spec.weight))
  for mixture in mixture_names:
    _add_mixture(mixture + suffix, mixed)
    _add_mixture(mixture + suffix + GUIDE_SUFFIX, guides)
    names += [mixture + suffix, mixture + suffix + GUIDE_SUFFIX]
  return names


def register_tasks(vocabulary: seqio.Vocabulary, suffix: str = "",
                   guide_percent: float = GUIDE_PERCENT,
                   tfds_data_dir: Optional[str] = None) -> list[str]:
  """Registers every GLUE and SuperGLUE task, guide task and mixture with `vocabulary`, under
  T5's names followed by `suffix`; returns the registered names (tasks, then mixtures).

  `tfds_data_dir` fixes where the prepared TFDS data live (None: seqio's override, i.e.
  `--tfds_data_dir`, then TFDS's default); nothing is ever downloaded.

  Registering again with the same suffix replaces the earlier registrations."""
  if not isinstance(suffix, str) or (suffix and not suffix.replace("_", "").isalnum()):
    raise ValueError(f"suffix must be a string of letters, digits and '_', got {suffix!r}")
  guide_split.check_task_guide_percent(guide_percent, "guide_percent")
  features = output_features(vocabulary)
  return (_register_family(GLUE_TASKS, glue_task_name,
                           ("glue_v002_proportional", "glue_v2_proportional"), features, suffix,
                           guide_percent, tfds_data_dir)
          + _register_family(SUPER_GLUE_TASKS, super_glue_task_name,
                             ("super_glue_v102_proportional", "super_glue_v2_proportional"),
                             features, suffix, guide_percent, tfds_data_dir))


T5_VOCABULARY = vocabularies.sentencepiece_vocabulary(T5_VOCABULARY_PATH, extra_ids=100)
TASK_NAMES = tuple(register_tasks(T5_VOCABULARY))
