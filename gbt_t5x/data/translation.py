"""T5-style translation preprocessing: language names, task prefixes, pair keys and BLEU.

What it is for: the WMT tasks (`gbt_t5x_tasks.wmt`) turn a TFDS translation example
`{"lt": "...", "en": "..."}` into T5's text-to-text pair

    inputs  = "translate Lithuanian to English: " + example["lt"]
    targets = example["en"]

and score decoded predictions with corpus BLEU (`metrics.bleu`: sacrebleu, detokenized text,
0-100; no postprocessor is needed: seqio hands the metric the decoded prediction and the
untokenized target text). `pair_key_fn` gives the content key of a pair for the guide hash
split. The prefix uses English language names for ISO 639-1 codes; like T5, a regional code
("zh-cn") is named by its first two letters.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import tensorflow as tf

from gbt_t5x.data import metrics

# English names of the languages WMT shared tasks have used (ISO 639-1 codes).
LANGUAGE_NAMES: Mapping[str, str] = {
    "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "et": "Estonian",
    "fi": "Finnish", "fr": "French", "gu": "Gujarati", "hi": "Hindi", "hr": "Croatian",
    "iu": "Inuktitut", "ja": "Japanese", "kk": "Kazakh", "km": "Khmer", "lt": "Lithuanian",
    "lv": "Latvian", "pl": "Polish", "ps": "Pashto", "ro": "Romanian", "ru": "Russian",
    "ta": "Tamil", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}
# sacrebleu tokenizer per target language; every other language uses sacrebleu's default
# "13a" (the WMT standard signature; note T5 itself scored with "intl").
_BLEU_TOKENIZERS: Mapping[str, str] = {"zh": "zh"}
DEFAULT_BLEU_TOKENIZER = metrics.DEFAULT_BLEU_TOKENIZER
# Separates source and target text in the guide-split hash key (never occurs inside WMT text
# lines, which are single lines).
PAIR_KEY_SEPARATOR = "\n"


def language_name(code: str) -> str:
  """English name of a language code, e.g. "lt" -> "Lithuanian", "zh-cn" -> "Chinese"."""
  if not isinstance(code, str) or len(code) < 2:
    raise ValueError(f"language code must be a string of at least 2 letters, got {code!r}")
  name = LANGUAGE_NAMES.get(code[:2].lower())
  if name is None:
    raise ValueError(f"unknown language code {code!r}; known: {', '.join(sorted(LANGUAGE_NAMES))}")
  return name


def translate_prefix(source_language: str, target_language: str) -> str:
  """T5's task prefix, e.g. ("lt", "en") -> "translate Lithuanian to English: "."""
  if source_language[:2].lower() == target_language[:2].lower():
    raise ValueError(f"source and target language are both {source_language!r}")
  return f"translate {language_name(source_language)} to {language_name(target_language)}: "


def _check_languages(features: Mapping[str, tf.TensorSpec], *languages: str) -> None:
  missing = [lang for lang in languages if lang not in features]
  if missing:
    raise ValueError(f"translation example has no field(s) {missing}; it has {sorted(features)}")


def translate(ds: tf.data.Dataset, source_language: str,
              target_language: str) -> tf.data.Dataset:
  """SeqIO preprocessor: {lang: tf.string, ...} -> {"inputs", "targets": tf.string scalars}.

  `inputs` = `translate_prefix(source, target)` + the source text; `targets` = the target text.
  Other fields are dropped (as in T5). No example is filtered out."""
  prefix = translate_prefix(source_language, target_language)
  _check_languages(ds.element_spec, source_language, target_language)

  def to_pair(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"inputs": tf.strings.join([prefix, ex[source_language]]),
            "targets": ex[target_language]}

  return ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)


def pair_key_fn(first_language: str, second_language: str
                ) -> Callable[[Mapping[str, tf.Tensor]], tf.Tensor]:
  """Returns `ex -> tf.string` scalar key = ex[first] + "\\n" + ex[second] for hash splits.

  Pass the TFDS config's language order (e.g. "lt", "en") for both directions of a pair, so that
  `*_lt_en` and `*_en_lt` hold out the same sentence pairs."""
  def key_fn(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return tf.strings.join([ex[first_language], ex[second_language]],
                           separator=PAIR_KEY_SEPARATOR)
  return key_fn


def bleu_tokenizer(target_language: str) -> str:
  """sacrebleu tokenizer for BLEU on `target_language` text: "zh" for Chinese, else "13a"."""
  return _BLEU_TOKENIZERS.get(target_language[:2].lower(), DEFAULT_BLEU_TOKENIZER)


def bleu_metric_fn(target_language: str) -> metrics.MetricFn:
  """The seqio metric fn `(targets, predictions) -> {"bleu": float 0-100}` for text in
  `target_language`: `metrics.bleu` with the language's sacrebleu tokenizer ("13a", or "zh" for
  Chinese)."""
  tokenize = bleu_tokenizer(target_language)
  if tokenize == DEFAULT_BLEU_TOKENIZER:
    return metrics.bleu
  return functools.partial(metrics.bleu, tokenize=tokenize)


__all__ = ["LANGUAGE_NAMES", "language_name", "translate_prefix", "translate", "pair_key_fn",
           "bleu_tokenizer", "bleu_metric_fn"]
