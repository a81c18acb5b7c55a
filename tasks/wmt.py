"""SeqIO registrations of the WMT translation tasks (TFDS `wmt14/16/19_translate`) and their guides.

For every TFDS config in `WMT_CONFIGS` (e.g. `wmt19_translate/lt-en`) and both directions:

* `<family>_<src>_<tgt>` (e.g. `wmt19_translate_lt_en`, `wmt19_translate_en_lt`): T5's text-to-text
  translation, `inputs` = "translate Lithuanian to English: " + source, `targets` = target, both
  tokenized with the vocabulary and EOS appended after trimming (plus `inputs_pretokenized` /
  `targets_pretokenized`). Splits: `train` (TFDS train minus the guide slice), `validation` and,
  where TFDS has it, `test`. Metric: corpus BLEU on detokenized text
  (`translation.bleu_metric_fn`).
* `<family>_<src>_<tgt>_guide`: the guide (tuning) set, splits `train` and `validation` (the
  same data). With `guide_source="train_hash"` (default, the reference's recipe) it is the
  deterministic `guide_percent` % (1 %) hash slice of TFDS train, keyed on the pair's text in the
  config's language order, so both directions hold out the same pairs, and the main task's train
  split is exactly the complement. With `guide_source="validation"` it is TFDS validation and the
  main task trains on all of TFDS train (its `validation` split then overlaps the guide).

No other filtering: every TFDS pair lands in exactly one of train / guide (unlike the reference's
similarity filter, which silently dropped real translation pairs).

Vocabulary: T5's public 32k SentencePiece model (`T5_VOCABULARY_PATH`, 100 extra ids) is
registered on import; `register_wmt_tasks(vocabulary, name_suffix=...)` registers the same tasks
for another vocabulary (tests use `seqio.ByteVocabulary()`). Importing is cheap: no TFDS builder
is touched until a dataset is requested. TFDS data come from `tfds_data_dir` or T5X's
`--tfds_data_dir` (`seqio.set_tfds_data_dir_override`); prepare them with e.g.
`tfds build wmt19_translate --config lt-en --data_dir DIR`.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Mapping, Optional, Sequence

import seqio

from gbt_t5x.data import guide_split
from gbt_t5x.data import tfds_source
from gbt_t5x.data import translation
from gbt_t5x.data import vocabularies

from gbt_t5x.data.vocabularies import T5_VOCABULARY_PATH  # noqa: E402  (re-exported)
EXTRA_IDS = 100
GUIDE_PERCENT = 1.0
GUIDE_SOURCES = ("train_hash", "validation")
GUIDE_SUFFIX = "_guide"


@dataclasses.dataclass(frozen=True)
class WmtConfig:
  """One TFDS WMT config: builder `family`, its `pair` in TFDS order, and its TFDS splits."""
  family: str
  pair: tuple[str, str]
  splits: tuple[str, ...]
  version: str = "1.0.0"

  @property
  def tfds_name(self) -> str:
    """e.g. "wmt19_translate/lt-en:1.0.0"."""
    return f"{self.family}/{self.pair[0]}-{self.pair[1]}:{self.version}"

  def directions(self) -> tuple[tuple[str, str], tuple[str, str]]:
    """((a, b), (b, a)): (source, target) of both translation directions."""
    a, b = self.pair
    return (a, b), (b, a)


def _configs(family: str, pairs: Iterable[str], splits: tuple[str, ...]) -> list[WmtConfig]:
  return [WmtConfig(family, tuple(p.split("-")), splits) for p in pairs]


_TVT = ("train", "validation", "test")
# The configs TFDS 4.9.10 defines (wmt19 has no test split); tests check this table against TFDS.
WMT_CONFIGS: tuple[WmtConfig, ...] = tuple(
    _configs("wmt19_translate", ["cs-en", "de-en", "fi-en", "gu-en", "kk-en", "lt-en", "ru-en",
                                 "zh-en", "fr-de"], ("train", "validation"))
    + _configs("wmt14_translate", ["cs-en", "de-en", "fr-en", "hi-en", "ru-en"], _TVT)
    + _configs("wmt16_translate", ["cs-en", "de-en", "fi-en", "ro-en", "ru-en", "tr-en"], _TVT))


def task_name(config: WmtConfig, source: str, target: str, name_suffix: str = "") -> str:
  """e.g. (wmt19 lt-en, "lt", "en") -> "wmt19_translate_lt_en" (+ `name_suffix`)."""
  if {source, target} != set(config.pair):
    raise ValueError(f"{source}->{target} is not a direction of {config.tfds_name}")
  return f"{config.family}_{source}_{target}{name_suffix}"


def guide_task_name(config: WmtConfig, source: str, target: str, name_suffix: str = "") -> str:
  """The guide task of `task_name(...)`: the same name + "_guide"."""
  return task_name(config, source, target, name_suffix) + GUIDE_SUFFIX


def default_vocabulary() -> seqio.Vocabulary:
  """T5's SentencePiece vocabulary (32000 pieces + 100 extra ids; read lazily from GCS)."""
  return vocabularies.sentencepiece_vocabulary(T5_VOCABULARY_PATH, extra_ids=EXTRA_IDS)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """`inputs` / `targets` features with EOS, both tokenized with `vocabulary`."""
  return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def _preprocessors(source: str, target: str) -> list:
  """pair -> prefixed inputs/targets text -> tokens -> EOS appended after trimming."""
  return [functools.partial(translation.translate, source_language=source,
                            target_language=target),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim]


def _sources(config: WmtConfig, guide_source: str, guide_percent: float,
             tfds_data_dir: Optional[str]) -> tuple[seqio.DataSource, seqio.DataSource]:
  """(main task source, guide task source) for one TFDS config; both read prepared TFDS data
  only (an unprepared dataset names its `tfds build` command)."""
  guide_split.check_task_guide_percent(guide_percent)
  key_fn = translation.pair_key_fn(*config.pair)
  keep = functools.partial(guide_split.guide_filter, key_fn, guide_percent)
  if guide_source == "validation":
    main_filters = {}
    guide_splits = {"train": "validation", "validation": "validation"}
    guide_filters = {}
  else:  # "train_hash": the guide is the hash slice of train, the main train its complement.
    main_filters = {"train": keep(keep_guide=False)}
    guide_splits = {"train": "train", "validation": "train"}
    guide_filters = {"train": keep(keep_guide=True), "validation": keep(keep_guide=True)}
  make = functools.partial(tfds_source.PreparedTfdsDataSource, config.tfds_name,
                           tfds_data_dir=tfds_data_dir)
  return (make({s: s for s in config.splits}, split_filters=main_filters),
          make(guide_splits, split_filters=guide_filters))


def _add_task(name: str, source: seqio.DataSource, src: str, tgt: str,
              features: Mapping[str, seqio.Feature]) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # Re-registration (reload, other vocabulary) replaces it.
  seqio.TaskRegistry.add(name, source=source, preprocessors=_preprocessors(src, tgt),
                         output_features=features,
                         metric_fns=[translation.bleu_metric_fn(tgt)])


def register_wmt_tasks(vocabulary: Optional[seqio.Vocabulary] = None, *,
                       configs: Sequence[WmtConfig] = WMT_CONFIGS,
                       name_suffix: str = "",
                       guide_source: str = "train_hash",
                       guide_percent: float = GUIDE_PERCENT,
                       tfds_data_dir: Optional[str] = None) -> list[str]:
  """Registers both directions of every config in `configs`, each with its `_guide` task.

  Args:
    vocabulary: tokenizes inputs and targets; None = `default_vocabulary()` (T5's).
    configs: which TFDS configs (default: all of `WMT_CONFIGS`).
    name_suffix: appended to every task name before "_guide" (e.g. "_bytes"), so that tasks for
      several vocabularies can coexist.
    guide_source: "train_hash" (a `guide_percent` % hash slice held out of train) or
      "validation" (TFDS validation is the guide; train is not reduced).
    guide_percent: size of the hash slice in percent of TFDS train (1.0 = 1 %).
    tfds_data_dir: TFDS data dir (None: TFDS's default, or seqio's data-dir override).

  Returns:
    The registered task names, main and guide task of each direction in `configs` order."""
  if guide_source not in GUIDE_SOURCES:
    raise ValueError(f"guide_source must be one of {GUIDE_SOURCES}, got {guide_source!r}")
  features = output_features(vocabulary if vocabulary is not None else default_vocabulary())
  names = []
  for config in configs:
    main, guide = _sources(config, guide_source, guide_percent, tfds_data_dir)
    for src, tgt in config.directions():
      names.append(task_name(config, src, tgt, name_suffix))
      _add_task(names[-1], main, src, tgt, features)
      names.append(guide_task_name(config, src, tgt, name_suffix))
      _add_task(names[-1], guide, src, tgt, features)
  return names


TASK_NAMES: tuple[str, ...] = tuple(register_wmt_tasks())
